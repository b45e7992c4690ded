/**
 * Runs the upstream conformance suite, critest (cri-tools v1.37.0), against a test daemon,
 * inside the node (`rootless-cri enter -- critest ...`) so the node's network, pid, ipc and
 * mount namespaces are critest's "host". Specs are selected by two files: critest-skips.txt
 * (what this host cannot support, with the reason) and critest-pending.txt (capabilities not
 * landed yet, with their issue). Results come from critest's JUnit report.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { TestDaemon } from '../harness/daemon.js';

/** The pinned critest: where deploy/install.sh builds it (its --print-critest). */
export const CRITEST =
  process.env.ROOTLESS_CRI_CRITEST ??
  (
    await execa('bash', [path.resolve(import.meta.dirname, '../../deploy/install.sh'), '--print-critest'])
  ).stdout.trim();

export interface SpecFilter {
  pattern: string;
  reason: string;
}

export async function readSpecFilters(file: string): Promise<SpecFilter[]> {
  const text = await readFile(file, 'utf8');
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const [pattern, reason] = l.split(/\s+#\s+/, 2);
      return { pattern: pattern!.trim(), reason: (reason ?? '').trim() };
    });
}

/** Go's RE2 and JavaScript agree on the small subset the filter files use (\s, |, literals). */
export function matchingFilter(spec: string, filters: SpecFilter[]): SpecFilter | undefined {
  return filters.find((f) => new RegExp(f.pattern).test(spec));
}

/** Every critest spec (benchmarks excluded), by its full text, from a dry run. */
export async function listCritestSpecs(): Promise<string[]> {
  const r = await execa(CRITEST, ['-ginkgo.dry-run', '-ginkgo.v', '-ginkgo.no-color'], {
    reject: false,
    cwd: '/tmp',
  });
  return String(r.stdout)
    .split('\n')
    .filter((l) => l.startsWith('[k8s.io] '))
    .map((l) => l.trim());
}

export type SpecOutcome = 'passed' | 'failed' | 'skipped';

export interface CritestResult {
  outcomes: Map<string, { outcome: SpecOutcome; message: string }>;
  exitCode: number;
  output: string;
}

function unescapeXml(s: string): string {
  return s
    .replace(/&#x([0-9a-fA-F]+);/g, (_, hex: string) => String.fromCodePoint(Number.parseInt(hex, 16)))
    .replace(/&#([0-9]+);/g, (_, dec: string) => String.fromCodePoint(Number(dec)))
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&amp;/g, '&');
}

/** Per-spec outcomes from a ginkgo JUnit report. */
export function parseJunit(xml: string): Map<string, { outcome: SpecOutcome; message: string }> {
  const outcomes = new Map<string, { outcome: SpecOutcome; message: string }>();
  const re = /<testcase\s+name="([^"]*)"[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g;
  for (const m of xml.matchAll(re)) {
    // ginkgo names JUnit cases "[It] <spec text>"; suite nodes are "[BeforeSuite]" etc.
    const name = unescapeXml(m[1]!).replace(/^\[It\]\s+/, '');
    if (!name.startsWith('[k8s.io]')) continue;
    const body = m[3] ?? '';
    let outcome: SpecOutcome = 'passed';
    let message = '';
    const failure = /<(failure|error)[^>]*message="([^"]*)"/.exec(body);
    if (failure) {
      outcome = 'failed';
      message = unescapeXml(failure[2]!);
    } else if (/<skipped/.test(body)) {
      outcome = 'skipped';
      message = unescapeXml(/<skipped[^>]*message="([^"]*)"/.exec(body)?.[1] ?? '');
    }
    outcomes.set(name, { outcome, message });
  }
  return outcomes;
}

export interface RunCritestOptions {
  skip: SpecFilter[];
  reportDir: string;
  extraArgs?: string[];
  timeoutMs?: number;
}

export async function runCritest(daemon: TestDaemon, options: RunCritestOptions): Promise<CritestResult> {
  const skipRegex = options.skip.map((f) => `(${f.pattern})`).join('|');
  const junit = path.join(options.reportDir, 'critest-junit.xml');
  const args = [
    CRITEST,
    `-runtime-endpoint=unix://${daemon.socket}`,
    `-image-endpoint=unix://${daemon.socket}`,
    `-report-dir=${options.reportDir}`,
    '-ginkgo.no-color',
    '-ginkgo.v',
    `-ginkgo.junit-report=${junit}`,
    ...(skipRegex ? [`-ginkgo.skip=${skipRegex}`] : []),
    ...(options.extraArgs ?? []),
  ];
  // A whole run takes about 2.5 minutes on the build machines: well past enter's default limit.
  const r = await daemon.enter(
    ['sh', '-c', 'cd /tmp && exec "$@"', 'sh', ...args],
    options.timeoutMs ?? 900_000,
  );
  const xml = await readFile(junit, 'utf8').catch(() => '');
  return { outcomes: parseJunit(xml), exitCode: r.exitCode, output: `${r.stdout}\n${r.stderr}` };
}
