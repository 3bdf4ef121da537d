// Interop with Go's real github.com/hashicorp/yamux (interop/go/yamux-peer): our session in
// both roles moves sha256-checked payloads up to 64 MiB, many streams at once, keeps memory
// bounded for a slow reader, honours Go's GoAway and answers Go's keepalive pings.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { Writable } from 'node:stream';
import { afterEach, before, describe, it } from 'node:test';
import { buildGo } from '../scripts/build-go.ts';
import { FLAG_ACK, FLAG_SYN, TYPE_PING } from '../src/tunnel/yamux/const.ts';
import { FrameDecoder } from '../src/tunnel/yamux/frame.ts';
import {
  INITIAL_STREAM_WINDOW, READ_BUFFER_SIZE, Session, type SessionOptions, type Stream, YamuxError,
} from '../src/tunnel/yamux/index.ts';
import { type GoEvent, type GoPeer, spawnGoPeer } from './lib/go-bin.ts';

const T = { timeout: 90_000 };
const SIZES = [1, 1024, 100_000, 1 << 20, 64 << 20];
const cleanups: Array<() => void> = [];

before(async () => {
  await buildGo(['yamux-peer']);
});

afterEach(() => {
  for (const fn of cleanups.splice(0)) fn();
});

interface Connected {
  session: Session;
  socket: net.Socket;
  go: GoPeer;
}

// Go dials us: our session takes the opposite yamux role to the Go peer.
async function goDialsUs(
  args: string[], ours: Omit<SessionOptions, 'role'> = {},
): Promise<Connected> {
  const listener = net.createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const { port } = listener.address() as net.AddressInfo;
  const go = spawnGoPeer('yamux-peer', [
    '-role', 'client', '-connect', `127.0.0.1:${port}`, ...args,
  ]);
  cleanups.push(() => go.kill());
  const [socket] = (await once(listener, 'connection', {
    signal: AbortSignal.timeout(30_000),
  })) as [net.Socket];
  listener.close();
  const session = new Session(socket, { keepAliveIntervalMs: 0, ...ours, role: 'server' });
  cleanups.push(() => session.close());
  return { session, socket, go };
}

// We dial a listening Go server.
async function weDialGo(
  args: string[], ours: Omit<SessionOptions, 'role'> = {},
): Promise<Connected> {
  const go = spawnGoPeer('yamux-peer', ['-role', 'server', '-listen', '127.0.0.1:0', ...args]);
  cleanups.push(() => go.kill());
  const listening = await go.next('listening', 30_000);
  const [host, port] = String(listening.addr).split(':');
  const socket = net.connect(Number(port), host);
  await once(socket, 'connect');
  const session = new Session(socket, { keepAliveIntervalMs: 0, ...ours, role: 'client' });
  cleanups.push(() => session.close());
  return { session, socket, go };
}

interface Received {
  bytes: number;
  sha: string;
}

// Echoes every inbound stream and records what each one carried.
function serveEcho(session: Session): Map<number, Promise<Received>> {
  const seen = new Map<number, Promise<Received>>();
  void (async () => {
    for (;;) {
      let stream: Stream;
      try {
        stream = await session.accept();
      } catch {
        return;
      }
      stream.on('error', () => {});
      seen.set(stream.id, digest(stream));
      stream.pipe(stream);
    }
  })();
  return seen;
}

function digest(stream: Stream): Promise<Received> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    let bytes = 0;
    stream.on('data', (d: Buffer) => {
      h.update(d);
      bytes += d.length;
    });
    stream.once('end', () => resolve({ bytes, sha: h.digest('hex') }));
    stream.once('error', reject);
  });
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

interface GoStream {
  id: number;
  size: number;
  sent_sha256: string;
  recv_sha256?: string;
  recv_bytes: number;
  ok: boolean;
  error?: string;
}

interface GoEcho {
  id: number;
  bytes: number;
  sha256: string;
  error?: string;
}

