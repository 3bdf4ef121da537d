// Container logs over WebDAV: live ones from the container's gateway while it runs, saved ones
// from keep-web once it has finished. Answers are passed through as they come: Arvados' clients
// rely on details such as Go's odd Content-Range for `Range: bytes=-0`.
import { request as httpRequest, type IncomingMessage, type ServerResponse,
  type ClientRequest, type OutgoingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Container, ContainerRequest } from '../arvados/client.ts';
import type { ClusterConfig } from '../arvados/cluster-config.ts';
import { GatewayError, asGatewayError, sendError } from '../errors.ts';
import { checkRespondAuth, dialGateway, type GatewayConnection } from '../gateway/dial.ts';
import { TUNNEL_DOWN, type GatewayRoute } from '../gateway/locate.ts';
import { sendRequest, type OutgoingRequest } from '../gateway/request.ts';
import { framingOf, type BodyReader } from '../http/body.ts';
import { bearerToken } from '../http/upgrade.ts';
import type { Logger } from '../log.ts';
import { relayFromSocket } from '../net/socket-relay.ts';
import { HOP_BY_HOP } from './passthrough.ts';
import { UUID, clusterConfig, isContainerUuid, requestId, type GatewayContext } from
  './context.ts';

/** LOG_PATH matches the log route; the rest of the path is checked separately. */
export const LOG_PATH = /^\/arvados\/v1\/container_requests\/([^/]*)\/log(\/.*)?$/;

const READ_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'PROPFIND']);
const WEBDAV_METHODS = new Set(['COPY', 'DELETE', 'LOCK', 'MKCOL', 'MOVE', 'POST', 'PROPPATCH',
  'PUT', 'RMCOL', 'UNLOCK']);

const CORS_PREFLIGHT = {
  'Access-Control-Allow-Origin': '*',
  'Access-Control-Allow-Methods': 'COPY, DELETE, GET, LOCK, MKCOL, MOVE, OPTIONS, POST, ' +
    'PROPFIND, PROPPATCH, PUT, RMCOL, UNLOCK',
  'Access-Control-Allow-Headers': 'Authorization, Content-Type, Range, Depth, Destination, ' +
    'If, Lock-Token, Overwrite, Timeout, Cache-Control',
  'Access-Control-Max-Age': '86400',
};

const LIVE_STATES = new Set(['Locked', 'Running']);
const LOCAL_HOSTS = new Set(['127.0.0.1', '0.0.0.0', '[::1]', 'localhost']);

/** LogRequest is a parsed log request. */
interface LogRequest {
  req: IncomingMessage;
  res: ServerResponse;
  cr: string;
  /** path is what follows `/log`: empty or starting with '/'. */
  path: string;
  pathAndQuery: string;
  noForward: boolean;
  reqId: string;
  log: Logger;
  /** ownHeaders are the headers this sidecar sets itself; upstream's same headers win. */
  ownHeaders: Record<string, string>;
}

/** handleLogs serves a request whose path matched LOG_PATH. */
export async function handleLogs(
  req: IncomingMessage,
  res: ServerResponse,
  ctx: GatewayContext,
): Promise<void> {
  const reqId = requestId(req.headers['x-request-id'] as string | undefined);
  const started = performance.now();
  let outcome = 'error';
  let release = () => {};
  let log = ctx.log.child({ req_id: reqId, route: 'logs' });
  try {
    const parsed = parseLogTarget(req.url ?? '/');
    log = log.child({ container_request_uuid: parsed.cr });
    const lr: LogRequest = {
      req, res, reqId, log, ...parsed,
      ownHeaders: { 'Access-Control-Allow-Origin': '*', 'X-Request-Id': reqId },
    };
    const method = req.method ?? '';
    if (method === 'OPTIONS' && req.headers['access-control-request-method'] !== undefined) {
      outcome = 'preflight';
      res.writeHead(200, CORS_PREFLIGHT);
      res.end();
      return;
    }
    if (!READ_METHODS.has(method)) {
      const known = WEBDAV_METHODS.has(method);
      throw new GatewayError(405, known ? `method ${method} is not allowed on container logs`
        : 'method not allowed', { Allow: 'GET, HEAD, OPTIONS, PROPFIND' });
    }
    release = ctx.limits.acquire('logs');
    outcome = await serveLog(lr, ctx);
  } catch (err) {
    const gerr = asGatewayError(err);
    if (!(err instanceof GatewayError)) log.error({ err }, 'log request failed');
    outcome = `error_${gerr.status}`;
    // Workbench reads these answers cross-origin: without the header it sees no message.
    sendError(res, new GatewayError(gerr.status, gerr.message,
      { 'Access-Control-Allow-Origin': '*', ...gerr.headers }));
  } finally {
    release();
    const fields = { method: req.method, outcome, status: res.statusCode,
      duration_ms: Math.round(performance.now() - started) };
    if (res.statusCode >= 500) log.warn(fields, 'log request failed');
    else log.info(fields, 'log request');
    ctx.metrics.requests.labels('logs', outcome).inc();
    ctx.metrics.requestDuration.labels('logs').observe((performance.now() - started) / 1000);
  }
}

