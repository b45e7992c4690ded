/**
 * Sandboxes in memory, backed by one crash-safe record file each. Every change goes to disk
 * before the in-memory copy is replaced, so what a request sees is what a restart would load.
 * Read access (get, list) is what the container layer uses.
 */
import { CachedRecordStore } from '../store/cached-record-store.js';
import { parseSandboxRecord, SANDBOX_RECORD_VERSION, type SandboxRecord } from './sandbox-record.js';

export interface SandboxReader {
  get(id: string): SandboxRecord | undefined;
  list(): SandboxRecord[];
}

export class SandboxStore extends CachedRecordStore<SandboxRecord> implements SandboxReader {
  constructor(dir: string) {
    super(dir, SANDBOX_RECORD_VERSION, parseSandboxRecord, 'pod sandbox', 'sandboxes');
  }
}
