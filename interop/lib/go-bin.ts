// Locates the Go programs built by scripts/build-go.ts and runs them as JSON-line peers.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { GO_BIN_DIR } from '../../scripts/build-go.ts';

/** goBinary returns the path of the built Go program `name`, or throws if it is not built. */
export function goBinary(name: string): string {
  const path = join(GO_BIN_DIR, name);
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new Error(
      `Go program ${name} is not built at ${path}: run \`npm run build:go\` ` +
      '(node scripts/build-go.ts) first',
    );
  }
  return path;
}

/** GoEvent is one JSON line a Go peer printed; `event` names its kind. */
export type GoEvent = { event: string } & Record<string, unknown>;

/** GoPeer is a running Go program whose stdout is a sequence of JSON lines. */
export interface GoPeer {
  child: ChildProcessWithoutNullStreams;
  /** next resolves with the first not yet taken event of the given kind. */
  next(event: string, timeoutMs?: number): Promise<GoEvent>;
  /** exited resolves with the exit code once the process ends. */
  exited: Promise<number | null>;
  /** stderr holds everything the program wrote to stderr so far. */
  stderr(): string;
  /** kill ends the process if it still runs. */
  kill(): void;
}

/** spawnGoPeer starts a built Go program that reports JSON lines on stdout. */
export function spawnGoPeer(name: string, args: string[]): GoPeer {
  const child = spawn(goBinary(name), args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const events: GoEvent[] = [];
  const waiters: Array<() => void> = [];
  let errText = '';
  let ended = false;
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d: string) => {
    errText += d;
  });
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => {
    try {
      events.push(JSON.parse(line) as GoEvent);
    } catch {
      events.push({ event: 'garbage', line });
    }
    for (const wake of waiters.splice(0)) wake();
  });
  const exited = new Promise<number | null>((resolve) => {
    child.on('close', (code) => {
      ended = true;
      for (const wake of waiters.splice(0)) wake();
      resolve(code);
    });
  });
  child.on('error', () => {});
  return {
    child,
    exited,
    stderr: () => errText,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
    next(event: string, timeoutMs = 60_000): Promise<GoEvent> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          reject(new Error(
            `no '${event}' event from ${name} in ${timeoutMs} ms; stderr:\n${errText}`,
          ));
        }, timeoutMs);
        const look = (): void => {
          const fatal = events.find((e) => e.event === 'fatal');
          const i = events.findIndex((e) => e.event === event);
          if (i >= 0) {
            clearTimeout(timer);
            resolve(events.splice(i, 1)[0]);
          } else if (fatal !== undefined || ended) {
            clearTimeout(timer);
            reject(new Error(
              `${name} ended before '${event}': ${JSON.stringify(fatal ?? null)}; ` +
              `stderr:\n${errText}`,
            ));
          } else {
            waiters.push(look);
          }
        };
        look();
      });
    },
  };
}
