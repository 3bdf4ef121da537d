// One yamux stream as a node:stream Duplex. Flow control lives here: the receive window is
// handed back to the peer only as the consumer pulls data (from _read), and writes wait for the
// peer's window updates instead of polling.
import { Duplex } from 'node:stream';
import type { WindowBudget } from './budget.ts';
import {
  FLAG_FIN, FLAG_RST, INITIAL_STREAM_WINDOW, MAX_DATA_FRAME, MAX_WINDOW, TYPE_DATA,
  TYPE_WINDOW_UPDATE, YamuxError,
} from './const.ts';
import type { Session } from './session.ts';

/** WriteCallback is told when a frame has left through the socket, or why it could not. */
export type WriteCallback = (err?: Error | null) => void;

/** StreamLink is what a stream needs from its session; it is internal to this package. */
export interface StreamLink {
  /** maxWindow is the receive window this side grants per stream. */
  readonly maxWindow: number;
  /**
   * budget, when set, holds what maxWindow grants above 256 KiB: a stream starts at 256 KiB
   * and takes the rest once its consumer has taken half a window (see WindowBudget).
   */
  readonly budget: WindowBudget | null;
  /** isClosed tells whether the session is shut down. */
  isClosed(): boolean;
  /** writeFrame sends one frame; payload pieces are sent as they are, without copying. */
  writeFrame(
    type: number, flags: number, streamId: number, length: number,
    payload: Buffer[] | null, cb?: WriteCallback,
  ): void;
  /** release forgets a stream that is closed both ways or reset. */
  release(stream: Stream): void;
  /**
   * mustWait tells whether the stream's data should wait: the socket holds too much unsent,
   * or other streams already wait their turn.
   */
  mustWait(stream: Stream): boolean;
  /** waitToSend queues the stream for a turn: its kSend is called when there is room. */
  waitToSend(stream: Stream): void;
}

// Symbol-named methods are the session's handle on a stream; index.ts does not export them.
/** kOpen sends the SYN of a stream this side opened. */
export const kOpen = Symbol('yamux.open');
/** kAccept sends the ACK of a stream handed out by accept(). */
export const kAccept = Symbol('yamux.accept');
/** kExpect books a Data frame's length against the receive window. */
export const kExpect = Symbol('yamux.expect');
/** kData appends a piece of payload for the consumer. */
export const kData = Symbol('yamux.data');
/** kWindow adds a window update to the send window. */
export const kWindow = Symbol('yamux.window');
/** kFin records the peer's FIN. */
export const kFin = Symbol('yamux.fin');
/** kRemoteEnded tells whether the peer's FIN was seen. */
export const kRemoteEnded = Symbol('yamux.remoteEnded');
/** kTerminate ends a stream from the session side without sending RST. */
export const kTerminate = Symbol('yamux.terminate');
/** kSend goes on with a write that waited its turn for room in the socket. */
export const kSend = Symbol('yamux.send');

// Below this size payload is copied into a shared slab, so tiny frames neither pin whole socket
// chunks nor cost one queue entry each.
const COPY_BELOW = 4096;
const SLAB_SIZE = 16 * 1024;

// A lending stream's queue copies into slabs of this size that come back for reuse (see
// InboundQueue.recycle); this many spare ones are kept for all streams together.
const REUSED_SLAB_SIZE = 64 * 1024;
const SPARE_REUSED_SLABS = 64;
const spareSlabs: Buffer[] = [];

/** SlabUse is what a reusable slab still owes: bytes queued or pushed but not yet emitted. */
interface SlabUse {
  slab: Buffer;
  owner: InboundQueue;
  unemitted: number;
}

// Keyed weakly, so a slab whose bytes are never all emitted (read(n) may hand out copies of
// them, a destroyed stream drops its queue) is simply collected.
const slabUses = new WeakMap<ArrayBufferLike, SlabUse>();

/**
 * emitted tells the pool that a chunk has been emitted to 'data' listeners that are done with
 * it. A slab all of whose bytes have been emitted goes back to the spares.
 */