async function finish(c: Connected): Promise<GoEvent[]> {
  const echo = c.go.next('echo', 30_000).catch(() => null);
  c.session.close();
  const code = await c.go.exited;
  assert.equal(code, 0, `yamux-peer exited with ${code}; stderr:\n${c.go.stderr()}`);
  return [(await echo) ?? { event: 'none' }];
}

// Sends each payload on its own stream at once and checks each echo by sha256.
async function sendAndCheckEchoes(session: Session, payloads: Buffer[]): Promise<string[]> {
  return Promise.all(payloads.map(async (data) => {
    const stream = session.open();
    const echoed = digest(stream);
    stream.end(data);
    const got = await echoed;
    assert.equal(got.bytes, data.length);
    assert.equal(got.sha, sha(data), `echo of ${data.length} B`);
    return got.sha;
  }));
}

describe('yamux interop with hashicorp/yamux (Go)', () => {
  it('Go client → our server: 1 B to 64 MiB streams echoed intact', T, async () => {
    const c = await goDialsUs(['-mode', 'send', '-sizes', SIZES.join(',')]);
    const seen = serveEcho(c.session);
    const result = await c.go.next('result', 80_000);
    const streams = result.streams as GoStream[];
    assert.equal(result.ok, true, JSON.stringify(streams.filter((s) => !s.ok)));
    assert.deepEqual(streams.map((s) => s.size), SIZES);
    for (const s of streams) {
      assert.equal(s.id % 2, 1, 'Go as client opens odd ids');
      assert.equal(s.recv_sha256, s.sent_sha256);
      const ours = await seen.get(s.id);
      assert.deepEqual(ours, { bytes: s.size, sha: s.sent_sha256 }, `our view of stream ${s.id}`);
    }
    await finish(c);
  });

  it('our client → Go server: 1 B to 64 MiB streams echoed intact', T, async () => {
    const c = await weDialGo(['-mode', 'echo']);
    const payloads = SIZES.map((n) => randomBytes(n));
    const shas = await sendAndCheckEchoes(c.session, payloads);
    const [echo] = await finish(c);
    const goSaw = (echo.streams as GoEcho[]).sort((a, b) => a.id - b.id);
    assert.deepEqual(goSaw.map((s) => s.id), [1, 3, 5, 7, 9]);
    assert.deepEqual(
      goSaw.map((s) => [s.bytes, s.sha256]),
      payloads.map((p, i) => [p.length, shas[i]]),
    );
  });

  it('64 concurrent streams each way', T, async () => {
    const fromGo = await goDialsUs(['-mode', 'send', '-sizes', '262145', '-streams', '64']);
    const seen = serveEcho(fromGo.session);
    const result = await fromGo.go.next('result', 60_000);
    assert.equal(result.ok, true);
    assert.equal((result.streams as GoStream[]).length, 64);
    assert.equal(seen.size, 64);
    await finish(fromGo);

    const toGo = await weDialGo(['-mode', 'echo']);
    const payloads = Array.from({ length: 64 }, (_, i) => randomBytes(300_000 + i));
    await sendAndCheckEchoes(toGo.session, payloads);
    assert.equal(toGo.session.numStreams, 0);
    const [echo] = await finish(toGo);
    assert.equal((echo.streams as GoEcho[]).length, 64);
    assert.ok((echo.streams as GoEcho[]).every((s) => s.error === undefined));
  });

  it('a slow reader on our side holds Go to the window: 64 MiB, bounded memory', T, async () => {
    const size = 64 << 20;
    const c = await goDialsUs(['-mode', 'source', '-sizes', String(size)]);
    const stream = await c.session.accept();
    let consumed = 0;
    let worst = 0;
    let worstUnread = 0;
    const h = createHash('sha256');
    const check = (): void => {
      // Bytes the session took off the socket that our consumer has not taken yet.
      const unread = c.session.bytesIn - consumed;
      worst = Math.max(worst, stream.bufferedInbound);
      worstUnread = Math.max(worstUnread, unread);
    };
    const slow = new Writable({
      highWaterMark: 16 * 1024,
      write(chunk: Buffer, _enc, cb) {
        check();
        consumed += chunk.length;
        h.update(chunk);
        // Every 4 MiB stop reading for a while, so Go runs into the window.
        if (consumed % (4 << 20) < chunk.length) setTimeout(() => { check(); cb(); }, 40);
        else setImmediate(cb);
      },
    });
    stream.pipe(slow);
    await once(slow, 'finish', { signal: AbortSignal.timeout(80_000) });
    const result = await c.go.next('result', 30_000);
    const [sent] = result.streams as GoStream[];
    assert.equal(result.ok, true);
    assert.equal(consumed, size);
    assert.equal(h.digest('hex'), sent.sent_sha256);
    assert.ok(worst <= INITIAL_STREAM_WINDOW, `stream buffered ${worst} bytes`);
    // Beyond the window, only the Readable's and the consumer's buffers hold data: each up to
    // its high-water mark plus one chunk (socket reads are at most READ_BUFFER_SIZE).
    const slack = stream.readableHighWaterMark + slow.writableHighWaterMark +
      2 * READ_BUFFER_SIZE;
    assert.ok(worstUnread <= INITIAL_STREAM_WINDOW + slack, `unread peaked at ${worstUnread}`);
    assert.ok(worst >= INITIAL_STREAM_WINDOW / 2, 'the reader never fell behind: test too weak');
    await finish(c);
  });

  it('honours GoAway from Go: no new streams, the open one keeps working', T, async () => {
    const c = await weDialGo(['-mode', 'echo', '-goaway-after', '1']);
    const stream = c.session.open();
    const echoed = digest(stream);
    const goaway = once(c.session, 'goaway', { signal: AbortSignal.timeout(30_000) });
    stream.write('hello ');
    await c.go.next('goaway-sent', 30_000);
    await goaway;
    assert.equal(c.session.remoteGoAway, true);
    assert.throws(() => c.session.open(), (err: unknown) =>
      err instanceof YamuxError && err.code === 'ERR_YAMUX_REMOTE_GOAWAY');
    stream.end('world');
    const got = await echoed;
    assert.equal(got.sha, sha(Buffer.from('hello world')));
    const [echo] = await finish(c);
    assert.equal((echo.streams as GoEcho[]).length, 1);
  });

  it('answers Go keepalive pings and Go answers ours', T, async () => {
    const c = await goDialsUs(
      ['-mode', 'ping', '-keepalive', '20ms', '-write-timeout', '5s', '-idle', '1s'],
      // The tap below reads our socket, so the session must leave its 'data' events.
      { keepAliveIntervalMs: 20, connectionWriteTimeoutMs: 5000, readInPlace: false },
    );
    let goPings = 0;
    let goPongs = 0;
    const tap = new FrameDecoder({
      onFrame: (type, flags) => {
        if (type === TYPE_PING && flags === FLAG_SYN) goPings++;
        if (type === TYPE_PING && flags === FLAG_ACK) goPongs++;
        return false;
      },
      onData: () => {},
      onError: (err) => {
        throw err;
      },
    });
    c.socket.on('data', (d: Buffer) => tap.push(d));
    const ping = await c.go.next('ping', 30_000);
    assert.equal(ping.ok, true, JSON.stringify(ping));
    assert.equal(ping.closed, false);
    assert.equal((ping.rtts_ms as number[]).length, 3);
    assert.ok(goPings >= 10, `Go sent ${goPings} pings`);
    assert.ok(goPongs >= 10, `Go answered ${goPongs} of our pings`);
    assert.equal(c.session.closed, false);
    assert.ok((await c.session.ping()) >= 0);
    await finish(c);
  });
});
