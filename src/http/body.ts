// Cutting an HTTP/1.1 message body out of the bytes that follow its head (RFC 9112 section 6):
// by Content-Length, by chunked transfer coding, or until the connection closes. The gateway
// uses this where it reads an answer straight off a socket instead of through node:http.
import { GatewayError } from '../errors.ts';

/** BodyReader passes on the body found in the bytes it is fed. */
export interface BodyReader {
  /**
   * feed calls out with each part of the body found in data, as views of data, and returns
   * true once the body is complete; bytes after the body's end are ignored. It throws a
   * GatewayError when the framing is malformed.
   */
  feed(data: Buffer, out: (part: Buffer) => void): boolean;
  /** endsWithSource tells whether the end of the connection is the body's end. */
  readonly endsWithSource: boolean;
}

/** Framing is how an answer's body ends, and the length to declare for it, if any. */
export interface Framing {
  body: BodyReader;
  /** length is the Content-Length to pass on, undefined when the body is not length-framed. */
  length: number | undefined;
}

/**
 * framingOf finds where the body of an answer to a request made with method ends (RFC 9112
 * section 6.3), given its status and lower-cased headers. It throws a 502 for framing that
 * cannot be trusted, as a proxy must not guess where a body ends. Go's server, which every
 * gateway is, sends no transfer coding but chunked, so any other is refused rather than
 * passed on undecoded.
 */
export function framingOf(method: string, status: number, headers: Record<string, string>):
  Framing {
  const coding = headers['transfer-encoding'];
  if (coding !== undefined && coding.trim().toLowerCase() !== 'chunked') {
    throw new GatewayError(502, 'gateway sent an unsupported Transfer-Encoding');
  }
  // Point 3: with a transfer coding, any Content-Length is ignored, and not passed on.
  const length = coding === undefined ? declaredLength(headers['content-length']) : undefined;
  if (method === 'HEAD' || status < 200 || status === 204 || status === 304) {
    return { body: lengthBody(0), length };
  }
  if (coding !== undefined) return { body: chunkedBody(), length };
  if (length === undefined) return { body: untilClose(), length };
  return { body: lengthBody(length), length };
}

// declaredLength reads a Content-Length. Repeated headers arrive joined with commas, and
// identical values are allowed (section 6.3, point 5); anything else is refused.
function declaredLength(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const values = new Set(value.split(',').map((v) => v.trim()));
  const [only] = values;
  if (values.size !== 1 || !/^\d{1,15}$/.test(only)) {
    throw new GatewayError(502, 'gateway sent an invalid Content-Length');
  }
  return Number(only);
}

/** lengthBody is a body of exactly length bytes. */
export function lengthBody(length: number): BodyReader {
  let left = length;
  return {
    endsWithSource: false,
    feed(data, out) {
      if (left > 0 && data.length > 0) {
        const part = data.length <= left ? data : data.subarray(0, left);
        left -= part.length;
        out(part);
      }
      return left === 0;
    },
  };
}

/** untilClose is a body that runs until the connection ends. */
export function untilClose(): BodyReader {
  return {
    endsWithSource: true,
    feed(data, out) {
      if (data.length > 0) out(data);
      return false;
    },
  };
}

// Where chunkedBody is within the coding. (Type stripping allows no enum.)
const Chunked = {
  Size: 0,
  Extension: 1,
  SizeLf: 2,
  Data: 3,
  DataCr: 4,
  DataLf: 5,
  TrailerStart: 6,
  Trailer: 7,
  TrailerLf: 8,
  FinalLf: 9,
  Done: 10,
} as const;
type ChunkedState = typeof Chunked[keyof typeof Chunked];

// Limits on the parts of a chunked coding that are not data, so that a peer cannot make the
// reader hold or scan without end.
const MAX_SIZE_DIGITS = 13;
const MAX_EXTENSION_BYTES = 4096;
const MAX_TRAILER_BYTES = 64 * 1024;

const CR = 0x0d;
const LF = 0x0a;

/** chunkedBody decodes the chunked transfer coding (RFC 9112 section 7.1); trailers are dropped. */
export function chunkedBody(): BodyReader {
  let state: ChunkedState = Chunked.Size;
  let size = 0;
  let digits = 0;
  let skipped = 0;
  const bad = (what: string) =>
    new GatewayError(502, `gateway sent a malformed chunked body: ${what}`);
  const need = (byte: number, want: number, what: string) => {
    if (byte !== want) throw bad(what);
  };

  return {
    endsWithSource: false,
    feed(data, out) {
      let i = 0;
      while (i < data.length && state !== Chunked.Done) {
        if (state === Chunked.Data) {
          const n = Math.min(size, data.length - i);
          out(data.subarray(i, i + n));
          i += n;
          size -= n;
          if (size === 0) state = Chunked.DataCr;
          continue;
        }
        const byte = data[i++];
        switch (state) {
          case Chunked.Size: {
            const value = hexValue(byte);
            if (value >= 0 && digits < MAX_SIZE_DIGITS) {
              size = size * 16 + value;
              digits++;
            } else if (digits > 0 && (byte === 0x3b || byte === 0x20 || byte === 0x09)) {
              state = Chunked.Extension;
            } else if (digits > 0 && byte === CR) {
              state = Chunked.SizeLf;
            } else {
              throw bad('chunk size');
            }
            break;
          }
          case Chunked.Extension:
            if (byte === CR) state = Chunked.SizeLf;
            else if (++skipped > MAX_EXTENSION_BYTES) throw bad('chunk extension too long');
            break;
          case Chunked.SizeLf:
            need(byte, LF, 'chunk size line');
            skipped = 0;
            digits = 0;
            state = size === 0 ? Chunked.TrailerStart : Chunked.Data;
            break;
          case Chunked.DataCr:
            need(byte, CR, 'chunk end');
            state = Chunked.DataLf;
            break;
          case Chunked.DataLf:
            need(byte, LF, 'chunk end');
            state = Chunked.Size;
            break;
          case Chunked.TrailerStart:
            state = byte === CR ? Chunked.FinalLf : Chunked.Trailer;
            skipped++;
            break;
          case Chunked.Trailer:
            if (byte === CR) state = Chunked.TrailerLf;
            if (++skipped > MAX_TRAILER_BYTES) throw bad('trailer too long');
            break;
          case Chunked.TrailerLf:
            need(byte, LF, 'trailer line');
            state = Chunked.TrailerStart;
            break;
          case Chunked.FinalLf:
            need(byte, LF, 'last chunk');
            state = Chunked.Done;
            break;
        }
      }
      return state === Chunked.Done;
    },
  };
}

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  const lower = byte | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}
