import { defineConfig } from 'vitest/config';

// Integration tests start real daemons as the test user and share host resources
// (the local registry, the test user's cgroup subtree), so files run one at a time;
// unit tests are fast enough that this costs little.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
