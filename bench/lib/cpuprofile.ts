// Summarises a V8 .cpuprofile (as written by `node --cpu-prof`): self time per function and
// per file, heaviest first. Run directly: node bench/lib/cpuprofile.ts FILE.cpuprofile [TOP]
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}

/** CpuProfile is the part of the .cpuprofile format this summary reads. */
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

/** SelfTime is the time spent in one function (or file) itself, not in what it called. */
export interface SelfTime {
  name: string;
  location: string;
  ms: number;
  percent: number;
  /** callers are the JavaScript frames that called it, heaviest first (functions only). */
  callers?: { name: string; percent: number }[];
}

/** ProfileSummary is a profile's self time by function and by file, idle time left out. */
export interface ProfileSummary {
  totalMs: number;
  idleMs: number;
  functions: SelfTime[];
  files: SelfTime[];
  /** project is the total (self plus callees) time of the project's own functions (src/). */
  project: SelfTime[];
}

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

function nameOf(frame: CallFrame): string {
  return frame.functionName || '(anonymous)';
}

function location(frame: CallFrame): string {
  if (frame.url === '') return '(native)';
  let file = frame.url.startsWith('file://') ? fileURLToPath(frame.url) : frame.url;
  if (file.startsWith(ROOT)) file = relative(ROOT, file);
  return file;
}

/** summarize attributes each sample's time to the function it was taken in. */
export function summarize(profile: CpuProfile): ProfileSummary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const node of profile.nodes) {
    byId.set(node.id, node);
    for (const child of node.children ?? []) parent.set(child, node.id);
  }
  const selfUs = new Map<number, number>();
  const samples = profile.samples ?? [];
  const deltas = profile.timeDeltas ?? [];
  if (samples.length > 0 && deltas.length === samples.length) {
    // timeDeltas[i] is the time from sample i-1 to sample i, so sample i's own duration is the
    // next delta; the last sample gets the mean interval.
    const mean = (profile.endTime - profile.startTime) / samples.length;
    for (let i = 0; i < samples.length; i++) {
      const us = i + 1 < deltas.length ? deltas[i + 1] : mean;
      selfUs.set(samples[i], (selfUs.get(samples[i]) ?? 0) + Math.max(0, us));
    }
  } else {
    const total = profile.endTime - profile.startTime;
    const hits = profile.nodes.reduce((n, node) => n + (node.hitCount ?? 0), 0) || 1;
    for (const node of profile.nodes) selfUs.set(node.id, (node.hitCount ?? 0) / hits * total);
  }
  let totalUs = 0;
  let idleUs = 0;
  const fns = new Map<string, { name: string; location: string; us: number;
    callers: Map<string, number> }>();
  const files = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const node = byId.get(id);
    if (!node) continue;
    const f = node.callFrame;
    // Waiting for I/O is not work; percentages are of the time the process was busy.
    if (f.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    totalUs += us;
    const loc = location(f);
    const where = f.url === '' ? loc : `${loc}:${f.lineNumber + 1}`;
    const name = f.functionName || '(anonymous)';
    const key = `${name} ${where}`;
    const entry = fns.get(key) ?? { name, location: where, us: 0, callers: new Map() };
    entry.us += us;
    fns.set(key, entry);
    const caller = callerOf(id, parent, byId);
    entry.callers.set(caller, (entry.callers.get(caller) ?? 0) + us);
    const fileKey = f.url === '' ? name : loc;
    files.set(fileKey, (files.get(fileKey) ?? 0) + us);
  }
  const pct = (us: number) => (totalUs > 0 ? (us / totalUs) * 100 : 0);
  const project = new Map<string, { name: string; location: string; us: number }>();
  for (const [id, us] of selfUs) {
    if (byId.get(id)?.callFrame.functionName === '(idle)') continue;
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const f = byId.get(at)?.callFrame;
      if (!f || !location(f).startsWith('src/')) continue;
      const where = `${location(f)}:${f.lineNumber + 1}`;
      const key = `${nameOf(f)} ${where}`;
      // A recursive function counts once per sample.
      if (seen.has(key)) continue;
      seen.add(key);
      const entry = project.get(key) ?? { name: nameOf(f), location: where, us: 0 };
      entry.us += us;
      project.set(key, entry);
    }
  }
  return {
    totalMs: totalUs / 1000,
    idleMs: idleUs / 1000,
    functions: [...fns.values()].sort((a, b) => b.us - a.us).map((e) => ({
      name: e.name, location: e.location, ms: e.us / 1000, percent: pct(e.us),
      callers: [...e.callers.entries()].sort((a, b) => b[1] - a[1]).slice(0, 3)
        .map(([name, us]) => ({ name, percent: (us / e.us) * 100 })),
    })),
    files: [...files.entries()].sort((a, b) => b[1] - a[1])
      .map(([file, us]) => ({ name: file, location: file, ms: us / 1000, percent: pct(us) })),
    project: [...project.values()].sort((a, b) => b.us - a.us)
      .map((e) => ({ name: e.name, location: e.location, ms: e.us / 1000, percent: pct(e.us) })),
  };
}

// The nearest caller with a location is named, so that a native function (writeBuffer, say)
// is told apart by who called it: a TLS socket or a TCP one.
function callerOf(id: number, parent: Map<number, number>, byId: Map<number, ProfileNode>):
  string {
  let at = parent.get(id);
  const chain: string[] = [];
  while (at !== undefined && chain.length < 3) {
    const f = byId.get(at)?.callFrame;
    if (!f || f.functionName === '(root)') break;
    if (f.url !== '') chain.push(`${nameOf(f)} ${location(f)}:${f.lineNumber + 1}`);
    at = parent.get(at);
  }
  return chain.length === 0 ? '(top)' : chain.join(' < ');
}

/** formatSummary renders the top entries of a summary as text. */
export function formatSummary(summary: ProfileSummary, top = 25): string {
  const row = (e: SelfTime, withLocation: boolean) =>
    `${e.percent.toFixed(1).padStart(5)}%  ${e.ms.toFixed(0).padStart(7)} ms  ${e.name}` +
    (withLocation ? `  ${e.location}` : '');
  return [
    `busy: ${summary.totalMs.toFixed(0)} ms sampled (idle ${summary.idleMs.toFixed(0)} ms ` +
      'left out; percentages are of busy time)',
    '',
    `top ${top} functions by self time:`,
    ...summary.functions.slice(0, top).flatMap((e, i) => [
      row(e, true),
      // Callers are shown for the heaviest few, where they tell the most.
      ...(i < 12 ? (e.callers ?? []).map((c) =>
        `${''.padStart(21)}${c.percent.toFixed(0).padStart(3)}% from ${c.name}`) : []),
    ]),
    '',
    'self time by file:',
    ...summary.files.slice(0, 15).map((e) => row(e, false)),
    '',
    'total time (self and callees) of the project\'s functions:',
    ...summary.project.slice(0, 15).map((e) => row(e, true)),
  ].join('\n');
}

if (import.meta.main) {
  const [file, top] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: node bench/lib/cpuprofile.ts FILE.cpuprofile [TOP]\n');
    process.exit(2);
  }
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  process.stdout.write(formatSummary(summarize(profile), Number(top ?? 25)) + '\n');
}
