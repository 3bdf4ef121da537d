// Busy polling: after a socket read, the event loop keeps polling for a short while instead of
// going to sleep at once.
//
// A round trip through the sidecar is two sleeps and two wake-ups of its thread, and on a
// virtual machine those cost more than the work between them: the thread that writes to a
// sleeping reader pays for waking it, and the reader's CPU may have gone idle and must be woken
// too. Go's runtime keeps a thread spinning for a moment before it sleeps, which is much of why
// a Go proxy answers faster than an event loop that sleeps the moment it runs out of work.
// BusyPoll does the same for Node: a read opens (or extends) a window in which the loop is
// given an immediate to run, so libuv polls its sockets with a timeout of zero rather than
// blocking. Reads, timers and writes are all still handled on every turn; nothing waits.
//
// The cost is CPU time while a window is open and nothing arrives. A sidecar that reads nothing
// spins not at all, and one that is busy was awake anyway. In between, windows that do not pay
// back off. Each read a window catches saves a wake-up, worth half a window of polling: a window
// pays while the reads it catches come on average no more than half a window apart. It is
// judged over each PAY_READS reads it catches while it stays open, and when it closes, over its
// whole life less the second half of its last wait. That half is not charged because it is
// what lets a window ride out an answer that comes late now and then. So traffic that holds a
// window open only by arriving just inside it, a read every 150 µs in a 200 µs window, does
// not pay for spinning all the time, while a short exchange does if it has enough reads close
// enough together: five reads 70 µs apart in a 200 µs window, not four, and never two. A read
// that follows the one before within SAME_MESSAGE_US is taken as the rest of the same message
// and saves nothing: asleep, the loop would have read both at once (hashicorp/yamux writes a
// frame's header and its body separately).
//
// After a window that did not pay, the next small read opens none; after two in a row the next
// two open none, and so on up to MAX_BACKOFF; each window or stretch of reads that pays halves
// the backoff. Traffic whose reads are further apart than the window (typing in a shell) so
// spends at most one window in MAX_BACKOFF + 1 reads, and one short exchange that pays among
// them does not bring back a window for every read. Only small reads count, and only away from
// bulk transfers: round trips are made of small reads, and a transfer, which fills its reads
// and keeps the loop busy, gains nothing.
//
// The window is a setting (GATEWAY_BUSY_POLL_US, 0 turns it off); the time spent is a metric.
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

/** BusyPoll keeps the event loop polling for a window of time after each small read. */
export class BusyPoll {
  #windowMs: number;
  readonly #now: Clock;
  readonly #schedule: Schedule;
  readonly #sliceMs: number;
  #bulkAt = Number.NEGATIVE_INFINITY;
  #until = 0;
  #openedAt = 0;
  #spinning = false;
  /** #scheduled tells whether a turn is on its way, to keep to one at a time. */
  #scheduled = false;
  #caught = 0;
  #lastReadAt = 0;
  /** #stretchAt and #stretchReads measure the open window's latest PAY_READS reads. */
  #stretchAt = 0;
  #stretchReads = 0;
  #backoff = 0;
  #skip = 0;
  #spentMs = 0;
  #windows = 0;
  #reads = 0;
  readonly #turn = () => this.#spin();

  /**
   * windowUs is how long to poll after a small read, in microseconds; 0 turns polling off.
   * Tests give their own clock and scheduler.
   */
  constructor(windowUs: number, opts: { now?: Clock; schedule?: Schedule; sliceUs?: number } = {}) {
    this.#windowMs = checkWindow(windowUs) / 1000;
    this.#now = opts.now ?? performance.now.bind(performance);
    this.#schedule = opts.schedule ?? nextTurn;
    this.#sliceMs = (opts.sliceUs ?? SLICE_US) / 1000;
  }

  /** setWindow changes the window; an open window runs to its old end. */
  setWindow(windowUs: number): void {
    this.#windowMs = checkWindow(windowUs) / 1000;
  }

