/**
 * The layer rule of src/, checked from the imports themselves (README, Architecture):
 *
 *   cli.ts, daemon.ts                         composition root and command line
 *   cri/                                      the edge: imported by the root only
 *   podsandbox/ container/ image/ streaming/  the domain: RPC modules, never importing
 *   rootless/ runtime-info/                   one another
 *   core/                                     the runtime core
 *   os/ store/ nri/                           the OS layer, crash-safe records, the NRI protocol
 *   api/ errors log version config metrics    the ground floor (and failpoint)
 *
 * Nothing imports upward, the import graph has no cycle, and only src/os/ starts processes
 * (child_process and execa are imported nowhere else). The checker itself is tested on a
 * made-up tree so that it can fail.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = path.resolve(import.meta.dirname, '../../src');

const LAYERS: { layer: number; name: string; match: (file: string) => boolean }[] = [
  { layer: 5, name: 'root', match: (f) => f === 'cli.ts' || f === 'daemon.ts' },
  { layer: 4, name: 'cri', match: (f) => f.startsWith('cri/') },
  {
    layer: 3,
    name: 'domain',
    match: (f) => /^(podsandbox|container|image|streaming|rootless|runtime-info)\//.test(f),
  },
  { layer: 2, name: 'core', match: (f) => f.startsWith('core/') },
  {
    layer: 1,
    name: 'os',
    match: (f) => f.startsWith('os/') || f.startsWith('store/') || f.startsWith('nri/'),
  },
  {
    layer: 0,
    name: 'ground',
    match: (f) =>
      f.startsWith('api/') ||
      ['errors.ts', 'log.ts', 'version.ts', 'config.ts', 'metrics.ts', 'failpoint.ts'].includes(f),
  },
];

/** Packages that start processes; only src/os/ may import them. */
const PROCESS_MODULES = ['node:child_process', 'child_process', 'execa'];

interface SourceFile {
  /** Path relative to src/, e.g. "core/runtime-core.ts". */
  file: string;
  text: string;
}

function layerOf(file: string): { layer: number; name: string } | null {
  const found = LAYERS.find((l) => l.match(file));
  return found ? { layer: found.layer, name: found.name } : null;
}

/** The top folder of a domain file ("container/x.ts" → "container"). */
function unitOf(file: string): string {
  return file.includes('/') ? file.slice(0, file.indexOf('/')) : file;
}

/** Every module specifier a file imports or re-exports (static and dynamic). */
function importsOf(text: string): string[] {
  const specs: string[] = [];
  const patterns = [
    /\bimport\s+(?:type\s+)?[^'";]*?\s+from\s+'([^']+)'/g,
    /\bexport\s+(?:type\s+)?(?:\*|\{[^}]*\})\s+from\s+'([^']+)'/g,
    /\bimport\s+'([^']+)'/g,
    /\bimport\(\s*'([^']+)'\s*\)/g,
  ];
  for (const pattern of patterns) for (const m of text.matchAll(pattern)) specs.push(m[1]!);
  return specs;
}

/** The violations of the layer rule in a set of files (relative to src/). */
function layerViolations(files: SourceFile[]): string[] {
  const known = new Set(files.map((f) => f.file));
  const problems: string[] = [];
  const edges = new Map<string, string[]>();
  for (const { file, text } of files) {
    const from = layerOf(file);
    if (!from) {
      problems.push(`${file}: not in any layer (add its folder to the layer table)`);
      continue;
    }
    const targets: string[] = [];
    for (const spec of importsOf(text)) {
      if (PROCESS_MODULES.includes(spec) && !file.startsWith('os/')) {
        problems.push(`${file}: imports ${spec}; start processes through src/os/process-runner.ts`);
      }
      if (!spec.startsWith('.')) continue;
      const target = path.posix
        .normalize(path.posix.join(path.posix.dirname(file), spec))
        .replace(/\.js$/, '.ts');
      if (!known.has(target)) continue; // generated code, or a file outside src/
      targets.push(target);
      const to = layerOf(target);
      if (!to) continue;
      if (to.layer > from.layer) {
        problems.push(`${file} (${from.name}) imports ${target} (${to.name}): an upward import`);
      } else if (from.layer === 3 && to.layer === 3 && unitOf(file) !== unitOf(target)) {
        problems.push(
          `${file} imports ${target}: domain modules do not import one another (share it through core/)`,
        );
      } else if (to.name === 'cri' && from.name !== 'root' && from.name !== 'cri') {
        problems.push(`${file} imports ${target}: src/cri/ is imported by cli.ts and daemon.ts only`);
      }
    }
    edges.set(file, targets);
  }
  for (const cycle of cyclesOf(edges)) problems.push(`import cycle: ${cycle.join(' -> ')}`);
  return problems;
}

