// `npm run bench`: the sidecar and a Go reference proxy measured side by side on loopback, in
// one run, with the same Go load client and the same Go gateway behind both. Prints a table
// (sidecar, Go, ratio, budget) and its markdown form, and writes the results as JSON.
//
// Usage: node bench/run.ts [--smoke] [--profile] [--only=GROUPS] [--out=FILE.json] [--help]
//   --smoke    tiny sizes, under a minute (also BENCH_SMOKE=1); results go to smoke.json
//   --profile  run the tunnel throughput lines with the sidecar under `node --cpu-prof` and
//              print the heaviest functions; results go to profile.json
//   --node-flags  extra flags for the sidecar's node (e.g. "--max-semi-space-size=64"), for
//              tuning experiments; they are recorded in the results
//   --sidecar-main  run the sidecar from another tree's src/main.ts (A/B trials of a patch)
//   --sidecar-env  NAME=VALUE: a setting for the sidecar (A/B trials of a setting, e.g.
//              GATEWAY_BUSY_POLL_US=0), repeatable; recorded in the results and the notes
//   --keep     keep the work directory (the sidecar's logs) after the run
//   --reps     turns per line, for all lines (default 7, 3 for the small-writes lines, 1 with
//              --smoke): more for A/B trials of tails
//   --only     comma-separated groups (tunnel, direct, log, slow, rtt, trickle, idle, accept) or
//              throughput line ids (tunnel-up-1, tunnel-down-8, direct-up-1, ...)
import { execFileSync } from 'node:child_process';
import {
  mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync,
} from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { performance } from 'node:perf_hooks';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { LocalCluster } from '../src/demo/cluster.ts';
import { describeSettings } from '../src/settings.ts';
import { formatSummary, summarize, type CpuProfile } from './lib/cpuprofile.ts';
import {
  ProcessGroup, RssSampler, cpuSince, cpuTimes, rssBytes, type Proc, type ProcEvent,
} from './lib/procs.ts';
import {
  NOFILE, ROOT, goBin, sleep, startGateway, startReference, startSidecar, waitFor, type Side,
} from './lib/sides.ts';
import {
  makeLine, markdownTable, median, textTable, type LineResult, type LineSpec,
} from './lib/table.ts';

/** Sizes are the amounts of work of one run. */
interface Sizes {
  throughputBytes: number;
  reps: number;
  rttSamples: number;
  rttWarmup: number;
  /** trickleEveryUs are the paces of the small-writes lines, one line each. */
  trickleEveryUs: number[];
  trickleSeconds: number;
  trickleReps: number;
  logBytes: number;
  slowRate: number;
  slowSeconds: number;
  idleTunnels: number;
  acceptTunnels: number;
  acceptConcurrency: number;
  settleMs: number;
}

const MiB = 1024 * 1024;

// Full sizes take about 6 minutes on 2 cores: each throughput figure is the median of seven
// 768 MiB transfers (1–4 s each), long enough that start-up is noise, and seven runs because
// the machine is shared and single runs vary by ±20 % (the ratio is the median of the seven
// turns' ratios; see makeLine).
const FULL: Sizes = {
  throughputBytes: 768 * MiB,
  reps: 7,
  rttSamples: 20_000,
  rttWarmup: 1000,
  trickleEveryUs: [50, 150, 300],
  trickleSeconds: 4,
  trickleReps: 3,
  logBytes: 1024 * MiB,
  slowRate: 1_000_000,
  slowSeconds: 20,
  idleTunnels: 10_000,
  acceptTunnels: 3000,
  acceptConcurrency: 32,
  settleMs: 3000,
};

const SMOKE: Sizes = {
  throughputBytes: 4 * MiB,
  reps: 1,
  rttSamples: 200,
  rttWarmup: 20,
  trickleEveryUs: [150],
  trickleSeconds: 0.5,
  trickleReps: 1,
  logBytes: 8 * MiB,
  slowRate: 1_000_000,
  slowSeconds: 2,
  idleTunnels: 50,
  acceptTunnels: 50,
  acceptConcurrency: 8,
  settleMs: 200,
};

const GROUPS = ['tunnel', 'direct', 'log', 'slow', 'rtt', 'trickle', 'idle', 'accept'] as const;
type Group = typeof GROUPS[number];

