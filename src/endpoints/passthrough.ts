// Everything the sidecar does not serve itself goes to the controller it fronts, unchanged,
// streamed both ways: the sidecar is the pod's front door.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Agent, request } from 'undici';
import { GatewayError, rawErrorResponse, sendError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { Limits } from './context.ts';

/** HOP_BY_HOP lists the headers that describe one connection, not the message (RFC 9110 7.6.1). */
export const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade',
]);

// Node's server has already answered `Expect: 100-continue`; passing it on would make the
// controller wait to send a second 100.
const NOT_FORWARDED = new Set([...HOP_BY_HOP, 'expect']);

/** Passthrough relays requests to the controller. */
export class Passthrough {
  #base: URL;
  #agent: Agent;
  #log: Logger;
  #metrics: Metrics;

  constructor(controllerUrl: string, log: Logger, metrics: Metrics) {
    this.#base = new URL(controllerUrl);
    this.#log = log;
    this.#metrics = metrics;
    // Controller requests can be long (large uploads, slow queries): no body timeout here;
    // clients and the controller bound them.
    this.#agent = new Agent({ headersTimeout: 300_000, bodyTimeout: 0 });
  }

  /** handle relays one request and its answer. */
  async handle(
    req: IncomingMessage,
    res: ServerResponse,
    secure: boolean,
    limits: Limits,
  ): Promise<void> {
    let release: () => void;
    try {
      release = limits.acquire('passthrough');
    } catch (err) {
      sendError(res, err as GatewayError);
      return;
    }
    try {
      await this.#relay(req, res, secure);
    } finally {
      release();
    }
  }

  async #relay(req: IncomingMessage, res: ServerResponse, secure: boolean): Promise<void> {
    const target = controllerTarget(req.url ?? '', this.#base);
    if (target === undefined) {
      this.#metrics.requests.labels('passthrough', 'error_400').inc();
      sendError(res, new GatewayError(400, 'malformed request target'));
      return;
    }
    const headers = forwardHeaders(req.headers, req.socket.remoteAddress, secure);
    const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
    try {
      const upstream = await request(target, {
        method: req.method as 'GET',
        headers,
        body: hasBody ? req : undefined,
        dispatcher: this.#agent,
      });
      const out: Record<string, string | string[]> = {};
      for (const [k, v] of Object.entries(upstream.headers)) {
        if (!HOP_BY_HOP.has(k) && v !== undefined) out[k] = v;
      }
      res.writeHead(upstream.statusCode, out);
      await pipeline(upstream.body, res);
      this.#metrics.requests.labels('passthrough', 'ok').inc();
      this.#log.debug({ route: 'passthrough', method: req.method, status: upstream.statusCode },
        'controller request');
    } catch (err) {
      this.#metrics.requests.labels('passthrough', 'error_502').inc();
      this.#log.warn({ err: (err as Error).message, route: 'passthrough' },
        'controller request failed');
      if (!res.headersSent) sendError(res, new GatewayError(502, 'controller is not reachable'));
      else res.destroy();
    }
  }

  /** handleUpgrade relays an upgrade (a websocket, say) to the controller as raw bytes. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const port = Number(this.#base.port || (this.#base.protocol === 'https:' ? 443 : 80));
    const host = this.#base.hostname.replace(/^\[|\]$/g, '');
    const upstream = this.#base.protocol === 'https:'
      ? tlsConnect({ host, port, servername: host })
      : tcpConnect({ host, port });
    upstream.setNoDelay(true);
    const lines: string[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`);
    }
    upstream.write(`${req.method} ${req.url} HTTP/1.1\r\n${lines.join('')}\r\n`);
    if (head.length > 0) upstream.write(head);
    upstream.once('error', () => {
      socket.end(rawErrorResponse(new GatewayError(502, 'controller is not reachable')));
    });
    upstream.pipe(socket).on('error', () => upstream.destroy());
    socket.pipe(upstream).on('error', () => socket.destroy());
    socket.on('close', () => upstream.destroy());
    upstream.on('close', () => socket.destroy());
    this.#metrics.requests.labels('passthrough', 'upgrade').inc();
  }

  /** close releases pooled connections. */
  close(): Promise<void> {
    return this.#agent.close();
  }
}

/**
 * controllerTarget maps a request target onto the controller. Only the path and query are
 * taken from the client: a target such as `//host/x` or `http://host/x` must never choose where
 * the sidecar connects, or the front door would be an open proxy into the cluster.
 */
export function controllerTarget(target: string, base: URL): URL | undefined {
  let pathAndQuery = target;
  if (/^https?:\/\//i.test(target)) {
    if (!URL.canParse(target)) return undefined;
    const url = new URL(target);
    pathAndQuery = url.pathname + url.search;
  }
  if (!pathAndQuery.startsWith('/') || pathAndQuery.startsWith('//') ||
      pathAndQuery.includes('\\')) {
    return undefined;
  }
  const url = new URL(base.origin);
  const q = pathAndQuery.indexOf('?');
  url.pathname = q >= 0 ? pathAndQuery.slice(0, q) : pathAndQuery;
  url.search = q >= 0 ? pathAndQuery.slice(q) : '';
  return url.origin === base.origin ? url : undefined;
}

function forwardHeaders(
  incoming: IncomingMessage['headers'],
  remote: string | undefined,
  secure: boolean,
): Record<string, string | string[]> {
  const headers: Record<string, string | string[]> = {};
  const named = new Set((String(incoming.connection ?? '')).toLowerCase().split(/\s*,\s*/));
  for (const [k, v] of Object.entries(incoming)) {
    if (v === undefined || NOT_FORWARDED.has(k) || named.has(k)) continue;
    headers[k] = v;
  }
  const prior = incoming['x-forwarded-for'];
  headers['x-forwarded-for'] = prior ? `${prior}, ${remote ?? ''}` : (remote ?? '');
  if (!incoming['x-forwarded-proto']) headers['x-forwarded-proto'] = secure ? 'https' : 'http';
  return headers;
}
