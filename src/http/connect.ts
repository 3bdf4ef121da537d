// Opening a raw connection to an http(s) URL's host, for upgrades that are spoken by hand.
import { connect as tcpConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { Duplex } from 'node:stream';

/** connectUrl connects to url's host and port (TLS for https) and resolves once usable. */
export function connectUrl(
  url: URL,
  opts: { rejectUnauthorized: boolean; timeoutMs: number },
): Promise<Duplex> {
  const secure = url.protocol === 'https:';
  const port = Number(url.port || (secure ? 443 : 80));
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return new Promise((resolve, reject) => {
    const socket = secure
      ? tlsConnect({ host, port, servername: host, rejectUnauthorized: opts.rejectUnauthorized })
      : tcpConnect({ host, port });
    // Interactive sessions go through these connections: no waiting for acknowledgements.
    socket.setNoDelay(true);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })),
      opts.timeoutMs);
    socket.once('error', fail);
    socket.once(secure ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', fail);
      socket.on('error', () => {});
      resolve(socket);
    });
  });
}