// Throughput lines may also be picked one by one, e.g. to profile one direction.
const THROUGHPUT_IDS = ['tunnel-up-1', 'tunnel-up-8', 'tunnel-down-1', 'tunnel-down-8',
  'direct-up-1', 'direct-down-1'];

const TUNNEL = 'zzzzz-dz642-benchtunnel0001';
const DIRECT = 'zzzzz-dz642-benchdirect0001';
// FakeArvados names a container's requests after it: xvhdp + its id's first 14 chars + index.
const TUNNEL_CR = 'zzzzz-xvhdp-benchtunnel0000';

interface Options {
  smoke: boolean;
  profile: boolean;
  groups: Set<Group>;
  /** lineIds narrows the throughput groups to these lines; empty means all of them. */
  lineIds: Set<string>;
  nodeFlags: string[];
  sidecarMain: string;
  sidecarEnv: Record<string, string>;
  keep: boolean;
  /** reps overrides the sizes' number of turns per line. */
  reps: number | undefined;
  out: string;
}

/** UsageError is a mistake in the command line: it is reported without a stack trace. */
class UsageError extends Error {}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      smoke: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      only: { type: 'string' },
      out: { type: 'string' },
      'node-flags': { type: 'string' },
      keep: { type: 'boolean', default: false },
      reps: { type: 'string' },
      'sidecar-main': { type: 'string' },
      'sidecar-env': { type: 'string', multiple: true },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(usage());
    process.exit(0);
  }
  const smoke = values.smoke || process.env.BENCH_SMOKE === '1';
  const profile = values.profile;
  let groups = new Set<Group>(profile ? ['tunnel'] : GROUPS);
  const lineIds = new Set<string>();
  if (values.only !== undefined) {
    const asked = values.only.split(',').map((s) => s.trim()).filter(Boolean);
    const known = [...GROUPS, ...THROUGHPUT_IDS];
    const unknown = asked.filter((g) => !known.includes(g));
    if (unknown.length > 0) {
      throw new UsageError(
        `unknown group or line ${unknown.join(', ')}; known: ${known.join(', ')}`);
    }
    groups = new Set();
    for (const a of asked) {
      if (THROUGHPUT_IDS.includes(a)) {
        lineIds.add(a);
        groups.add(a.split('-')[0] as Group);
      } else {
        groups.add(a as Group);
      }
    }
  }
  const name = profile ? 'profile.json' : smoke ? 'smoke.json' : 'latest.json';
  const nodeFlags = (values['node-flags'] ?? '').split(/\s+/).filter(Boolean);
  let reps: number | undefined;
  if (values.reps !== undefined) {
    reps = /^[0-9]+$/.test(values.reps) ? Number(values.reps) : Number.NaN;
    if (!(reps >= 1 && reps <= 100)) {
      throw new UsageError(`--reps must be a whole number from 1 to 100, not ${values.reps}`);
    }
  }
  const sidecarMain = values['sidecar-main'] ?? join(ROOT, 'src', 'main.ts');
  const sidecarEnv: Record<string, string> = {};
  const settings = new Set(describeSettings().map((d) => d.env));
  for (const pair of values['sidecar-env'] ?? []) {
    const m = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(pair);
    if (!m) throw new UsageError(`--sidecar-env wants NAME=VALUE, not ${pair}`);
    // The sidecar ignores variables it does not know: a misspelt one would measure the default.
    if (!settings.has(m[1])) {
      throw new UsageError(`--sidecar-env: ${m[1]} is not a sidecar setting`);
    }
    sidecarEnv[m[1]] = m[2];
  }
  return { smoke, profile, groups, lineIds, nodeFlags, sidecarMain, sidecarEnv, keep: values.keep,
    reps, out: values.out ?? join(ROOT, 'bench', 'results', name) };
}

// The usage is this file's opening comment, from its Usage line on.
function usage(): string {
  const text = readFileSync(new URL(import.meta.url), 'utf8');
  const lines = text.split('\n');
  const from = lines.findIndex((l) => l.startsWith('// Usage:'));
  const to = lines.findIndex((l, i) => i > from && !l.startsWith('//'));
  return lines.slice(from, to).map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n';
}

