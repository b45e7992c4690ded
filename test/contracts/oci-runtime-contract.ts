/**
 * The OciRuntime contract: lifecycle states, exits delivered as events and to waiters (never at
 * once, never late), error kinds for unknown and wrong-state containers, exec results, an
 * aborted create leaving nothing.
 */
import assert from 'node:assert/strict';
import type { CreateOptions, ExecResult, OciRuntime } from '../../src/os/oci-runtime.js';
import { assertKind, type ContractCase } from './contract.js';

/** 'sleeper': PID 1 without handlers (SIGTERM is dropped); 'graceful': exits 0 on SIGTERM. */
export type ContainerKind = 'sleeper' | 'graceful';

export interface OciRuntimeSubject {
  runtime: OciRuntime;
  newId(): string;
  /** What create needs for a container of this kind. */
  createOptions(id: string, kind: ContainerKind): Promise<CreateOptions>;
  /** After create: lets a fake behave like the kind (the real container just is that program). */
  created?(id: string, kind: ContainerKind): void;
  /** Before exec: lets a fake answer like the command would (the real one runs it). */
  willExec?(args: string[], result: ExecResult): void;
}

async function created(s: OciRuntimeSubject, kind: ContainerKind): Promise<string> {
  const id = s.newId();
  const { pid } = await s.runtime.create(await s.createOptions(id, kind));
  assert.ok(pid > 0, 'create returns the container pid');
  s.created?.(id, kind);
  return id;
}

async function gone(s: OciRuntimeSubject, id: string): Promise<void> {
  await s.runtime.delete(id, true);
  await s.runtime.cleanup(id);
}

export function ociRuntimeContract(s: OciRuntimeSubject): ContractCase[] {
  return [
    {
      name: 'create, start, kill, exit heard by onExit and waitExit, delete: the states in between',
      async run() {
        const heard: { id: string; exitCode: number }[] = [];
        const stop = s.runtime.onExit((id, info) => heard.push({ id, exitCode: info.exitCode }));
        try {
          const id = await created(s, 'sleeper');
          assert.equal((await s.runtime.state(id))?.status, 'created');
          await s.runtime.start(id);
          const running = await s.runtime.state(id);
          assert.equal(running?.status, 'running');
          assert.ok((running?.pid ?? 0) > 0);
          assert.ok((await s.runtime.pids(id)).length >= 1, 'a running container has a process');
          assert.equal(await s.runtime.exitInfo(id), null, 'no exit before it exits');
          const waiting = s.runtime.waitExit(id, 15_000);
          await s.runtime.kill(id, 'SIGKILL', true);
          const exit = await waiting;
          assert.equal(exit?.exitCode, 137);
          assert.equal((await s.runtime.exitInfo(id))?.exitCode, 137);
          assert.equal((await s.runtime.state(id))?.status, 'stopped');
          for (let i = 0; i < 100 && !heard.some((h) => h.id === id); i++)
            await new Promise((r) => setTimeout(r, 20));
          assert.deepEqual(
            heard.filter((h) => h.id === id),
            [{ id, exitCode: 137 }],
            'onExit heard the exit exactly once',
          );
          await s.runtime.delete(id, false);
          assert.equal(await s.runtime.state(id), null, 'deleted: unknown to the runtime');
          await s.runtime.cleanup(id);
        } finally {
          stop();
        }
      },
    },
    {
      name: 'a container that handles SIGTERM exits with its own code; PID 1 without a handler drops it',
      async run() {
        const graceful = await created(s, 'graceful');
        const sleeper = await created(s, 'sleeper');
        try {
          await s.runtime.start(graceful);
          await s.runtime.start(sleeper);
          // The handler is installed once the shell runs its trap: wait until the runtime sees it.
          for (let i = 0; i < 100 && (await s.runtime.initDropsSignal(graceful, 'SIGTERM')); i++) {
            await new Promise((r) => setTimeout(r, 20));
          }
          assert.equal(await s.runtime.initDropsSignal(graceful, 'SIGTERM'), false);
          assert.equal(await s.runtime.initDropsSignal(sleeper, 'SIGTERM'), true);
          assert.equal(await s.runtime.initDropsSignal(sleeper, 'SIGKILL'), false);
          await s.runtime.kill(graceful, 'SIGTERM');
          assert.equal((await s.runtime.waitExit(graceful, 15_000))?.exitCode, 0);
          // Signalling a container that has exited is not an error.
          await s.runtime.kill(graceful, 'SIGTERM');
        } finally {
          await gone(s, graceful);
          await gone(s, sleeper);
        }
      },
    },
    {
      name: 'waitExit on a running container waits for its timeout and answers null',
      async run() {
        const id = await created(s, 'sleeper');
        try {
          await s.runtime.start(id);
          const started = Date.now();
          assert.equal(await s.runtime.waitExit(id, 300), null);
          assert.ok(Date.now() - started >= 250, 'it waited');
          const abort = new AbortController();
          const waiting = s.runtime.waitExit(id, 60_000, abort.signal);
          abort.abort();
          assert.equal(await waiting, null, 'an aborted wait answers null at once');
        } finally {
          await gone(s, id);
        }
      },
    },
    {
      name: 'unknown containers: NotFound to start, kill and update, null state and exit, delete is fine',
      async run() {
        const id = s.newId();
        await assertKind(s.runtime.start(id), 'NotFound', 'start');
        await assertKind(s.runtime.kill(id, 'SIGTERM'), 'NotFound', 'kill');
        await assertKind(s.runtime.update(id, {}), 'NotFound', 'update');
        assert.equal(await s.runtime.state(id), null);
        assert.equal(await s.runtime.exitInfo(id), null);
        await s.runtime.delete(id, true);
        await s.runtime.delete(id, false);
      },
    },
    {
      name: 'starting a container twice is FailedPrecondition',
      async run() {
        const id = await created(s, 'sleeper');
        try {
          await s.runtime.start(id);
          await assertKind(s.runtime.start(id), 'FailedPrecondition', 'second start');
        } finally {
          await gone(s, id);
        }
      },
    },
    {
      name: 'exec returns the command’s output and exit code',
      async run() {
        const id = await created(s, 'sleeper');
        try {
          await s.runtime.start(id);
          const args = ['sh', '-c', 'echo out; echo err >&2; exit 3'];
          s.willExec?.(args, { exitCode: 3, stdout: Buffer.from('out\n'), stderr: Buffer.from('err\n') });
          const r = await s.runtime.exec(id, { args }, { timeoutMs: 15_000 });
          assert.equal(r.exitCode, 3);
          assert.equal(r.stdout.toString(), 'out\n');
          assert.equal(r.stderr.toString(), 'err\n');
        } finally {
          await gone(s, id);
        }
      },
    },
    {
      name: 'a create whose caller already gave up rejects and leaves nothing',
      async run() {
        const id = s.newId();
        const abort = new AbortController();
        abort.abort();
        const options = { ...(await s.createOptions(id, 'sleeper')), signal: abort.signal };
        assert.notEqual(
          await s.runtime.create(options).then(
            () => 'resolved',
            () => 'rejected',
          ),
          'resolved',
        );
        assert.equal(await s.runtime.state(id), null);
        await s.runtime.cleanup(id);
      },
    },
  ];
}
