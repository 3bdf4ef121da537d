// A container gateway of the tests' own, so that a test can see exactly what a gateway receives:
// TLS with a self-signed certificate, the HMAC proofs of the gateway protocol (or wrong ones, on
// request), a record of every request head, and an echo "SSH server". It is reached directly on a
// loopback listener, or through a tunnel it opens to a sidecar with the project's yamux client.
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { X509Certificate } from 'node:crypto';
import { connect, createServer as createNetServer, type Server as NetServer,
  type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { containerKey, requestAuth, respondAuth } from '../../../src/gateway/hmac.ts';
import { readHead } from '../../../src/http/head.ts';
import { Session } from '../../../src/tunnel/yamux/index.ts';

/** RecordedRequest is one request head a FakeGateway received. */
export interface RecordedRequest {
  method: string;
  url: string;
  /** rawHeaders is every header line as received, "Name: value". */
  rawHeaders: string[];
  via: 'direct' | 'tunnel';
}

/** FakeGatewayOptions configures a FakeGateway. */
export interface FakeGatewayOptions {
  uuid: string;
  systemRootToken: string;
  key: Buffer;
  cert: Buffer;
}

/** TunnelHandle is one tunnel a FakeGateway holds open to a sidecar. */
export interface TunnelHandle {
  session: Session;
  socket: Socket;
  /** received holds every byte the sidecar sent on the tunnel's connection, 101 head included. */
  received: Buffer[];
  /** internalUrl is what the sidecar said in X-Arvados-Internal-Url. */
  internalUrl: string;
  close(): void;
}

/** FakeGateway is a running fake container gateway. */
export class FakeGateway {
  readonly uuid: string;
  readonly requests: RecordedRequest[] = [];
  /** files are served for GET .../NAME, by the last path segment. */
  readonly files = new Map<string, Buffer>();
  /** respond picks the X-Arvados-Authorization-Response this gateway sends. */
  respond: 'right' | 'wrong' | 'none' = 'right';
  /** hold makes GETs wait until release() is called. */
  hold = false;
  /**
   * rawAnswer, when set, replaces the answer to a plain request. It gets the proof header
   * line (with its CRLF, empty when respond is 'none') and the request's body, and returns
   * pieces that are written one at a time, rawGapMs apart, straight onto the connection,
   * which is then ended.
   */
  rawAnswer: ((proof: string, body: Buffer) => Array<string | Buffer>) | null = null;
  /** rawGapMs is the pause between rawAnswer's pieces. */
  rawGapMs = 5;
  /** accepted counts TCP connections accepted by the direct listener. */
  accepted = 0;
  #secret: string;
  #wantAuth: string;
  #servers: Record<'direct' | 'tunnel', HttpsServer>;
  #listener: NetServer | undefined;
  #held: (() => void)[] = [];
  #tunnels = new Set<TunnelHandle>();
  #sockets = new Set<Duplex>();

  constructor(opts: FakeGatewayOptions) {
    this.uuid = opts.uuid;
    this.#secret = containerKey(opts.systemRootToken, opts.uuid);
    this.#wantAuth = requestAuth(this.#secret, new X509Certificate(opts.cert).raw);
    // One server per way in, so that every recorded request says how it arrived.
    const server = (via: 'direct' | 'tunnel') => {
      const https = createHttpsServer({ key: opts.key, cert: opts.cert },
        (req, res) => void this.#onRequest(req, res, via));
      https.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head, via));
      https.on('tlsClientError', () => {});
      return https;
    };
    this.#servers = { direct: server('direct'), tunnel: server('tunnel') };
  }

  /** heldCount is how many GETs wait for release(). */
  get heldCount(): number {
    return this.#held.length;
  }

  /** release lets every held GET answer. */
  release(): void {
    for (const go of this.#held.splice(0)) go();
  }

  /** listen serves directly on host (any loopback address) and returns "host:port". */
  async listen(host: string): Promise<string> {
    this.#listener = createNetServer((socket) => {
      this.accepted++;
      this.#track(socket);
      this.#servers.direct.emit('connection', socket);
    });
    await new Promise<void>((resolve) => this.#listener!.listen(0, host, resolve));
    return `${host}:${(this.#listener.address() as { port: number }).port}`;
  }

  /**
   * openTunnel dials a sidecar's front door, asks for a gateway tunnel with this container's
   * auth secret (or another one) and serves the streams the sidecar opens.
   */
  async openTunnel(frontPort: number, authSecret = this.#secret): Promise<TunnelHandle> {
    const socket = connect(frontPort, '127.0.0.1');
    socket.on('error', () => {});
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve).once('error', reject);
    });
    const body = `auth_secret=${authSecret}`;
    socket.write(`POST /arvados/v1/connect/${this.uuid}/gateway_tunnel HTTP/1.1\r\n` +
      `Host: 127.0.0.1:${frontPort}\r\nUpgrade: tunnel\r\n` +
      'Content-Type: application/x-www-form-urlencoded\r\n' +
      `Content-Length: ${body.length}\r\n\r\n${body}`);
    const answer = await readHead(socket, 10_000);
    if (answer.head.parts[1] !== '101') {
      socket.destroy();
      throw new Error(`tunnel refused: ${answer.head.parts[1]} ${answer.rest.toString()}`);
    }
    const received = [answer.raw];
    if (answer.rest.length > 0) socket.unshift(answer.rest);
    // received taps the socket's 'data' events, which a session reading in place would stop.
    const session = new Session(socket, {
      role: 'client', keepAliveIntervalMs: 0, readInPlace: false,
    });
    socket.on('data', (d: Buffer) => received.push(d));
    socket.resume();
    const handle: TunnelHandle = {
      session, socket, received, internalUrl: answer.head.headers['x-arvados-internal-url'] ?? '',
      close: () => {
        session.close();
        socket.destroy();
        this.#tunnels.delete(handle);
      },
    };
    this.#tunnels.add(handle);
    void this.#acceptLoop(session);
    return handle;
  }

  /** close stops the listener, every tunnel and every connection. */
  async close(): Promise<void> {
    this.release();
    for (const t of [...this.#tunnels]) t.close();
    for (const s of this.#sockets) s.destroy();
    if (this.#listener) await new Promise<void>((r) => this.#listener!.close(() => r()));
  }

  async #acceptLoop(session: Session): Promise<void> {
    for (;;) {
      let stream: Duplex;
      try {
        stream = await session.accept();
      } catch {
        return;
      }
      stream.on('error', () => {});
      this.#track(stream);
      this.#servers.tunnel.emit('connection', stream);
    }
  }

  #track(s: Duplex): void {
    this.#sockets.add(s);
    s.once('close', () => this.#sockets.delete(s));
  }

  #record(req: IncomingMessage, via: 'direct' | 'tunnel'): void {
    const rawHeaders: string[] = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      rawHeaders.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    }
    this.requests.push({ method: req.method ?? '', url: req.url ?? '', rawHeaders, via });
  }

  // The same checks, in the same order, as crunch-run's gateway: the UUID first, then the proof.
  #authorize(req: IncomingMessage): { status: number; headers: Record<string, string> } {
    if (req.headers['x-arvados-container-gateway-uuid'] !== this.uuid) {
      return { status: 502, headers: {} };
    }
    const got = String(req.headers['x-arvados-authorization'] ?? '');
    if (got !== this.#wantAuth) return { status: 401, headers: {} };
    const headers: Record<string, string> = {};
    if (this.respond === 'right') {
      headers['X-Arvados-Authorization-Response'] = respondAuth(this.#secret, got);
    } else if (this.respond === 'wrong') {
      headers['X-Arvados-Authorization-Response'] = respondAuth('not the key', got);
    }
    return { status: 200, headers };
  }

  async #onRequest(req: IncomingMessage, res: ServerResponse, via: 'direct' | 'tunnel') {
    this.#record(req, via);
    res.on('error', () => {});
    const auth = this.#authorize(req);
    if (auth.status !== 200) {
      res.writeHead(auth.status, { 'Content-Type': 'text/plain' });
      res.end('refused\n');
      return;
    }
    if (this.hold) await new Promise<void>((resolve) => this.#held.push(resolve));
    if (this.rawAnswer) {
      const body: Buffer[] = [];
      for await (const chunk of req) body.push(chunk as Buffer);
      const proof = Object.entries(auth.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
      for (const piece of this.rawAnswer(proof, Buffer.concat(body))) {
        req.socket.write(piece);
        await new Promise((r) => setTimeout(r, this.rawGapMs));
      }
      req.socket.end();
      return;
    }
    const name = (req.url ?? '').split('?')[0].split('/').pop() ?? '';
    const file = this.files.get(name);
    if (file === undefined) {
      res.writeHead(404, { ...auth.headers, 'Content-Type': 'text/plain' });
      res.end('no such file\n');
      return;
    }
    res.writeHead(200, { ...auth.headers, 'Content-Type': 'application/octet-stream',
      'Content-Length': file.length });
    res.end(req.method === 'HEAD' ? undefined : file);
  }

  // The SSH stand-in: after the form body, every byte is echoed back.
  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, via: 'direct' | 'tunnel') {
    this.#record(req, via);
    socket.on('error', () => {});
    const auth = this.#authorize(req);
    if (auth.status !== 200) {
      socket.end(`HTTP/1.1 ${auth.status} Refused\r\nContent-Length: 0\r\n\r\n`);
      return;
    }
    const extra = Object.entries(auth.headers).map(([k, v]) => `${k}: ${v}\r\n`).join('');
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: ssh\r\nConnection: upgrade\r\n` +
      `${extra}\r\n`);
    let skip = Number(req.headers['content-length'] ?? 0);
    const echo = (chunk: Buffer) => {
      const n = Math.min(skip, chunk.length);
      skip -= n;
      if (chunk.length > n) socket.write(chunk.subarray(n));
    };
    if (head.length > 0) echo(head);
    socket.on('data', echo);
    socket.on('end', () => socket.end());
  }
}