function say(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

function mb(n: number): string {
  return n >= 1024 * MiB ? `${n / (1024 * MiB)} GiB` : `${Math.round(n / MiB)} MiB`;
}

/** Bench holds the state of one run. */
class Bench {
  readonly opts: Options;
  readonly sizes: Sizes;
  readonly group = new ProcessGroup();
  readonly dir = mkdtempSync(join(tmpdir(), 'gateway-bench-'));
  readonly cluster = new LocalCluster();
  readonly lines: LineResult[] = [];
  readonly limits: Record<string, number | undefined> = {};
  profileDir: string | undefined;
  token = '';
  sidecar!: Side;
  go!: Side;
  directAddress = '';
  /** gateways are the bench gateways' processes, whose CPU counts towards each line's cost. */
  gateways: Proc[] = [];

  constructor(opts: Options) {
    this.opts = opts;
    const sizes = opts.smoke ? SMOKE : FULL;
    this.sizes = opts.reps === undefined ? sizes
      : { ...sizes, reps: opts.reps, trickleReps: opts.reps };
  }

  get root(): string {
    return this.cluster.rootToken;
  }

  async setUp(): Promise<void> {
    await this.cluster.start();
    const admin = this.cluster.api.addUser('zzzzz-tpzed-benchadmin00001', true);
    this.token = admin.token;
    const tunnelled = this.cluster.api.addContainer(TUNNEL, 'Running', [admin]);
    const direct = this.cluster.api.addContainer(DIRECT, 'Running', [admin]);
    // A session already recorded as started costs no PUT per upgrade, as after the first one.
    tunnelled.interactive_session_started = true;
    direct.interactive_session_started = true;

    const gw = await startGateway(this.group, 'gateway-direct', this.root, { listen: true });
    this.gateways.push(gw.proc);
    this.directAddress = gw.directAddress;
    direct.gateway_address = gw.directAddress;
    await this.startProxies();
    tunnelled.gateway_address = `tunnel ${this.sidecar.url}/`;
    const tunnelGw = await startGateway(this.group, 'gateway-tunnel', this.root, {
      tunnels: [{ url: this.sidecar.url, uuid: TUNNEL }, { url: this.go.url, uuid: TUNNEL }],
    });
    this.gateways.push(tunnelGw.proc);
    await waitFor(async () => (await this.sidecar.heldTunnels()) === 1 &&
      (await this.go.heldTunnels()) === 1, 10_000, 'the gateway tunnels');
  }

  async startProxies(): Promise<void> {
    if (this.opts.profile) this.profileDir = mkdtempSync(join(tmpdir(), 'gateway-cpuprof-'));
    this.sidecar = await startSidecar(this.group, {
      cluster: this.cluster, dir: this.dir, profileDir: this.profileDir, logLevel: 'info',
      nodeFlags: this.opts.nodeFlags, main: this.opts.sidecarMain, env: this.opts.sidecarEnv,
    });
    this.go = await startReference(this.group, this.root, { [DIRECT]: this.directAddress });
    this.limits.sidecar = this.sidecar.proc.openFilesLimit();
    this.limits.go = this.go.proc.openFilesLimit();
  }

  /** restartProxies gives the memory lines fresh processes, as after a pod restart. */
  async restartProxies(): Promise<void> {
    await this.sidecar.proc.stop();
    await this.go.proc.stop();
    await this.startProxies();
  }

  async tearDown(): Promise<void> {
    await this.group.dispose();
    await this.cluster.stop().catch(() => {});
    if (this.opts.keep) say(`work directory kept: ${this.dir}`);
    else rmSync(this.dir, { recursive: true, force: true });
  }

  sides(): Side[] {
    return [this.sidecar, this.go];
  }

  /** client runs bench-client to its result event. */
  async client(args: string[], timeoutMs: number): Promise<ProcEvent> {
    const proc = this.group.spawn('bench-client', goBin('bench-client'), args);
    try {
      const result = await proc.next('result', timeoutMs);
      await proc.exited;
      return result;
    } finally {
      await proc.stop();
    }
  }

  record(spec: LineSpec, sidecar: number[], go: number[], note?: string, detail?: object): void {
    const line = makeLine(spec, sidecar, go, note);
    if (detail !== undefined) line.detail = detail;
    this.lines.push(line);
    const ratio = line.ratio === null ? '' : ` (${line.ratio.toFixed(2)}×)`;
    say(`${line.title}: sidecar ${line.sidecar.toFixed(1)} ${line.unit}, ` +
      `go ${line.go.toFixed(1)} ${line.unit}${ratio}`);
  }

  async throughput(spec: LineSpec, uuid: string, streams: number, dir: 'up' | 'down') {
    const ids = this.opts.lineIds;
    if (ids.size > 0 && !ids.has(spec.id)) return;
    const bytes = this.sizes.throughputBytes;
    const samples: Record<string, number[]> = { sidecar: [], go: [] };
    const cpu: Record<string, number[]> = { sidecar: [], go: [] };
    const sys: Record<string, number[]> = { sidecar: [], go: [] };
    // The client's and the gateway's CPU per GB: the same programs on both sides, but what the
    // proxy sends them (frame, record and write sizes) can make them work harder.
    const peers: Record<string, number[]> = { sidecar: [], go: [] };
    const clients: Record<string, number[]> = { sidecar: [], go: [] };
    for (let rep = 0; rep < this.sizes.reps; rep++) {
      for (const side of this.sides()) {
        const cpu0 = cpuTimes(side.proc.pid);
        const gw0 = this.gateways.map((g) => cpuTimes(g.pid));
        const r = await this.client(['throughput', '-url', side.url, '-uuid', uuid,
          '-token', this.token, '-streams', String(streams), '-bytes', String(bytes),
          '-dir', dir], timeoutFor(bytes));
        samples[side.name].push(Number(r.mbps));
        const used = cpuSince(side.proc.pid, cpu0);
        const gwUsed = this.gateways.reduce((t, g, i) => t + cpuSince(g.pid, gw0[i]).total, 0);
        const gb = Number(r.bytes) / 1e9;
        cpu[side.name].push(used.total / gb);
        sys[side.name].push(used.sys / gb);
        peers[side.name].push((gwUsed + Number(r.cpu_s)) / gb);
        clients[side.name].push(Number(r.cpu_s) / gb);
      }
    }
    this.record(spec, samples.sidecar, samples.go);
    // CPU per byte is steadier than MB/s on a shared machine: it does not depend on how much
    // of the cores the other processes left to the proxy. /proc counts in 10 ms ticks, so the
    // smoke run's few MiB are too little to show it.
    if (bytes < 64 * MiB) return;
    this.record({
      id: `cpu-${spec.id}`, title: '↳ proxy CPU time per GB moved',
      unit: 'CPU s/GB', better: 'lower',
    }, cpu.sidecar, cpu.go, undefined, {
      sidecar: { sys_s_per_gb: median(sys.sidecar), peers_s_per_gb: median(peers.sidecar),
        client_s_per_gb: median(clients.sidecar) },
      go: { sys_s_per_gb: median(sys.go), peers_s_per_gb: median(peers.go),
        client_s_per_gb: median(clients.go) },
    });
    say(`  client + gateway CPU per GB: sidecar's ${median(peers.sidecar).toFixed(2)} s ` +
      `(client ${median(clients.sidecar).toFixed(2)}), go's ${median(peers.go).toFixed(2)} s ` +
      `(client ${median(clients.go).toFixed(2)})`);
  }

  /** warmUp moves some bytes each way on each side, untimed, so the first timed run of a path
   * does not pay for its JIT compilation. */
  async warmUp(uuid: string): Promise<void> {
    const bytes = Math.min(this.sizes.throughputBytes, 64 * MiB);
    for (const side of this.sides()) {
      for (const dir of ['up', 'down']) {
        await this.client(['throughput', '-url', side.url, '-uuid', uuid, '-token', this.token,
          '-streams', '1', '-bytes', String(bytes), '-dir', dir], timeoutFor(bytes));
      }
    }
  }

  async runTunnel(): Promise<void> {
    await this.warmUp(TUNNEL);
    const size = mb(this.sizes.throughputBytes);
    for (const dir of ['up', 'down'] as const) {
      for (const streams of [1, 8]) {
        const way = dir === 'up' ? 'client→gateway' : 'gateway→client';
        await this.throughput({
          id: `tunnel-${dir}-${streams}`,
          title: `Tunnel SSH ${way}, ${streams} stream${streams > 1 ? 's' : ''} (${size})`,
          unit: 'MB/s', better: 'higher', budget: { op: '>=', value: 1.2, of: 'ratio' },
        }, TUNNEL, streams, dir);
      }
    }
  }

  async runDirect(): Promise<void> {
    await this.warmUp(DIRECT);
    const size = mb(this.sizes.throughputBytes);
    for (const dir of ['up', 'down'] as const) {
      const way = dir === 'up' ? 'client→gateway' : 'gateway→client';
      await this.throughput({
        id: `direct-${dir}-1`, title: `Direct SSH ${way}, 1 stream (${size})`,
        unit: 'MB/s', better: 'higher', budget: { op: '>=', value: 1, of: 'ratio' },
      }, DIRECT, 1, dir);
    }
  }

  logUrl(side: Side, bytes: number): string {
    return `${side.url}/arvados/v1/container_requests/${TUNNEL_CR}/log/${TUNNEL}/gen-${bytes}`;
  }

  async runLog(): Promise<void> {
    const bytes = this.sizes.logBytes;
    const samples: Record<string, number[]> = { sidecar: [], go: [] };
    for (let rep = 0; rep < this.sizes.reps; rep++) {
      for (const side of this.sides()) {
        const r = await this.client(['log', '-url', this.logUrl(side, bytes),
          '-token', this.token], timeoutFor(bytes));
        if (Number(r.bytes) !== bytes) throw new Error(`${side.name}: log download was short`);
        samples[side.name].push(Number(r.mbps));
      }
    }
    this.record({
      id: 'log-download', title: `Log download through tunnel (${mb(bytes)})`,
      unit: 'MB/s', better: 'higher', budget: { op: '>=', value: 1, of: 'ratio' },
    }, samples.sidecar, samples.go);
  }

  async runSlowReader(): Promise<void> {
    const { slowRate, slowSeconds } = this.sizes;
    const growth: Record<string, number[]> = { sidecar: [], go: [] };
    const read: string[] = [];
    const detail: Record<string, object> = {};
    for (const side of this.sides()) {
      // One small download first, so that code and buffers every transfer needs are in place
      // before the baseline is taken.
      await this.client(['log', '-url', this.logUrl(side, MiB), '-token', this.token], 60_000);
      await sleep(this.sizes.settleMs);
      const before = rssBytes(side.proc.pid);
      const sampler = new RssSampler(side.proc.pid);
      const r = await this.client(['log', '-url', this.logUrl(side, 1024 * MiB),
        '-token', this.token, '-rate', String(slowRate), '-duration', `${slowSeconds}s`],
      (slowSeconds + 60) * 1000);
      const max = sampler.stop();
      growth[side.name].push(Math.max(0, max - before) / MiB);
      detail[side.name] = { rss_before_mib: before / MiB, rss_peak_mib: max / MiB,
        bytes_read: Number(r.bytes), rss_samples: sampler.samples,
        rss_per_second_mib: sampler.series };
      read.push(`${side.name} read ${(Number(r.bytes) / 1e6).toFixed(1)} MB, ` +
        `RSS ${(before / MiB).toFixed(0)}→${(max / MiB).toFixed(0)} MiB`);
    }
    this.record({
      id: 'log-slow-rss',
      title: `Log read at ${slowRate / 1e6} MB/s for ${slowSeconds} s: RSS growth`,
      unit: 'MiB', better: 'lower', budget: { op: '<=', value: 64 },
    }, growth.sidecar, growth.go, read.join('; '), detail);
  }

  async runRtt(): Promise<void> {
    const p50: Record<string, number[]> = { sidecar: [], go: [] };
    const p99: Record<string, number[]> = { sidecar: [], go: [] };
    const cpu: Record<string, number[]> = { sidecar: [], go: [] };
    const sys: Record<string, number[]> = { sidecar: [], go: [] };
    // Each run's other figures, for the JSON: the rest of its distribution (where a p99 comes
    // from) and, for the sidecar, the share of the run it spent busy polling.
    const perRun: Record<string, Record<string, number[]>> = { sidecar: {}, go: {} };
    const trips = this.sizes.rttSamples + this.sizes.rttWarmup;
    for (let rep = 0; rep < this.sizes.reps; rep++) {
      for (const side of this.sides()) {
        const cpu0 = cpuTimes(side.proc.pid);
        const poll0 = await side.pollSeconds?.();
        const t0 = performance.now();
        const r = await this.client(['rtt', '-url', side.url, '-uuid', TUNNEL,
          '-token', this.token, '-samples', String(this.sizes.rttSamples),
          '-warmup', String(this.sizes.rttWarmup), '-size', '64'], 120_000);
        const used = cpuSince(side.proc.pid, cpu0);
        if (poll0 !== undefined) {
          // The share of the run's time the sidecar's loop spent polling rather than asleep.
          const polled = (await side.pollSeconds!()) - poll0;
          (perRun.sidecar.poll_share ??= []).push(polled / ((performance.now() - t0) / 1000));
        }
        p50[side.name].push(Number(r.p50_us));
        p99[side.name].push(Number(r.p99_us));
        for (const key of ['p90_us', 'p999_us', 'max_us']) {
          (perRun[side.name][key] ??= []).push(Number(r[key]));
        }
        // The session's set-up and teardown are in this too; next to thousands of round trips
        // they are noise.
        cpu[side.name].push(used.total * 1e6 / trips);
        sys[side.name].push(used.sys * 1e6 / trips);
      }
    }
    const n = this.sizes.rttSamples.toLocaleString('en-US');
    this.record({ id: 'rtt-p50', title: `Round trip 64 B via tunnel, p50 (${n} samples)`,
      unit: 'µs', better: 'lower', budget: { op: '<=', value: 1, of: 'ratio' } },
    p50.sidecar, p50.go);
    this.record({ id: 'rtt-p99', title: `Round trip 64 B via tunnel, p99 (${n} samples)`,
      unit: 'µs', better: 'lower', budget: { op: '<=', value: 1, of: 'ratio' } },
    p99.sidecar, p99.go, undefined, perRun);
    // Like the throughput lines' CPU figures: /proc's 10 ms ticks need thousands of trips.
    if (trips < 5000) return;
    this.record({ id: 'cpu-rtt', title: '↳ proxy CPU time per round trip',
      unit: 'CPU µs', better: 'lower' }, cpu.sidecar, cpu.go, undefined, {
      sidecar: { sys_us_per_trip: median(sys.sidecar) }, go: { sys_us_per_trip: median(sys.go) },
    });
  }

  /**
   * runTrickle measures what small messages at a steady pace cost each proxy in CPU: the
   * price of the sidecar's busy polling (which opens a window after each small read), next
   * to what Go's runtime spends on the same traffic. These lines have no budget.
   */
  async runTrickle(): Promise<void> {
    const { trickleSeconds, trickleReps } = this.sizes;
    for (const every of this.sizes.trickleEveryUs) {
      const load: Record<string, number[]> = { sidecar: [], go: [] };
      for (let rep = 0; rep < trickleReps; rep++) {
        for (const side of this.sides()) {
          const cpu0 = cpuTimes(side.proc.pid);
          const r = await this.client(['trickle', '-url', side.url, '-uuid', TUNNEL,
            '-token', this.token, '-size', '12', '-every', `${every}us`,
            '-duration', `${trickleSeconds * 1000}ms`], (trickleSeconds + 60) * 1000);
          const used = cpuSince(side.proc.pid, cpu0);
          // The upgrade and the stream's set-up are in this too: a few ms next to seconds.
          load[side.name].push(100 * used.total / Number(r.seconds));
        }
      }
      this.record({ id: `trickle-cpu-${every}`,
        title: `12 B every ${every} µs via tunnel: proxy CPU`, unit: '% core',
        better: 'lower' }, load.sidecar, load.go);
    }
  }

  /** openTunnels opens n tunnels to a side with the tunnels client and returns it. */
  async openTunnels(side: Side, n: number, concurrency: number, prefix: string, hold: boolean) {
    const proc = this.group.spawn('bench-client', goBin('bench-client'), ['tunnels',
      '-url', side.url, '-root-token', this.root, '-n', String(n),
      '-concurrency', String(concurrency), '-prefix', prefix, ...(hold ? ['-hold'] : [])],
    { nofile: NOFILE });
    const limit = proc.openFilesLimit();
    this.limits.client = limit;
    if (limit !== undefined && limit < n + 64) {
      await proc.stop();
      throw new Error(`the tunnel client may open only ${limit} files, fewer than ${n} ` +
        'tunnels need: raise the hard RLIMIT_NOFILE');
    }
    const up = await proc.next('tunnels_up', 300_000);
    return { proc, up };
  }

  async runIdle(): Promise<void> {
    const n = this.sizes.idleTunnels;
    for (const [name, limit] of Object.entries(this.limits)) {
      if (limit !== undefined && limit < n + 64) {
        throw new Error(`${name} may open only ${limit} files, too few for ${n} tunnels`);
      }
    }
    const rss: Record<string, number[]> = { sidecar: [], go: [] };
    const parts: string[] = [];
    const detail: Record<string, object> = {};
    for (const side of this.sides()) {
      const base = await side.heldTunnels();
      await sleep(this.sizes.settleMs);
      const before = rssBytes(side.proc.pid);
      const { proc } = await this.openTunnels(side, n, 64, 'zzzzz-dz642-idle', true);
      await waitFor(async () => (await side.heldTunnels()) === base + n, 60_000,
        `${side.name} to hold ${n} tunnels`);
      await sleep(this.sizes.settleMs);
      const sampler = new RssSampler(side.proc.pid);
      await sleep(Math.min(1000, this.sizes.settleMs));
      const held = sampler.stop();
      rss[side.name].push(held / MiB);
      detail[side.name] = { rss_before_mib: before / MiB, rss_held_mib: held / MiB,
        kib_per_tunnel: (held - before) / n / 1024 };
      parts.push(`${side.name} ${(before / MiB).toFixed(0)} MiB before, ` +
        `${((held - before) / n / 1024).toFixed(1)} KiB per tunnel`);
      proc.send('close');
      await proc.next('closed', 120_000);
      await proc.exited;
      await waitFor(async () => (await side.heldTunnels()) === base, 120_000,
        `${side.name} to let the tunnels go`);
    }
    this.record({
      id: 'idle-tunnels-rss', title: `${n.toLocaleString('en-US')} idle tunnels held: RSS`,
      unit: 'MiB', better: 'lower', budget: { op: '<=', value: 512 },
    }, rss.sidecar, rss.go, parts.join('; '), detail);
  }

  async runAccept(): Promise<void> {
    const { acceptTunnels: n, acceptConcurrency: c } = this.sizes;
    const rate: Record<string, number[]> = { sidecar: [], go: [] };
    for (let rep = 0; rep < this.sizes.reps; rep++) {
      for (const side of this.sides()) {
        const base = await side.heldTunnels();
        const { proc, up } = await this.openTunnels(side, n, c, `zzzzz-dz642-acc${rep}`, false);
        rate[side.name].push(Number(up.rate));
        await proc.exited;
        await waitFor(async () => (await side.heldTunnels()) === base, 120_000,
          `${side.name} to let the tunnels go`);
      }
    }
    this.record({
      id: 'accept-rate',
      title: `New tunnels accepted (${n.toLocaleString('en-US')}, ${c} at a time)`,
      unit: 'tunnels/s', better: 'higher', budget: { op: '>=', value: 500 },
    }, rate.sidecar, rate.go);
  }

  async run(): Promise<void> {
    const g = this.opts.groups;
    // The memory lines run on fresh processes: the slow reader first, the tunnel lines after
    // a restart, so that growth left by bulk transfers does not hide (or fake) their own.
    if (g.has('slow')) await this.runSlowReader();
    if (g.has('tunnel')) await this.runTunnel();
    if (g.has('direct')) await this.runDirect();
    if (g.has('log')) await this.runLog();
    if (g.has('rtt')) await this.runRtt();
    if (g.has('trickle')) await this.runTrickle();
    if (g.has('idle') || g.has('accept')) {
      await this.restartProxies();
      if (g.has('idle')) await this.runIdle();
      if (g.has('accept')) await this.runAccept();
    }
  }
}

/** timeoutFor allows a transfer to crawl at 5 MB/s before it counts as stuck. */
function timeoutFor(bytes: number): number {
  return Math.max(60_000, (bytes / 5e6) * 1000);
}

function goVersion(): string {
  try {
    return execFileSync('go', ['version'], { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

function standingNotes(b: Bench): string[] {
  const notes = [
    'Same machine, loopback only; client, proxy and gateway share the cores, so figures ' +
      'compare the two proxies rather than give absolute capacity. MB = 10^6 bytes.',
    'Throughput, log and RTT figures are medians of ' +
      `${b.sizes.reps} run(s) per side, sides interleaved; throughput after an untimed warm-up. ` +
      'Streams are upgraded before the clock starts. Where both sides have a sample per ' +
      'turn, the ratio is the median of the turns\' ratios (a sidecar run ÷ the Go run right ' +
      'after it), which the machine\'s drift in speed during a run does not move; the JSON ' +
      'also has the ratio of the medians (ratioOfMedians).',
    'Go ref: bench/go/reference-gateway (hashicorp/yamux default config, io.Copy splice, ' +
      'httputil.ReverseProxy for logs). It makes no Arvados API calls (tokens are only ' +
      'checked to be present); the sidecar asks the project\'s fake API on loopback (2 calls ' +
      'per SSH upgrade or log request) and logs at info level to a file.',
    'Gateway: bench/go/bench-gateway (crunch-run-like, yamux client, TLS with the HMAC ' +
      'proofs). It and the Go ref never set deadlines on yamux streams, so neither needs ' +
      'crunch-run\'s two-pipe workaround for Debian yamux\'s deadline bug.',
    'RSS is VmRSS from /proc, on freshly started proxies (the slow reader after one 1 MiB ' +
      'warm-up download); ' +
      `open-files limits: sidecar ${b.limits.sidecar ?? '?'}, Go ref ${b.limits.go ?? '?'}, ` +
      `tunnel client ${b.limits.client ?? '?'}.`,
  ];
  const env = Object.entries(b.opts.sidecarEnv).map(([k, v]) => `${k}=${v}`);
  if (env.length > 0) notes.push(`Sidecar settings for this run: ${env.join(', ')}.`);
  if (b.opts.smoke) {
    notes.push('Smoke sizes: they check that every line runs, and their figures and budget ' +
      'verdicts mean nothing; the CPU lines need full sizes and are left out.');
  }
  for (const line of b.lines) if (line.note) notes.push(`${line.title}: ${line.note}.`);
  return notes;
}

function profileSummary(dir: string): string {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) throw new Error(`no .cpuprofile was written in ${dir}`);
  const path = join(dir, files.sort().at(-1)!);
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  return `profile: ${path}\n${formatSummary(summarize(profile), 30)}`;
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const bench = new Bench(opts);
  const started = Date.now();
  let stopping = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    say(`${sig}: stopping every process started`);
    void bench.tearDown().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let summary = '';
  try {
    say(`${opts.smoke ? 'smoke' : opts.profile ? 'profile' : 'full'} run of ` +
      `${[...opts.groups].join(', ')}; work dir ${bench.dir}`);
    await bench.setUp();
    await bench.run();
    if (opts.profile) {
      await bench.sidecar.proc.stop(10_000);
      summary = profileSummary(bench.profileDir!);
    }
  } finally {
    await bench.tearDown();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
  const notes = standingNotes(bench);
  const judged = bench.lines.filter((l) => l.pass !== undefined);
  const missed = judged.filter((l) => !l.pass).map((l) => l.id);
  const results = {
    mode: opts.smoke ? 'smoke' : opts.profile ? 'profile' : 'full',
    started_at: new Date(started).toISOString(),
    duration_s: Math.round((Date.now() - started) / 100) / 10,
    machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model ?? '', kernel: release(),
      node: process.version, go: goVersion() },
    sizes: bench.sizes,
    sidecar_node_flags: opts.nodeFlags,
    sidecar_env: opts.sidecarEnv,
    sidecar_main: opts.sidecarMain,
    lines: bench.lines,
    budgets: { judged: judged.length, met: judged.length - missed.length, missed },
    notes,
    open_files_limits: bench.limits,
    processes: bench.group.started,
  };
  mkdirSync(dirname(opts.out), { recursive: true });
  writeFileSync(opts.out, JSON.stringify(results, null, 2) + '\n');
  const markdown = markdownTable(bench.lines, notes);
  writeFileSync(opts.out.replace(/\.json$/, '') + '.md', markdown + '\n');
  const verdict = `budgets: ${judged.length - missed.length} of ${judged.length} met` +
    (missed.length > 0 ? `; missed: ${missed.join(', ')}` : '');
  // A smoke run's figures mean nothing, so it offers no table for the README.
  const forReadme = opts.smoke ? '' : `Markdown for the README:\n\n${markdown}\n\n`;
  process.stdout.write(`\n${textTable(bench.lines)}\n\n${verdict}\n\n${forReadme}` +
    `results: ${opts.out}\n`);
  if (summary) {
    process.stdout.write(`\n${summary}\n`);
    writeFileSync(opts.out.replace(/\.json$/, '') + '-summary.txt', summary + '\n');
  }
}

try {
  await main();
} catch (err) {
  // A mistake in the command line is told plainly; anything else with where it happened.
  const mistake = err instanceof UsageError ||
    (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true;
  const text = err instanceof Error ? (mistake ? err.message : err.stack) : String(err);
  process.stderr.write(`bench: ${mistake ? '' : 'failed: '}${text}\n`);
  process.exitCode = 1;
}
