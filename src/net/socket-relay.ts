// Moving bytes from one stream to another as cheaply as Node allows: batched writes, reads
// into shared buffers instead of a fresh buffer each, and pausing only when much is waiting.
// The gateway's relays (splice after an upgrade, log bodies) are built from these.
import type { Duplex, Writable } from 'node:stream';
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { GatewayError } from '../errors.ts';
import { untilClose, type BodyReader } from '../http/body.ts';
import { readInto } from './read-into.ts';

/** RELAY_HIGH_WATER is how many bytes may wait in a writer before its reader is paused. */
export const RELAY_HIGH_WATER = 256 * 1024;

/**
 * relay copies from one stream into another, passing the end on. It replaces pipe(), which
 * pauses the reader whenever write() returns false: for a 16 KiB writer limit that is after
 * nearly every chunk. The reader is paused only once more than RELAY_HIGH_WATER bytes wait,
 * so memory stays bounded all the same.
 */
export function relay(from: Duplex, to: Duplex, count: (n: number) => void): void {
  let paused = false;
  const resume = () => {
    paused = false;
    from.resume();
  };
  from.on('data', (chunk: Buffer) => {
    count(chunk.length);
    to.write(chunk);
    if (paused || to.writableLength <= RELAY_HIGH_WATER) return;
    paused = true;
    from.pause();
    to.once('drain', resume);
  });
  from.once('end', () => to.end());
  from.resume();
}

// Bytes toward the client are gathered in slabs of this size; spare slabs are kept for reuse.
const SLAB_SIZE = 128 * 1024;
const SPARE_SLABS = 16;
// Reads smaller than this skip the batching when nothing else waits (see relayFromSocket).
const SMALL_READ = 2048;
const spareSlabs: Buffer[] = [];
// One read buffer per direction serves every session: each read is used or copied before its
// callback returns. The directions have their own, so that a write made from one direction's
// callback can never land a read of the other in the bytes it is still passing on.
// A TLS socket hands its reads over one record (16 KiB at most) at a time, whatever the buffer;
// a client's socket fills what it is given, and each read becomes one TLS write, so a larger
// buffer means fewer reads and fewer passes through the TLS layer. Against 64 KiB, in A/B runs
// of npm run bench, client→gateway took 0.9–1.1 instead of 1.1–1.2 CPU s/GB through 8 tunnel
// streams, and 0.6 instead of 0.9 directly.
const gatewayReads = Buffer.allocUnsafeSlow(64 * 1024);
const clientReads = Buffer.allocUnsafeSlow(256 * 1024);

function takeSlab(): Buffer {
  return spareSlabs.pop() ?? Buffer.allocUnsafeSlow(SLAB_SIZE);
}

function giveBack(slab: Buffer): void {
  if (spareSlabs.length < SPARE_SLABS) spareSlabs.push(slab);
}

/** Sink is where relayFromSocket writes: a socket, or an HTTP response. */
export type Sink = Pick<Writable, 'write' | 'end' | 'writableLength' | 'once'>;

/** FromSocketOptions shape relayFromSocket; without them it relays until the source ends. */
export interface FromSocketOptions {
  /** count is told how many body bytes were taken. */
  count?: (n: number) => void;
  /** body cuts what is passed on out of what is read; by default all of it, until the end. */
  body?: BodyReader;
  /** rest holds bytes read from the source earlier, which go first. */
  rest?: Buffer;
  /**
   * done is called once: when the body is complete, or the source ended, with its last bytes
   * written to the sink; with an error when the source ended before the body did or the body
   * was malformed. The caller then ends or destroys the sink. By default the sink is ended.
   */
  done?: (err?: Error) => void;
}

/**
 * relayFromSocket relays from a socket (the gateway's TLS socket) without a fresh buffer per
 * read: reads land in one shared buffer (readInto) and are copied into a reused slab. TLS
 * hands a decrypted read over one 16 KiB record at a time, so a write per read would cost a
 * system call, and a wake-up of the reader on the other end, per record; a slab instead
 * leaves as one write on the next setImmediate, once the event loop has run every read of
 * this turn, or when it fills. A slab comes back for reuse when its write completes. The
 * source is paused only once more than RELAY_HIGH_WATER bytes wait. A source that cannot be
 * read into a shared buffer is read the usual way, each read copied into the slabs alike.
 */