function emitted(chunk: Buffer): void {
  const use = slabUses.get(chunk.buffer);
  if (use === undefined) return;
  use.unemitted -= chunk.length;
  if (use.unemitted > 0) return;
  // Even the slab being filled goes back: a stream that has gone quiet holds none.
  use.owner.forget(use.slab);
  slabUses.delete(chunk.buffer);
  if (spareSlabs.length < SPARE_REUSED_SLABS) spareSlabs.push(use.slab);
}

/** InboundQueue holds received payload that the consumer has not pulled yet. */
class InboundQueue {
  #items: Buffer[] = [];
  #head = 0;
  #slab: Buffer | null = null;
  #slabUsed = 0;
  // Where the last item starts in the slab while it may still grow; -1 when it may not.
  #tailStart = -1;
  // Whether copies go into reusable slabs rather than fresh ones.
  #recycle = false;
  bytes = 0;

  get empty(): boolean {
    return this.#head === this.#items.length;
  }

  /**
   * recycle makes the queue copy into slabs that are reused once every byte in them has been
   * emitted, for a stream whose 'data' listeners are done with a chunk when they return. A
   * consumer that reads slowly otherwise turns every byte it is sent into garbage outside the
   * JavaScript heap, which the collector leaves alone for tens of megabytes.
   */
  recycle(): void {
    if (this.#recycle) return;
    this.#recycle = true;
    // The slab being filled, if any, is an ordinary one: what is queued in it stays there, and
    // what comes next goes into reusable slabs.
    this.#slab = null;
    this.#slabUsed = 0;
    this.#tailStart = -1;
  }

  /** add queues a piece; a lent one (a view of a buffer that will be reused) is copied. */
  add(piece: Buffer, lent: boolean): void {
    const len = piece.length;
    this.bytes += len;
    if (len >= COPY_BELOW) {
      // A view keeps its whole backing chunk alive; keep it only when it is most of the chunk.
      const keep = !lent && len * 2 >= piece.buffer.byteLength;
      if (keep || !this.#recycle) {
        this.#tailStart = -1;
        this.#items.push(keep ? piece : Buffer.from(piece));
        return;
      }
    }
    for (let off = 0; off < len;) {
      let slab = this.#slab;
      const room = slab === null ? 0 : slab.length - this.#slabUsed;
      // A small piece is not split: it would cost two queue entries.
      if (slab === null || room === 0 || (room < len - off && len < COPY_BELOW)) {
        slab = this.#newSlab();
      }
      const start = this.#slabUsed;
      const n = piece.copy(slab, start, off);
      off += n;
      this.#slabUsed = start + n;
      if (this.#recycle) slabUses.get(slab.buffer)!.unemitted += n;
      if (this.#tailStart >= 0) {
        this.#items[this.#items.length - 1] = slab.subarray(this.#tailStart, this.#slabUsed);
      } else {
        this.#tailStart = start;
        this.#items.push(slab.subarray(start, this.#slabUsed));
      }
    }
  }

  #newSlab(): Buffer {
    let slab: Buffer;
    if (this.#recycle) {
      slab = spareSlabs.pop() ?? Buffer.allocUnsafeSlow(REUSED_SLAB_SIZE);
      slabUses.set(slab.buffer, { slab, owner: this, unemitted: 0 });
    } else {
      slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
    }
    this.#slab = slab;
    this.#slabUsed = 0;
    this.#tailStart = -1;
    return slab;
  }

  /** forget is told that every byte of a reusable slab has been emitted: it is not this
   * queue's to fill any more. */
  forget(slab: Buffer): void {
    if (slab !== this.#slab) return;
    this.#slab = null;
    this.#slabUsed = 0;
    this.#tailStart = -1;
  }

  shift(): Buffer {
    const item = this.#items[this.#head++];
    this.bytes -= item.length;
    if (this.#head === this.#items.length) {
      this.#items.length = 0;
      this.#head = 0;
      this.#tailStart = -1;
    } else if (this.#head >= 1024 && this.#head * 2 >= this.#items.length) {
      this.#items.splice(0, this.#head);
      this.#head = 0;
    }
    return item;
  }

  clear(): void {
    this.#items = [];
    this.#head = 0;
    this.#slab = null;
    this.#tailStart = -1;
    this.bytes = 0;
  }
}

interface PendingWrite {
  bufs: Buffer[];
  index: number;
  offset: number;
  cb: WriteCallback;
}

/** Stream is one multiplexed, flow-controlled, half-closable byte stream of a Session. */
export class Stream extends Duplex {
  /** id is the stream id on the wire: odd when the client opened it, even for the server. */
  readonly id: number;
  /** session is the Session this stream belongs to. */
  readonly session: Session;

  readonly #link: StreamLink;
  // SYN or ACK still owed to the peer; it rides on the next frame this stream sends.
  #flags: number;
  #sendWindow = INITIAL_STREAM_WINDOW;
  // Bytes the peer may still send before it must wait for a window update.
  #recvWindow = INITIAL_STREAM_WINDOW;
  // Bytes booked against the window (received or in flight) that the consumer has not pulled.
  #unacked = 0;
  readonly #queue = new InboundQueue();
  #wantRead = false;
  #remoteFin = false;
  #endPushed = false;
  #localFin = false;
  #reset = false;
  #released = false;
  #pending: PendingWrite | null = null;
  #lendable = false;
  // The receive window this stream grants now, and how much of it came from the budget.
  #maxWindow: number;
  #fromBudget = 0;
  #mayGrow: boolean;
  // Bytes the consumer has taken ('data' emitted), counted until the stream grows.
  #taken = 0;

  /** The constructor is for Session only; get streams from open() and accept(). */
  constructor(session: Session, id: number, link: StreamLink, flags: number) {
    super({ allowHalfOpen: true });
    this.session = session;
    this.id = id;
    this.#link = link;
    this.#flags = flags;
    this.#mayGrow = link.budget !== null && link.maxWindow > INITIAL_STREAM_WINDOW;
    this.#maxWindow = this.#mayGrow ? INITIAL_STREAM_WINDOW : link.maxWindow;
  }

  /** sendWindow is how many bytes may be sent before the peer grants more. */
  get sendWindow(): number {
    return this.#sendWindow;
  }

  /** receiveWindow is the receive window this stream grants, in bytes. */
  get receiveWindow(): number {
    return this.#maxWindow;
  }

  /** bufferedInbound is how many received bytes wait for the consumer to pull them. */
  get bufferedInbound(): number {
    return this.#queue.bytes;
  }

  [kOpen](): void {
    this.#updateWindow();
  }

  [kAccept](): void {
    this.#updateWindow();
  }

  [kRemoteEnded](): boolean {
    return this.#remoteFin;
  }

  [kExpect](length: number): boolean {
    if (length > this.#recvWindow) return false;
    this.#recvWindow -= length;
    this.#unacked += length;
    return true;
  }

  /**
   * lendReads tells the stream that every 'data' listener it has is done with a chunk when it
   * returns (a TLS socket layered on the stream copies it in). Chunks emitted in flowing mode
   * may then be views of the session's read buffer, delivered without a copy, or of a slab
   * of the queue that is reused once its bytes have been emitted. Chunks a consumer takes
   * with read() (async iteration does) are its own, as without lending.
   */
  lendReads(): void {
    this.#lendable = true;
    this.#queue.recycle();
  }

  // A lending stream's listeners are done with a chunk once emit returns: its bytes count as
  // emitted then, so that the slab they were queued in can be reused. Only in flowing mode:
  // there the chunk goes nowhere else, while a chunk emitted by a read() the consumer called
  // is also returned to it, to keep.
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    const lent = event === 'data' && this.#lendable && this.readableFlowing === true;
    // read() emits 'data' too, so this counts every byte a consumer has taken.
    if (this.#mayGrow && event === 'data') this.#taken += (args[0] as Buffer).length;
    const result = super.emit(event, ...args);
    if (lent) emitted(args[0] as Buffer);
    return result;
  }

  [kData](piece: Buffer, lent = false): void {
    if (this.#reset || this.destroyed) return;
    // A consumer that is waiting takes the frame's bytes as they are: queueing would copy them
    // only to hand them over on the next line. A lent piece may only go where it is emitted
    // to 'data' listeners at once, not kept in the Readable's buffer.
    if (this.#wantRead && this.#queue.empty && (!lent || this.#emitsAtOnce())) {
      this.#wantRead = this.push(piece);
      if (this.destroyed) return;
      this.#unacked -= piece.length;
      this.#updateWindow();
      return;
    }
    this.#queue.add(piece, lent);
    if (this.#wantRead) this.#drain();
  }

  // Whether push() would emit a chunk to 'data' listeners before returning, rather than keep
  // it in the Readable's buffer: flowing, nothing buffered, and not inside _read (where
  // Readable defers emitting). Only then may a lent chunk be pushed.
  #emitsAtOnce(): boolean {
    if (!this.#lendable || this.readableFlowing !== true || this.readableLength !== 0) {
      return false;
    }
    if (this.listenerCount('data') === 0) return false;
    const state = (this as unknown as { _readableState?: { sync?: unknown } })._readableState;
    return state?.sync === false;
  }

  [kWindow](delta: number): boolean {
    const next = this.#sendWindow + delta;
    if (next > MAX_WINDOW) return false;
    this.#sendWindow = next;
    if (delta > 0 && this.#pending !== null) this.#pump();
    return true;
  }

  [kSend](): void {
    this.#pump();
  }

  [kFin](): boolean {
    if (this.#remoteFin) return false;
    this.#remoteFin = true;
    if (this.#localFin) this.#release();
    if (this.#queue.empty) this.#pushEnd();
    return true;
  }

  [kTerminate](err: Error | null): void {
    if (this.#reset) return;
    this.#reset = true;
    this.#release();
    this.destroy(err ?? undefined);
  }

  _read(): void {
    this.#wantRead = true;
    this.#drain();
  }

  _write(chunk: Buffer, _encoding: BufferEncoding, cb: WriteCallback): void {
    this.#startWrite([chunk], cb);
  }

  _writev(chunks: Array<{ chunk: Buffer }>, cb: WriteCallback): void {
    const bufs = new Array<Buffer>(chunks.length);
    for (let i = 0; i < chunks.length; i++) bufs[i] = chunks[i].chunk;
    this.#startWrite(bufs, cb);
  }

  _final(cb: WriteCallback): void {
    if (this.#reset || this.#link.isClosed()) {
      cb(this.#closedError());
      return;
    }
    this.#localFin = true;
    this.#link.writeFrame(TYPE_WINDOW_UPDATE, this.#takeFlags() | FLAG_FIN, this.id, 0, null, cb);
    if (this.#remoteFin) this.#release();
  }

  _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // The budget comes back only now: a stream closed both ways may still hold a window's
    // worth of unread data. Once both ends are done, the stream destroys itself.
    this.#mayGrow = false;
    if (this.#fromBudget > 0) this.#link.budget!.give(this.#fromBudget);
    this.#fromBudget = 0;
    if (!this.#released) {
      this.#reset = true;
      this.#release();
      this.#link.writeFrame(TYPE_WINDOW_UPDATE, this.#takeFlags() | FLAG_RST, this.id, 0, null);
    }
    this.#queue.clear();
    const pending = this.#pending;
    this.#pending = null;
    if (pending !== null) pending.cb(err ?? new YamuxError('ERR_YAMUX_STREAM_CLOSED'));
    cb(err);
  }

  #drain(): void {
    const queue = this.#queue;
    let pulled = 0;
    while (this.#wantRead && !queue.empty) {
      const item = queue.shift();
      pulled += item.length;
      this.#wantRead = this.push(item);
      if (this.destroyed) return;
    }
    if (queue.empty && this.#remoteFin) this.#pushEnd();
    if (pulled > 0) {
      this.#unacked -= pulled;
      this.#updateWindow();
    }
  }

  #pushEnd(): void {
    if (this.#endPushed) return;
    this.#endPushed = true;
    this.push(null);
  }

  // Hands credit back once the consumer has taken at least half a window, like hashicorp, so
  // a slow consumer keeps the peer stalled and a fast one costs few updates.
  #updateWindow(): void {
    if (this.#reset || this.#released || this.#link.isClosed()) return;
    const flags = this.#flags;
    if (this.#remoteFin && flags === 0) return;
    let delta = this.#maxWindow - this.#unacked - this.#recvWindow;
    if (flags === 0 && delta < this.#maxWindow / 2) return;
    // A consumer that has taken half a window is reading bulk data: the stream grows to the
    // full window if the budget allows. Bytes pushed to the Readable's buffer do not count, as
    // a consumer that has paused has not taken them.
    if (this.#mayGrow && flags === 0 && this.#taken >= INITIAL_STREAM_WINDOW / 2) {
      this.#mayGrow = false;
      this.#fromBudget = this.#link.budget!.take(this.#link.maxWindow - this.#maxWindow);
      this.#maxWindow += this.#fromBudget;
      delta += this.#fromBudget;
    }
    this.#flags = 0;
    this.#recvWindow += delta;
    this.#link.writeFrame(TYPE_WINDOW_UPDATE, flags, this.id, delta, null);
  }

  #takeFlags(): number {
    const flags = this.#flags;
    this.#flags = 0;
    return flags;
  }

  #closedError(): Error {
    return this.#link.isClosed()
      ? new YamuxError('ERR_YAMUX_SESSION_SHUTDOWN')
      : new YamuxError('ERR_YAMUX_STREAM_CLOSED');
  }

  #startWrite(bufs: Buffer[], cb: WriteCallback): void {
    if (this.#reset || this.#link.isClosed()) {
      cb(this.#closedError());
      return;
    }
    this.#pending = { bufs, index: 0, offset: 0, cb };
    this.#pump();
  }

  // Sends as much of the pending write as the window allows; a window update calls it again.
  #pump(): void {
    const p = this.#pending;
    if (p === null) return;
    const bufs = p.bufs;
    for (;;) {
      if (this.#link.isClosed()) {
        this.#pending = null;
        p.cb(this.#closedError());
        return;
      }
      skipEmpty(p);
      if (p.index === bufs.length) {
        // Only empty buffers were left, so no frame carries the callback.
        this.#pending = null;
        p.cb();
        return;
      }
      const room = Math.min(this.#sendWindow, MAX_DATA_FRAME);
      if (room === 0) return;
      if (this.#link.mustWait(this)) {
        this.#link.waitToSend(this);
        return;
      }
      const pieces: Buffer[] = [];
      let len = 0;
      while (len < room && p.index < bufs.length) {
        const buf = bufs[p.index];
        const take = Math.min(buf.length - p.offset, room - len);
        pieces.push(take === buf.length ? buf : buf.subarray(p.offset, p.offset + take));
        len += take;
        p.offset += take;
        if (p.offset === buf.length) {
          p.index++;
          p.offset = 0;
        }
      }
      skipEmpty(p);
      const last = p.index === bufs.length;
      this.#sendWindow -= len;
      if (last) this.#pending = null;
      this.#link.writeFrame(
        TYPE_DATA, this.#takeFlags(), this.id, len, pieces, last ? p.cb : undefined,
      );
      if (last) return;
    }
  }

  #release(): void {
    if (this.#released) return;
    this.#released = true;
    // No window update follows, so there is nothing left to grow or to count towards it.
    this.#mayGrow = false;
    this.#link.release(this);
  }
}

function skipEmpty(p: PendingWrite): void {
  while (p.index < p.bufs.length && p.bufs[p.index].length === p.offset) {
    p.index++;
    p.offset = 0;
  }
}
