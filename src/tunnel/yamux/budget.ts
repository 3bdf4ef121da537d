// A shared allowance for receive windows above the protocol's 256 KiB.
//
// A stream's receive window is what the peer may send before this side hands credit back, so
// it is also what a stream whose consumer has stopped reading may hold in memory. A window
// larger than 256 KiB saves CPU on busy streams, but granted to every stream it multiplies the
// worst case by the number of streams. Streams of sessions that share a WindowBudget start at
// 256 KiB and take the rest of their window from the budget once their consumer has taken half
// a window. They give it back when destroyed, which a stream does by itself once both ends are
// done and its data has been read; a consumer that drops a stream without reading it to the
// end must destroy it. What all streams may hold in their queues is then at most 256 KiB each,
// plus the budget; each stream's Readable may buffer up to its high-water mark and one frame
// more for its consumer.

/** WindowBudget is the receive window that streams may grant above 256 KiB, all together. */
export class WindowBudget {
  /** limit is the most that may be taken at once, in bytes. */
  readonly limit: number;
  #taken = 0;

  constructor(limit: number) {
    if (!Number.isSafeInteger(limit) || limit < 0) {
      throw new RangeError('yamux: a window budget must be a whole number of bytes');
    }
    this.limit = limit;
  }

  /** taken is how much is held by streams now. */
  get taken(): number {
    return this.#taken;
  }

  /** take reserves up to n bytes and returns how many it got, possibly none. */
  take(n: number): number {
    const got = Math.max(0, Math.min(n, this.limit - this.#taken));
    this.#taken += got;
    return got;
  }

  /** give returns what take handed out. */
  give(n: number): void {
    this.#taken -= n;
  }
}
