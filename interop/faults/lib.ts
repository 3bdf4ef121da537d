// Helpers for the fault tests with real peers: files of random content to move, transfers that
// hash what arrives (OpenSSH through the sidecar's ssh-proxy, or a WebDAV GET), bounded pools
// to run them in, and a sidecar in a child process that can be killed and started again on the
// same port.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { seenBodies } from '../../test/faults/lib/wire.ts';
export { prng } from '../../test/lib/prng.ts';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));

/** MAX_FILE is the largest transfer: 8 MiB. */
export const MAX_FILE = 8 * 1024 * 1024;

/** TestFile is a file written for transfers, with what it must hash to. */
export interface TestFile {
  name: string;
  size: number;
  sha256: string;
}


/**
 * writeFiles writes one file of random content into dir for each name. Sizes are spread evenly
 * on a log scale from 1 byte to 8 MiB, and both ends are always present. Content comes from the
 * system's random source, so no two files are alike, whatever their names.
 */
export function writeFiles(dir: string, names: string[], rand: () => number): TestFile[] {
  return names.map((name, i) => {
    const size = i === 0 ? 1 : i === 1 ? MAX_FILE
      : Math.max(1, Math.round(Math.exp(rand() * Math.log(MAX_FILE))));
    const data = randomBytes(size);
    writeFileSync(join(dir, name), data);
    return { name, size, sha256: createHash('sha256').update(data).digest('hex') };
  });
}

/** Received is what a transfer delivered. */
export interface Received {
  bytes: number;
  sha256: string;
  /** prefix is up to the first 64 KiB, to check what a cut transfer did deliver. */
  prefix: Buffer;
  error?: string;
  status?: number;
  code?: number | null;
}

/** sshCat runs a command over OpenSSH through the sidecar and hashes its standard output. */
export function sshCat(
  front: string,
  uuid: string,
  token: string,
  command: string,
  opts: { onFirstData?: (kill: () => void) => void } = {},
): Promise<Received & { stderr: string }> {
  const proxy = `${process.execPath} ${MAIN} ssh-proxy --url ${front} %h`;
  const args = ['-F', '/dev/null', '-o', `ProxyCommand=${proxy}`, '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR',
    '-o', 'ConnectTimeout=60', `root@${uuid}`, command];
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', args, { env: { ...process.env, ARVADOS_API_TOKEN: token },
      stdio: ['ignore', 'pipe', 'pipe'] });
    const hash = createHash('sha256');
    let bytes = 0;
    const prefix: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      if (bytes === 0) opts.onFirstData?.(() => child.kill('SIGKILL'));
      if (bytes < 65536) prefix.push(d.subarray(0, 65536 - bytes));
      bytes += d.length;
      hash.update(d);
    });
    child.stderr.on('data', (d) => { stderr += d; });
    child.once('error', (err) => reject(new Error(`cannot run ssh: ${err.message}`)));
    child.once('close', (code) => resolve({ bytes, sha256: hash.digest('hex'),
      prefix: Buffer.concat(prefix), stderr, code }));
  });
}

/** LogGetOptions tunes logGet. */
export interface LogGetOptions {
  /** onFirstData runs once the first bytes of the body are in, before more are read. */
  onFirstData?: () => Promise<void>;
}

/** logGet GETs a URL with a token and hashes the body; a broken body is an error, not a throw. */
export async function logGet(url: string, token: string, opts: LogGetOptions = {}):
  Promise<Received & { contentLength: number; body?: string }> {
  const res = await request(url, { headers: { authorization: `Bearer ${token}` } });
  const contentLength = Number(res.headers['content-length'] ?? -1);
  const hash = createHash('sha256');
  const prefix: Buffer[] = [];
  let bytes = 0;
  let error: string | undefined;
  let first = true;
  try {
    for await (const chunk of res.body) {
      if (bytes < 65536) prefix.push((chunk as Buffer).subarray(0, 65536 - bytes));
      bytes += chunk.length;
      hash.update(chunk);
      if (first && opts.onFirstData) {
        first = false;
        await opts.onFirstData();
      }
    }
  } catch (err) {
    error = `${(err as Error).message} (${(err as { code?: string }).code ?? 'no code'})`;
  }
  const out = { bytes, sha256: hash.digest('hex'), prefix: Buffer.concat(prefix), error,
    status: res.statusCode, contentLength };
  if (res.statusCode >= 400) {
    const body = out.prefix.toString('utf8');
    seenBodies.push(body);
    return { ...out, body };
  }
  return out;
}

/** pool runs work for every item with at most limit running at once. */
export async function pool<T, R>(items: T[], limit: number, work: (item: T, i: number) =>
  Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** SidecarProcess is a sidecar running as a child process, as in a pod. */
export class SidecarProcess {
  readonly port: number;
  readonly adminPort: number;
  output = '';
  #child: ChildProcess;
  #exited: Promise<number | null>;

  constructor(env: Record<string, string>, port: number, adminPort: number) {
    this.port = port;
    this.adminPort = adminPort;
    this.#child = spawn(process.execPath, [MAIN], {
      env: { ...process.env, GATEWAY_LISTEN: `127.0.0.1:${port}`,
        GATEWAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`, LOG_LEVEL: 'info', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.#child.stdout!.on('data', (d) => { this.output += d; });
    this.#child.stderr!.on('data', (d) => { this.output += d; });
    this.#exited = new Promise((resolve) => this.#child.once('exit', (code) => resolve(code)));
    live.add(this.#child);
    void this.#exited.then(() => live.delete(this.#child));
  }

  /** url is the front door URL, which is also the sidecar's own URL on loopback. */
  get url(): string {
    return `http://127.0.0.1:${this.port}/`;
  }

  /** pid is the process id. */
  get pid(): number {
    return this.#child.pid ?? -1;
  }

  /** ready resolves once /readyz answers 200. */
  async ready(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const res = await fetch(`http://127.0.0.1:${this.adminPort}/readyz`).catch(() => undefined);
      if (res?.status === 200) return;
      if (this.#child.exitCode !== null) throw new Error(`sidecar exited: ${this.output}`);
      if (Date.now() > deadline) throw new Error(`sidecar not ready: ${this.output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** kill ends the process with SIGKILL, as an evicted pod ends, and waits for it. */
  async kill(): Promise<void> {
    if (this.#child.exitCode === null && this.#child.signalCode === null) {
      this.#child.kill('SIGKILL');
    }
    await this.#exited;
  }
}

// Children still running when the test process exits would otherwise outlive it.
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});
