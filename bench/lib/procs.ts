// Child processes of a benchmark run. Every process is started through one ProcessGroup, which
// remembers its PID and ends it by that PID — when the run ends, when it fails, on a signal,
// and (with SIGKILL, synchronously) when this process exits — so nothing outlives the run.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

/** ProcEvent is one JSON line a child printed on stdout; `event` names its kind. */
export type ProcEvent = { event: string } & Record<string, unknown>;

/** SpawnOptions says how to start one child. */
export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** nofile raises RLIMIT_NOFILE with `ulimit -n` in a shell that then execs the program. */
  nofile?: number;
  /** logFile receives stdout and stderr instead of the event parser (for the sidecar). */
  logFile?: string;
  cwd?: string;
}

const STDERR_KEEP = 16 * 1024;

/** Proc is one running child. */
export class Proc {
  /** name identifies the child in messages. */
  readonly name: string;
  readonly #child: ChildProcess;
  readonly #events: ProcEvent[] = [];
  readonly #wakers: (() => void)[] = [];
  readonly exited: Promise<number | null>;
  #stderr = '';
  #ended = false;

  constructor(name: string, child: ChildProcess) {
    this.name = name;
    this.#child = child;
    child.on('error', () => {});
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      this.#stderr = (this.#stderr + d).slice(-STDERR_KEEP);
    });
    if (child.stdout) {
      createInterface({ input: child.stdout }).on('line', (line) => {
        try {
          const parsed = JSON.parse(line) as ProcEvent;
          if (typeof parsed?.event === 'string') this.#events.push(parsed);
        } catch {
          this.#stderr = (this.#stderr + `[stdout] ${line}\n`).slice(-STDERR_KEEP);
        }
        this.#wake();
      });
    }
    this.exited = new Promise((resolve) => {
      child.once('close', (code) => {
        this.#ended = true;
        this.#wake();
        resolve(code);
      });
    });
  }

  /** pid is the child's process id (the program's own, since the shell execs it). */
  get pid(): number {
    return this.#child.pid ?? -1;
  }

  /** running tells whether the child has not exited yet. */
  get running(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** stderr is the tail of what the child wrote to stderr. */
  stderr(): string {
    return this.#stderr;
  }

  /** send writes one line to the child's stdin. */
  send(line: string): void {
    this.#child.stdin?.write(line + '\n');
  }

  /** next resolves with the first not yet taken event of the given kind. */
  next(event: string, timeoutMs: number): Promise<ProcEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new Error(`${this.name}: no '${event}' within ${timeoutMs} ms${this.#tail()}`));
      }, timeoutMs);
      const look = (): void => {
        const fatal = this.#events.find((e) => e.event === 'fatal');
        const i = this.#events.findIndex((e) => e.event === event);
        if (i >= 0) {
          clearTimeout(timer);
          resolve(this.#events.splice(i, 1)[0]);
        } else if (fatal !== undefined || this.#ended) {
          clearTimeout(timer);
          const why = fatal ? String(fatal.error) : 'it exited';
          reject(new Error(`${this.name}: ${why} before '${event}'${this.#tail()}`));
        } else {
          this.#wakers.push(look);
        }
      };
      look();
    });
  }

  /** signal sends sig to the child's PID if it still runs. */
  signal(sig: NodeJS.Signals): void {
    if (!this.running || this.pid < 0) return;
    try {
      process.kill(this.pid, sig);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
    }
  }

  /** stop sends SIGTERM, then SIGKILL after graceMs, and waits for the exit. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) return;
    this.#child.stdin?.end();
    this.signal('SIGTERM');
    const timer = setTimeout(() => this.signal('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  /** openFilesLimit reads the soft RLIMIT_NOFILE the child runs with, from /proc. */
  openFilesLimit(): number | undefined {
    try {
      const limits = readFileSync(`/proc/${this.pid}/limits`, 'utf8');
      const m = /^Max open files\s+(\d+)/m.exec(limits);
      return m ? Number(m[1]) : undefined;
    } catch {
      return undefined;
    }
  }

  #wake(): void {
    for (const wake of this.#wakers.splice(0)) wake();
  }

  #tail(): string {
    const tail = this.#stderr.trimEnd().split('\n').slice(-8).join('\n');
    return tail ? `; stderr ends:\n${tail}` : '';
  }
}

