// Frame codec and incremental decoder: headers round-trip, and the decoder yields the same
// frames however the byte stream is cut into chunks.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, HEADER_SIZE, TYPE_DATA, TYPE_GO_AWAY, TYPE_PING,
  TYPE_WINDOW_UPDATE, YamuxError,
} from '../../../src/tunnel/yamux/const.ts';
import {
  decodeHeader, encodeHeader, FrameDecoder,
} from '../../../src/tunnel/yamux/frame.ts';

interface Seen {
  type: number;
  flags: number;
  streamId: number;
  length: number;
  payload: string;
}

function collector(skipPayloadOf?: number): {
  decoder: FrameDecoder; seen: Seen[]; errors: YamuxError[]; pieces: Buffer[];
} {
  const seen: Seen[] = [];
  const errors: YamuxError[] = [];
  const pieces: Buffer[] = [];
  let current: Seen | null = null;
  let parts: Buffer[] = [];
  const decoder = new FrameDecoder({
    onFrame(type, flags, streamId, length) {
      const frame = { type, flags, streamId, length, payload: '' };
      if (type === TYPE_DATA && length > 0) {
        if (streamId === skipPayloadOf) {
          seen.push(frame);
          return false;
        }
        current = frame;
        parts = [];
        return true;
      }
      seen.push(frame);
      return false;
    },
    onData(piece, last) {
      pieces.push(piece);
      parts.push(Buffer.from(piece));
      if (last && current !== null) {
        current.payload = Buffer.concat(parts).toString('hex');
        seen.push(current);
        current = null;
      }
    },
    onError(err) {
      errors.push(err);
    },
  });
  return { decoder, seen, errors, pieces };
}

function frame(type: number, flags: number, id: number, payloadOrLength: Buffer | number): Buffer {
  if (typeof payloadOrLength === 'number') return encodeHeader(type, flags, id, payloadOrLength);
  return Buffer.concat([encodeHeader(type, flags, id, payloadOrLength.length), payloadOrLength]);
}

// A deterministic byte stream mixing every frame type, empty and large payloads.
function sampleStream(): Buffer {
  const big = Buffer.alloc(70_000);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
  return Buffer.concat([
    frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0),
    frame(TYPE_DATA, 0, 1, Buffer.from('hello')),
    frame(TYPE_DATA, FLAG_FIN, 1, Buffer.alloc(0)),
    frame(TYPE_PING, FLAG_SYN, 0, 0xdeadbeef),
    frame(TYPE_DATA, FLAG_ACK, 2, big),
    frame(TYPE_WINDOW_UPDATE, FLAG_RST, 3, 0xffff_ffff),
    frame(TYPE_DATA, 0, 5, Buffer.from([0])),
    frame(TYPE_GO_AWAY, 0, 0, 2),
  ]);
}

describe('yamux frame header', () => {
  it('encodes the documented big-endian layout', () => {
    const h = encodeHeader(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_ACK, 0x01020304, 0x0a0b0c0d);
    assert.equal(h.length, HEADER_SIZE);
    assert.equal(h.toString('hex'), '0001' + '0003' + '01020304' + '0a0b0c0d');
  });

  it('round-trips extreme and random values', () => {
    const values = [0, 1, 0xff, 0x1_0000, 0x7fff_ffff, 0xffff_ffff];
    let seed = 12345;
    const rand = (): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed;
    };
    for (let i = 0; i < 200; i++) values.push(rand());
    for (const v of values) {
      for (const type of [TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY]) {
        const flags = v & 0xffff;
        const out = Buffer.alloc(HEADER_SIZE + 3);
        encodeHeader(type, flags, v, (v ^ 0x5555_5555) >>> 0, out, 3);
        assert.deepEqual(decodeHeader(out, 3), {
          version: 0, type, flags, streamId: v, length: (v ^ 0x5555_5555) >>> 0,
        });
      }
    }
  });

  it('refuses to decode a short buffer', () => {
    assert.throws(() => decodeHeader(Buffer.alloc(11)), RangeError);
  });
});

