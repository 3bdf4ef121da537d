// A session reads its socket into one shared buffer and lends views of it to streams whose
// consumers copy at once (lendReads). These tests check that no consumer ever sees bytes a
// later read overwrote: one that copies and keeps pausing, one that is always behind (its
// queue's slabs are reused), one that keeps the chunks it was given, and a TLS socket layered
// on a stream, as the gateway paths use it.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, it } from 'node:test';
import tls from 'node:tls';
import { Session, type Stream } from '../../../src/tunnel/yamux/index.ts';
import { prng } from '../../lib/prng.ts';
import { selfSigned } from '../../faults/lib/wire.ts';

const T = { timeout: 60_000 };
const open: Array<{ destroy(): void }> = [];
const sessions: Session[] = [];
after(() => {
  for (const s of sessions) s.close();
  for (const s of open) s.destroy();
});

async function sessionPair(): Promise<[Session, Session]> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  const accepted = once(server, 'connection');
  const a = net.connect(port, '127.0.0.1');
  const [b] = (await accepted) as [net.Socket];
  await once(a, 'connect');
  server.close();
  open.push(a, b);
  const pair: [Session, Session] = [
    new Session(a, { role: 'client' }), new Session(b, { role: 'server' }),
  ];
  sessions.push(...pair);
  return pair;
}

// Streams still open when the tests end are destroyed by close(); that is not a failure.
function quiet<S extends { on(e: 'error', f: () => void): unknown }>(...streams: S[]): void {
  for (const s of streams) s.on('error', () => {});
}

// Waits until check() holds, looking every few milliseconds.
async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 5));
}

// Opens a stream, accepts it on the other side and has the accepted end lend its reads.
async function lendingPair(client: Session, server: Session): Promise<[Stream, Stream]> {
  const sender = client.open();
  const receiver = await server.accept();
  quiet(sender, receiver);
  receiver.lendReads();
  return [sender, receiver];
}

// Writes total random bytes in random-sized pieces and returns their sha256.
async function send(stream: Stream, total: number, seed: number): Promise<string> {
  const rand = prng(seed);
  const hash = createHash('sha256');
  let left = total;
  while (left > 0) {
    const piece = randomBytes(Math.min(left, 1 + Math.floor(rand() * 100_000)));
    hash.update(piece);
    left -= piece.length;
    if (!stream.write(piece)) await once(stream, 'drain');
  }
  stream.end();
  return hash.digest('hex');
}

it('a lending consumer that copies and keeps pausing gets every byte intact', T, async () => {
  const [client, server] = await sessionPair();
  const [sender, receiver] = await lendingPair(client, server);
  const rand = prng(3);
  const hash = createHash('sha256');
  let count = 0;
  receiver.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    // Pausing and resuming at odd moments sends chunks through the queue and back.
    if (rand() < 0.05) {
      receiver.pause();
      setTimeout(() => receiver.resume(), Math.floor(rand() * 5));
    }
    count++;
  });
  const [sent] = await Promise.all([send(sender, 24 * 1024 * 1024, 1), once(receiver, 'end')]);
  assert.ok(count > 100);
  assert.equal(hash.digest('hex'), sent);
});

it('a lending consumer that is always behind has its queue\'s slabs reused', T, async () => {
  const [client, server] = await sessionPair();
  const [sender, receiver] = await lendingPair(client, server);
  const hash = createHash('sha256');
  const backings = new Set<ArrayBufferLike>();
  let bytes = 0;
  receiver.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    backings.add(chunk.buffer);
    bytes += chunk.length;
    // Pausing after every chunk leaves what arrives meanwhile to the queue.
    receiver.pause();
    setImmediate(() => receiver.resume());
  });
  const [sent] = await Promise.all([send(sender, 16 * 1024 * 1024, 7), once(receiver, 'end')]);
  assert.equal(hash.digest('hex'), sent);
  // Copied into fresh buffers, 16 MiB would have come in hundreds; a 256 KiB window needs a
  // handful of 64 KiB slabs, and the session's read buffer is one more.
  assert.ok(backings.size < 32, `${bytes} bytes came in ${backings.size} buffers`);
});