/** Strongly connected components with more than one file (or a self-import), as cycles. */
function cyclesOf(edges: Map<string, string[]>): string[][] {
  let index = 0;
  const indices = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  const visit = (v: string) => {
    indices.set(v, index);
    low.set(v, index);
    index += 1;
    stack.push(v);
    onStack.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!indices.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, indices.get(w)!));
      }
    }
    if (low.get(v) === indices.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1 || (edges.get(v) ?? []).includes(v)) cycles.push(component.sort());
    }
  };
  for (const v of edges.keys()) if (!indices.has(v)) visit(v);
  return cycles;
}

function sourceFiles(dir: string, base = dir): SourceFile[] {
  const out: SourceFile[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    const rel = path.relative(base, full).split(path.sep).join('/');
    if (entry.isDirectory()) {
      if (rel === 'api/generated') continue;
      out.push(...sourceFiles(full, base));
    } else if (entry.name.endsWith('.ts')) {
      out.push({ file: rel, text: readFileSync(full, 'utf8') });
    }
  }
  return out;
}

describe('the layer rule of src/', () => {
  it('holds: no upward import, no import between domain modules, no cycle, processes only from src/os/', () => {
    const files = sourceFiles(SRC);
    expect(files.length).toBeGreaterThan(100);
    expect(layerViolations(files)).toEqual([]);
  });

  it('the checker finds each kind of violation in a made-up tree', () => {
    const tree: SourceFile[] = [
      { file: 'core/a.ts', text: "import { x } from '../container/b.js';" },
      {
        file: 'container/b.ts',
        text: "import type { Y } from '../image/c.js';\nimport { spawn } from 'node:child_process';",
      },
      { file: 'image/c.ts', text: "export { z } from '../cri/edge.js';" },
      { file: 'cri/edge.ts', text: "import { e } from '../errors.js';" },
      { file: 'errors.ts', text: '' },
      { file: 'os/p.ts', text: "import { q } from './q.js';\nimport { execa } from 'execa';" },
      { file: 'os/q.ts', text: "import { p } from './p.js';" },
      { file: 'os/fine.ts', text: "import { e } from '../errors.js';" },
      { file: 'weird/w.ts', text: '' },
    ];
    const problems = layerViolations(tree);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/core\/a\.ts \(core\) imports container\/b\.ts \(domain\): an upward import/),
        expect.stringMatching(/container\/b\.ts imports image\/c\.ts: domain modules do not import/),
        expect.stringMatching(/container\/b\.ts: imports node:child_process/),
        expect.stringMatching(/image\/c\.ts \(domain\) imports cri\/edge\.ts \(cri\): an upward import/),
        expect.stringMatching(/import cycle: os\/p\.ts -> os\/q\.ts/),
        expect.stringMatching(/weird\/w\.ts: not in any layer/),
      ]),
    );
    expect(problems.some((p) => p.startsWith('os/p.ts: imports execa'))).toBe(false);
    expect(problems.some((p) => p.includes('os/fine.ts'))).toBe(false);
  });
});