/** ProcessGroup starts children and makes sure each one is ended by its PID. */
export class ProcessGroup {
  readonly #procs = new Set<Proc>();
  /** started lists the PID of every child ever started, for the results. */
  readonly started: { name: string; pid: number }[] = [];
  #onExit = (): void => {
    for (const p of this.#procs) p.signal('SIGKILL');
  };

  constructor() {
    process.on('exit', this.#onExit);
  }

  /** spawn starts a program; with nofile it goes through `sh -c 'ulimit -n …; exec …'`. */
  spawn(name: string, command: string, args: string[], opts: SpawnOptions = {}): Proc {
    let file = command;
    let argv = args;
    if (opts.nofile !== undefined) {
      // exec keeps the PID, so the PID we hold is the program's. When the wanted limit is above
      // the hard limit, the hard limit is taken; the caller reads the result from /proc.
      const script = `ulimit -n ${opts.nofile} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; ` +
        'exec "$0" "$@"';
      file = '/bin/sh';
      argv = ['-c', script, command, ...args];
    }
    let fd: number | undefined;
    if (opts.logFile !== undefined) fd = openSync(opts.logFile, 'a');
    const child = spawn(file, argv, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: fd === undefined ? ['pipe', 'pipe', 'pipe'] : ['pipe', fd, fd],
    });
    if (fd !== undefined) closeSync(fd);
    const proc = new Proc(name, child);
    this.#procs.add(proc);
    this.started.push({ name, pid: proc.pid });
    void proc.exited.then(() => this.#procs.delete(proc));
    return proc;
  }

  /** stopAll stops every child still running. */
  async stopAll(graceMs = 3000): Promise<void> {
    await Promise.all([...this.#procs].map((p) => p.stop(graceMs)));
  }

  /** dispose stops everything and forgets the exit hook. */
  async dispose(): Promise<void> {
    await this.stopAll();
    process.removeListener('exit', this.#onExit);
  }
}

/** rssBytes reads a process's resident set size (VmRSS) from /proc. */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS for process ${pid}`);
  return Number(m[1]) * 1024;
}

// Linux reports process times in clock ticks of 1/100 s on every platform Node supports.
const CLOCK_TICKS = 100;

/** CpuTimes are the user and system CPU seconds a process has used. */
export interface CpuTimes {
  user: number;
  sys: number;
}

/** cpuTimes reads the CPU time a process has used, from /proc. */
export function cpuTimes(pid: number): CpuTimes {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name may hold spaces and parentheses; the fields after its last ')' do not.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
  return { user: Number(fields[11]) / CLOCK_TICKS, sys: Number(fields[12]) / CLOCK_TICKS };
}

/** cpuSince is the CPU time a process has used since `before` was read: all of it, and system. */
export function cpuSince(pid: number, before: CpuTimes): { total: number; sys: number } {
  const now = cpuTimes(pid);
  return { total: now.user + now.sys - before.user - before.sys, sys: now.sys - before.sys };
}

/** RssSampler records the highest RSS of a process while it runs, and a coarse series. */
export class RssSampler {
  readonly #pid: number;
  readonly #timer: NodeJS.Timeout;
  readonly #started = Date.now();
  max: number;
  samples = 0;
  /** series holds the highest RSS in each second since the start, in MiB. */
  readonly series: number[] = [];

  constructor(pid: number, intervalMs = 100) {
    this.#pid = pid;
    this.max = rssBytes(pid);
    this.#timer = setInterval(() => this.#sample(), intervalMs);
  }

  /** stop ends sampling and returns the highest RSS seen. */
  stop(): number {
    clearInterval(this.#timer);
    this.#sample();
    return this.max;
  }

  #sample(): void {
    let rss: number;
    try {
      rss = rssBytes(this.#pid);
    } catch {
      // The process is gone; the highest value so far stands.
      return;
    }
    this.max = Math.max(this.max, rss);
    this.samples++;
    const second = Math.floor((Date.now() - this.#started) / 1000);
    const mib = Math.round(rss / 1024 / 1024 * 10) / 10;
    this.series[second] = Math.max(this.series[second] ?? 0, mib);
  }
}
