// Splicing a client's connection to an upstream one (gateway or peer) after an upgrade.
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { readInto } from '../net/read-into.ts';

/** SpliceResult counts the bytes relayed each way. */
export interface SpliceResult {
  bytesFromClient: number;
  bytesToClient: number;
}

/**
 * splice relays bytes both ways with back-pressure until either side closes. Bytes already
 * read past the heads (clientRest, upstreamRest) go first.
 *
 * arvados-client reads the 101 through a buffered reader and then copies from the raw
 * connection, so upstream bytes that reach it in the same read as our 101 head are lost. An SSH
 * client always speaks first after the upgrade, and by then it has finished reading the head,
 * so upstream bytes are held until the client's first bytes have arrived.
 */
export function splice(
  client: Duplex,
  clientRest: Buffer,
  upstream: Duplex,
  upstreamRest: Buffer,
): Promise<SpliceResult> {
  return new Promise((resolve) => {
    const result: SpliceResult = { bytesFromClient: clientRest.length, bytesToClient: 0 };
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      client.destroy();
      upstream.destroy();
      resolve(result);
    };
    // Done once both directions have ended and their last bytes have been written out.
    let finished = 0;
    const onFinish = () => {
      if (++finished === 2) finish();
    };

    const startUpstream = () => {
      if (upstreamRest.length > 0) {
        result.bytesToClient += upstreamRest.length;
        client.write(upstreamRest);
      }
      const count = (n: number) => { result.bytesToClient += n; };
      if (!relayFromSocket(upstream, client, count)) relay(upstream, client, true, count);
    };

    upstream.pause();
    if (clientRest.length > 0) upstream.write(clientRest);
    let started = false;
    const fromClient = (n: number) => {
      result.bytesFromClient += n;
      start();
    };
    const start = () => {
      if (started) return;
      started = true;
      startUpstream();
    };
    if (!relayIntoTls(client, upstream, fromClient)) relay(client, upstream, false, fromClient);
    if (clientRest.length > 0) start();
    // A client that ends without a byte has no head left to read: let the gateway's bytes go.
    client.once('end', start);

    client.once('finish', onFinish);
    upstream.once('finish', onFinish);
    // A side that closes after ending both ways cleanly has nothing left to lose, while the
    // other may still be writing out the last bytes it sent; only other closes end it all.
    const onClose = (side: Duplex) => () => {
      if (side.readableEnded && side.writableFinished) return;
      finish();
    };
    client.once('close', onClose(client));
    upstream.once('close', onClose(upstream));
    client.on('error', finish);
    upstream.on('error', finish);
  });
}

/** RELAY_HIGH_WATER is how many bytes may wait in a writer before its reader is paused. */
export const RELAY_HIGH_WATER = 256 * 1024;

/**
 * relay copies from one stream into another, passing the end on. It replaces pipe() for two
 * reasons the benchmarks showed. pipe() pauses the reader whenever write() returns false,
 * which for a 16 KiB writer limit is after nearly every chunk. And TLS hands a decrypted read
 * over as one chunk per 16 KiB record, each its own callback, so a write per chunk costs a
 * syscall and a wake-up of the reader on the other end per record. With batch set, writes
 * are held until the event loop has run every I/O callback of this turn (setImmediate) and
 * then leave as one writev. The reader is paused only once more than RELAY_HIGH_WATER bytes
 * wait, so memory per direction stays bounded.
 */
function relay(from: Duplex, to: Duplex, batch: boolean, count: (n: number) => void): void {
  let corked = false;
  let paused = false;
  const resume = () => {
    paused = false;
    from.resume();
  };
  const limit = () => {
    if (paused || to.writableLength <= RELAY_HIGH_WATER) return;
    paused = true;
    from.pause();
    to.once('drain', resume);
  };
  const flush = () => {
    if (!corked) return;
    corked = false;
    to.uncork();
    limit();
  };
  from.on('data', (chunk: Buffer) => {
    count(chunk.length);
    if (batch && !corked) {
      corked = true;
      to.cork();
      setImmediate(flush);
    }
    to.write(chunk);
    limit();
  });
  from.once('end', () => {
    flush();
    to.end();
  });
  from.resume();
}

// Bytes toward the client are gathered in slabs of this size; spare slabs are kept for reuse.
const SLAB_SIZE = 128 * 1024;
const SPARE_SLABS = 16;
const spareSlabs: Buffer[] = [];
// One read buffer per direction serves every session: each read is used or copied before its
// callback returns. The directions have their own, so that a write made from one direction's
// callback can never land a read of the other in the bytes it is still passing on.
const gatewayReads = Buffer.allocUnsafeSlow(64 * 1024);
const clientReads = Buffer.allocUnsafeSlow(64 * 1024);

function takeSlab(): Buffer {
  return spareSlabs.pop() ?? Buffer.allocUnsafeSlow(SLAB_SIZE);
}

function giveBack(slab: Buffer): void {
  if (spareSlabs.length < SPARE_SLABS) spareSlabs.push(slab);
}

/**
 * relayFromSocket is relay with batch set, for a socket source (the gateway's TLS socket),
 * without a fresh buffer per read: reads land in one shared buffer (readInto) and are copied
 * into a reused slab, which leaves as one write on the next setImmediate or when it fills. A
 * slab comes back for reuse when its write completes. It returns false, having changed
 * nothing, when the source cannot be read that way.
 */
function relayFromSocket(from: Duplex, to: Duplex, count: (n: number) => void): boolean {
  let slab: Buffer | null = null;
  let used = 0;
  let scheduled = false;
  let stopped = false;
  let waiting = false;

  const send = () => {
    if (slab === null || used === 0) return;
    const sent = slab;
    to.write(used === sent.length ? sent : sent.subarray(0, used), () => giveBack(sent));
    slab = null;
    used = 0;
  };
  const resume = () => {
    waiting = false;
    stopped = false;
    from.resume();
  };
  const flush = () => {
    scheduled = false;
    send();
    if (!stopped || waiting) return;
    // More than RELAY_HIGH_WATER waiting means the last write was refused, so 'drain' comes.
    if (to.writableLength <= RELAY_HIGH_WATER) {
      resume();
      return;
    }
    waiting = true;
    to.once('drain', resume);
  };
  const take = (data: Buffer) => {
    count(data.length);
    let off = 0;
    while (off < data.length) {
      if (slab === null) slab = takeSlab();
      const n = data.copy(slab, used, off);
      used += n;
      off += n;
      if (used === slab.length) send();
    }
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };

  const earlier = readInto(from, gatewayReads, (data) => {
    take(data);
    if (to.writableLength + used <= RELAY_HIGH_WATER) return true;
    stopped = true;
    return false;
  });
  if (earlier === null) return false;
  for (const chunk of earlier) take(chunk);
  from.once('end', () => {
    flush();
    to.end();
  });
  from.resume();
  return true;
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
function relayIntoTls(from: Duplex, to: Duplex, count: (n: number) => void): boolean {
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
