// Starts the Go stand-in for Arvados' crunch-run (interop/go/crunch-run) and follows the JSON
// events it prints on stdout, so that interop tests and the demo wait for "the tunnel is up"
// instead of sleeping and hoping.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createInterface } from 'node:readline';
import { goBinary } from './go-bin.ts';

/** STDERR_KEEP is how many characters of the program's log a CrunchRun keeps for messages. */
const STDERR_KEEP = 64 * 1024;

/** hmacHex returns hex(HMAC-SHA256(key, msg)), the primitive behind every gateway secret. */
export function hmacHex(key: string | Buffer, msg: string | Buffer): string {
  return createHmac('sha256', key).update(msg).digest('hex');
}

/** authSecretFor derives a container's gateway auth secret the way the controller does. */
export function authSecretFor(systemRootToken: string, containerUuid: string): string {
  return hmacHex(systemRootToken, containerUuid);
}

/** gatewayRequestAuth is the X-Arvados-Authorization value for a gateway certificate. */
export function gatewayRequestAuth(authSecret: string, certDer: Buffer): string {
  return hmacHex(authSecret, certDer);
}

/** gatewayResponseAuth is the X-Arvados-Authorization-Response a genuine gateway sends. */
export function gatewayResponseAuth(authSecret: string, requestAuth: string): string {
  return hmacHex(authSecret, requestAuth);
}

/** CrunchRunOptions maps one to one onto crunch-run's flags. */
export interface CrunchRunOptions {
  /** uuid is the container UUID (-uuid). */
  uuid: string;
  /** authSecret is the hex auth secret (-auth-secret); give it or systemRootToken. */
  authSecret?: string;
  /** systemRootToken makes crunch-run derive the auth secret (-system-root-token). */
  systemRootToken?: string;
  /** listen is the gateway listener address (-listen, default 127.0.0.1:0). */
  listen?: string;
  /** tunnelUrl is the controller base URL to dial a tunnel to (-tunnel-url). */
  tunnelUrl?: string;
  /** tunnelPathStyle picks the tunnel endpoint (-tunnel-path-style, default connect). */
  tunnelPathStyle?: 'connect' | 'containers';
  /** apiUrl is where the container's gateway_address is PUT (-api-url). */
  apiUrl?: string;
  /** apiToken authorizes the PUT and the tunnel request (-api-token). */
  apiToken?: string;
  /** logDir is served read-only over WebDAV under /log (-log-dir). */
  logDir?: string;
  /** workdir is where SSH commands run (-workdir). */
  workdir?: string;
  /** insecure skips TLS verification toward tunnelUrl and apiUrl (-insecure). */
  insecure?: boolean;
  /** keepaliveIntervalMs is the yamux ping interval, 0 for none (-keepalive-interval). */
  keepaliveIntervalMs?: number;
  /** redialIntervalMs is the pause between tunnel dial attempts (-redial-interval). */
  redialIntervalMs?: number;
  /** binary overrides the program path (default goBinary('crunch-run')). */
  binary?: string;
  /** readyTimeoutMs bounds the wait for the "ready" event (default 10 s). */
  readyTimeoutMs?: number;
  /** echoStderr copies the program's log to this process's stderr (default: CRUNCH_RUN_DEBUG). */
  echoStderr?: boolean;
}

/** CrunchRunEvent is one JSON line from crunch-run's stdout. */
export interface CrunchRunEvent {
  event: string;
  [field: string]: unknown;
}

/** CrunchRunExit is how the process ended. */
export interface CrunchRunExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** EventPredicate picks among events of one name; index is the event's place in `events`. */
export type EventPredicate = (event: CrunchRunEvent, index: number) => boolean;

/** crunchRunArgs renders options as crunch-run's command line. */
export function crunchRunArgs(opts: CrunchRunOptions): string[] {
  const args = ['-uuid', opts.uuid];
  const add = (flag: string, value: string | undefined): void => {
    if (value !== undefined) args.push(flag, value);
  };
  add('-auth-secret', opts.authSecret);
  add('-system-root-token', opts.systemRootToken);
  add('-listen', opts.listen);
  add('-tunnel-url', opts.tunnelUrl);
  add('-tunnel-path-style', opts.tunnelPathStyle);
  add('-api-url', opts.apiUrl);
  add('-api-token', opts.apiToken);
  add('-log-dir', opts.logDir);
  add('-workdir', opts.workdir);
  if (opts.insecure) args.push('-insecure');
  add('-keepalive-interval', millis(opts.keepaliveIntervalMs));
  add('-redial-interval', millis(opts.redialIntervalMs));
  return args;
}

function millis(ms: number | undefined): string | undefined {
  return ms === undefined ? undefined : `${Math.round(ms)}ms`;
}

interface Waiter {
  event: string;
  predicate: EventPredicate | undefined;
  resolve: (ev: CrunchRunEvent) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

// Children still running when the test process exits would otherwise outlive it.
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** CrunchRun is one running crunch-run process and the events it has printed. */
export class CrunchRun {
  readonly #child: ChildProcess;
  readonly #events: CrunchRunEvent[] = [];
  readonly #waiters = new Set<Waiter>();
  readonly #exited: Promise<CrunchRunExit>;
  #exit: CrunchRunExit | null = null;
  #stderr = '';
  #gatewayAddress = '';

