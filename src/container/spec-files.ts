/**
 * The real `SpecFiles`: what the spec builder reads from the node's filesystem.
 */
import { constants } from 'node:fs';
import { open, realpath, stat } from 'node:fs/promises';
import { InvalidArgumentError } from '../errors.js';
import { readFileInRoot, resolveInRoot } from '../os/in-root.js';
import { parseMountInfo, readSelfMountInfo } from '../os/mounts.js';
import { idmapSupported } from '../os/pod-user-namespace.js';
import type { NodeMount } from './pod-user-namespace-spec.js';
import type { HostDevice, SpecFiles } from './spec-builder.js';

/** Linux's dev_t encoding (glibc gnu_dev_major/minor). */
export function deviceNumbers(rdev: bigint): { major: number; minor: number } {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return { major, minor };
}

export class NodeSpecFiles implements SpecFiles {
  readInRoot(root: string, p: string, maxBytes: number): Promise<Buffer | null> {
    return readFileInRoot(root, p, maxBytes);
  }

  resolveInRoot(root: string, p: string) {
    return resolveInRoot(root, p);
  }

  realpath(hostPath: string): Promise<string> {
    return realpath(hostPath);
  }

  async statDevice(hostPath: string): Promise<Omit<HostDevice, 'path'> | null> {
    const st = await stat(hostPath, { bigint: true });
    const type = st.isCharacterDevice() ? 'c' : st.isBlockDevice() ? 'b' : null;
    if (!type) return null;
    return {
      type,
      ...deviceNumbers(st.rdev),
      fileMode: Number(st.mode & 0o777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
    };
  }

  async mountTable(): Promise<NodeMount[]> {
    return parseMountInfo(await readSelfMountInfo()).map((m) => ({
      mountPoint: m.mountPoint,
      readonly: m.mountOptions.split(',').includes('ro'),
    }));
  }

  idmapSupported(usernsPin: string, source: string): Promise<{ supported: boolean; reason: string }> {
    return idmapSupported(usernsPin, source);
  }

  async readHostFile(hostPath: string, maxBytes: number): Promise<Buffer> {
    const handle = await open(hostPath, constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new InvalidArgumentError(`${hostPath} is not a regular file`);
      if (st.size > maxBytes) throw new InvalidArgumentError(`${hostPath} is larger than ${maxBytes} bytes`);
      const buf = Buffer.alloc(maxBytes + 1);
      let total = 0;
      for (;;) {
        const { bytesRead } = await handle.read(buf, total, buf.length - total, total);
        if (bytesRead === 0) break;
        total += bytesRead;
        if (total > maxBytes) throw new InvalidArgumentError(`${hostPath} is larger than ${maxBytes} bytes`);
      }
      return buf.subarray(0, total);
    } finally {
      await handle.close();
    }
  }
}
