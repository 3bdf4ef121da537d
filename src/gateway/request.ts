// One HTTP/1.1 request to a container's gateway, on a TLS connection opened for it alone,
// written and read straight off the socket instead of through node:http. node:http's parser
// hands the answer's body over one TLS record at a time, each in a fresh buffer; reading it
// ourselves lets the body be relayed through the shared read buffer of net/socket-relay.ts,
// which for a large log is most of the cost.
import type { OutgoingHttpHeaders } from 'node:http';
import type { Duplex, Readable, Writable } from 'node:stream';
import { GatewayError } from '../errors.ts';
import { HEAD_CUT_OFF, readHead, type Head } from '../http/head.ts';

/** GatewayAnswer is the head of the gateway's answer and the bytes read after it. */
export interface GatewayAnswer {
  status: number;
  reason: string;
  head: Head;
  rest: Buffer;
}

/**
 * OutgoingRequest is what is sent. The body, if any, is streamed from a client's request,
 * with its length when known, else in chunked coding; whatever framing headers the given
 * headers hold are replaced by that.
 */
export interface OutgoingRequest {
  method: string;
  target: string;
  headers: OutgoingHttpHeaders;
  body?: { from: Readable; length: number | null };
}

// Interim answers a gateway may send before its final one; Go's server sends at most one.
const MAX_INTERIM_ANSWERS = 16;

/**
 * sendRequest writes the request on socket, streams its body, and reads the answer's head,
 * skipping interim (1xx) answers. It rejects with a GatewayError: 504 when no final head has
 * arrived within timeoutMs, 503 when the gateway closes first (crunch-run may just have
 * exited), 502 for a malformed head.
 */
export async function sendRequest(
  socket: Duplex,
  req: OutgoingRequest,
  timeoutMs: number,
): Promise<GatewayAnswer> {
  const headers = { ...req.headers };
  delete headers['content-length'];
  delete headers['transfer-encoding'];
  const chunked = req.body !== undefined && req.body.length === null;
  if (req.body?.length != null) headers['content-length'] = String(req.body.length);
  if (chunked) headers['transfer-encoding'] = 'chunked';
  socket.write(requestHead(req.method, req.target, headers));
  if (req.body) sendBody(req.body.from, socket, chunked);

  // One deadline for the final answer, however many interim ones come before it.
  const deadline = performance.now() + timeoutMs;
  let rest: Buffer | undefined;
  for (let interim = 0; ; interim++) {
    if (interim > MAX_INTERIM_ANSWERS) {
      throw new GatewayError(502, 'gateway sent too many interim answers');
    }
    let read;
    try {
      read = await readHead(socket, Math.max(0, deadline - performance.now()), rest);
    } catch (err) {
      throw answerError(err as GatewayError);
    }
    const [version, code, reason] = read.head.parts;
    const status = Number(code);
    if (!/^HTTP\/1\.[01]$/.test(version) || !/^[1-5]\d\d$/.test(code) ||
      !passable(reason, read.head.rawHeaders)) {
      throw new GatewayError(502, 'gateway sent a malformed answer head');
    }
    if (status === 101) throw new GatewayError(502, 'gateway switched protocols unexpectedly');
    // RFC 9110 section 15.2: interim answers come before the final one and are dropped.
    if (status >= 200) return { status, reason, head: read.head, rest: read.rest };
    rest = read.rest;
  }
}

// passable tells whether a reason phrase and header values hold only what may be passed on
// to the client (RFC 9110 section 5.5: no control characters but tab).
function passable(reason: string, rawHeaders: string[]): boolean {
  const text = /^[\t\x20-\x7e\x80-\xff]*$/;
  if (!text.test(reason)) return false;
  for (let i = 1; i < rawHeaders.length; i += 2) if (!text.test(rawHeaders[i])) return false;
  return true;
}

function requestHead(method: string, target: string, headers: OutgoingHttpHeaders): string {
  if (!/^[!-~]+$/.test(target)) throw new GatewayError(400, 'invalid request target');
  let head = `${method} ${target} HTTP/1.1\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [String(value)]) {
      // Headers come from node:http's parser, which refuses these; never pass one on anyway.
      if (/[\0\r\n]/.test(v)) throw new GatewayError(400, `invalid value in header ${name}`);
      head += `${name}: ${v}\r\n`;
    }
  }
  return head + '\r\n';
}

// sendBody streams a request body with back-pressure, in chunked coding when its length was
// not given (RFC 9112 section 7.1). The socket is not ended: the answer still has to come.
function sendBody(from: Readable, to: Writable, chunked: boolean): void {
  from.on('data', (data: Buffer) => {
    if (data.length === 0) return;
    if (chunked ? writeChunk(to, data) : to.write(data)) return;
    from.pause();
    to.once('drain', () => from.resume());
  });
  from.once('end', () => {
    if (chunked) to.write('0\r\n\r\n');
  });
}

function writeChunk(to: Writable, data: Buffer): boolean {
  to.write(`${data.length.toString(16)}\r\n`);
  to.write(data);
  return to.write('\r\n');
}

// answerError restates readHead's errors, which speak of requests, for the gateway's answer.
function answerError(err: GatewayError): GatewayError {
  switch (err.status) {
    case 408:
      return new GatewayError(504, 'upstream did not answer in time');
    case 400:
      if (err.message === HEAD_CUT_OFF) {
        return new GatewayError(503,
          'proxy error: gateway closed the connection before answering');
      }
      return new GatewayError(502, 'gateway sent a malformed answer head');
    case 431:
      return new GatewayError(502, 'gateway sent an answer head that is too large');
    default:
      return new GatewayError(502, 'gateway sent a malformed answer head');
  }
}
