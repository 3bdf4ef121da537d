// When a session's frames leave: data from every stream fed in one turn of the event loop in
// one write, control frames at the end of the tick. The session runs over a Duplex that records
// each write it is given, so the tests see the writes themselves rather than what a TCP peer
// happened to read.
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { describe, it } from 'node:test';
import { setImmediate as immediate } from 'node:timers/promises';
import {
  FLAG_SYN, TYPE_DATA, TYPE_PING, TYPE_WINDOW_UPDATE,
} from '../../../src/tunnel/yamux/const.ts';
import { encodeHeader, FrameDecoder } from '../../../src/tunnel/yamux/frame.ts';
import { Session } from '../../../src/tunnel/yamux/index.ts';

interface Seen {
  type: number;
  streamId: number;
  length: number;
}

// RecordingLink is the session's socket: writes are kept one entry per call, and bytes pushed
// with feed() are what the peer sent.
class RecordingLink extends Duplex {
  readonly writes: Buffer[] = [];

  _read(): void {}

  _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.writes.push(chunk);
    cb();
  }

  _writev(chunks: Array<{ chunk: Buffer }>, cb: (err?: Error | null) => void): void {
    this.writes.push(Buffer.concat(chunks.map((c) => c.chunk)));
    cb();
  }

  feed(bytes: Buffer): void {
    this.push(bytes);
  }

  /** frames decodes one recorded write. */
  frames(write: Buffer): Seen[] {
    const seen: Seen[] = [];
    const decoder = new FrameDecoder({
      onFrame: (type, _flags, streamId, length) => {
        seen.push({ type, streamId, length });
        return false;
      },
      onData: () => {},
      onError: (err) => { throw err; },
    });
    decoder.push(write);
    return seen;
  }
}

function clientOver(link: RecordingLink): Session {
  return new Session(link, { role: 'client', keepAliveIntervalMs: 0 });
}

describe('yamux session: when frames leave', () => {
  it('sends the data of streams written in separate callbacks of one turn in one write',
    async () => {
      const link = new RecordingLink();
      const session = clientOver(link);
      const a = session.open();
      const b = session.open();
      await immediate();
      link.writes.length = 0;

      // Two callbacks of one turn, as two sockets' reads would be: the second runs after the
      // end of the first one's tick.
      a.write(Buffer.alloc(1000, 1));
      await new Promise<void>((resolve) => process.nextTick(resolve));
      b.write(Buffer.alloc(2000, 2));
      await immediate();

      assert.equal(link.writes.length, 1, 'one write for both streams');
      assert.deepEqual(link.frames(link.writes[0]), [
        { type: TYPE_DATA, streamId: a.id, length: 1000 },
        { type: TYPE_DATA, streamId: b.id, length: 2000 },
      ]);
      session.close();
    });

  it('sends a ping at the end of the tick, without waiting for the turn to end', async () => {
    const link = new RecordingLink();
    const session = clientOver(link);
    await immediate();
    link.writes.length = 0;

    const ping = session.ping().catch(() => {});
    await new Promise<void>((resolve) => process.nextTick(resolve));
    assert.equal(link.writes.length, 1);
    assert.equal(link.frames(link.writes[0])[0].type, TYPE_PING);
    session.close();
    await ping;
  });

  it('sends a window update at the end of the tick, with any data held so far', async () => {
    const link = new RecordingLink();
    const session = clientOver(link);
    const out = session.open();
    // The peer opens stream 2 and sends more than half a window on it.
    const accepted = session.accept();
    link.feed(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0));
    const inbound = await accepted;
    await immediate();
    link.writes.length = 0;

    out.write(Buffer.alloc(500, 3));
    const payload = Buffer.alloc(200 * 1024, 4);
    link.feed(Buffer.concat([encodeHeader(TYPE_DATA, 0, 2, payload.length), payload]));
    let read = 0;
    inbound.on('data', (chunk: Buffer) => { read += chunk.length; });
    // Reading happens over the next ticks; the update must be out before this turn ends.
    await new Promise<void>((resolve) => {
      const check = () => {
        if (read === payload.length) resolve();
        else process.nextTick(check);
      };
      process.nextTick(check);
    });
    await new Promise<void>((resolve) => process.nextTick(resolve));
    const sent = link.writes.flatMap((w) => link.frames(w));
    assert.deepEqual(sent.map((f) => [f.type, f.streamId]),
      [[TYPE_DATA, out.id], [TYPE_WINDOW_UPDATE, 2]]);
    assert.equal(sent[0].length, 500);
    assert.equal(sent[1].length, payload.length, 'the update hands back what was read');
    session.close();
  });
});
