// Opening a TLS connection to a container's gateway, directly or over a tunnel stream, and
// computing the proofs for it. crunch-run's certificate is self-signed, so the chain is not
// verified: the HMAC proofs below bind the container key to this very certificate instead.
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import { GatewayError } from '../errors.ts';
import { containerKey, requestAuth, respondAuth, sameSecret } from './hmac.ts';
import type { GatewayRoute } from './locate.ts';

/** GatewayConnection is a TLS connection to a gateway with the proofs that go with it. */
export interface GatewayConnection {
  socket: TLSSocket;
  requestAuth: string;
  respondAuth: string;
}

/** dialGateway connects to a direct or tunnelled gateway and completes the TLS handshake. */
export async function dialGateway(
  route: Exclude<GatewayRoute, { kind: 'peer' }>,
  containerUuid: string,
  systemRootToken: string,
  timeoutMs: number,
): Promise<GatewayConnection> {
  let transport: Duplex;
  if (route.kind === 'tunnel') {
    try {
      const stream = route.tunnel.session.open();
      // TLS copies what it reads from the stream as it arrives (see Stream.lendReads).
      stream.lendReads();
      transport = stream;
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_YAMUX_TOO_MANY_STREAMS') {
        throw new GatewayError(503, 'too many streams open on this container\'s tunnel, ' +
          'try again later', { 'Retry-After': '5' });
      }
      throw new GatewayError(503, `proxy error: tunnel: ${(err as Error).message}`);
    }
  } else {
    const tcp = tcpConnect({ host: route.host, port: route.port, allowHalfOpen: true });
    // Keystrokes go out at once, as Go's connections send them: Nagle's algorithm would hold
    // one back until the previous one is acknowledged.
    tcp.setNoDelay(true);
    transport = tcp;
  }
  transport.on('error', () => {});
  const socket = await handshake(transport, timeoutMs);
  const der = socket.getPeerCertificate().raw;
  if (!der) {
    socket.destroy();
    throw new GatewayError(502, 'gateway presented no certificate');
  }
  const key = containerKey(systemRootToken, containerUuid);
  const reqAuth = requestAuth(key, der);
  return { socket, requestAuth: reqAuth, respondAuth: respondAuth(key, reqAuth) };
}

/** checkRespondAuth throws the 502 a user sees when the gateway's proof is missing or wrong. */
export function checkRespondAuth(got: string | undefined, conn: GatewayConnection): void {
  if (got === undefined || !sameSecret(got, conn.respondAuth)) {
    throw new GatewayError(502, 'bad X-Arvados-Authorization-Response header');
  }
}

function handshake(transport: Duplex, timeoutMs: number): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ socket: transport, rejectUnauthorized: false });
    const timer = setTimeout(() => fail(new Error('timeout')), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      transport.destroy();
      reject(new GatewayError(503, `proxy error: ${describe(err)}`));
    };
    socket.once('error', fail);
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      socket.removeListener('error', fail);
      socket.on('error', () => {});
      resolve(socket);
    });
    // A TCP connect error arrives on the transport before TLS sees it.
    transport.once('error', fail);
    socket.once('secureConnect', () => transport.removeListener('error', fail));
  });
}

function describe(err: Error): string {
  const code = (err as { code?: string }).code;
  return code ? `${code}` : err.message;
}
