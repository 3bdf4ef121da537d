// Arvados' upgrade requests (tunnel, ssh): a POST with `Upgrade:` and a form body, which
// Arvados' Go clients send without `Connection: upgrade`. Node's HTTP server treats those as
// ordinary requests, so the front door reads them off the socket itself and hands them here
// as an UpgradeRequest; requests a front proxy turned into real upgrades arrive the same way.
import type { Duplex } from 'node:stream';
import { GatewayError, rawErrorResponse } from '../errors.ts';
import { readBody, type Head } from './head.ts';

/** MAX_FORM_BYTES bounds an upgrade request's form body; real ones are under 200 bytes. */
export const MAX_FORM_BYTES = 16 * 1024;

/** UpgradeRequest is an upgrade request whose head and form body have been read. */
export interface UpgradeRequest {
  method: string;
  url: URL;
  headers: Record<string, string>;
  /** form holds the body's fields, then the query's, as Go's FormValue would see them. */
  form: URLSearchParams;
  socket: Duplex;
  /** rest holds bytes the client sent after the body, which belong to the upgraded stream. */
  rest: Buffer;
  remoteAddress: string;
}

/** requestUrl parses a request target in origin form or absolute form. */
export function requestUrl(target: string): URL {
  try {
    return new URL(target, 'http://request.invalid');
  } catch {
    throw new GatewayError(400, 'malformed request target');
  }
}

/** readUpgradeRequest reads the form body that follows an upgrade request's head. */
export async function readUpgradeRequest(
  socket: Duplex,
  head: Head,
  rest: Buffer,
  remoteAddress: string,
  timeoutMs: number,
): Promise<UpgradeRequest> {
  const headers = head.headers;
  if (headers['transfer-encoding'] !== undefined) {
    throw new GatewayError(400, 'upgrade request body must have a Content-Length');
  }
  const declared = headers['content-length'] ?? '0';
  if (!/^\d{1,15}$/.test(declared)) throw new GatewayError(400, 'malformed Content-Length');
  const length = Number(declared);
  if (length > MAX_FORM_BYTES) throw new GatewayError(413, 'upgrade request body too large');
  const { body, rest: after } = await readBody(socket, rest, length, timeoutMs);
  const url = requestUrl(head.parts[1]);
  const form = new URLSearchParams(body.toString('utf8'));
  for (const [k, v] of url.searchParams) form.append(k, v);
  return { method: head.parts[0], url, headers, form, socket, rest: after, remoteAddress };
}

/** refuse answers a taken-over socket with an Arvados JSON error and closes it. */
export function refuse(socket: Duplex, err: GatewayError): void {
  if (socket.destroyed) return;
  socket.end(rawErrorResponse(err));
  // A client that never reads its answer must not hold the socket open forever.
  setTimeout(() => socket.destroy(), 5000).unref();
}

/** switchingProtocols is the 101 head, byte-exact: Go's clients refuse any other Connection. */
export function switchingProtocols(upgrade: string, extra: Record<string, string> = {}): string {
  const lines = Object.entries(extra).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return `HTTP/1.1 101 Switching Protocols\r\nUpgrade: ${upgrade}\r\nConnection: upgrade\r\n` +
    `${lines}\r\n`;
}

/**
 * bearerToken takes the caller's token from Authorization: Bearer/OAuth2 or Basic's password.
 * A token with anything but visible ASCII is no token: it could not be sent on in a header.
 */
export function bearerToken(authorization: string | undefined): string {
  if (!authorization) return '';
  let token = '';
  const m = /^(Bearer|OAuth2)\s+(\S+)\s*$/i.exec(authorization);
  const basic = /^Basic\s+(\S+)\s*$/i.exec(authorization);
  if (m) {
    token = m[2];
  } else if (basic) {
    const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    token = colon >= 0 ? decoded.slice(colon + 1) : '';
  }
  return /^[\x21-\x7e]+$/.test(token) ? token : '';
}
