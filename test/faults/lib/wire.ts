// Helpers the fault and abuse tests share: raw exchanges with the front door (bytes in, the
// whole answer out), Prometheus scrapes of the admin port, and a leak check that every body the
// tests saw, every log line and every admin view is scanned for every secret in play.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls';

/** seenBodies collects every answer body the helpers read, for the leak check. */
export const seenBodies: string[] = [];

/** RawAnswer is one HTTP answer read off a raw connection. */
export interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
  json: unknown;
  /** raw is everything the server sent, as latin1 text. */
  raw: string;
}

/** Sender writes a request to a socket, at whatever pace it likes. */
export type Sender = (socket: Socket) => Promise<void> | void;

/** ExchangeOptions tunes exchange. */
export interface ExchangeOptions {
  /** timeoutMs bounds the whole exchange; what arrived by then is parsed. */
  timeoutMs?: number;
  /** untilAnswer stops as soon as one whole answer has arrived, without waiting for a close. */
  untilAnswer?: boolean;
}

/**
 * exchange opens a connection, lets send write to it and reads until the server closes the
 * connection (or a whole answer arrived, or timeoutMs passed), then parses the first answer.
 */
export async function exchange(
  port: number,
  send: string | Buffer | Sender,
  opts: ExchangeOptions = {},
): Promise<RawAnswer> {
  const socket = connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve).once('error', reject);
  });
  const chunks: Buffer[] = [];
  const closed = new Promise<void>((resolve) => {
    socket.once('close', () => resolve());
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      if (opts.untilAnswer && isWhole(Buffer.concat(chunks))) resolve();
    });
  });
  socket.on('error', () => {});
  const timer = setTimeout(() => socket.destroy(), opts.timeoutMs ?? 15_000);
  try {
    if (typeof send === 'function') await send(socket);
    else socket.write(send);
    await closed;
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
  return parseAnswer(Buffer.concat(chunks));
}

// A whole answer: a head, and as much body as Content-Length says (none for 101).
function isWhole(buf: Buffer): boolean {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return false;
  const head = buf.subarray(0, end).toString('latin1');
  if (/^HTTP\/1\.1 101 /.test(head)) return true;
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  return length !== null && buf.length - end - 4 >= Number(length[1]);
}

/** parseAnswer parses the first HTTP/1.1 answer in buf; status 0 when there is none. */
export function parseAnswer(buf: Buffer): RawAnswer {
  const raw = buf.toString('latin1');
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return { status: 0, headers: {}, body: '', json: undefined, raw };
  const lines = raw.slice(0, end).split('\r\n');
  const status = Number(lines[0].split(' ')[1]);
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const length = Number(headers['content-length'] ?? NaN);
  const rest = buf.subarray(Buffer.byteLength(raw.slice(0, end + 4), 'latin1'));
  const body = (Number.isInteger(length) ? rest.subarray(0, length) : rest).toString('utf8');
  seenBodies.push(body);
  return { status, headers, body, json: jsonOrUndefined(body), raw };
}

/**
 * assertJsonError checks an Arvados JSON error answer: the status, a JSON content type and a
 * body of the form {"errors":[message]}; message may be a string or a pattern.
 */
export function assertJsonError(
  answer: { status: number; headers: Record<string, string | string[] | undefined>;
    json: unknown },
  status: number,
  message?: string | RegExp,
): void {
  const shown = JSON.stringify(answer.json);
  assert.equal(answer.status, status, `status ${answer.status}, body ${shown}`);
  assert.match(String(answer.headers['content-type']), /^application\/json/);
  const errors = (answer.json as { errors?: unknown } | undefined)?.errors;
  assert.ok(Array.isArray(errors) && typeof errors[0] === 'string', `not an error body: ${shown}`);
  if (typeof message === 'string') assert.equal(errors[0], message);
  else if (message) assert.match(errors[0] as string, message);
}

/** upgradeRequest renders an Arvados-style upgrade request: absolute form, a form body. */
export function upgradeRequest(
  port: number,
  path: string,
  upgrade: string,
  form: Record<string, string> = {},
  headers: Record<string, string> = {},
): string {
  const body = new URLSearchParams(form).toString();
  const all: Record<string, string> = {
    Host: `127.0.0.1:${port}`,
    Upgrade: upgrade,
    'Content-Type': 'application/x-www-form-urlencoded',
    'Content-Length': String(Buffer.byteLength(body)),
    ...headers,
  };
  const lines = Object.entries(all).map(([k, v]) => `${k}: ${v}\r\n`).join('');
  return `POST http://127.0.0.1:${port}${path} HTTP/1.1\r\n${lines}\r\n${body}`;
}

/** Sample is one Prometheus sample. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** scrape reads a sidecar's /metrics and returns its samples and the text. */
export async function scrape(adminPort: number): Promise<{ samples: Sample[]; text: string }> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2];
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return { samples, text };
}

