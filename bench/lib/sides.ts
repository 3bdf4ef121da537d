// The two proxies under test and the Go programs around them. The sidecar runs as its own
// process (`node src/main.ts`, configured through its environment) in front of the project's
// fake Arvados API; the Go reference needs no API. Both are started with a raised
// RLIMIT_NOFILE so that they can hold 10,000 tunnels.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GO_BIN_DIR } from '../../scripts/build-go.ts';
import type { LocalCluster } from '../../src/demo/cluster.ts';
import { NODE_FLAGS } from '../../src/node-flags.ts';
import { type Proc, type ProcessGroup } from './procs.ts';

/** ROOT is the repository root. */
export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

/** NOFILE is the open-files limit asked for each proxy and tunnel client. */
export const NOFILE = 20_000;

/** Side is one proxy under test. */
export interface Side {
  name: 'sidecar' | 'go';
  proc: Proc;
  /** url is the front door's base URL, without a trailing slash. */
  url: string;
  /** heldTunnels asks the proxy how many tunnels it holds. */
  heldTunnels(): Promise<number>;
  /** pollSeconds is the sidecar's time spent busy polling so far (the Go ref has none). */
  pollSeconds?(): Promise<number>;
}

/** goBin is the path of a built bench program; it throws when it has not been built. */
export function goBin(name: string): string {
  const path = join(GO_BIN_DIR, name);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: run \`npm run build:go\` first`);
  }
  return path;
}

/** SidecarOptions says how to start the sidecar. */
export interface SidecarOptions {
  cluster: LocalCluster;
  dir: string;
  /** profileDir turns on `node --cpu-prof`, writing the profile there at exit. */
  profileDir?: string;
  logLevel: string;
  /** nodeFlags are extra flags for node, for tuning experiments. */
  nodeFlags?: string[];
  /** main is the entry file to run (default this tree's src/main.ts). */
  main?: string;
  /** env holds more settings for the sidecar, for A/B trials; they win over the bench's. */
  env?: Record<string, string>;
}

let sidecars = 0;

/** startSidecar starts `node src/main.ts` and waits until it is ready. */
export async function startSidecar(group: ProcessGroup, opts: SidecarOptions): Promise<Side> {
  const logFile = join(opts.dir, `sidecar-${++sidecars}.log`);
  // Started as the Dockerfile starts it, with the tuning experiment's flags after.
  const args = [...NODE_FLAGS, ...(opts.nodeFlags ?? [])];
  if (opts.profileDir !== undefined) {
    args.push('--cpu-prof', `--cpu-prof-dir=${opts.profileDir}`);
  }
  args.push(opts.main ?? join(ROOT, 'src', 'main.ts'));
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    GATEWAY_LISTEN: '127.0.0.1:0',
    GATEWAY_ADMIN_LISTEN: '127.0.0.1:0',
    ARVADOS_CONFIG: opts.cluster.configPath,
    GATEWAY_CONTROLLER_URL: opts.cluster.apiUrl,
    GATEWAY_ALLOW_LOOPBACK_GATEWAYS: 'true',
    GATEWAY_DRAIN_GRACE_SECONDS: '1',
    LOG_LEVEL: opts.logLevel,
    ...opts.env,
  };
  const proc = group.spawn('sidecar', process.execPath, args, { env, nofile: NOFILE, logFile });
  const { listen, admin } = await waitForListening(proc, logFile, 20_000);
  const adminUrl = `http://${admin}`;
  await waitFor(async () => (await fetch(`${adminUrl}/readyz`)).status === 200, 20_000,
    'sidecar readiness');
  return {
    name: 'sidecar',
    proc,
    url: `http://${listen}`,
    async heldTunnels() {
      return metric(adminUrl, 'arvados_gateway_tunnels');
    },
    async pollSeconds() {
      return metric(adminUrl, 'arvados_gateway_busy_poll_seconds_total');
    },
  };
}

/** metric reads one unlabelled series from the sidecar's /metrics. */
async function metric(adminUrl: string, name: string): Promise<number> {
  const text = await (await fetch(`${adminUrl}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(text);
  if (!m) throw new Error(`sidecar metrics lack ${name}`);
  return Number(m[1]);
}

async function waitForListening(proc: Proc, logFile: string, timeoutMs: number):
  Promise<{ listen: string; admin: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
    for (const line of text.split('\n')) {
      if (!line.includes('"sidecar listening"')) continue;
      const rec = JSON.parse(line) as { listen: string; admin: string };
      return { listen: rec.listen, admin: rec.admin };
    }
    if (!proc.running) throw new Error(`sidecar exited at start; its log:\n${text.slice(-4000)}`);
    if (Date.now() > deadline) throw new Error(`sidecar did not start; its log:\n${text}`);
    await sleep(50);
  }
}

/** startReference starts the Go reference proxy. */
export async function startReference(
  group: ProcessGroup,
  rootToken: string,
  direct: Record<string, string>,
): Promise<Side> {
  const args = ['-listen', '127.0.0.1:0', '-root-token', rootToken];
  for (const [uuid, addr] of Object.entries(direct)) args.push('-direct', `${uuid}=${addr}`);
  const proc = group.spawn('reference-gateway', goBin('reference-gateway'), args,
    { nofile: NOFILE });
  const ready = await proc.next('ready', 10_000);
  const url = `http://${String(ready.address)}`;
  return {
    name: 'go',
    proc,
    url,
    async heldTunnels() {
      const body = await (await fetch(`${url}/debug/tunnels`)).json() as { tunnels: number };
      return body.tunnels;
    },
  };
}

/** startGateway starts a bench gateway: a direct listener, tunnels, or both. */
export async function startGateway(
  group: ProcessGroup,
  name: string,
  rootToken: string,
  opts: { listen?: boolean; tunnels?: { url: string; uuid: string }[] },
): Promise<{ proc: Proc; directAddress: string }> {
  const args = ['-root-token', rootToken];
  if (opts.listen) args.push('-listen', '127.0.0.1:0');
  for (const t of opts.tunnels ?? []) args.push('-tunnel', `${t.url}|${t.uuid}`);
  const proc = group.spawn(name, goBin('bench-gateway'), args);
  const ready = await proc.next('ready', 15_000);
  return { proc, directAddress: String(ready.direct_address) };
}

/** sleep waits ms milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** waitFor polls check until it returns true, or throws after timeoutMs. */
export async function waitFor(
  check: () => Promise<boolean>,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // Not up yet.
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}
