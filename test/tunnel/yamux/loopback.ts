// A connected pair of TCP sockets on loopback, for sessions to run over.
import { once } from 'node:events';
import net from 'node:net';

/** loopbackPair connects a client socket to a server socket and returns both. */
export async function loopbackPair(): Promise<[client: net.Socket, server: net.Socket]> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  const pair = await Promise.all([
    new Promise<net.Socket>((resolve, reject) => {
      const c = net.connect(port, '127.0.0.1', () => resolve(c));
      c.once('error', reject);
    }),
    once(server, 'connection').then(([s]) => s as net.Socket),
  ]);
  server.close();
  return pair;
}
