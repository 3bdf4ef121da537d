// Session and stream behaviour over real loopback TCP: two of our sessions against each other,
// or one session against a raw peer that writes and reads frames by hand.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { afterEach, describe, it } from 'node:test';
import {
  FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, INITIAL_STREAM_WINDOW, TYPE_DATA, TYPE_GO_AWAY,
  TYPE_PING, TYPE_WINDOW_UPDATE,
} from '../../../src/tunnel/yamux/const.ts';
import { encodeHeader, FrameDecoder, type FrameHeader } from '../../../src/tunnel/yamux/frame.ts';
import {
  Session, type SessionOptions, type Stream, YamuxError,
} from '../../../src/tunnel/yamux/index.ts';
import { SEND_QUEUE_LIMIT } from '../../../src/tunnel/yamux/session.ts';
import { loopbackPair } from './loopback.ts';

const WAIT_MS = 10_000;
const T = { timeout: 30_000 };
const cleanups: Array<() => void> = [];

afterEach(() => {
  for (const fn of cleanups.splice(0)) fn();
});

async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const [a, b] = await loopbackPair();
  cleanups.push(() => {
    a.destroy();
    b.destroy();
  });
  return [a, b];
}

interface Pair {
  client: Session;
  server: Session;
  clientSocket: net.Socket;
  serverSocket: net.Socket;
}

async function sessionPair(
  clientOpts: Partial<SessionOptions> = {}, serverOpts: Partial<SessionOptions> = {},
): Promise<Pair> {
  const [clientSocket, serverSocket] = await socketPair();
  const base = { keepAliveIntervalMs: 0 };
  const client = new Session(clientSocket, { ...base, ...clientOpts, role: 'client' });
  const server = new Session(serverSocket, { ...base, ...serverOpts, role: 'server' });
  cleanups.push(() => {
    client.close();
    server.close();
  });
  return { client, server, clientSocket, serverSocket };
}

type Frame = FrameHeader & { payload: Buffer };

// RawPeer speaks yamux by hand so tests can send what our Session never would.
class RawPeer {
  readonly socket: net.Socket;
  readonly frames: Frame[] = [];
  ended = false;
  #wake: Array<() => void> = [];

  constructor(socket: net.Socket) {
    this.socket = socket;
    let current: Frame | null = null;
    let parts: Buffer[] = [];
    const decoder = new FrameDecoder({
      onFrame: (type, flags, streamId, length) => {
        const f: Frame = { version: 0, type, flags, streamId, length, payload: Buffer.alloc(0) };
        if (type === TYPE_DATA && length > 0) {
          current = f;
          parts = [];
          return true;
        }
        this.#add(f);
        return false;
      },
      onData: (piece, last) => {
        parts.push(Buffer.from(piece));
        if (last && current !== null) {
          current.payload = Buffer.concat(parts);
          this.#add(current);
          current = null;
        }
      },
      onError: (err) => {
        throw err;
      },
    });
    socket.on('data', (d: Buffer) => decoder.push(d));
    socket.on('end', () => {
      this.ended = true;
      this.#notify();
    });
    socket.on('error', () => {});
  }

  send(type: number, flags: number, id: number, length: number, payload?: Buffer): void {
    const header = encodeHeader(type, flags, id, length);
    this.socket.write(payload === undefined ? header : Buffer.concat([header, payload]));
  }

