// The front door: one listener for everything that reaches the pod. It reads the first request
// head of each connection itself, because Arvados' upgrade requests (no `Connection: upgrade`,
// a form body) look like ordinary requests to Node's HTTP server, which would then parse the
// tunnel's bytes as HTTP. Everything else is handed to a Node HTTP server unchanged.
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer,
  type ServerResponse } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Server as NetServer,
  type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { readFileSync } from 'node:fs';
import type { Duplex } from 'node:stream';
import { GatewayError, asGatewayError, sendError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { readHead, type Head } from './head.ts';
import { readUpgradeRequest, refuse, requestUrl, type UpgradeRequest } from './upgrade.ts';

/** UpgradeRoute names which gateway upgrade a request asks for. */
export interface UpgradeRoute {
  kind: 'tunnel' | 'ssh';
  uuid: string;
}

/** FrontHandlers are what the front door dispatches to. */
export interface FrontHandlers {
  upgrade(up: UpgradeRequest, route: UpgradeRoute): Promise<void>;
  request(req: IncomingMessage, res: ServerResponse, secure: boolean): Promise<void>;
  otherUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
}

/** FrontDoorOptions configures a FrontDoor. */
export interface FrontDoorOptions {
  handlers: FrontHandlers;
  headTimeoutMs: number;
  log: Logger;
  tlsCertFile?: string;
  tlsKeyFile?: string;
}

const UPGRADE_PATH = /^\/arvados\/v1\/(?:containers|connect)\/([^/]+)\/(gateway_tunnel|ssh)$/;

/** matchUpgradeRoute says whether a head is one of the gateway's upgrade requests. */
export function matchUpgradeRoute(method: string, path: string, upgrade: string | undefined):
  UpgradeRoute | undefined {
  if (method !== 'POST' || upgrade === undefined) return undefined;
  const m = UPGRADE_PATH.exec(path);
  if (!m) return undefined;
  const kind = m[2] === 'ssh' ? 'ssh' : 'tunnel';
  if (upgrade.toLowerCase() !== kind) return undefined;
  return { kind, uuid: m[1] };
}

/** FrontDoor is the pod's listener. */
export class FrontDoor {
  #opts: FrontDoorOptions;
  #http: HttpServer;
  #server: NetServer;
  #secure: boolean;
  #sockets = new Set<Duplex>();

  constructor(opts: FrontDoorOptions) {
    this.#opts = opts;
    this.#secure = Boolean(opts.tlsCertFile && opts.tlsKeyFile);
    this.#http = createHttpServer({ requestTimeout: 0, headersTimeout: opts.headTimeoutMs });
    this.#http.on('request', (req, res) => this.#onRequest(req, res));
    this.#http.on('upgrade', (req, socket, head) => this.#onHttpUpgrade(req, socket, head));
    this.#http.on('clientError', (err, socket) => {
      if (!socket.writable) return socket.destroy();
      const tooLarge = (err as { code?: string }).code === 'HPE_HEADER_OVERFLOW';
      refuse(socket, tooLarge ? new GatewayError(431, 'request head too large')
        : new GatewayError(400, 'malformed request'));
    });
    const onSocket = (socket: Socket) => this.#onConnection(socket);
    this.#server = this.#secure
      ? createTlsServer({
        cert: readFileSync(opts.tlsCertFile!),
        key: readFileSync(opts.tlsKeyFile!),
        allowHalfOpen: true,
      }, onSocket)
      : createNetServer({ allowHalfOpen: true, noDelay: true }, onSocket);
  }

  /** listen starts accepting connections. */
  listen(host: string, port: number): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(port, host, () => {
        this.#server.removeListener('error', reject);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  /** stopAccepting closes the listener; connections already open go on. */
  stopAccepting(): Promise<void> {
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  /** destroyAll ends every connection at once. */
  destroyAll(): void {
    for (const socket of this.#sockets) socket.destroy();
    this.#http.closeAllConnections();
  }

  /** openConnections is how many client connections are open. */
  get openConnections(): number {
    return this.#sockets.size;
  }

  async #onConnection(socket: Socket): Promise<void> {
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    socket.on('error', () => {});
    let head: Head;
    let raw: Buffer;
    let rest: Buffer;
    try {
      ({ head, raw, rest } = await readHead(socket, this.#opts.headTimeoutMs));
    } catch (err) {
      refuse(socket, asGatewayError(err));
      return;
    }
    const path = safePath(head.parts[1]);
    const route = path && matchUpgradeRoute(head.parts[0], path, head.headers.upgrade);
    if (!route) {
      socket.unshift(rest.length > 0 ? Buffer.concat([raw, rest]) : raw);
      this.#http.emit('connection', socket);
      socket.resume();
      return;
    }
    const remote = remoteOf(socket);
    await this.#takeOver(socket, head, rest, remote, route);
  }

  async #takeOver(socket: Duplex, head: Head, rest: Buffer, remote: string, route: UpgradeRoute) {
    let up: UpgradeRequest;
    try {
      up = await readUpgradeRequest(socket, head, rest, remote, this.#opts.headTimeoutMs);
    } catch (err) {
      refuse(socket, asGatewayError(err));
      return;
    }
    try {
      await this.#opts.handlers.upgrade(up, route);
    } catch (err) {
      this.#opts.log.error({ err }, 'upgrade handler failed');
      refuse(socket, asGatewayError(err));
    }
  }

  // A front proxy that adds `Connection: upgrade` makes Node see a real upgrade; such requests
  // take the same path as the ones read off the socket directly.
  #onHttpUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => {});
    const path = safePath(req.url ?? '');
    const route = path && matchUpgradeRoute(req.method ?? '', path, req.headers.upgrade);
    if (!route) {
      this.#opts.handlers.otherUpgrade(req, socket, head);
      return;
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
    }
    const parsed: Head = {
      parts: [req.method ?? 'POST', req.url ?? '/', 'HTTP/1.1'],
      headers,
      rawHeaders: req.rawHeaders,
    };
    this.#takeOver(socket, parsed, head, remoteOf(req.socket), route);
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const path = safePath(req.url ?? '');
    if (path && matchUpgradeRoute(req.method ?? '', path, req.headers.upgrade)) {
      // Limitation: an Arvados-style upgrade (no Connection: upgrade) is only recognised as the
      // first request on a connection — taking over later ones would need Node's parser to
      // hand back the socket. Arvados' Go clients always dial a new connection for it.
      sendError(res, new GatewayError(400,
        'upgrade requests must be the first request on their connection'));
      return;
    }
    this.#opts.handlers.request(req, res, this.#secure).catch((err) => {
      this.#opts.log.error({ err }, 'request handler failed');
      sendError(res, asGatewayError(err));
    });
  }
}

function safePath(target: string): string | undefined {
  try {
    return requestUrl(target).pathname;
  } catch {
    return undefined;
  }
}

function remoteOf(socket: Socket): string {
  const address = socket.remoteAddress ?? '';
  return address.includes(':') ? `[${address}]:${socket.remotePort}`
      : `${address}:${socket.remotePort}`;
}