export function relayFromSocket(from: Duplex, to: Sink, options: FromSocketOptions = {}): void {
  const { count = () => {}, body = untilClose(), done = () => to.end() } = options;
  let slab: Buffer | null = null;
  let used = 0;
  let scheduled = false;
  let stopped = false;
  let waiting = false;
  let complete = false;
  // A socket is done with a write when its callback runs; a stream that keeps what it is
  // given (a PassThrough, say) is not, so only a socket's slabs are reused.
  const recycle = to instanceof Socket || (to as { socket?: unknown }).socket instanceof Socket;

  const send = () => {
    if (slab === null || used === 0) return;
    const sent = slab;
    const part = used === sent.length ? sent : sent.subarray(0, used);
    if (recycle) to.write(part, () => giveBack(sent));
    else to.write(part);
    slab = null;
    used = 0;
  };
  const resume = () => {
    waiting = false;
    stopped = false;
    if (!complete) from.resume();
  };
  const flush = () => {
    scheduled = false;
    send();
    if (!stopped || waiting || complete) return;
    // More than RELAY_HIGH_WATER waiting means the last write was refused, so 'drain' comes.
    if (to.writableLength <= RELAY_HIGH_WATER) {
      resume();
      return;
    }
    waiting = true;
    to.once('drain', resume);
  };
  const finish = (err?: Error) => {
    if (complete) return;
    complete = true;
    flush();
    done(err);
  };
  const copy = (part: Buffer) => {
    count(part.length);
    let off = 0;
    while (off < part.length) {
      if (slab === null) slab = takeSlab();
      const n = part.copy(slab, used, off);
      used += n;
      off += n;
      if (used === slab.length) send();
    }
  };
  // take passes a read on and says whether to go on reading.
  const take = (data: Buffer): boolean => {
    if (complete) return false;
    try {
      if (body.feed(data, copy)) {
        finish();
        return false;
      }
    } catch (err) {
      finish(err as Error);
      return false;
    }
    // A small read with nothing else waiting (a keystroke's echo, a prompt) goes out at once:
    // holding it for the turn to end only delays it. Bulk data comes in full TLS records and
    // still leaves in batches.
    if (!scheduled && used < SMALL_READ && to.writableLength === 0) {
      send();
      return true;
    }
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
    return true;
  };

  const onRead = (data: Buffer): boolean => {
    if (!take(data)) return false;
    if (to.writableLength + used <= RELAY_HIGH_WATER) return true;
    stopped = true;
    return false;
  };
  const earlier = readInto(from, gatewayReads, onRead);
  const first = [...(options.rest ? [options.rest] : []), ...(earlier ?? [])];
  // A body that is empty, or complete in what was read already, needs no read at all.
  for (const chunk of first.length > 0 ? first : [Buffer.alloc(0)]) {
    if (!take(chunk)) break;
  }
  if (complete) return;
  if (earlier === null) {
    from.on('data', (data: Buffer) => {
      if (!onRead(data)) from.pause();
    });
  }
  from.once('end', () => {
    finish(body.endsWithSource ? undefined
      : new GatewayError(502, 'gateway closed the connection before the body ended'));
  });
  from.resume();
}

// While less than this is still being written, relayIntoTls keeps reading.
const KEEP_READING_BELOW = 16 * 1024;

/**
 * relayIntoTls is relay for a socket source (the client) and a TLS destination (the gateway),
 * without a fresh buffer per read. A TLS socket encrypts what it is given before write()
 * returns, so a read can be handed over from the shared read buffer as it is, provided it is
 * not queued behind a write still in flight; a read that would be is copied. Reading stops
 * while KEEP_READING_BELOW or more are in flight, as a blocking copy loop would, so bulk data
 * is rarely copied. It returns false, having changed nothing, when the destination is not a
 * TLS socket or the source cannot be read that way.
 */
export function relayIntoTls(from: Duplex, to: Duplex, count: (n: number) => void): boolean {
  if (!(to instanceof TLSSocket)) return false;
  let stopped = false;
  const resume = () => {
    if (!stopped) return;
    stopped = false;
    from.resume();
  };
  const earlier = readInto(from, clientReads, (data) => {
    count(data.length);
    const idle = to.writableLength === 0 && to.writableCorked === 0;
    to.write(idle ? data : Buffer.from(data), resume);
    // Small writes in flight (keystrokes, round trips) do not stop reading: stopping and
    // starting costs two system calls and a turn of the event loop, a copy of a few bytes less.
    if (to.writableLength < KEEP_READING_BELOW) return true;
    stopped = true;
    return false;
  });
  if (earlier === null) return false;
  for (const chunk of earlier) {
    count(chunk.length);
    to.write(chunk);
  }
  from.once('end', () => to.end());
  from.resume();
  return true;
}