  constructor(child: ChildProcess, echoStderr: boolean) {
    this.#child = child;
    live.add(child);
    this.#exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        live.delete(child);
        this.#exit = { code, signal };
        const how = signal === null ? `code ${code}` : `signal ${signal}`;
        for (const w of this.#waiters) {
          clearTimeout(w.timer);
          w.reject(new Error(`crunch-run exited with ${how} before ${w.event}${this.#tail()}`));
        }
        this.#waiters.clear();
        resolve(this.#exit);
      });
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      this.#stderr = (this.#stderr + chunk).slice(-STDERR_KEEP);
      if (echoStderr) process.stderr.write(chunk);
    });
    if (child.stdout) {
      createInterface({ input: child.stdout }).on('line', (line) => this.#onLine(line));
    }
  }

  /** pid is the process id, for signals sent from outside. */
  get pid(): number {
    return this.#child.pid ?? -1;
  }

  /** gatewayAddress is host:port of the direct TLS listener, known once ready. */
  get gatewayAddress(): string {
    return this.#gatewayAddress;
  }

  /** events lists every event printed so far, oldest first. */
  get events(): readonly CrunchRunEvent[] {
    return this.#events;
  }

  /** stderr is the tail of the program's log. */
  get stderr(): string {
    return this.#stderr;
  }

  /** exitStatus is how the process ended, or null while it runs. */
  get exitStatus(): CrunchRunExit | null {
    return this.#exit;
  }

  /** exited resolves when the process has ended. */
  get exited(): Promise<CrunchRunExit> {
    return this.#exited;
  }

  /**
   * waitFor resolves with the earliest event called `event` that satisfies predicate, whether
   * it was printed already or comes later; it rejects on timeout or when the process exits.
   * To wait for a new event only, filter on index: `(ev, i) => i >= run.events.length`.
   */
  waitFor(event: string, predicate?: EventPredicate, timeoutMs = 10_000): Promise<CrunchRunEvent> {
    const found = this.#events.find((ev, i) => ev.event === event && (predicate?.(ev, i) ?? true));
    if (found) return Promise.resolve(found);
    if (this.#exit) {
      return Promise.reject(new Error(`crunch-run is not running, no ${event}${this.#tail()}`));
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        event,
        predicate,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.delete(waiter);
          const tail = this.#tail();
          reject(new Error(`no ${event} event from crunch-run within ${timeoutMs} ms${tail}`));
        }, timeoutMs),
      };
      this.#waiters.add(waiter);
    });
  }

  /** stop sends SIGTERM, then SIGKILL if the process is still there after graceMs. */
  async stop(graceMs = 3000): Promise<CrunchRunExit> {
    if (this.#exit) return this.#exit;
    this.#signal('SIGTERM');
    const timer = setTimeout(() => this.#signal('SIGKILL'), graceMs);
    try {
      return await this.#exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** kill ends the process with SIGKILL, as a crashed or evicted container would end. */
  kill(): Promise<CrunchRunExit> {
    this.#signal('SIGKILL');
    return this.#exited;
  }

  #signal(sig: NodeJS.Signals): void {
    if (this.#exit || this.#child.pid === undefined) return;
    try {
      process.kill(this.#child.pid, sig);
    } catch (err) {
      // ESRCH: it ended between the check and the signal.
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  #onLine(line: string): void {
    let ev: CrunchRunEvent;
    try {
      const parsed: unknown = JSON.parse(line);
      if (typeof parsed !== 'object' || parsed === null || !('event' in parsed)) throw new Error();
      ev = parsed as CrunchRunEvent;
    } catch {
      this.#stderr = (this.#stderr + `[stdout] ${line}\n`).slice(-STDERR_KEEP);
      return;
    }
    const index = this.#events.push(ev) - 1;
    if (ev.event === 'ready' && typeof ev.gateway_address === 'string') {
      this.#gatewayAddress = ev.gateway_address;
    }
    for (const w of this.#waiters) {
      if (w.event === ev.event && (w.predicate?.(ev, index) ?? true)) {
        clearTimeout(w.timer);
        this.#waiters.delete(w);
        w.resolve(ev);
      }
    }
  }

  #tail(): string {
    const lines = this.#stderr.trimEnd().split('\n').slice(-10).join('\n');
    return lines ? `; its log ends:\n${lines}` : '';
  }
}

/** startCrunchRun spawns crunch-run and resolves once its gateway listener is ready. */
export async function startCrunchRun(opts: CrunchRunOptions): Promise<CrunchRun> {
  const binary = opts.binary ?? goBinary('crunch-run');
  const child = spawn(binary, crunchRunArgs(opts), { stdio: ['ignore', 'pipe', 'pipe'] });
  const run = new CrunchRun(child, opts.echoStderr ?? Boolean(process.env.CRUNCH_RUN_DEBUG));
  const spawned = new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  try {
    await spawned;
    await run.waitFor('ready', undefined, opts.readyTimeoutMs ?? 10_000);
  } catch (err) {
    // A process that never spawned has no exit to wait for.
    if (run.pid !== -1) await run.kill();
    throw err;
  }
  return run;
}
