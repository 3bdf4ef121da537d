// The client side of an upgrade: sending an upgrade request on a connection we opened (to a
// gateway, or to a peer sidecar) and reading the answer's head off the raw socket, so that the
// bytes after the 101 stay ours to relay.
import type { Duplex } from 'node:stream';
import { GatewayError } from '../errors.ts';
import { readHead, type HeadRead } from '../http/head.ts';

/** UpgradeAnswer is the head of the answer to an upgrade request, and the bytes after it. */
export interface UpgradeAnswer extends HeadRead {
  status: number;
  reason: string;
}

/** sendUpgrade writes an upgrade request with a form body and reads the answer's head. */
export async function sendUpgrade(
  socket: Duplex,
  path: string,
  headers: Record<string, string>,
  form: URLSearchParams,
  timeoutMs: number,
): Promise<UpgradeAnswer> {
  const body = form.toString();
  const lines = Object.entries({
    ...headers,
    'Content-Type': 'application/x-www-form-urlencoded',
    'Content-Length': String(Buffer.byteLength(body)),
  }).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  socket.write(`POST ${path} HTTP/1.1\r\n${lines}\r\n${body}`);
  let answer: HeadRead;
  try {
    answer = await readHead(socket, timeoutMs);
  } catch (err) {
    throw new GatewayError(502, `upgrade failed: ${(err as Error).message}`);
  }
  const status = Number(answer.head.parts[1]);
  if (!/^HTTP\/1\.[01]$/.test(answer.head.parts[0]) || !Number.isInteger(status)) {
    throw new GatewayError(502, 'upgrade failed: malformed response head');
  }
  return { ...answer, status, reason: answer.head.parts[2] };
}

/** readSomeBody reads what follows a non-101 head, up to limit bytes, for an error message. */
export function readSomeBody(
  socket: Duplex,
  answer: UpgradeAnswer,
  limit: number,
  timeoutMs: number,
): Promise<Buffer> {
  const declared = Number(answer.head.headers['content-length'] ?? NaN);
  const want = Math.min(limit, Number.isSafeInteger(declared) ? declared : limit);
  return new Promise((resolve) => {
    let buf = answer.rest.subarray(0, want);
    if (buf.length >= want) return resolve(buf);
    const finish = () => {
      clearTimeout(timer);
      socket.removeListener('data', onData);
      socket.removeListener('end', finish);
      socket.removeListener('close', finish);
      resolve(buf.subarray(0, want));
    };
    const timer = setTimeout(finish, timeoutMs);
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length >= want) finish();
    };
    socket.on('data', onData);
    socket.once('end', finish);
    socket.once('close', finish);
    socket.resume();
  });
}
