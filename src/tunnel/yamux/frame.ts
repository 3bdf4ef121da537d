// Frame header codec and the incremental decoder. The decoder never buffers payload: it hands
// Data payload on as views of the input chunks, so its memory does not depend on any length
// read from the wire. Whoever receives the views decides what to keep (and must check the
// declared length against its receive window before accepting the payload).
import {
  HEADER_SIZE, PROTOCOL_VERSION, TYPE_DATA, TYPE_GO_AWAY, YamuxError,
} from './const.ts';

/** FrameHeader is one decoded 12-byte header. */
export interface FrameHeader {
  version: number;
  type: number;
  flags: number;
  streamId: number;
  length: number;
}

/** encodeHeader writes a version-0 header into out at offset and returns out. */
export function encodeHeader(
  type: number, flags: number, streamId: number, length: number,
  out: Buffer = Buffer.allocUnsafe(HEADER_SIZE), offset = 0,
): Buffer {
  out[offset] = PROTOCOL_VERSION;
  out[offset + 1] = type;
  out.writeUInt16BE(flags, offset + 2);
  out.writeUInt32BE(streamId, offset + 4);
  out.writeUInt32BE(length, offset + 8);
  return out;
}

/** decodeHeader reads the header at offset without judging it. */
export function decodeHeader(buf: Buffer, offset = 0): FrameHeader {
  if (buf.length - offset < HEADER_SIZE) {
    throw new RangeError(`yamux: a header needs ${HEADER_SIZE} bytes`);
  }
  return {
    version: buf[offset],
    type: buf[offset + 1],
    flags: buf.readUInt16BE(offset + 2),
    streamId: buf.readUInt32BE(offset + 4),
    length: buf.readUInt32BE(offset + 8),
  };
}

/** FrameSink receives what a FrameDecoder finds, in wire order. */
export interface FrameSink {
  /**
   * onFrame gets each well-formed header. For a Data frame with a non-zero length, it returns
   * true to receive the payload through onData, or false to have the payload skipped.
   */
  onFrame(type: number, flags: number, streamId: number, length: number): boolean;
  /** onData gets the next piece of the accepted payload; `last` marks the frame's end. */
  onData(piece: Buffer, last: boolean): void;
  /** onError gets the reason the input is malformed; the decoder then stops for good. */
  onError(err: YamuxError): void;
}

/** FrameDecoder splits a byte stream into frames, whatever the chunk boundaries are. */
export class FrameDecoder {
  readonly #sink: FrameSink;
  readonly #header = Buffer.alloc(HEADER_SIZE);
  #headerFill = 0;
  #payloadLeft = 0;
  #deliver = false;
  #stopped = false;

  constructor(sink: FrameSink) {
    this.#sink = sink;
  }

  /** stopped tells whether the decoder has quit and ignores input. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** idle tells whether the input so far ended exactly on a frame boundary. */
  get idle(): boolean {
    return this.#headerFill === 0 && this.#payloadLeft === 0;
  }

  /** stop makes the decoder ignore the rest of this chunk and all later input. */
  stop(): void {
    this.#stopped = true;
  }

  /** push feeds the next chunk of the byte stream. */
  push(chunk: Buffer): void {
    const end = chunk.length;
    let pos = 0;
    while (pos < end && !this.#stopped) {
      if (this.#payloadLeft > 0) {
        const take = Math.min(this.#payloadLeft, end - pos);
        this.#payloadLeft -= take;
        if (this.#deliver) {
          this.#sink.onData(chunk.subarray(pos, pos + take), this.#payloadLeft === 0);
        }
        pos += take;
        continue;
      }
      let src: Buffer;
      let at: number;
      if (this.#headerFill === 0 && end - pos >= HEADER_SIZE) {
        // Common case: the whole header is in this chunk, so read it in place.
        src = chunk;
        at = pos;
        pos += HEADER_SIZE;
      } else {
        const take = Math.min(HEADER_SIZE - this.#headerFill, end - pos);
        chunk.copy(this.#header, this.#headerFill, pos, pos + take);
        this.#headerFill += take;
        pos += take;
        if (this.#headerFill < HEADER_SIZE) return;
        this.#headerFill = 0;
        src = this.#header;
        at = 0;
      }
      this.#frame(src, at);
    }
  }

  #frame(src: Buffer, at: number): void {
    if (src[at] !== PROTOCOL_VERSION) {
      this.#fail(new YamuxError('ERR_YAMUX_INVALID_VERSION'));
      return;
    }
    const type = src[at + 1];
    if (type > TYPE_GO_AWAY) {
      this.#fail(new YamuxError('ERR_YAMUX_INVALID_TYPE'));
      return;
    }
    const flags = src.readUInt16BE(at + 2);
    const streamId = src.readUInt32BE(at + 4);
    const length = src.readUInt32BE(at + 8);
    const deliver = this.#sink.onFrame(type, flags, streamId, length);
    if (type === TYPE_DATA && length > 0) {
      this.#payloadLeft = length;
      this.#deliver = deliver;
    }
  }

  #fail(err: YamuxError): void {
    this.#stopped = true;
    this.#sink.onError(err);
  }
}
