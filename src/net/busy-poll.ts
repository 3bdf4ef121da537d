// Busy polling: after a socket read, the event loop keeps polling for a short while instead of
// going to sleep at once.
//
// A round trip through the sidecar is two sleeps and two wake-ups of its thread, and on a
// virtual machine those cost more than the work between them: the thread that writes to a
// sleeping reader pays for waking it, and the reader's CPU may have gone idle and must be woken
// too. Go's runtime keeps a thread spinning for a moment before it sleeps, which is much of why
// a Go proxy answers faster than an event loop that sleeps the moment it runs out of work.
// BusyPoll does the same for Node: each read opens (or extends) a window in which the loop is
// given an immediate to run, so libuv polls its sockets with a timeout of zero rather than
// blocking. Reads, timers and writes are all still handled on every turn; nothing waits.
//
// The cost is CPU time while a window is open and nothing arrives, bounded by the window per
// read: a sidecar that reads nothing spins not at all, one that is busy was awake anyway, and
// in between it spends at most the window after each read. The window is a setting
// (GATEWAY_BUSY_POLL_US, 0 turns it off) and the time spent is a metric.
import { performance } from 'node:perf_hooks';

/** Clock gives the current time in milliseconds, as performance.now does. */
export type Clock = () => number;
/** Schedule runs a function on the event loop's next turn. */
export type Schedule = (fn: () => void) => void;

// The immediate must hold a reference: only then does libuv poll with a timeout of zero. An
// unreferenced one runs only after the loop has slept. An open window so keeps the process up
// for at most its length.
const nextTurn: Schedule = (fn) => {
  setImmediate(fn);
};

/** BusyPoll keeps the event loop polling for a window of time after each read. */
export class BusyPoll {
  #windowMs: number;
  readonly #now: Clock;
  readonly #schedule: Schedule;
  #until = 0;
  #openedAt = 0;
  #spinning = false;
  #spentMs = 0;
  #windows = 0;
  readonly #turn = () => this.#spin();

  /** windowUs is how long to keep polling after a read, in microseconds; 0 turns it off. */
  constructor(windowUs: number, now: Clock = performance.now.bind(performance),
    schedule: Schedule = nextTurn) {
    this.#windowMs = checkWindow(windowUs) / 1000;
    this.#now = now;
    this.#schedule = schedule;
  }

  /** setWindow changes the window; an open window runs to its old end. */
  setWindow(windowUs: number): void {
    this.#windowMs = checkWindow(windowUs) / 1000;
  }

  /** windowUs is the current window in microseconds. */
  get windowUs(): number {
    return Math.round(this.#windowMs * 1000);
  }

  /** spinning tells whether a window is open now. */
  get spinning(): boolean {
    return this.#spinning;
  }

  /** spentSeconds is the time windows have been open, closed ones and the current one. */
  get spentSeconds(): number {
    const open = this.#spinning ? this.#now() - this.#openedAt : 0;
    return (this.#spentMs + open) / 1000;
  }

  /** windows counts the windows opened: reads that found the loop about to sleep. */
  get windows(): number {
    return this.#windows;
  }

  /** afterRead opens a window, or moves the end of the open one to a window from now. */
  afterRead(): void {
    if (this.#windowMs === 0) return;
    const now = this.#now();
    this.#until = now + this.#windowMs;
    if (this.#spinning) return;
    this.#spinning = true;
    this.#openedAt = now;
    this.#windows++;
    this.#schedule(this.#turn);
  }

  #spin(): void {
    const now = this.#now();
    if (now < this.#until) {
      this.#schedule(this.#turn);
      return;
    }
    this.#spinning = false;
    this.#spentMs += now - this.#openedAt;
  }
}

// A window longer than a millisecond would spin through pauses no wake-up is worth avoiding.
const MAX_WINDOW_US = 1000;

function checkWindow(us: number): number {
  if (!Number.isFinite(us) || us < 0 || us > MAX_WINDOW_US) {
    throw new RangeError(`busy-poll window must be 0 to ${MAX_WINDOW_US} µs, not ${us}`);
  }
  return us;
}

/**
 * busyPoll is the process's poller, which every socket read through readInto tells. It starts
 * off; the sidecar sets its window from its settings.
 */
export const busyPoll = new BusyPoll(0);