describe('yamux FrameDecoder', () => {
  it('decodes a stream fed in one chunk', () => {
    const { decoder, seen, errors } = collector();
    decoder.push(sampleStream());
    assert.deepEqual(errors, []);
    assert.equal(seen.length, 8);
    assert.deepEqual(seen[1], {
      type: TYPE_DATA, flags: 0, streamId: 1, length: 5,
      payload: Buffer.from('hello').toString('hex'),
    });
    assert.equal(seen[4].length, 70_000);
    assert.equal(seen[5].length, 0xffff_ffff);
    assert.equal(decoder.idle, true);
  });

  it('decodes the same frames when fed one byte at a time', () => {
    const whole = collector();
    whole.decoder.push(sampleStream());
    const bytes = collector();
    const input = sampleStream();
    for (let i = 0; i < input.length; i++) {
      bytes.decoder.push(input.subarray(i, i + 1));
      // Only the first header's last byte completes a frame among the first 12.
      if (i < HEADER_SIZE - 1) assert.equal(bytes.decoder.idle, false);
    }
    assert.deepEqual(bytes.seen, whole.seen);
    assert.deepEqual(bytes.errors, []);
    assert.equal(bytes.decoder.idle, true);
  });

  it('decodes the same frames at random split points', () => {
    const whole = collector();
    whole.decoder.push(sampleStream());
    const input = sampleStream();
    let seed = 99;
    for (let round = 0; round < 50; round++) {
      const c = collector();
      let pos = 0;
      while (pos < input.length) {
        seed = (seed * 1103515245 + 12345) >>> 0;
        const n = 1 + (seed % 40_000);
        c.decoder.push(input.subarray(pos, pos + n));
        pos += n;
      }
      assert.deepEqual(c.seen, whole.seen);
    }
  });

  it('hands payload on as views of the input chunk, without copying', () => {
    const { decoder, pieces } = collector();
    const input = frame(TYPE_DATA, 0, 1, Buffer.from('zero-copy'));
    decoder.push(input);
    assert.equal(pieces.length, 1);
    assert.equal(pieces[0].buffer, input.buffer);
  });

  it('skips a payload the sink declines, across chunks', () => {
    const { decoder, seen } = collector(2);
    const input = sampleStream();
    decoder.push(input.subarray(0, 100));
    decoder.push(input.subarray(100, 40_000));
    decoder.push(input.subarray(40_000));
    assert.equal(seen.length, 8);
    assert.equal(seen[4].payload, '');
    assert.equal(seen[7].type, TYPE_GO_AWAY);
  });

  it('reports a bad version once and ignores everything after it', () => {
    const { decoder, seen, errors } = collector();
    const bad = encodeHeader(TYPE_PING, FLAG_SYN, 0, 1);
    bad[0] = 1;
    decoder.push(Buffer.concat([frame(TYPE_PING, FLAG_SYN, 0, 7), bad, sampleStream()]));
    assert.equal(seen.length, 1);
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'ERR_YAMUX_INVALID_VERSION');
    assert.equal(decoder.stopped, true);
    decoder.push(sampleStream());
    assert.equal(seen.length, 1);
  });

  it('reports an unknown frame type', () => {
    const { decoder, errors } = collector();
    const bad = encodeHeader(4, 0, 0, 0);
    decoder.push(bad.subarray(0, 5));
    assert.equal(errors.length, 0);
    decoder.push(bad.subarray(5));
    assert.equal(errors.length, 1);
    assert.equal(errors[0].code, 'ERR_YAMUX_INVALID_TYPE');
    assert.equal(errors[0].message, 'invalid message type');
  });

  it('does not allocate for a huge declared length', () => {
    const { decoder, seen } = collector();
    const before = process.memoryUsage().arrayBuffers;
    decoder.push(encodeHeader(TYPE_DATA, 0, 1, 0xffff_ffff));
    decoder.push(Buffer.alloc(1000));
    assert.equal(seen.length, 0);
    assert.equal(decoder.idle, false);
    assert.ok(process.memoryUsage().arrayBuffers - before < 1024 * 1024);
  });
});