/** metric is the value of the first sample with name and labels, or 0 when there is none. */
export function metric(samples: Sample[], name: string, labels: Record<string, string> = {}) {
  const s = samples.find((x) => x.name === name &&
    Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  return s?.value ?? 0;
}

/** debugTunnels reads /debug/tunnels. */
export async function debugTunnels(adminPort: number): Promise<{ container_uuid: string;
  streams_open: number }[]> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/debug/tunnels`);
  return await res.json() as { container_uuid: string; streams_open: number }[];
}

/**
 * assertTunnelViewsAgree checks that the registry as /debug/tunnels shows it and the
 * arvados_gateway_tunnels gauge say the same, and returns the UUIDs held.
 */
export async function assertTunnelViewsAgree(adminPort: number): Promise<string[]> {
  const tunnels = await debugTunnels(adminPort);
  const { samples } = await scrape(adminPort);
  assert.equal(metric(samples, 'arvados_gateway_tunnels'), tunnels.length,
    `gauge and /debug/tunnels disagree: ${JSON.stringify(tunnels)}`);
  return tunnels.map((t) => t.container_uuid).sort();
}

/**
 * LeakCheck holds every secret a test file used and scans everything a sidecar shows for them:
 * log lines, /metrics, /debug/*, /readyz, and every answer body the tests read.
 */
export class LeakCheck {
  readonly #secrets = new Map<string, string>();

  /** add registers a secret under a name used in failure messages. */
  add(name: string, secret: string): void {
    this.#secrets.set(name, secret);
  }

  /** size is the number of secrets registered. */
  get size(): number {
    return this.#secrets.size;
  }

  /** scan fails when any text holds any secret in plain, URL-encoded or base64 form. */
  scan(where: string, texts: Iterable<string>): number {
    let scanned = 0;
    for (const text of texts) {
      scanned++;
      for (const [name, secret] of this.#secrets) {
        for (const form of [secret, encodeURIComponent(secret),
          Buffer.from(secret).toString('base64')]) {
          assert.ok(!text.includes(form), `${name} leaked into ${where}: ${text.slice(0, 300)}`);
        }
      }
    }
    return scanned;
  }

  /** scanSidecar scans a sidecar's admin views. */
  async scanSidecar(adminPort: number): Promise<void> {
    const views: string[] = [];
    for (const path of ['/metrics', '/debug/tunnels', '/debug/config', '/readyz', '/healthz']) {
      views.push(await (await fetch(`http://127.0.0.1:${adminPort}${path}`)).text());
    }
    this.scan(`the admin views of :${adminPort}`, views);
  }
}

/** TlsRelay is a man in the middle started by tlsRelay, and how often it was used. */
export interface TlsRelay {
  /** address is host:port to give out as the gateway's address. */
  address: string;
  /** relayed counts the connections it has forwarded. */
  relayed(): number;
  close(): void;
}

/**
 * tlsRelay terminates TLS with a certificate of its own on loopback and speaks TLS to target
 * (host:port): what it forwards is the sidecar's proof, bound to the relay's certificate.
 */
export async function tlsRelay(pem: { key: Buffer; cert: Buffer }, target: string):
  Promise<TlsRelay> {
  const [host, port] = target.split(':');
  let relayed = 0;
  const server = createTlsServer(pem, (s) => {
    relayed++;
    const up = tlsConnect({ host, port: Number(port), rejectUnauthorized: false });
    s.pipe(up).pipe(s);
    s.on('error', () => up.destroy());
    up.on('error', () => s.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    address: `127.0.0.1:${(server.address() as { port: number }).port}`,
    relayed: () => relayed,
    close: () => server.close(),
  };
}

/** selfSigned makes a throwaway key and certificate with openssl. */
export function selfSigned(dir: string, name: string): { key: Buffer; cert: Buffer } {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
    '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${name}`],
  { stdio: 'ignore' });
  return { key: readFileSync(key), cert: readFileSync(cert) };
}

export { waitFor } from '../../lib/wait.ts';

/** freePort finds a port that is free on loopback right now. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** envCount reads a positive integer from the environment, for soak mode. */
export function envCount(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${name} must be a positive integer`);
  return n;
}

/** report appends one line of figures to SOAK_REPORT (when set), for scripts/soak.ts. */
export function report(figures: Record<string, number | string>): void {
  const file = process.env.SOAK_REPORT;
  if (!file) return;
  appendFileSync(file, JSON.stringify(figures) + '\n');
}

/**
 * Trap is a loopback listener that counts the connections it accepts and records the request
 * head of each, answering with a fixed answer: the tests' stand-in for a place the sidecar must
 * never connect to, or a peer whose requests are to be inspected.
 */
export class Trap {
  accepted = 0;
  readonly heads: string[] = [];
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  constructor(status = 503, message = 'container is running but tunnel is down') {
    const body = JSON.stringify({ errors: [message] });
    this.#server = createServer((socket) => {
      this.accepted++;
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      socket.on('error', () => {});
      let buf = '';
      socket.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0 || buf === '') return;
        this.heads.push(buf.slice(0, end));
        buf = '';
        socket.end(`HTTP/1.1 ${status} Trapped\r\nContent-Type: application/json\r\n` +
          `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
      });
    });
  }

  /** listen listens on host (a loopback address) and returns the port. */
  async listen(host: string, port = 0): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, resolve);
    });
    return (this.#server.address() as { port: number }).port;
  }

  /** close stops listening and drops every connection. */
  close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

/** jsonOrUndefined parses an answer body, or gives undefined when it is not JSON. */
export function jsonOrUndefined(body: string): unknown {
  try {
    return JSON.parse(body);
  } catch {
    return undefined;
  }
}
