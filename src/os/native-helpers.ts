/**
 * Where `npm run build` puts the native helpers (native/build/<name>), reached from src/os
 * when run from source (tsx, vitest) and from dist/src/os when built.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export function nativeHelperPath(name: string): string {
  const candidates = [`../../native/build/${name}`, `../../../native/build/${name}`].map((p) =>
    fileURLToPath(new URL(p, import.meta.url)),
  );
  return candidates.find((p) => existsSync(p)) ?? candidates[0]!;
}
