// Evidence for not using the npm package yamux-js 0.2.0 (a devDependency kept only for this
// test). yamux-js is rejected because its frame decoder handles a Data frame only when the whole
// frame arrives in one socket read: a partial payload is dropped instead of buffered, and later
// bytes are then taken as that frame's payload. TCP delivers at most 64 KiB per read in Node,
// so any frame larger than that (hashicorp sends one frame per window, up to 256 KiB) is lost
// or corrupted. Its source shows further gaps we did not need to prove here: writes poll with
// setTimeout(100 ms) when the window is exhausted, and flags are compared with === so a frame
// carrying ACK|FIN is misread.
//
// The assertions state the failure. If a fixed yamux-js echoed the payload intact they would
// fail, and this file would then be the place to reconsider the decision.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { Client, Server } from 'yamux-js';
import { buildGo } from '../scripts/build-go.ts';
import { encodeHeader } from '../src/tunnel/yamux/frame.ts';
import { FLAG_ACK, TYPE_DATA, TYPE_WINDOW_UPDATE } from '../src/tunnel/yamux/const.ts';
import { spawnGoPeer } from './lib/go-bin.ts';

const PAYLOAD = 100_000;
const quiet = (): void => {};

describe('yamux-js 0.2.0 is rejected', () => {
  // yamux-js may throw from inside its stream callbacks; count that as part of its failure
  // instead of letting it end the test process.
  const thrown: unknown[] = [];
  const onThrow = (err: unknown): void => {
    thrown.push(err);
  };
  before(async () => {
    process.on('uncaughtException', onThrow);
    await buildGo(['yamux-peer']);
  });
  after(() => {
    process.off('uncaughtException', onThrow);
  });

  it('because it cannot echo 100 KB to a real hashicorp/yamux peer', { timeout: 60_000 },
    async (t) => {
      const listener = net.createServer();
      await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
      const { port } = listener.address() as net.AddressInfo;
      // Go writes the 100 KB in one Write, so it leaves as a single Data frame.
      const go = spawnGoPeer('yamux-peer', [
        '-role', 'client', '-connect', `127.0.0.1:${port}`, '-mode', 'send',
        '-sizes', String(PAYLOAD), '-timeout', '5s',
      ]);
      try {
        const [socket] = (await once(listener, 'connection')) as [net.Socket];
        listener.close();
        socket.on('error', quiet);
        const delivered = createHash('sha256');
        let deliveredBytes = 0;
        const server = new Server((stream: Duplex) => {
          stream.on('error', quiet);
          stream.on('data', (d: Buffer) => {
            delivered.update(d);
            deliveredBytes += d.length;
            stream.write(d);
          });
        }, { enableKeepAlive: false, logger: quiet });
        server.on('error', quiet);
        socket.pipe(server).pipe(socket);

        const result = await go.next('result', 30_000);
        const [sent] = result.streams as Array<{
          ok: boolean; sent_sha256: string; recv_sha256: string; recv_bytes: number;
          error?: string;
        }>;
        socket.destroy();
        const evidence = JSON.stringify({
          go: sent, yamuxJsDelivered: deliveredBytes, yamuxJsThrew: thrown.length,
        });
        t.diagnostic(evidence);
        // What yamux-js handed its stream is not what Go sent...
        assert.notEqual(delivered.digest('hex'), sent.sent_sha256, evidence);
        // ...so the echo Go got back is wrong or missing.
        assert.equal(sent.ok, false, evidence);
        assert.notEqual(sent.recv_sha256, sent.sent_sha256, evidence);
        assert.equal(result.ok, false);
      } finally {
        go.kill();
        listener.close();
      }
    });

  it('because a Data frame split across two reads never reaches its stream intact', async () => {
    // The same defect without Go: one valid frame, cut in two like a socket read would.
    const client = new Client({ enableKeepAlive: false, logger: quiet });
    client.on('error', quiet);
    client.on('data', quiet);
    const stream = client.open();
    stream.on('error', quiet);
    const got: Buffer[] = [];
    stream.on('data', (d: Buffer) => got.push(d));
    const payload = Buffer.alloc(1000, 7);
    const frame = Buffer.concat([
      encodeHeader(TYPE_WINDOW_UPDATE, FLAG_ACK, stream.ID(), 0),
      encodeHeader(TYPE_DATA, 0, stream.ID(), payload.length),
      payload,
    ]);
    const cut = frame.length - 400;
    client.write(frame.subarray(0, cut));
    client.write(frame.subarray(cut));
    await new Promise((resolve) => setImmediate(resolve));
    const received = Buffer.concat(got);
    assert.notDeepEqual(received, payload,
      `yamux-js delivered ${received.length} of ${payload.length} bytes`);
    client.close();
  });
});
