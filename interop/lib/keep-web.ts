// Starts the Go stand-in for Arvados' keep-web (interop/go/keep-web) and waits for the "ready"
// line it prints, so tests and the demo talk to it only once it listens.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** STDERR_KEEP is how many characters of the program's log are kept for messages. */
const STDERR_KEEP = 64 * 1024;

/** keepWebBinary is where the build puts the keep-web program. */
export function keepWebBinary(): string {
  return path.join(repoRoot, '.cache/go-bin/keep-web');
}

/** KeepWebOptions maps onto keep-web's flags, plus how to run it. */
export interface KeepWebOptions {
  /** root holds one sub-directory per collection UUID (-root). */
  root: string;
  /** token is the only bearer token accepted, the cluster's SystemRootToken (-token). */
  token: string;
  /** listen is the listener address (-listen, default 127.0.0.1:0). */
  listen?: string;
  /** binary overrides the program path (default keepWebBinary(), built when missing). */
  binary?: string;
  /** readyTimeoutMs bounds the wait for the "ready" line (default 10 s). */
  readyTimeoutMs?: number;
  /** echoStderr copies the request log to this process's stderr (default: KEEP_WEB_DEBUG). */
  echoStderr?: boolean;
}

/** KeepWeb is one running keep-web process. */
export interface KeepWeb {
  /** url is the http base URL it listens on. */
  url: string;
  /** pid is the process id. */
  pid: number;
  /** log returns the tail of what the program wrote to stderr. */
  log(): string;
  /** stop sends SIGTERM and resolves once the process has exited. */
  stop(): Promise<void>;
}

// Children still running when the test process exits would otherwise outlive it.
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

let building: Promise<void> | undefined;

/**
 * ensureKeepWebBinary builds the program when it is missing or older than its sources. The
 * build writes to a private file and renames it into place, so test files running in parallel
 * never run half a binary.
 */
export function ensureKeepWebBinary(): Promise<void> {
  if (isFresh()) return Promise.resolve();
  building ??= buildKeepWeb().finally(() => {
    building = undefined;
  });
  return building;
}

function isFresh(): boolean {
  let built: number;
  try {
    built = statSync(keepWebBinary()).mtimeMs;
  } catch {
    return false;
  }
  const src = path.join(repoRoot, 'interop/go/keep-web');
  return readdirSync(src).filter((f) => f.endsWith('.go'))
    .every((f) => statSync(path.join(src, f)).mtimeMs <= built);
}

async function buildKeepWeb(): Promise<void> {
  const out = keepWebBinary();
  const tmp = `${out}.${process.pid}.tmp`;
  mkdirSync(path.dirname(out), { recursive: true });
  try {
    await promisify(execFile)('go', ['build', '-o', tmp, './interop/go/keep-web'], {
      cwd: repoRoot,
      env: { ...process.env, GO111MODULE: 'off', GOPATH: '/usr/share/gocode' },
      timeout: 300_000,
    });
    renameSync(tmp, out);
  } catch (err) {
    rmSync(tmp, { force: true });
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(`building keep-web failed: ${(err as Error).message}${stderr}`);
  }
}

/** keepWebArgs renders options as keep-web's command line. */
export function keepWebArgs(opts: KeepWebOptions): string[] {
  const args = ['-root', opts.root, '-token', opts.token];
  if (opts.listen !== undefined) args.push('-listen', opts.listen);
  return args;
}

/** startKeepWeb spawns keep-web and resolves once it listens. */
export async function startKeepWeb(opts: KeepWebOptions): Promise<KeepWeb> {
  const binary = opts.binary ?? keepWebBinary();
  if (opts.binary === undefined) await ensureKeepWebBinary();
  const echo = opts.echoStderr ?? Boolean(process.env.KEEP_WEB_DEBUG);
  const child = spawn(binary, keepWebArgs(opts), { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-STDERR_KEEP);
    if (echo) process.stderr.write(chunk);
  });
  const tail = (): string => {
    const lines = stderr.trimEnd().split('\n').slice(-10).join('\n');
    return lines ? `; its log ends:\n${lines}` : '';
  };
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      live.delete(child);
      resolve();
    });
  });
  const signal = (sig: NodeJS.Signals): void => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    try {
      process.kill(child.pid, sig);
    } catch (err) {
      // ESRCH: it ended between the check and the signal.
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  };

  let url: string;
  try {
    url = await waitReady(child, opts.readyTimeoutMs ?? 10_000, tail);
  } catch (err) {
    signal('SIGKILL');
    // A program that never started has no exit to wait for.
    if (child.pid !== undefined) await exited;
    throw err;
  }
  return {
    url,
    pid: child.pid ?? -1,
    log: () => stderr,
    async stop(): Promise<void> {
      signal('SIGTERM');
      // keep-web lets requests finish for up to 5 s; past that something is wrong with it.
      const timer = setTimeout(() => signal('SIGKILL'), 8_000);
      try {
        await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

function waitReady(child: ChildProcess, timeoutMs: number, tail: () => string): Promise<string> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const done = (err: Error | null, url = ''): void => {
      clearTimeout(timer);
      child.off('exit', onExit);
      child.off('error', onError);
      lines.off('line', onLine);
      if (err) reject(err);
      else resolve(url);
    };
    const timer = setTimeout(() => {
      done(new Error(`keep-web printed no ready line within ${timeoutMs} ms${tail()}`));
    }, timeoutMs);
    const onExit = (code: number | null, sig: NodeJS.Signals | null): void => {
      const how = sig === null ? `code ${code}` : `signal ${sig}`;
      // Give the last stderr chunk a moment to arrive: it usually says why.
      setImmediate(() => done(new Error(`keep-web exited with ${how} before ready${tail()}`)));
    };
    const onError = (err: Error): void => done(new Error(`starting keep-web: ${err.message}`));
    const onLine = (line: string): void => {
      let ev: unknown;
      try {
        ev = JSON.parse(line);
      } catch {
        return;
      }
      const { event, url } = (ev ?? {}) as { event?: unknown; url?: unknown };
      if (event === 'ready' && typeof url === 'string') done(null, url);
    };
    child.once('exit', onExit);
    child.once('error', onError);
    lines.on('line', onLine);
  });
}
