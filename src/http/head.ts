// Reading an HTTP/1.1 message head straight off a socket. The gateway needs this wherever it
// owns the raw bytes: Arvados' upgrade requests (which Node's server does not see as upgrades),
// and the 101 answers of gateways and peers, after which the same socket carries other bytes.
import type { Duplex } from 'node:stream';
import { GatewayError } from '../errors.ts';

/** MAX_HEAD_BYTES bounds a head; Go's default is 1 MiB but no gateway head needs 64 KiB. */
export const MAX_HEAD_BYTES = 64 * 1024;

/** Head is a parsed request or response head. Header names are lower-cased. */
export interface Head {
  /** startLine's three parts: method, target, version (request) or version, status, reason. */
  parts: [string, string, string];
  headers: Record<string, string>;
  /** rawHeaders lists names and values as sent, alternating, as node:http's rawHeaders does. */
  rawHeaders: string[];
}

/** HEAD_CUT_OFF is readHead's message when the connection ends before the head does. */
export const HEAD_CUT_OFF = 'connection closed before the head ended';

/** HeadRead is a head, its raw bytes, and whatever arrived after it in the same reads. */
export interface HeadRead {
  head: Head;
  raw: Buffer;
  rest: Buffer;
}

const END = Buffer.from('\r\n\r\n');
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * readHead reads until the blank line that ends a head, leaving the socket paused with nothing
 * consumed beyond the bytes returned in rest. It rejects with a GatewayError (400, 408 or 431).
 */
export function readHead(socket: Duplex, timeoutMs: number, initial?: Buffer): Promise<HeadRead> {
  return new Promise((resolve, reject) => {
    let buf = initial ?? Buffer.alloc(0);
    let searched = 0;
    const timer = setTimeout(() => finish(new GatewayError(408, 'timeout reading request head')),
      timeoutMs);

    let detach = () => {};
    const finish = (err?: Error, result?: HeadRead) => {
      clearTimeout(timer);
      detach();
      if (err) reject(err);
      else resolve(result!);
    };
    const tryParse = (): boolean => {
      // A TLS handshake on the plain port, or a head with bare LF line ends, would otherwise
      // wait for the timeout: say what is wrong at once.
      if (searched === 0 && buf[0] === 0x16) {
        finish(new GatewayError(400, 'TLS handshake on a plain HTTP port'));
        return true;
      }
      const at = buf.indexOf(END, Math.max(0, searched - 3));
      if (at < 0 && /[^\r]\n/.test(buf.toString('latin1', Math.max(0, searched - 1)))) {
        finish(new GatewayError(400, 'malformed head: lines must end with CRLF'));
        return true;
      }
      if (at < 0) {
        searched = buf.length;
        if (buf.length > MAX_HEAD_BYTES) {
          finish(new GatewayError(431, 'request head too large'));
          return true;
        }
        return false;
      }
      if (at > MAX_HEAD_BYTES) {
        finish(new GatewayError(431, 'request head too large'));
        return true;
      }
      try {
        const head = parseHead(buf.subarray(0, at).toString('latin1'));
        const raw = buf.subarray(0, at + END.length);
        finish(undefined, { head, raw, rest: buf.subarray(at + END.length) });
      } catch (err) {
        finish(err as Error);
      }
      return true;
    };
    const onData = (chunk: Buffer) => {
      buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
      tryParse();
    };
    const onEnd = () => finish(new GatewayError(400, HEAD_CUT_OFF));

    if (buf.length > 0 && tryParse()) return;
    detach = follow(socket, onData, onEnd);
  });
}

/** parseHead parses the text of a head (without its final blank line). */
export function parseHead(text: string): Head {
  const lines = text.split('\r\n');
  const start = lines[0].split(' ');
  if (start.length < 3 && !(start.length === 2 && /^HTTP\/1\.[01]$/.test(start[0]))) {
    throw new GatewayError(400, 'malformed request line');
  }
  const parts: [string, string, string] = [start[0], start[1], start.slice(2).join(' ')];
  const headers: Record<string, string> = {};
  const rawHeaders: string[] = [];
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw new GatewayError(400, 'malformed header line');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (!TOKEN.test(name)) throw new GatewayError(400, 'malformed header name');
    if (/[\0\r\n]/.test(value)) throw new GatewayError(400, 'malformed header value');
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    rawHeaders.push(line.slice(0, colon), value);
  }
  return { parts, headers, rawHeaders };
}

/** readBody reads exactly length bytes that follow a head, starting with what is in rest. */
export function readBody(
  socket: Duplex,
  rest: Buffer,
  length: number,
  timeoutMs: number,
): Promise<{ body: Buffer; rest: Buffer }> {
  if (rest.length >= length) {
    return Promise.resolve({ body: rest.subarray(0, length), rest: rest.subarray(length) });
  }
  return new Promise((resolve, reject) => {
    const chunks = [rest];
    let have = rest.length;
    const timer = setTimeout(() => finish(new GatewayError(408, 'timeout reading request body')),
      timeoutMs);
    let detach = () => {};
    const finish = (err?: Error) => {
      clearTimeout(timer);
      detach();
      if (err) return reject(err);
      const all = Buffer.concat(chunks);
      resolve({ body: all.subarray(0, length), rest: all.subarray(length) });
    };
    const onData = (chunk: Buffer) => {
      chunks.push(chunk);
      have += chunk.length;
      if (have >= length) finish();
    };
    const onEnd = () => finish(new GatewayError(400, 'connection closed before the body ended'));
    detach = follow(socket, onData, onEnd);
  });
}

// follow reads a socket into onData until onEnd; the result stops reading and leaves the
// socket paused, so bytes that arrive later stay in it for whoever reads next.
function follow(socket: Duplex, onData: (chunk: Buffer) => void, onEnd: () => void): () => void {
  socket.on('data', onData);
  socket.on('end', onEnd);
  socket.on('error', onEnd);
  socket.on('close', onEnd);
  socket.resume();
  return () => {
    socket.removeListener('data', onData);
    socket.removeListener('end', onEnd);
    socket.removeListener('error', onEnd);
    socket.removeListener('close', onEnd);
    socket.pause();
  };
}
