/**
 * Startup recovery, run before the daemon opens its readiness gate: load every record,
 * compare it with the node (is the netns pin still mounted, is the infra process still the
 * same process) and settle its state (sandbox-record.ts recoveredState). Ready sandboxes
 * whose pins and infra survived stay ready with the same IP; a sandbox the daemon was
 * creating when it died becomes NOTREADY and keeps naming everything it may hold, so Stop
 * and Remove clean it completely. Names are reserved again, ready sandboxes first. One bad
 * record never stops the start: it is moved aside and logged.
 */
import type { SandboxOs } from '../os/sandbox-os.js';
import { type CoreContext, fromGoneNode } from './core-context.js';
import { recoveredState, type SandboxRecord } from './sandbox-record.js';

export interface RecoveryReport {
  loaded: number;
  ready: number;
  notReady: number;
  changed: string[];
  problems: { file: string; message: string }[];
}

export async function recoverSandboxes(
  core: CoreContext,
  os: Pick<SandboxOs, 'isPinned' | 'infraAlive'>,
): Promise<RecoveryReport> {
  const { records, problems } = await core.sandboxes.load();
  for (const p of problems) core.logger.error(p, 'sandbox record unreadable; moved aside as .corrupt');
  const changed: string[] = [];
  const settled: SandboxRecord[] = [];
  for (const record of records) {
    const observed = { ...(await observe(os, record)), nodeGone: fromGoneNode(core, record) };
    const next = recoveredState(record, observed);
    if (next.state !== record.state) {
      const updated: SandboxRecord = { ...record, state: next.state, notReadyReason: next.reason };
      try {
        await core.sandboxes.put(updated);
      } catch (err) {
        core.logger.error({ err, sandbox: record.id }, 'cannot save the recovered sandbox state');
      }
      changed.push(record.id);
      core.logger.warn({ sandbox: record.id, reason: next.reason }, 'pod sandbox is not ready after restart');
      settled.push(updated);
    } else {
      settled.push(record);
    }
  }
  // Ready sandboxes win a name that a failed, kept-for-cleanup record also carries.
  const ordered = [...settled].sort((a, b) => Number(b.state === 'ready') - Number(a.state === 'ready'));
  for (const record of ordered) {
    const meta = record.config.metadata!;
    const name = [meta.name, meta.namespace, meta.uid, String(meta.attempt)].join('_');
    if (core.sandboxNames.owner(name) === undefined) core.sandboxNames.reserve(name, record.id);
  }
  return {
    loaded: records.length,
    ready: settled.filter((r) => r.state === 'ready').length,
    notReady: settled.filter((r) => r.state !== 'ready').length,
    changed,
    problems,
  };
}

async function observe(os: Pick<SandboxOs, 'isPinned' | 'infraAlive'>, record: SandboxRecord) {
  const netns = record.namespaces.network.path;
  const networkPinned = netns === null ? true : await os.isPinned(netns).catch(() => false);
  const infra = record.namespaces.pid.infra;
  const infraAlive =
    record.namespaces.pid.mode !== 'POD'
      ? true
      : infra
        ? await os.infraAlive(infra).catch(() => false)
        : false;
  return { networkPinned, infraAlive };
}