/**
 * parseLogTarget checks a log request target before anything is looked up. Encoded slashes
 * and dot segments are refused outright rather than normalised, so no upstream ever sees a
 * path that means something other than what the permission check looked at.
 */
export function parseLogTarget(target: string): Omit<LogRequest,
  'req' | 'res' | 'reqId' | 'log' | 'ownHeaders'> {
  const q = target.indexOf('?');
  let rawPath = q >= 0 ? target.slice(0, q) : target;
  const query = q >= 0 ? target.slice(q) : '';
  if (/^https?:\/\//i.test(rawPath)) rawPath = new URL(rawPath).pathname;
  if (/%2f|%5c|%00|\\/i.test(rawPath)) throw new GatewayError(400, 'invalid log path');
  let decoded: string;
  try {
    decoded = decodeURIComponent(rawPath);
  } catch {
    throw new GatewayError(400, 'invalid log path');
  }
  if (decoded.split('/').some((seg) => seg === '..' || seg === '.') || /[\0-\x1f]/.test(decoded)) {
    throw new GatewayError(400, 'invalid log path');
  }
  const m = LOG_PATH.exec(rawPath);
  if (!m || !UUID.test(m[1]) || m[1].slice(5, 12) !== '-xvhdp-') {
    throw new GatewayError(404, 'not found');
  }
  const noForward = new URLSearchParams(query).get('no_forward') === 'true';
  return { cr: m[1], path: m[2] ?? '', pathAndQuery: rawPath + query, noForward };
}

async function serveLog(lr: LogRequest, ctx: GatewayContext): Promise<string> {
  const token = bearerToken(lr.req.headers.authorization);
  const basicAuth = { 'Www-Authenticate': 'Basic realm="collections"' };
  if (token === '') throw new GatewayError(401, 'Not logged in', basicAuth);
  const config = clusterConfig(ctx);
  let cr: ContainerRequest;
  try {
    cr = await ctx.api.getContainerRequest(token, lr.cr, lr.reqId);
  } catch (err) {
    const gerr = asGatewayError(err);
    // WebDAV clients such as cadaver only retry with Basic auth after this header.
    if (gerr.status === 401) throw new GatewayError(401, gerr.message, basicAuth);
    throw gerr;
  }
  if (!cr.container_uuid) return serveSaved(lr, cr, config, ctx);
  const ctr = await ctx.api.getContainer(token, cr.container_uuid,
    ['uuid', 'state', 'gateway_address'], lr.reqId);
  if (!isLive(ctr, lr.path)) return serveSaved(lr, cr, config, ctx);

  let route: GatewayRoute;
  try {
    route = await ctx.locator.locate(ctr.uuid, ctr.gateway_address, lr.noForward,
      (msg, fields) => lr.log.warn(fields, msg));
    if (route.kind === 'peer') {
      await proxyToPeer(lr, route.url, config, ctx);
      return 'peer';
    }
    const conn = await dialGateway(route, ctr.uuid, config.systemRootToken,
      ctx.settings.dialTimeoutMs);
    if (route.kind === 'tunnel') ctx.metrics.streamsOpened.inc();
    await proxyToGateway(lr, conn, ctr.uuid, ctx);
    return route.kind;
  } catch (err) {
    const gerr = asGatewayError(err);
    if (gerr.status !== 503 || lr.res.headersSent) throw err;
    // crunch-run may have exited between our container lookup and the dial; its logs are
    // then in keep-web, so look again before giving up.
    let again: Container;
    try {
      again = await ctx.api.getContainer(config.systemRootToken, ctr.uuid,
        ['uuid', 'state', 'gateway_address', 'log'], lr.reqId);
    } catch {
      throw gerr;
    }
    if (LIVE_STATES.has(again.state)) throw gerr;
    return serveSaved(lr, cr, config, ctx);
  }
}

function isLive(ctr: Container, path: string): boolean {
  if (!ctr.gateway_address || !LIVE_STATES.has(ctr.state)) return false;
  return path === `/${ctr.uuid}` || path.startsWith(`/${ctr.uuid}/`);
}

async function proxyToGateway(
  lr: LogRequest,
  conn: GatewayConnection,
  ctrUuid: string,
  ctx: GatewayContext,
): Promise<void> {
  const headers = requestHeaders(lr.req);
  // The gateway needs no user token: the HMAC proof is its authorization.
  delete headers.authorization;
  Object.assign(headers, {
    'x-arvados-container-gateway-uuid': ctrUuid,
    'x-webdav-prefix': `/arvados/v1/container_requests/${lr.cr}/log/${ctrUuid}`,
    'x-webdav-source': '/log',
    'x-arvados-authorization': conn.requestAuth,
    host: ctrUuid,
  });
  headers.connection = 'close';
  const socket = conn.socket;
  // A client that goes away takes the gateway connection with it, at any point.
  const hangUp = () => socket.destroy();
  lr.res.once('close', hangUp);
  try {
    const answer = await sendRequest(socket, {
      method: lr.req.method ?? 'GET', target: lr.pathAndQuery, headers, body: bodyToSend(lr.req),
    }, ctx.settings.dialTimeoutMs);
    checkRespondAuth(answer.head.headers['x-arvados-authorization-response'], conn);
    const framing = framingOf(lr.req.method ?? 'GET', answer.status, answer.head.headers);
    // The body's length is the sidecar's to declare: the gateway's own Content-Length may be
    // repeated, or beside a transfer coding, and passing either on would let the client frame
    // the body differently from the sidecar.
    const out = responseHeaders(answer.head.rawHeaders, lr.ownHeaders, ['content-length']);
    if (framing.length !== undefined) out.push('Content-Length', String(framing.length));
    lr.res.writeHead(answer.status, answer.reason, out);
    await relayBody(socket, answer.rest, framing.body, lr.res);
  } finally {
    lr.res.removeListener('close', hangUp);
    socket.destroy();
  }
}

// bodyToSend says how a client's request body goes on: with its length when it came with one
// (which node:http has checked), chunked when it came chunked; a request with neither has no
// body (RFC 9112 section 6.3). The client's own framing headers never go on as they are: a
// Connection header naming them would otherwise strip them and leave the body unframed.
function bodyToSend(req: IncomingMessage): OutgoingRequest['body'] {
  if (req.headers['transfer-encoding'] !== undefined) return { from: req, length: null };
  const length = req.headers['content-length'];
  if (length !== undefined) return { from: req, length: Number(length) };
  return undefined;
}

// relayBody passes the answer's body on to the client and ends the answer, or cuts the
// client's connection when the gateway's body breaks off: the head has gone out, so an
// error can no longer be said any other way.
function relayBody(socket: Duplex, rest: Buffer, body: BodyReader, res: ServerResponse):
  Promise<void> {
  return new Promise((resolve) => {
    let settled = false;
    let clientGone = false;
    const settle = (err?: Error) => {
      if (settled) return;
      settled = true;
      if (!clientGone && err) res.destroy();
      else if (!clientGone) res.end();
      resolve();
    };
    res.once('close', () => {
      clientGone = true;
      settle();
    });
    // Whatever ends the gateway connection before the body does breaks the body off.
    const broken = () => settle(new Error('gateway connection closed'));
    socket.once('close', broken);
    relayFromSocket(socket, res, { body, rest, done: settle });
    if (socket.destroyed) broken();
  });
}

async function proxyToPeer(lr: LogRequest, peer: URL, config: ClusterConfig, ctx: GatewayContext) {
  const sep = lr.pathAndQuery.includes('?') ? '&' : '?';
  const target = new URL(lr.pathAndQuery + sep + 'no_forward=true', peer);
  const headers = requestHeaders(lr.req);
  headers.host = peer.host;
  headers['x-request-id'] = lr.reqId;
  const upstream = (target.protocol === 'https:' ? httpsRequest : httpRequest)(target, {
    method: lr.req.method, headers, rejectUnauthorized: !config.tlsInsecure,
  });
  try {
    await relay(lr, upstream, ctx);
    ctx.metrics.peerForwards.labels('logs', 'ok').inc();
  } catch (err) {
    ctx.metrics.peerForwards.labels('logs', 'error').inc();
    if (lr.res.headersSent || !(err instanceof GatewayError) || err.status !== 503) throw err;
    // As for SSH: a peer that cannot be reached means the tunnel is down for now.
    lr.log.warn({ peer: peer.origin, err: err.message }, 'peer holding the tunnel is unreachable');
    throw new GatewayError(503, TUNNEL_DOWN);
  }
}

async function serveSaved(
  lr: LogRequest,
  cr: ContainerRequest,
  config: ClusterConfig,
  ctx: GatewayContext,
): Promise<string> {
  if (!cr.log_uuid) {
    serveEmptyCollection(lr);
    return 'empty';
  }
  const base = pickKeepWeb(config.webdavInternalUrls, ctx);
  const headers = requestHeaders(lr.req);
  // Permission was checked with the caller's own token when the container request was read;
  // keep-web is then asked with the root token for exactly that request's log collection.
  headers.authorization = `Bearer ${config.systemRootToken}`;
  headers.host = `${cr.log_uuid}.internal`;
  const ctrPrefix = /^\/([a-z0-9]{5}-dz642-[a-z0-9]{15})(?:\/|$)/.exec(lr.path)?.[1];
  if (ctrPrefix && isContainerUuid(ctrPrefix)) {
    headers['x-webdav-prefix'] = `/arvados/v1/container_requests/${lr.cr}/log/${ctrPrefix}`;
    headers['x-webdav-source'] = `/log for container ${ctrPrefix}/`;
  } else {
    headers['x-webdav-prefix'] = `/arvados/v1/container_requests/${lr.cr}/log`;
  }
  const target = new URL(lr.pathAndQuery, base);
  const upstream = (target.protocol === 'https:' ? httpsRequest : httpRequest)(target, {
    method: lr.req.method, headers, rejectUnauthorized: !config.tlsInsecure,
  });
  await relay(lr, upstream, ctx);
  return 'keep-web';
}

/** pickKeepWeb prefers a keep-web on this host, which saves a network hop. */
export function pickKeepWeb(urls: string[], ctx: Pick<GatewayContext, 'settings'>): URL {
  if (urls.length === 0) {
    throw new GatewayError(500, 'no internalURLs configured for WebDAV service');
  }
  const own = new Set([ctx.settings.podName, ctx.settings.podIp].filter(Boolean));
  const local = urls.find((u) => {
    const host = new URL(u).hostname;
    return LOCAL_HOSTS.has(host) || own.has(host);
  });
  return new URL(local ?? urls[Math.floor(Math.random() * urls.length)]);
}

function serveEmptyCollection(lr: LogRequest): void {
  const root = `/arvados/v1/container_requests/${lr.cr}/log`;
  const headers = { ...lr.ownHeaders, Dav: '1, 2', Allow: 'GET, HEAD, OPTIONS, PROPFIND' };
  const isRoot = lr.path === '' || lr.path === '/';
  if (lr.req.method === 'OPTIONS') {
    lr.res.writeHead(200, { ...headers, 'Content-Length': '0' });
    lr.res.end();
    return;
  }
  if (!isRoot) {
    sendError(lr.res, new GatewayError(404, 'not found', lr.ownHeaders));
    return;
  }
  if (lr.req.method === 'PROPFIND') {
    const body = '<?xml version="1.0" encoding="UTF-8"?>\n' +
      '<D:multistatus xmlns:D="DAV:"><D:response>' +
      `<D:href>${root}/</D:href><D:propstat><D:prop>` +
      '<D:resourcetype><D:collection xmlns:D="DAV:"/></D:resourcetype>' +
      '<D:displayname>log</D:displayname><D:getcontenttype>httpd/unix-directory' +
      '</D:getcontenttype></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>' +
      '</D:response></D:multistatus>\n';
    lr.res.writeHead(207, {
      ...headers, 'Content-Type': 'text/xml; charset=utf-8',
      'Content-Length': Buffer.byteLength(body),
    });
    lr.res.end(body);
    return;
  }
  const body = '<!DOCTYPE html>\n<html><head><title>log</title></head><body>' +
    '<p>No log files yet.</p></body></html>\n';
  lr.res.writeHead(200, {
    ...headers, 'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
  });
  lr.res.end(lr.req.method === 'HEAD' ? undefined : body);
}

// Headers that steer the gateway or keep-web are the sidecar's to set; a client's own copies
// are dropped so they cannot pick another directory or pose as a proof.
const STEERING = /^(x-webdav-|x-arvados-authorization|x-arvados-container-gateway-uuid|expect$)/;

function requestHeaders(req: IncomingMessage): OutgoingHttpHeaders {
  const headers: OutgoingHttpHeaders = {};
  const named = new Set(String(req.headers.connection ?? '').toLowerCase().split(/\s*,\s*/));
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined || HOP_BY_HOP.has(k) || named.has(k) || STEERING.test(k)) continue;
    headers[k] = v;
  }
  return headers;
}

