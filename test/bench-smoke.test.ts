// The benchmark suite in its smoke mode (tiny sizes), end to end: every line of the table is
// measured on both the sidecar and the Go reference, the results and the markdown table come
// out, and no process the run started is left behind. Timings and budgets are not checked.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildGo } from '../scripts/build-go.ts';
import { ROOT } from '../bench/lib/sides.ts';
import { formatSummary, summarize, type CpuProfile } from '../bench/lib/cpuprofile.ts';
import { makeLine, markdownTable, median, textTable } from '../bench/lib/table.ts';

const LINES = [
  'log-slow-rss',
  'tunnel-up-1', 'tunnel-up-8', 'tunnel-down-1', 'tunnel-down-8',
  'direct-up-1', 'direct-down-1',
  'log-download',
  'rtt-p50', 'rtt-p99',
  'trickle-cpu-150',
  'idle-tunnels-rss',
  'accept-rate',
];

// RSS growth may truly be nothing for a well-behaved proxy; every other figure is a rate, a
// time or a size that cannot be.
const MAY_BE_ZERO = new Set(['log-slow-rss']);

interface Results {
  mode: string;
  lines: { id: string; title: string; sidecar: number; go: number; ratio: number | null;
    detail?: Record<string, { rss_before_mib?: number }> }[];
  processes: { name: string; pid: number }[];
}

