// Raw upgrade requests as Arvados' Go clients send them (absolute-form target, a form body, no
// Connection header), for tests that check the sidecar's answers byte by byte.
import { connect, type Socket } from 'node:net';
import { readHead, type HeadRead } from '../../src/http/head.ts';

/** RawAnswer is the head of an answer, its body (for non-101) and the open socket. */
export interface RawAnswer extends HeadRead {
  status: number;
  body: string;
  json: { errors?: string[] } | undefined;
  socket: Socket;
}

/** rawUpgrade sends one upgrade request on a new connection and reads the answer's head. */
export async function rawUpgrade(
  port: number,
  path: string,
  opts: { upgrade: string; token?: string; form?: Record<string, string>;
    extraHeaders?: Record<string, string> },
): Promise<RawAnswer> {
  const socket = connect(port, '127.0.0.1');
  await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const body = new URLSearchParams(opts.form ?? {}).toString();
  const headers: Record<string, string> = {
    ...(opts.token !== undefined ? { Authorization: `Bearer ${opts.token}` } : {}),
    Host: `127.0.0.1:${port}`,
    Upgrade: opts.upgrade,
    'Content-Type': 'application/x-www-form-urlencoded',
    'Content-Length': String(Buffer.byteLength(body)),
    ...opts.extraHeaders,
  };
  const head = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  socket.write(`POST http://127.0.0.1:${port}${path} HTTP/1.1\r\n${head}\r\n${body}`);
  const answer = await readHead(socket, 20_000);
  const status = Number(answer.head.parts[1]);
  let text = '';
  if (status !== 101) {
    const length = Number(answer.head.headers['content-length'] ?? 0);
    let buf = answer.rest;
    socket.resume();
    while (buf.length < length) {
      buf = Buffer.concat([buf, await new Promise<Buffer>((resolve, reject) => {
        socket.once('data', resolve).once('end', () => reject(new Error('closed early')));
      })]);
    }
    text = buf.subarray(0, length).toString();
    socket.destroy();
  }
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { ...answer, status, body: text, json, socket };
}
