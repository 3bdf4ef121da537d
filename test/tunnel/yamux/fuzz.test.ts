// Fuzzes the session with random and mutated-valid input from a seeded PRNG. Whatever arrives,
// nothing may throw out of the session, no promise may be left rejected unhandled, the session
// may only ever write well-formed frames (GoAway(1) when it gives up on malformed input), and
// memory must not grow with lengths declared on the wire.
// YAMUX_FUZZ_INPUTS sets the number of inputs; YAMUX_FUZZ_SEED the seed.
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import {
  FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, TYPE_DATA, TYPE_GO_AWAY, TYPE_PING,
  TYPE_WINDOW_UPDATE,
} from '../../../src/tunnel/yamux/const.ts';
import { encodeHeader, FrameDecoder } from '../../../src/tunnel/yamux/frame.ts';
import { Session, type Stream } from '../../../src/tunnel/yamux/index.ts';
import { prng } from '../../lib/prng.ts';

const INPUTS = Number(process.env.YAMUX_FUZZ_INPUTS ?? 20_000);
const SEED = Number(process.env.YAMUX_FUZZ_SEED ?? 0x5eed);


// FakeSocket records what the session writes; input is injected with emit('data').
class FakeSocket extends Duplex {
  written: Buffer[] = [];
  _read(): void {}
  _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.written.push(chunk);
    cb();
  }
  _final(cb: (err?: Error | null) => void): void {
    this.push(null);
    cb();
  }
}

const FLAGS = [0, FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN | FLAG_FIN, FLAG_ACK | FLAG_FIN];

function validish(rand: () => number, peerIsClient: boolean): Buffer {
  const parts: Buffer[] = [];
  const ids: number[] = [];
  let next = peerIsClient ? 1 : 2;
  const frames = 1 + Math.floor(rand() * 12);
  for (let i = 0; i < frames; i++) {
    const pick = rand();
    if (pick < 0.25 || ids.length === 0) {
      ids.push(next);
      parts.push(encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN, next, Math.floor(rand() * 65536)));
      next += 2;
    } else if (pick < 0.6) {
      const id = ids[Math.floor(rand() * ids.length)];
      const len = Math.floor(rand() * (rand() < 0.1 ? 70_000 : 300));
      const flags = FLAGS[Math.floor(rand() * FLAGS.length)] & ~FLAG_SYN;
      parts.push(encodeHeader(TYPE_DATA, flags, id, len), Buffer.alloc(len, i));
    } else if (pick < 0.75) {
      const id = ids[Math.floor(rand() * ids.length)];
      const flags = FLAGS[Math.floor(rand() * FLAGS.length)] & ~FLAG_SYN;
      parts.push(encodeHeader(TYPE_WINDOW_UPDATE, flags, id, Math.floor(rand() * 1e6)));
    } else if (pick < 0.9) {
      const flags = rand() < 0.5 ? FLAG_SYN : FLAG_ACK;
      parts.push(encodeHeader(TYPE_PING, flags, 0, Math.floor(rand() * 2 ** 32)));
    } else {
      parts.push(encodeHeader(TYPE_GO_AWAY, 0, 0, rand() < 0.7 ? 0 : Math.floor(rand() * 4)));
    }
  }
  return Buffer.concat(parts);
}

function mutate(rand: () => number, input: Buffer): Buffer {
  let buf = Buffer.from(input);
  const rounds = 1 + Math.floor(rand() * 4);
  for (let r = 0; r < rounds && buf.length > 0; r++) {
    const at = Math.floor(rand() * buf.length);
    const kind = rand();
    if (kind < 0.3) {
      buf[at] ^= 1 << Math.floor(rand() * 8);
    } else if (kind < 0.5) {
      buf[at] = Math.floor(rand() * 256);
    } else if (kind < 0.6) {
      buf = buf.subarray(0, at);
    } else if (kind < 0.75 && buf.length >= at + 12) {
      // A huge declared length is the classic way to make a parser allocate.
      buf.writeUInt32BE(Math.floor(rand() * 2 ** 32), at + 8);
    } else if (kind < 0.9) {
      const len = Math.floor(rand() * 32);
      buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at, at + len), buf.subarray(at)]);
    } else {
      const noise = Buffer.alloc(Math.floor(rand() * 16));
      for (let i = 0; i < noise.length; i++) noise[i] = Math.floor(rand() * 256);
      buf = Buffer.concat([buf.subarray(0, at), noise, buf.subarray(at)]);
    }
  }
  return buf;
}