/**
 * relay sends the client's body to a peer or keep-web and the answer back, streaming both
 * ways with back-pressure.
 */
function relay(lr: LogRequest, upstream: ClientRequest, ctx: GatewayContext): Promise<void> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const timer = setTimeout(() => {
      upstream.destroy(new GatewayError(504, 'upstream did not answer in time'));
    }, ctx.settings.dialTimeoutMs);
    upstream.once('error', (err) => {
      clearTimeout(timer);
      if (answered) {
        lr.res.destroy();
        return resolve();
      }
      reject(err instanceof GatewayError ? err
        : new GatewayError(503, `proxy error: ${(err as { code?: string }).code ?? err.message}`));
    });
    upstream.once('response', (res) => {
      clearTimeout(timer);
      answered = true;
      const headers = responseHeaders(res.rawHeaders, lr.ownHeaders);
      lr.res.writeHead(res.statusCode ?? 502, res.statusMessage, headers);
      pipeline(res, lr.res).then(resolve, () => {
        upstream.destroy();
        resolve();
      });
    });
    if (lr.req.method === 'GET' || lr.req.method === 'HEAD') upstream.end();
    else pipeline(lr.req, upstream).catch(() => upstream.destroy());
  });
}

// Node takes headers as a flat [name, value, name, value...] list, which keeps upstream's names,
// order and repeated headers as they were.
function responseHeaders(
  rawHeaders: string[],
  own: Record<string, string>,
  drop: string[] = [],
): string[] {
  const upstreamNames = new Set<string>();
  const out: string[] = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i];
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || lower === 'x-arvados-authorization-response' ||
      drop.includes(lower)) continue;
    upstreamNames.add(lower);
    out.push(name, rawHeaders[i + 1]);
  }
  for (const [name, value] of Object.entries(own)) {
    if (!upstreamNames.has(name.toLowerCase())) out.push(name, value);
  }
  return out;
}