it('a lending stream that has gone quiet gives its slab back', T, async () => {
  const [client, server] = await sessionPair();
  // Each stream is paused while a frame arrives, so the frame is queued in a slab, then
  // resumed; the first stream's slab, all emitted, must be the one the second stream fills.
  const slabOf = async (): Promise<ArrayBufferLike> => {
    const [sender, receiver] = await lendingPair(client, server);
    let backing: ArrayBufferLike | undefined;
    receiver.on('data', (chunk: Buffer) => { backing ??= chunk.buffer; });
    receiver.pause();
    sender.write(Buffer.alloc(6000, 'q'));
    await until(() => receiver.readableLength + receiver.bufferedInbound === 6000);
    receiver.resume();
    await until(() => backing !== undefined);
    return backing!;
  };
  const first = await slabOf();
  assert.equal(await slabOf(), first);
});

it('chunks taken from a lending stream with read() or for await are the taker\'s', T,
  async () => {
    const [client, server] = await sessionPair();
    const [sender, receiver] = await lendingPair(client, server);
    // Paused mode: nothing is taken until read(), so the frame waits in the queue's slab.
    receiver.on('readable', () => {});
    sender.write(Buffer.alloc(1000, 'A'));
    await until(() => receiver.readableLength + receiver.bufferedInbound >= 1000);
    const first = receiver.read() as Buffer;
    sender.write(Buffer.alloc(1000, 'B'));
    await until(() => receiver.readableLength + receiver.bufferedInbound >= 1000);
    assert.equal(first.toString('latin1'), 'A'.repeat(1000));
    receiver.removeAllListeners('readable');

    // Async iteration reads the same way, keeping every chunk until the end.
    const [other, iterated] = await lendingPair(client, server);
    const kept: Buffer[] = [];
    const [sent] = await Promise.all([send(other, 4 * 1024 * 1024, 8), (async () => {
      for await (const chunk of iterated) kept.push(chunk as Buffer);
    })()]);
    assert.equal(createHash('sha256').update(Buffer.concat(kept)).digest('hex'), sent);
  });

it('lending after small payload was queued keeps the session and the bytes', T, async () => {
  const [client, server] = await sessionPair();
  const sender = client.open();
  sender.write('<');
  const receiver = await server.accept();
  quiet(sender, receiver);
  sender.write('queued before lending;');
  await until(() => receiver.bufferedInbound > 1);
  receiver.lendReads();
  sender.end('sent after.>');
  await until(() => receiver.bufferedInbound >= 34 || server.closed);
  let got = '';
  receiver.on('data', (c: Buffer) => { got += c.toString(); });
  if (!receiver.destroyed) await Promise.race([once(receiver, 'end'), once(receiver, 'close')]);
  assert.equal(got, '<queued before lending;sent after.>');
  assert.equal(server.closed, false);
});

it('a consumer that keeps its chunks is never lent the shared buffer', T, async () => {
  const [client, server] = await sessionPair();
  const sender = client.open();
  const receiver = await server.accept();
  quiet(sender, receiver);
  const kept: Buffer[] = [];
  receiver.on('data', (chunk: Buffer) => kept.push(chunk));
  const [sent] = await Promise.all([send(sender, 8 * 1024 * 1024, 2), once(receiver, 'end')]);
  const hash = createHash('sha256');
  for (const chunk of kept) hash.update(chunk);
  assert.equal(hash.digest('hex'), sent);
});

it('TLS over a lending stream carries both directions intact', T, async () => {
  const [client, server] = await sessionPair();
  const dir = mkdtempSync(join(tmpdir(), 'lend-'));
  const { key, cert } = selfSigned(dir, 'gateway');
  rmSync(dir, { recursive: true });
  // The gateway's end: crunch-run accepts the stream and serves TLS on it.
  const [gatewayStream, sidecarStream] = await lendingPair(client, server);
  const gateway = new tls.TLSSocket(gatewayStream, { isServer: true, key, cert });
  const sidecar = tls.connect({ socket: sidecarStream, rejectUnauthorized: false });
  quiet(gateway, sidecar);
  await once(sidecar, 'secureConnect');

  const down = createHash('sha256');
  const up = createHash('sha256');
  sidecar.on('data', (c: Buffer) => down.update(c));
  gateway.on('data', (c: Buffer) => up.update(c));
  const [sentDown, sentUp] = await Promise.all([
    send(gateway as unknown as Stream, 16 * 1024 * 1024, 5),
    send(sidecar as unknown as Stream, 4 * 1024 * 1024, 6),
    once(sidecar, 'end'),
    once(gateway, 'end'),
  ]);
  assert.equal(down.digest('hex'), sentDown);
  assert.equal(up.digest('hex'), sentUp);
});