function randomInput(rand: () => number, peerIsClient: boolean): Buffer {
  const kind = rand();
  if (kind < 0.2) {
    const buf = Buffer.alloc(Math.floor(rand() * 256));
    for (let i = 0; i < buf.length; i++) buf[i] = Math.floor(rand() * 256);
    return buf;
  }
  const valid = validish(rand, peerIsClient);
  return kind < 0.4 ? valid : mutate(rand, valid);
}

// Decodes what the session wrote; returns the GoAway reasons seen.
function checkOutput(written: Buffer[]): number[] {
  const reasons: number[] = [];
  const decoder = new FrameDecoder({
    onFrame: (type, _flags, _id, length) => {
      if (type === TYPE_GO_AWAY) reasons.push(length);
      return false;
    },
    onData: () => {},
    onError: (err) => {
      throw new Error(`the session wrote a malformed frame: ${err.message}`);
    },
  });
  for (const chunk of written) decoder.push(chunk);
  assert.equal(decoder.idle, true, 'the session wrote a truncated frame');
  return reasons;
}

describe('yamux session fuzz', () => {
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown): void => {
    uncaught.push(err);
  };
  before(() => {
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onUncaught);
  });
  after(() => {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
  });

  const name = `survives ${INPUTS} random and mutated inputs (seed ${SEED})`;
  it(name, { timeout: 600_000 }, async () => {
    const rand = prng(SEED);
    let protocolErrors = 0;
    let maxGrowth = 0;
    for (let n = 0; n < INPUTS; n++) {
      const serverRole = rand() < 0.5;
      const input = randomInput(rand, serverRole);
      const socket = new FakeSocket();
      const baseline = process.memoryUsage().arrayBuffers;
      const session = new Session(socket, {
        role: serverRole ? 'server' : 'client',
        keepAliveIntervalMs: 0,
        connectionWriteTimeoutMs: 1000,
        acceptBacklog: 1 + Math.floor(rand() * 8),
      });
      const reported: Error[] = [];
      session.on('protocol-error', (err: Error) => reported.push(err));
      const streams: Stream[] = [];
      const consume = rand() < 0.5;
      if (consume) {
        for (let i = 0; i < 4; i++) {
          session.accept().then((s) => {
            streams.push(s);
            s.on('error', () => {});
            s.resume();
          }, () => {});
        }
      }
      if (rand() < 0.3) {
        const mine = session.open();
        mine.on('error', () => {});
        mine.write(Buffer.alloc(Math.floor(rand() * 400_000)));
        if (rand() < 0.5) mine.end();
        streams.push(mine);
      }
      let pos = 0;
      while (pos < input.length) {
        const size = 1 + Math.floor(rand() * (rand() < 0.5 ? 16 : input.length));
        socket.emit('data', input.subarray(pos, pos + size));
        pos += size;
      }
      if (consume) await new Promise((resolve) => setImmediate(resolve));
      const growth = process.memoryUsage().arrayBuffers - baseline;
      maxGrowth = Math.max(maxGrowth, growth);
      // Our own writes (up to 400 kB) plus what arrived, never what a length field claimed.
      assert.ok(growth < 4 * input.length + 8 * 1024 * 1024,
        `input ${n} grew array buffers by ${growth} bytes`);
      for (const s of streams) assert.ok(s.bufferedInbound <= input.length);
      session.close();
      const reasons = checkOutput(socket.written);
      if (reported.length > 0) {
        protocolErrors++;
        assert.equal(reported.length, 1);
        assert.ok(reasons.includes(1), `input ${n}: protocol error without GoAway(1)`);
      } else {
        assert.ok(!reasons.includes(1), `input ${n}: GoAway(1) without a protocol error`);
      }
      socket.destroy();
    }
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(uncaught, []);
    // The corpus must reach the error paths, or the fuzzer proves little.
    assert.ok(protocolErrors > INPUTS / 10, `only ${protocolErrors} inputs hit a protocol error`);
    assert.ok(protocolErrors < INPUTS, 'every input was rejected, so valid paths were not tried');
  });
});