function run(args: string[]): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { cwd: ROOT, timeout: 150_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`${err.message}\nstderr:\n${stderr}`));
        else resolve({ stdout, stderr });
      });
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('bench smoke mode', () => {
  test('measures every line on both sides and stops every process it started',
    { timeout: 240_000 }, async () => {
      await buildGo(['bench-gateway', 'bench-client', 'reference-gateway']);
      const dir = mkdtempSync(join(tmpdir(), 'bench-smoke-'));
      try {
        const out = join(dir, 'smoke.json');
        const { stdout } = await run(['bench/run.ts', '--smoke', `--out=${out}`]);
        const results = JSON.parse(readFileSync(out, 'utf8')) as Results;
        const markdown = readFileSync(out.replace(/\.json$/, '.md'), 'utf8');
        assert.ok(markdown.startsWith('| Line |'));
        // Smoke figures mean nothing: the run offers no table for the README.
        assert.ok(!stdout.includes('Markdown for the README'), 'a smoke table offered');
        assert.equal(results.mode, 'smoke');
        assert.deepEqual(results.lines.map((l) => l.id), LINES);
        for (const line of results.lines) {
          for (const side of ['sidecar', 'go'] as const) {
            const value = line[side];
            assert.ok(Number.isFinite(value), `${line.id} ${side} is ${value}`);
            if (MAY_BE_ZERO.has(line.id)) assert.ok(value >= 0, `${line.id} ${side} < 0`);
            else assert.ok(value > 0, `${line.id} ${side} is ${value}, not positive`);
          }
          if (!MAY_BE_ZERO.has(line.id)) assert.ok((line.ratio ?? 0) > 0, `${line.id} ratio`);
          assert.ok(markdown.includes(`| ${line.title} |`), `markdown lacks ${line.id}`);
          assert.ok(stdout.includes(line.title), `the printed table lacks ${line.id}`);
        }
        const slow = results.lines.find((l) => l.id === 'log-slow-rss')!;
        assert.ok((slow.detail?.sidecar?.rss_before_mib ?? 0) > 0, 'sidecar RSS was not read');
        assert.ok((slow.detail?.go?.rss_before_mib ?? 0) > 0, 'Go RSS was not read');
        const names = new Set(results.processes.map((p) => p.name));
        for (const name of ['sidecar', 'reference-gateway', 'gateway-tunnel', 'bench-client']) {
          assert.ok(names.has(name), `no ${name} was started`);
        }
        const left = results.processes.filter((p) => alive(p.pid));
        assert.deepEqual(left, [], 'processes still running after the run');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

  test('an unknown group is refused before anything starts', async () => {
    await assert.rejects(run(['bench/run.ts', '--smoke', '--only=nonsense']),
      /unknown group or line nonsense/);
  });

  test('--reps takes only a whole number from 1 to 100, and a mistake gets no stack trace',
    async () => {
      for (const bad of ['0', '101', '0x3', '1e1', '2.5', 'abc']) {
        await assert.rejects(run(['bench/run.ts', '--smoke', `--reps=${bad}`]), (err: Error) => {
          assert.match(err.message, /bench: --reps must be a whole number from 1 to 100, not /);
          assert.doesNotMatch(err.message, /at parseOptions/);
          return true;
        });
      }
    });

  test('--help prints the usage and starts nothing', async () => {
    const { stdout } = await run(['bench/run.ts', '--help']);
    assert.match(stdout, /^Usage: node bench\/run\.ts/);
    assert.match(stdout, /--only {5}comma-separated groups/);
    assert.doesNotMatch(stdout, /budgets:/);
  });
});

describe('bench tables', () => {
  test('a line takes the median of each side and judges the budget', () => {
    const line = makeLine({ id: 'x', title: 'X', unit: 'MiB', better: 'lower',
      budget: { op: '<=', value: 64 } }, [70, 10, 30], [5, 20]);
    assert.equal(line.sidecar, 30);
    assert.equal(line.go, 12.5);
    assert.equal(line.ratio, 2.4);
    assert.equal(line.pass, true);
    assert.equal(median([4, 1, 3, 2]), 2.5);
  });

  test('a ratio budget judges sidecar ÷ Go, not the figure', () => {
    const spec = { id: 'r', title: 'R', unit: 'MB/s', better: 'higher' as const,
      budget: { op: '>=' as const, value: 1.2, of: 'ratio' as const } };
    const slow = makeLine(spec, [500], [450]);
    assert.equal(slow.pass, false);
    assert.match(markdownTable([slow]), /≥ 1\.20× Go MISSED/);
    assert.equal(makeLine(spec, [600], [450]).pass, true);
    assert.equal(makeLine(spec, [600], [0]).pass, false);
  });

  test('paired samples give the median of the pairs\' ratios, which drift does not move', () => {
    const spec = { id: 'p', title: 'P', unit: 'MB/s', better: 'higher' as const,
      budget: { op: '>=' as const, value: 1.2, of: 'ratio' as const } };
    // The machine slowed down for the first two pairs: both sides lost speed together.
    const line = makeLine(spec, [640, 650, 730, 710, 870], [480, 470, 650, 650, 640]);
    assert.equal(line.sidecar, 710);
    assert.equal(line.go, 640);
    assert.equal(line.ratioOfMedians, 710 / 640);
    // The pairs' ratios are 1.33, 1.38, 1.12, 1.09 and 1.36: the middle one is the first's.
    assert.equal(line.ratio, 640 / 480);
    assert.equal(line.pass, true);
    // Unpaired (different counts), the ratio is that of the medians.
    assert.equal(makeLine(spec, [640, 650, 730], [480, 470]).ratio, 650 / 475);
  });

  test('a Go figure of zero gives no ratio rather than infinity', () => {
    const line = makeLine({ id: 'y', title: 'Y', unit: 'MiB', better: 'lower' }, [1], [0]);
    assert.equal(line.ratio, null);
    assert.match(markdownTable([line]), /\| Y \| MiB \| 1\.00 \| 0\.00 \| — \| ↓ \|/);
    assert.match(textTable([line]), /—/);
  });
});

describe('cpu profile summary', () => {
  // main and its callee hot under the root, and idle: 100 ms per sample.
  const profile: CpuProfile = {
    startTime: 0,
    endTime: 600,
    nodes: [
      { id: 1, callFrame: { functionName: '(root)', url: '', lineNumber: -1, columnNumber: -1 },
        children: [2, 4] },
      { id: 2, callFrame: { functionName: 'main', url: 'file:///x/a.js', lineNumber: 9,
        columnNumber: 0 }, children: [3] },
      { id: 3, callFrame: { functionName: 'hot', url: 'file:///x/b.js', lineNumber: 0,
        columnNumber: 0 } },
      { id: 4, callFrame: { functionName: '(idle)', url: '', lineNumber: -1, columnNumber: -1 } },
    ],
    samples: [2, 3, 3, 3, 4, 4],
    timeDeltas: [0, 100, 100, 100, 100, 100],
  };

  test('self time is summed per function, idle left out, callers named', () => {
    const s = summarize(profile);
    assert.equal(s.idleMs, 0.2);
    assert.equal(s.totalMs, 0.4);
    assert.deepEqual(s.functions.map((f) => [f.name, f.location, Math.round(f.percent)]),
      [['hot', '/x/b.js:1', 75], ['main', '/x/a.js:10', 25]]);
    assert.equal(s.functions[0].callers?.[0].name, 'main /x/a.js:10');
    assert.match(formatSummary(s, 5), /75\.0%\s+0 ms\s+hot\s+\/x\/b\.js:1/);
  });
});
