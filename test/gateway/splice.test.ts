import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { Duplex, Readable } from 'node:stream';
import { splice } from '../../src/gateway/splice.ts';
import { RELAY_HIGH_WATER } from '../../src/net/socket-relay.ts';
import { readIntoSupported } from '../../src/net/read-into.ts';
import { createHash } from 'node:crypto';
import { waitFor } from '../lib/wait.ts';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from
  'node:tls';
import { selfSigned } from '../faults/lib/wire.ts';

// Two ends of one loopback TCP connection, half-closable like the front door's sockets.
async function socketPair(): Promise<[Socket, Socket]> {
  const server = createServer({ allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const accepted = once(server, 'connection');
  const near = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const [far] = (await accepted) as [Socket];
  await once(near, 'connect');
  server.close();
  return [near, far];
}

function collect(socket: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  return once(socket, 'end').then(() => Buffer.concat(chunks));
}

test('relays both ways intact, holds the gateway\'s bytes until the client speaks', async () => {
  const [user, clientSide] = await socketPair();
  const [upstreamSide, gateway] = await socketPair();
  const up = randomBytes(3 * 1024 * 1024 + 17);
  const down = randomBytes(5 * 1024 * 1024 + 3);
  const early: Buffer[] = [];
  user.on('data', (c: Buffer) => early.push(c));

  const done = splice(clientSide, Buffer.alloc(0), upstreamSide, Buffer.from('rest|'));
  gateway.write('hello|');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(early.length, 0, 'nothing reaches the client before it has spoken');

  user.removeAllListeners('data');
  const toUser = collect(user);
  const toGateway = collect(gateway);
  user.write(up.subarray(0, 1));
  user.end(up.subarray(1));
  gateway.end(down);

  const [gotDown, gotUp] = await Promise.all([toUser, toGateway]);
  assert.deepEqual(gotUp, up);
  assert.deepEqual(gotDown, Buffer.concat([Buffer.from('rest|hello|'), down]));
  const result = await done;
  assert.equal(result.bytesFromClient, up.length);
  assert.equal(result.bytesToClient, gotDown.length);
});

test('this Node lets the gateway side be read into reused buffers', () => {
  // Without it every path still works, through relay() with a fresh buffer per read, at the
  // cost the benchmarks measure; a Node upgrade that takes it away should be noticed here.
  assert.equal(readIntoSupported, true);
});

test('a user who stops reading holds the gateway back; every byte arrives in order', async () => {
  const [user, clientSide] = await socketPair();
  const [upstreamSide, gateway] = await socketPair();
  const done = splice(clientSide, Buffer.from('ssh'), upstreamSide, Buffer.alloc(0));
  user.pause();
  const total = 48 * 1024 * 1024;
  const sent = createHash('sha256');
  let written = 0;
  const pump = () => {
    while (written < total) {
      const chunk = randomBytes(Math.min(total - written, 1 + Math.floor(Math.random() * 70_000)));
      sent.update(chunk);
      written += chunk.length;
      if (!gateway.write(chunk)) return void gateway.once('drain', pump);
    }
    gateway.end();
  };
  pump();

  // Once the kernel buffers are full the gateway's writes stop being taken.
  let last = -1;
  await waitFor(async () => {
    const now = gateway.writableLength;
    await new Promise((r) => setTimeout(r, 100));
    const still = now > 0 && now === gateway.writableLength && now === last;
    last = now;
    return still;
  }, 20_000, 'the gateway to be held back');
  assert.ok(written < total, 'held back before the end');
  assert.ok(clientSide.writableLength <= RELAY_HIGH_WATER + 256 * 1024,
    `${clientSide.writableLength} bytes wait toward the user`);

  const got = createHash('sha256');
  let received = 0;
  user.on('data', (c: Buffer) => { got.update(c); received += c.length; });
  user.resume();
  await once(user, 'end');
  user.end();
  assert.equal(received, total);
  assert.equal(got.digest('hex'), sent.digest('hex'));
  const result = await done;
  assert.equal(result.bytesToClient, total);
});

// A TLS gateway on loopback and the sidecar's TLS connection to it, as dialGateway makes it.
async function tlsPair(): Promise<[TLSSocket, TLSSocket]> {
  const dir = mkdtempSync(join(tmpdir(), 'splice-'));
  const { key, cert } = selfSigned(dir, 'gateway');
  rmSync(dir, { recursive: true });
  const server = createTlsServer({ key, cert, allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const accepted = once(server, 'secureConnection');
  const tcp = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  const near = tlsConnect({ socket: tcp, rejectUnauthorized: false });
  await once(near, 'secureConnect');
  const [far] = (await accepted) as [TLSSocket];
  server.close();
  return [near, far];
}

function randomChunks(total: number, seed: number): Buffer[] {
  const chunks: Buffer[] = [];
  let left = total;
  let x = seed;
  while (left > 0) {
    x = (x * 1103515245 + 12345) >>> 0;
    const n = Math.min(left, 1 + (x % 200_000));
    chunks.push(randomBytes(n));
    left -= n;
  }
  return chunks;
}

test('into a TLS gateway that reads late, every byte arrives intact, both ways', async () => {
  const [user, clientSide] = await socketPair();
  const [upstreamSide, gateway] = await tlsPair();
  const done = splice(clientSide, Buffer.alloc(0), upstreamSide, Buffer.alloc(0));
  gateway.pause();
  const up = randomChunks(24 * 1024 * 1024, 7);
  const down = randomChunks(8 * 1024 * 1024, 11);
  const sentUp = createHash('sha256');
  for (const c of up) sentUp.update(c);
  const toGateway = createHash('sha256');
  let gatewayGot = 0;
  gateway.on('data', (c: Buffer) => { toGateway.update(c); gatewayGot += c.length; });
  const toUser = collect(user);

  const writing = (async () => {
    for (const c of up) if (!user.write(c)) await once(user, 'drain');
    user.end();
  })();
  // The gateway reads nothing for a while, so the sidecar's writes toward it back up.
  await new Promise((r) => setTimeout(r, 300));
  gateway.resume();
  for (const c of down) gateway.write(c);
  await writing;
  await once(gateway, 'end');
  gateway.end();

  assert.equal(gatewayGot, up.reduce((n, c) => n + c.length, 0));
  assert.equal(toGateway.digest('hex'), sentUp.digest('hex'));
  assert.deepEqual(await toUser, Buffer.concat(down));
  const result = await done;
  assert.equal(result.bytesFromClient, gatewayGot);
});

test('a user who ends first still gets everything the gateway sends after, read late', async () => {
  const [user, clientSide] = await socketPair();
  const [upstreamSide, gateway] = await socketPair();
  const done = splice(clientSide, Buffer.alloc(0), upstreamSide, Buffer.alloc(0));
  gateway.resume();
  user.pause();
  user.end('x');
  await new Promise((r) => setTimeout(r, 100));
  // More than the kernel buffers hold, so the tail waits in the sidecar when the gateway ends.
  const down = randomBytes(24 * 1024 * 1024);
  gateway.end(down);
  await new Promise((r) => setTimeout(r, 500));
  const got = collect(user);
  user.resume();
  assert.deepEqual(await got, down);
  const result = await done;
  assert.equal(result.bytesToClient, down.length);
});

test('a user who ends without a byte gets the gateway\'s answer, and the session ends', async () => {
  const [user, clientSide] = await socketPair();
  const [upstreamSide, gateway] = await socketPair();
  const done = splice(clientSide, Buffer.alloc(0), upstreamSide, Buffer.alloc(0));
  gateway.on('end', () => gateway.end('bye'));
  gateway.resume();
  const got = collect(user);
  user.end();
  assert.equal((await got).toString(), 'bye');
  const result = await done;
  assert.equal(result.bytesFromClient, 0);
});

// A client that records each write it is given and can be told to hold its callbacks.
class RecordingClient extends Duplex {
  writes: number[] = [];
  received: Buffer[] = [];
  #held: Array<() => void> | null = null;

  hold(): void {
    this.#held = [];
  }

  release(): void {
    const held = this.#held ?? [];
    this.#held = null;
    for (const cb of held) cb();
  }

  override _read(): void {}

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this._writev([{ chunk }], cb);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, cb: () => void): void {
    this.writes.push(chunks.length);
    for (const { chunk } of chunks) this.received.push(chunk);
    if (this.#held) this.#held.push(cb);
    else cb();
  }
}

function sink(): Duplex {
  return new Duplex({ read() {}, write(_c, _e, cb) { cb(); } });
}

test('records decrypted in one turn of the event loop reach the client in one write', async () => {
  const client = new RecordingClient();
  const upstream = sink();
  const done = splice(client, Buffer.alloc(0), upstream, Buffer.alloc(0));
  client.push('ssh');
  await new Promise((r) => setImmediate(r));
  const records = Array.from({ length: 8 }, (_, i) => Buffer.alloc(16 * 1024, i));
  // Each record arrives in its own callback, as TLS hands them over, in one turn of the loop.
  for (const r of records) setImmediate(() => upstream.push(r));
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  assert.equal(client.writes.length, 1, 'one write');
  assert.deepEqual(Buffer.concat(client.received), Buffer.concat(records));
  client.destroy();
  await done;
});

test('a small read with nothing waiting reaches the client at once, before the turn ends',
  async () => {
    const client = new RecordingClient();
    const upstream = sink();
    const done = splice(client, Buffer.alloc(0), upstream, Buffer.alloc(0));
    client.push('ssh');
    await new Promise((r) => setImmediate(r));
    upstream.push(Buffer.from('prompt$ '));
    assert.equal(Buffer.concat(client.received).toString(), 'prompt$ ');
    client.destroy();
    await done;
  });

test('a client that stops reading pauses the gateway side, and nothing is lost', async () => {
  const client = new RecordingClient();
  const total = 8 * 1024 * 1024;
  const chunk = 64 * 1024;
  let produced = 0;
  const source = new Readable({
    read() {
      if (produced >= total) return void this.push(null);
      this.push(Buffer.alloc(chunk, (produced / chunk) & 0xff));
      produced += chunk;
    },
  });
  const upstream = Duplex.from({ readable: source, writable: sink() });
  const done = splice(client, Buffer.alloc(0), upstream, Buffer.alloc(0));
  client.hold();
  client.push('ssh');

  // Pulling stops once the limit is passed: it is checked after each write or batch.
  let last = -1;
  await waitFor(async () => {
    const now = produced;
    await new Promise((r) => setTimeout(r, 50));
    const still = now === produced && now === last;
    last = now;
    return still;
  }, 10_000, 'the gateway side to be paused');
  assert.ok(produced < total, `paused before the end (pulled ${produced} of ${total})`);
  const readableBuffer = upstream.readableLength + source.readableLength;
  assert.ok(client.writableLength + readableBuffer <=
    RELAY_HIGH_WATER + 4 * chunk + 2 * source.readableHighWaterMark,
  `waiting bytes bounded: ${client.writableLength} in the writer, ${readableBuffer} read ahead`);

  // Let the client take everything: every byte arrives once, in order.
  const drained = new Promise<void>((resolve) => {
    const tick = () => {
      client.release();
      if (Buffer.concat(client.received).length >= total) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  client.on('data', () => {});
  await drained;
  const got = Buffer.concat(client.received);
  assert.equal(got.length, total);
  for (let off = 0; off < total; off += chunk) {
    assert.equal(got[off], (off / chunk) & 0xff);
    assert.equal(got[off + chunk - 1], (off / chunk) & 0xff);
  }
  client.destroy();
  await done;
});