  async waitFor(what: string, pred: (f: Frame) => boolean): Promise<Frame> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const found = this.frames.find(pred);
      if (found !== undefined) return found;
      if (this.ended) throw new Error(`peer ended before ${what}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.#wake.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async waitEnd(): Promise<void> {
    if (!this.ended) await once(this.socket, 'end', { signal: AbortSignal.timeout(WAIT_MS) });
  }

  #add(f: Frame): void {
    this.frames.push(f);
    this.#notify();
  }

  #notify(): void {
    for (const wake of this.#wake.splice(0)) wake();
  }
}

async function rawPair(opts: Partial<SessionOptions> & Pick<SessionOptions, 'role'>): Promise<{
  session: Session; raw: RawPeer;
}> {
  const [a, b] = await socketPair();
  const session = new Session(a, { keepAliveIntervalMs: 0, ...opts });
  cleanups.push(() => session.close());
  return { session, raw: new RawPeer(b) };
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

// Reads to the end through events: for-await would destroy the Duplex when reading ends, which
// resets a stream whose writable side is still in use.
function collect(stream: Stream, onChunk: (chunk: Buffer) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('stream did not end')), WAIT_MS);
    stream.on('data', onChunk);
    stream.once('end', () => {
      clearTimeout(t);
      resolve();
    });
    stream.once('error', (err) => {
      clearTimeout(t);
      reject(err);
    });
  });
}

async function shaOf(stream: Stream): Promise<{ sha: string; bytes: number }> {
  const h = createHash('sha256');
  let bytes = 0;
  await collect(stream, (chunk) => {
    h.update(chunk);
    bytes += chunk.length;
  });
  return { sha: h.digest('hex'), bytes };
}

async function readText(stream: Stream): Promise<string> {
  const parts: Buffer[] = [];
  await collect(stream, (chunk) => parts.push(chunk));
  return Buffer.concat(parts).toString();
}

function serveEcho(session: Session): void {
  void (async () => {
    for (;;) {
      let stream: Stream;
      try {
        stream = await session.accept();
      } catch {
        return;
      }
      stream.on('error', () => {});
      stream.pipe(stream);
    }
  })();
}

function streamError(stream: Stream): Promise<Error> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no stream error')), WAIT_MS);
    stream.once('error', (err) => {
      clearTimeout(t);
      resolve(err);
    });
  });
}

async function until(what: string, cond: () => boolean): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function closeEvent(session: Session): Promise<Error | undefined> {
  return once(session, 'close', { signal: AbortSignal.timeout(WAIT_MS) })
    .then(([err]) => err as Error | undefined);
}

describe('yamux session: streams', () => {
  it('opens and accepts streams in both directions with the right id parity', T, async () => {
    const { client, server } = await sessionPair();
    const c1 = client.open();
    const c2 = client.open();
    const s1 = server.open();
    assert.deepEqual([c1.id, c2.id, s1.id], [1, 3, 2]);
    const a1 = await server.accept();
    const a2 = await server.accept();
    const b1 = await client.accept();
    assert.deepEqual([a1.id, a2.id, b1.id], [1, 3, 2]);
    assert.equal(a1.session, server);
    c1.end('from client');
    s1.end('from server');
    assert.equal(await readText(a1), 'from client');
    assert.equal(await readText(b1), 'from server');
    assert.equal(client.numStreams, 3);
  });

  for (const opener of ['client', 'server'] as const) {
    it(`carries 1 B to 8 MiB intact both ways on streams opened by the ${opener}`, T, async () => {
      const pair = await sessionPair();
      const [openSide, echoSide] = opener === 'client'
        ? [pair.client, pair.server] : [pair.server, pair.client];
      serveEcho(echoSide);
      const sizes = [1, 1000, 65_535, 65_536, 65_537, 262_144, 262_145, 1 << 20, 8 << 20];
      await Promise.all(sizes.map(async (size) => {
        const data = randomBytes(size);
        const stream = openSide.open();
        const got = shaOf(stream);
        // Uneven writes exercise _writev batching and frame splitting.
        let pos = 0;
        let step = 1;
        while (pos < size) {
          stream.write(data.subarray(pos, pos + step));
          pos += step;
          step = Math.min(step * 7 + 3, 300_000);
        }
        stream.end();
        const { sha: echoed, bytes } = await got;
        assert.equal(bytes, size);
        assert.equal(echoed, sha(data), `sha256 of the ${size} B echo`);
      }));
      await until('streams are released', () =>
        pair.client.numStreams === 0 && pair.server.numStreams === 0);
      assert.ok(openSide.bytesOut >= sizes.reduce((a, b) => a + b, 0));
      assert.equal(openSide.bytesIn, openSide.bytesOut);
    });
  }

  it('half-closes: after end() on one side the other side still writes', T, async () => {
    const { client, server } = await sessionPair();
    for (const first of ['client', 'server'] as const) {
      const opened = client.open();
      opened.write('syn');
      const accepted = await server.accept();
      const [closer, other] = first === 'client' ? [opened, accepted] : [accepted, opened];
      const bothClosed = Promise.all([once(closer, 'close'), once(other, 'close')]);
      const otherEnded = once(other, 'end');
      const otherText = readText(other);
      const closerText = readText(closer);
      closer.end('last words');
      await otherEnded;
      assert.equal(other.writable, true, 'the other side can still write after the FIN');
      other.write('still ');
      other.end('talking');
      assert.equal(await closerText, first === 'client' ? 'still talking' : 'synstill talking');
      assert.equal(await otherText, first === 'client' ? 'synlast words' : 'last words');
      await bothClosed;
    }
    await until('streams are released', () => client.numStreams === 0 && server.numStreams === 0);
  });

  it('destroy() sends RST and the peer stream fails with a reset error', T, async () => {
    const { client, server } = await sessionPair();
    const opened = client.open();
    opened.write('x');
    const accepted = await server.accept();
    const failed = streamError(opened);
    accepted.destroy();
    const err = await failed;
    assert.ok(err instanceof YamuxError);
    assert.equal(err.code, 'ERR_YAMUX_STREAM_RESET');
    assert.equal(err.message, 'stream reset');
    await until('streams are released', () => client.numStreams === 0 && server.numStreams === 0);
    // The session itself is unharmed.
    serveEcho(server);
    const again = client.open();
    again.end('ok');
    assert.equal(await readText(again), 'ok');
  });

  it('pings and reports a round-trip time', T, async () => {
    const { client, server } = await sessionPair();
    const rtt = await client.ping();
    assert.equal(typeof rtt, 'number');
    assert.ok(rtt >= 0);
    assert.ok((await server.ping()) >= 0);
  });
});

describe('yamux session: GoAway', () => {
  for (const sender of ['server', 'client'] as const) {
    it(`after the ${sender} sends GoAway, its peer cannot open but streams go on`, T, async () => {
      const pair = await sessionPair();
      const [goer, peer] = sender === 'server'
        ? [pair.server, pair.client] : [pair.client, pair.server];
      serveEcho(goer);
      serveEcho(peer);
      const existing = peer.open();
      existing.write('before ');
      // GoAway must not overtake the SYN, or the stream would be refused.
      await until('the stream reached the other side', () => goer.numStreams === 1);
      const gotGoAway = once(peer, 'goaway', { signal: AbortSignal.timeout(WAIT_MS) });
      goer.goAway();
      assert.equal(goer.localGoAway, true);
      const [reason] = await gotGoAway;
      assert.equal(reason, 0);
      assert.equal(peer.remoteGoAway, true);
      assert.throws(() => peer.open(), (err: unknown) =>
        err instanceof YamuxError && err.code === 'ERR_YAMUX_REMOTE_GOAWAY' &&
        err.message === 'remote end is not accepting connections');
      existing.end('after');
      assert.equal(await readText(existing), 'before after');
      // The side that sent GoAway may still open streams to its peer.
      const reverse = goer.open();
      reverse.end('reverse');
      assert.equal(await readText(reverse), 'reverse');
      assert.equal(pair.client.closed, false);
      assert.equal(pair.server.closed, false);
    });
  }

  it('refuses SYNs that arrive after goAway() with RST', T, async () => {
    const { client, server } = await sessionPair();
    serveEcho(server);
    const before = client.open();
    before.write('a');
    await until('the first stream is accepted', () => server.numStreams === 1);
    server.goAway();
    // This SYN leaves before the GoAway can reach the client, so the server must reset it.
    const late = client.open();
    const err = await streamError(late);
    assert.equal((err as YamuxError).code, 'ERR_YAMUX_STREAM_RESET');
    before.end('b');
    assert.equal(await readText(before), 'ab');
  });
});

describe('yamux session: limits', () => {
  it('resets inbound streams beyond the accept backlog', T, async () => {
    const { client, server } = await sessionPair({}, { acceptBacklog: 2 });
    const streams = [client.open(), client.open(), client.open()];
    const failures: Array<Error | null> = [null, null, null];
    streams.forEach((stream, i) => {
      stream.on('error', (err) => {
        failures[i] = err;
      });
      stream.write('hi');
    });
    await until('the third stream is reset', () => failures[2] !== null);
    assert.equal((failures[2] as YamuxError).code, 'ERR_YAMUX_STREAM_RESET');
    // Frames arrive in order, so a reset of the first two would have come before this one.
    assert.deepEqual(failures.slice(0, 2), [null, null]);
    const a = await server.accept();
    const b = await server.accept();
    assert.deepEqual([a.id, b.id], [1, 3]);
    assert.equal(server.numStreams, 2);
    streams[0].end();
    assert.equal(await readText(a), 'hi');
  });

  it('caps open streams with maxStreams on both ends', T, async () => {
    const { client, server } = await sessionPair({ maxStreams: 2 }, { maxStreams: 1 });
    const first = client.open();
    const second = client.open();
    assert.throws(() => client.open(), (err: unknown) =>
      err instanceof YamuxError && err.code === 'ERR_YAMUX_TOO_MANY_STREAMS');
    const reset = await streamError(second);
    assert.equal((reset as YamuxError).code, 'ERR_YAMUX_STREAM_RESET');
    const accepted = await server.accept();
    assert.equal(accepted.id, first.id);
  });

  it('stops the sender at the window while the reader does not read', T, async () => {
    // The tap below reads the server's socket, so the session must leave its 'data' events.
    const { client, server, serverSocket } = await sessionPair({}, { readInPlace: false });
    // Count Data payload as it comes off the wire, independent of the session's bookkeeping.
    let wireData = 0;
    const tap = new FrameDecoder({
      onFrame: (type, _flags, _id, length) => {
        if (type === TYPE_DATA) wireData += length;
        return false;
      },
      onData: () => {},
      onError: (err) => {
        throw err;
      },
    });
    serverSocket.on('data', (d: Buffer) => tap.push(d));
    const data = randomBytes(1 << 20);
    const sender = client.open();
    sender.write(data);
    sender.end();
    const reader = await server.accept();
    await until('the sender used the whole window', () => sender.sendWindow === 0);
    await until('the window reached the reader',
      () => reader.bufferedInbound === INITIAL_STREAM_WINDOW);
    // Give a misbehaving sender the chance to overrun before checking that it did not.
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(wireData, INITIAL_STREAM_WINDOW);
    assert.equal(reader.bufferedInbound, INITIAL_STREAM_WINDOW);
    assert.equal(server.bytesIn, INITIAL_STREAM_WINDOW);
    const { sha: got, bytes } = await shaOf(reader);
    assert.equal(bytes, data.length);
    assert.equal(got, sha(data));
    assert.equal(wireData, data.length);
  });

  it('grants a larger maxStreamWindow to the peer and holds it to that', T, async () => {
    const window = 1 << 20;
    const { client, server } = await sessionPair({}, { maxStreamWindow: window });
    const data = randomBytes(4 << 20);
    const sender = client.open();
    sender.end(data);
    const reader = await server.accept();
    await until('the sender used the larger window', () => sender.sendWindow === 0);
    await until('the window reached the reader', () => reader.bufferedInbound === window);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(server.bytesIn, window);
    const { sha: got } = await shaOf(reader);
    assert.equal(got, sha(data));
  });

  it('closes with a write timeout when the socket never drains', T, async () => {
    const { session, raw } = await rawPair({ role: 'client', connectionWriteTimeoutMs: 200 });
    raw.socket.pause();
    const stream = session.open();
    stream.on('error', () => {});
    raw.send(TYPE_WINDOW_UPDATE, FLAG_ACK, stream.id, 0x7000_0000);
    await until('the window update arrived', () => stream.sendWindow > INITIAL_STREAM_WINDOW);
    const closed = closeEvent(session);
    const chunk = Buffer.alloc(1 << 20);
    for (let i = 0; i < 256; i++) stream.write(chunk);
    const err = await closed;
    assert.equal((err as YamuxError).code, 'ERR_YAMUX_WRITE_TIMEOUT');
    assert.equal(err?.message, 'connection write timeout');
  });
  it('holds streams\' data back while the socket has SEND_QUEUE_LIMIT unsent', T, async () => {
    // 128 streams each send a whole initial window to a peer that is not reading: 32 MiB,
    // more than the kernel's buffers take, so the rest would wait in the socket.
    const [a, b] = await socketPair();
    const session = new Session(a, { role: 'server', keepAliveIntervalMs: 0 });
    cleanups.push(() => session.close());
    b.pause();
    const streams = 128;
    let written = 0;
    let failed: Error | null | undefined;
    for (let i = 0; i < streams; i++) {
      const stream = session.open();
      stream.on('error', () => {});
      stream.write(Buffer.alloc(INITIAL_STREAM_WINDOW, i), (err) => {
        if (err) failed = err;
        else written++;
      });
    }
    // Let every stream send what it may, then see what waits in the socket.
    let last = -1;
    await until('the socket to stop growing', () => {
      const now = a.writableLength;
      const steady = now === last && now > 0;
      last = now;
      return steady;
    });
    assert.ok(a.writableLength <= SEND_QUEUE_LIMIT + 128 * 1024,
      `${a.writableLength} bytes wait in the socket`);
    assert.ok(written < streams, 'some streams wait');

    // The peer reads: every write completes and the session stays up.
    let received = 0;
    b.on('data', (d: Buffer) => { received += d.length; });
    b.resume();
    await until('every write to complete', () => written === streams || failed !== undefined);
    assert.equal(failed, undefined);
    await until('the peer to have it all', () => received >= streams * INITIAL_STREAM_WINDOW);
    assert.equal(session.closed, false);
  });
});

describe('yamux session: a peer that reads slowly', () => {
  // The session's socket is a Duplex that takes each batch of writes at a fixed pace,
  // 256 KiB every 20 ms, as a peer reading a slow link would: the queue never empties while
  // streams keep writing, so 'drain' never comes until the end.
  class SlowLink extends Duplex {
    taken = 0;
    _read(): void {}
    _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
      let left = chunks.reduce((n, c) => n + c.chunk.length, 0);
      const tick = () => {
        const n = Math.min(left, 256 * 1024);
        left -= n;
        this.taken += n;
        if (left > 0) setTimeout(tick, 20);
        else cb();
      };
      setTimeout(tick, 20);
    }
  }

  it('stays up while the peer takes data steadily, whatever is queued', T, async () => {
    const link = new SlowLink();
    const session = new Session(link, {
      role: 'client', keepAliveIntervalMs: 0, connectionWriteTimeoutMs: 1000,
    });
    cleanups.push(() => session.close());
    const closed = closeEvent(session).catch(() => undefined);
    const streams = 8;
    const each = 4 << 20;
    // The peer grants each stream room for all of it.
    let done = 0;
    for (let i = 0; i < streams; i++) {
      const stream = session.open();
      stream.on('error', () => {});
      link.push(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_ACK, stream.id, each));
      await until('the window', () => stream.sendWindow >= each);
      stream.end(Buffer.alloc(each, i), () => { done++; });
    }
    // 32 MiB at 12.8 MB/s: well over the write timeout.
    await until('every stream to be written', () => done === streams || session.closed);
    assert.equal(session.closed, false, 'closed with a write timeout');
    assert.ok(link.taken >= streams * each);
    session.close();
    await closed;
  });
});

describe('yamux session: keepalive', () => {
  it('closes with keepalive timeout when the peer stops answering pings', T, async () => {
    const { session, raw } = await rawPair({
      role: 'client', keepAliveIntervalMs: 20, connectionWriteTimeoutMs: 150,
    });
    const closed = closeEvent(session);
    const ping = await raw.waitFor('a keepalive ping', (f) => f.type === TYPE_PING);
    assert.equal(ping.flags, FLAG_SYN);
    const err = await closed;
    assert.ok(err instanceof YamuxError);
    assert.equal(err.code, 'ERR_YAMUX_KEEPALIVE_TIMEOUT');
    assert.equal(err.message, 'keepalive timeout');
    assert.equal(session.closed, true);
  });

  it('stays up while the peer answers keepalive pings', T, async () => {
    // A generous reply limit: this test is about answering, not about a loaded machine's speed.
    const opts = { keepAliveIntervalMs: 20, connectionWriteTimeoutMs: 5000 };
    const { client, server, serverSocket } =
      await sessionPair(opts, { ...opts, readInPlace: false });
    let pings = 0;
    const tap = new FrameDecoder({
      onFrame: (type, flags) => {
        if (type === TYPE_PING && flags === FLAG_SYN) pings++;
        return false;
      },
      onData: () => {},
      onError: (err) => {
        throw err;
      },
    });
    serverSocket.on('data', (d: Buffer) => tap.push(d));
    await until('several keepalive pings went by', () => pings >= 10);
    assert.equal(client.closed, false);
    assert.equal(server.closed, false);
  });
});

describe('yamux session: raw peers', () => {
  it('sends SYN as a window update when opening, and answers pings', T, async () => {
    const { session, raw } = await rawPair({ role: 'client' });
    const stream = session.open();
    const syn = await raw.waitFor('the SYN', (f) => f.streamId === stream.id);
    assert.deepEqual(
      [syn.type, syn.flags, syn.length], [TYPE_WINDOW_UPDATE, FLAG_SYN, 0],
    );
    raw.send(TYPE_PING, FLAG_SYN, 0, 0x1234_5678);
    const pong = await raw.waitFor('the pong', (f) => f.type === TYPE_PING);
    assert.deepEqual([pong.flags, pong.length], [FLAG_ACK, 0x1234_5678]);
  });

  it('delivers a Data frame carrying SYN, payload and FIN, then ACKs on accept', T, async () => {
    const { session, raw } = await rawPair({ role: 'server' });
    raw.send(TYPE_DATA, FLAG_SYN | FLAG_FIN, 1, 5, Buffer.from('hello'));
    const stream = await session.accept();
    const ack = await raw.waitFor('the ACK', (f) => f.streamId === 1);
    assert.deepEqual([ack.type, ack.flags], [TYPE_WINDOW_UPDATE, FLAG_ACK]);
    assert.equal(await readText(stream), 'hello');
    stream.end('bye');
    const reply = await raw.waitFor('the reply', (f) => f.type === TYPE_DATA);
    assert.equal(reply.payload.toString(), 'bye');
    const fin = await raw.waitFor('the FIN', (f) => (f.flags & FLAG_FIN) !== 0);
    assert.equal(fin.streamId, 1);
    await until('the stream is released', () => session.numStreams === 0);
  });

  it('ignores frames for a stream it reset', T, async () => {
    const { session, raw } = await rawPair({ role: 'server' });
    let protocolErrors = 0;
    session.on('protocol-error', () => protocolErrors++);
    raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0);
    const stream = await session.accept();
    stream.destroy();
    await raw.waitFor('the RST', (f) => (f.flags & FLAG_RST) !== 0 && f.streamId === 1);
    raw.send(TYPE_DATA, 0, 1, 1000, Buffer.alloc(1000));
    raw.send(TYPE_WINDOW_UPDATE, 0, 1, 4096);
    raw.send(TYPE_DATA, FLAG_FIN, 1, 0);
    raw.send(TYPE_PING, FLAG_SYN, 0, 77);
    await raw.waitFor('the pong', (f) => f.type === TYPE_PING && f.length === 77);
    assert.equal(session.closed, false);
    assert.equal(protocolErrors, 0);
    assert.equal(session.bytesIn, 0);
  });

  const malformed: Array<{
    name: string; code: string; send: (raw: RawPeer) => void;
  }> = [
    {
      name: 'a bad version byte',
      code: 'ERR_YAMUX_INVALID_VERSION',
      send: (raw) => {
        const h = encodeHeader(TYPE_PING, FLAG_SYN, 0, 1);
        h[0] = 1;
        raw.socket.write(h);
      },
    },
    {
      name: 'an unknown frame type',
      code: 'ERR_YAMUX_INVALID_TYPE',
      send: (raw) => raw.send(7, 0, 0, 0),
    },
    {
      name: 'a SYN with the wrong id parity',
      code: 'ERR_YAMUX_INVALID_STREAM_ID',
      send: (raw) => raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0),
    },
    {
      name: 'a SYN for stream 0',
      code: 'ERR_YAMUX_INVALID_STREAM_ID',
      send: (raw) => raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 0, 0),
    },
    {
      name: 'a duplicate SYN',
      code: 'ERR_YAMUX_DUPLICATE_STREAM',
      send: (raw) => {
        raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0);
        raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0);
      },
    },
    {
      name: 'data for a stream never opened',
      code: 'ERR_YAMUX_UNKNOWN_STREAM',
      send: (raw) => raw.send(TYPE_DATA, 0, 5, 3, Buffer.from('abc')),
    },
    {
      name: 'a Data frame longer than the receive window (header only)',
      code: 'ERR_YAMUX_RECV_WINDOW_EXCEEDED',
      send: (raw) => {
        raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0);
        raw.send(TYPE_DATA, 0, 1, INITIAL_STREAM_WINDOW + 1);
      },
    },
    {
      name: 'data past the window over several frames',
      code: 'ERR_YAMUX_RECV_WINDOW_EXCEEDED',
      send: (raw) => {
        raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0);
        const part = Buffer.alloc(INITIAL_STREAM_WINDOW / 2);
        for (let i = 0; i < 3; i++) raw.send(TYPE_DATA, 0, 1, part.length, part);
      },
    },
    {
      name: 'a window update overflowing 32 bits',
      code: 'ERR_YAMUX_SEND_WINDOW_OVERFLOW',
      send: (raw) => {
        raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0);
        raw.send(TYPE_WINDOW_UPDATE, 0, 1, 0xffff_ffff);
      },
    },
    {
      name: 'a second FIN',
      code: 'ERR_YAMUX_UNEXPECTED_FLAG',
      send: (raw) => {
        raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_FIN, 1, 0);
        raw.send(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0);
      },
    },
  ];
  for (const c of malformed) {
    it(`answers ${c.name} with GoAway(protocol error) and closes`, T, async () => {
      const { session, raw } = await rawPair({ role: 'server' });
      const reported: Error[] = [];
      session.on('protocol-error', (err: Error) => reported.push(err));
      const closed = closeEvent(session);
      c.send(raw);
      const goAway = await raw.waitFor('GoAway', (f) => f.type === TYPE_GO_AWAY);
      assert.deepEqual([goAway.streamId, goAway.length], [0, 1]);
      const err = await closed;
      assert.equal((err as YamuxError).code, c.code);
      assert.equal(reported.length, 1);
      assert.equal(reported[0], err);
      assert.equal(session.closed, true);
      await raw.waitEnd();
    });
  }

  it('contains a stream listener that throws: GoAway(internal error), no escape', T, async () => {
    const { session, raw } = await rawPair({ role: 'server' });
    raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0);
    const stream = await session.accept();
    stream.on('error', () => {});
    const boom = new Error('listener bug');
    stream.on('data', () => {
      throw boom;
    });
    await new Promise((resolve) => setImmediate(resolve));
    const closed = closeEvent(session);
    raw.send(TYPE_DATA, 0, 1, 3, Buffer.from('abc'));
    const err = await closed;
    assert.equal((err as YamuxError).code, 'ERR_YAMUX_INTERNAL');
    assert.equal(err?.cause, boom);
    const goAway = await raw.waitFor('GoAway', (f) => f.type === TYPE_GO_AWAY);
    assert.equal(goAway.length, 2);
  });

  it('closes the session when the peer sends GoAway with an error reason', T, async () => {
    const { session, raw } = await rawPair({ role: 'client' });
    const closed = closeEvent(session);
    raw.send(TYPE_GO_AWAY, 0, 0, 2);
    assert.equal((await closed as YamuxError).code, 'ERR_YAMUX_REMOTE_INTERNAL_ERROR');
  });
});

describe('yamux session: shutdown', () => {
  it('close() ends streams, accept() and ping(), and the peer fails its streams', T, async () => {
    const { client, server } = await sessionPair();
    const opened = client.open();
    opened.write('x');
    const accepted = await server.accept();
    let openedError: Error | null = null;
    opened.on('error', (err) => {
      openedError = err;
    });
    const openedClosed = once(opened, 'close');
    const acceptedErr = streamError(accepted);
    const pendingAccept = client.accept();
    const serverClosed = closeEvent(server);
    let clientCloses = 0;
    client.on('close', () => clientCloses++);
    client.close();
    client.close();
    assert.equal(clientCloses, 1);
    assert.equal(client.closed, true);
    await openedClosed;
    assert.equal(opened.destroyed, true);
    assert.equal(openedError, null, 'a local close() destroys streams without an error');
    await assert.rejects(pendingAccept, { code: 'ERR_YAMUX_SESSION_SHUTDOWN' });
    await assert.rejects(client.accept(), { message: 'session shutdown' });
    await assert.rejects(client.ping(), { code: 'ERR_YAMUX_SESSION_SHUTDOWN' });
    assert.throws(() => client.open(), { code: 'ERR_YAMUX_SESSION_SHUTDOWN' });
    // The peer lost the connection mid-stream, which its streams must see as an error.
    assert.equal(await serverClosed, undefined);
    assert.equal(((await acceptedErr) as YamuxError).code, 'ERR_YAMUX_SESSION_SHUTDOWN');
    assert.equal(client.numStreams, 0);
    assert.equal(server.numStreams, 0);
  });

  it('a stream read to the end closes quietly when the peer goes away', T, async () => {
    const { client, server } = await sessionPair();
    const opened = client.open();
    opened.end('request');
    const accepted = await server.accept();
    // The server reads the whole request but never ends its own side.
    assert.equal(await readText(accepted), 'request');
    let failed: Error | null = null;
    accepted.on('error', (err) => {
      failed = err;
    });
    const closed = once(accepted, 'close');
    client.close();
    await closed;
    assert.equal(failed, null);
    assert.equal(server.closed, true);
  });

  it('close(err) destroys open streams with err', T, async () => {
    const { client } = await sessionPair();
    const opened = client.open();
    const failed = streamError(opened);
    const why = new Error('going down');
    client.close(why);
    assert.equal(await failed, why);
  });

  it('closes when its socket is destroyed, passing the socket error on', T, async () => {
    const { client, server, clientSocket } = await sessionPair();
    const opened = client.open();
    const failed = streamError(opened);
    const closed = closeEvent(client);
    const boom = new Error('boom');
    clientSocket.destroy(boom);
    assert.equal(await closed, boom);
    assert.equal(await failed, boom);
    await closeEvent(server).catch(() => {});
    assert.equal(server.closed, true);
  });

  it('does not hand out streams the peer reset while they waited for accept()', T, async () => {
    const { session, raw } = await rawPair({ role: 'server' });
    raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0);
    raw.send(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0);
    raw.send(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0);
    raw.send(TYPE_PING, FLAG_SYN, 0, 1);
    await raw.waitFor('the pong', (f) => f.type === TYPE_PING);
    const stream = await session.accept();
    assert.equal(stream.id, 3);
    assert.equal(session.numStreams, 1);
  });
});