  /** windowUs is the window, in microseconds. */
  get windowUs(): number {
    return Math.round(this.#windowMs * 1000);
  }

  /** spinning tells whether a window is open now. */
  get spinning(): boolean {
    return this.#spinning;
  }

  /** backoff is how many small reads after a window that did not pay open none. */
  get backoff(): number {
    return this.#backoff;
  }

  /** spentSeconds is the time windows have been open, closed ones and the current one. */
  get spentSeconds(): number {
    const open = this.#spinning ? this.#now() - this.#openedAt : 0;
    return (this.#spentMs + open) / 1000;
  }

  /** reads counts the small reads seen while polling was on. */
  get reads(): number {
    return this.#reads;
  }

  /** windows counts the windows opened. */
  get windows(): number {
    return this.#windows;
  }

  /**
   * afterRead opens a window, or moves the end of the open one to a window from now, after a
   * small read, unless the backoff says to skip it. A read of BULK_READ bytes or more opens
   * none, and for BULK_QUIET_MS after it neither do small ones.
   */
  afterRead(bytes: number): void {
    const window = this.#windowMs;
    if (window === 0) return;
    const now = this.#now();
    if (bytes >= BULK_READ) {
      this.#bulkAt = now;
      return;
    }
    if (now - this.#bulkAt < BULK_QUIET_MS) return;
    this.#reads++;
    const sameMessage = now - this.#lastReadAt < SAME_MESSAGE_MS;
    this.#lastReadAt = now;
    if (this.#spinning) {
      this.#until = now + window;
      if (sameMessage) return;
      this.#caught++;
      if (++this.#stretchReads === PAY_READS) {
        if (now - this.#stretchAt > (PAY_READS * window) / 2) {
          // Kept open, but by reads too far apart to be worth it: let go at the next turn.
          this.#close(now, false);
          return;
        }
        this.#backoff >>= 1;
        this.#stretchAt = now;
        this.#stretchReads = 0;
      }
      return;
    }
    // The rest of a message opens no window and uses up no skip: it is not a read of its own.
    if (sameMessage) return;
    if (this.#skip > 0) {
      this.#skip--;
      return;
    }
    this.#until = now + window;
    this.#spinning = true;
    this.#caught = 0;
    this.#openedAt = now;
    this.#stretchAt = now;
    this.#stretchReads = 0;
    this.#windows++;
    // A window closed early may still have its turn scheduled; that turn serves this one.
    if (!this.#scheduled) {
      this.#scheduled = true;
      this.#schedule(this.#turn);
    }
  }

  #spin(): void {
    this.#scheduled = false;
    if (!this.#spinning) return;
    let now = this.#now();
    if (now < this.#until) {
      // Each turn allocates an immediate, and a turn with nothing to do takes about a
      // microsecond: turning flat out would make tens of kilobytes of garbage per round trip.
      // Waiting out a slice here first makes a few, for at most a slice's delay to a read.
      const end = Math.min(this.#until, now + this.#sliceMs);
      while (now < end) now = this.#now();
      this.#scheduled = true;
      this.#schedule(this.#turn);
      return;
    }
    const spent = now - this.#openedAt;
    // Half a window per read caught, and the uncharged half of the last wait.
    this.#close(now, this.#caught > 0 && spent <= ((this.#caught + 1) * this.#windowMs) / 2);
  }

  /**
   * #close ends the open window; a turn already scheduled finds it closed and schedules no
   * other. A window that did not pay makes the next reads skip polling.
   */
  #close(now: number, paid: boolean): void {
    this.#spinning = false;
    this.#spentMs += now - this.#openedAt;
    if (paid) {
      this.#backoff >>= 1;
    } else {
      this.#backoff = Math.min(MAX_BACKOFF, Math.max(1, this.#backoff * 2));
      this.#skip = this.#backoff;
    }
  }
}

/** SLICE_US is how long a turn of an open window waits before it lets the loop poll again. */
export const SLICE_US = 5;

/**
 * SAME_MESSAGE_US: a read this soon after the one before is the rest of the same message. Well
 * under the gap between a message and its answer, which takes a trip through another process.
 */
export const SAME_MESSAGE_US = 25;
const SAME_MESSAGE_MS = SAME_MESSAGE_US / 1000;

/**
 * PAY_READS is how many reads an open window catches between checks that it still pays. Few
 * enough that a change of pace is noticed within a couple of milliseconds; enough that one late
 * answer among them does not close a window that round trips keep paying for.
 */
export const PAY_READS = 8;

/** MAX_BACKOFF is the most small reads skipped after windows that did not pay. */
export const MAX_BACKOFF = 64;

/** BULK_READ is the size of a read that opens no window: a full TLS record's plaintext. */
export const BULK_READ = 16 * 1024;

/**
 * BULK_QUIET_MS is how long after a bulk read small reads open no window either. While a
 * transfer runs the loop is busy anyway, and the small reads beside it (yamux window updates,
 * the tail of a socket's data) would only spin the core its other end needs.
 */
export const BULK_QUIET_MS = 2;

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
