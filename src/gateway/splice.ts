// Splicing a client's connection to an upstream one (gateway or peer) after an upgrade.
import type { Duplex } from 'node:stream';
import { relay, relayFromSocket, relayIntoTls } from '../net/socket-relay.ts';

/** SpliceResult counts the bytes relayed each way. */
export interface SpliceResult {
  bytesFromClient: number;
  bytesToClient: number;
}

/**
 * splice relays bytes both ways with back-pressure until either side closes. Bytes already
 * read past the heads (clientRest, upstreamRest) go first.
 *
 * arvados-client reads the 101 through a buffered reader and then copies from the raw
 * connection, so upstream bytes that reach it in the same read as our 101 head are lost. An SSH
 * client always speaks first after the upgrade, and by then it has finished reading the head,
 * so upstream bytes are held until the client's first bytes have arrived.
 */
export function splice(
  client: Duplex,
  clientRest: Buffer,
  upstream: Duplex,
  upstreamRest: Buffer,
): Promise<SpliceResult> {
  return new Promise((resolve) => {
    const result: SpliceResult = { bytesFromClient: clientRest.length, bytesToClient: 0 };
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      client.destroy();
      upstream.destroy();
      resolve(result);
    };
    // Done once both directions have ended and their last bytes have been written out.
    let finished = 0;
    const onFinish = () => {
      if (++finished === 2) finish();
    };

    const startUpstream = () => {
      if (upstreamRest.length > 0) {
        result.bytesToClient += upstreamRest.length;
        client.write(upstreamRest);
      }
      const count = (n: number) => { result.bytesToClient += n; };
      relayFromSocket(upstream, client, { count });
    };

    upstream.pause();
    if (clientRest.length > 0) upstream.write(clientRest);
    let started = false;
    const fromClient = (n: number) => {
      result.bytesFromClient += n;
      start();
    };
    const start = () => {
      if (started) return;
      started = true;
      startUpstream();
    };
    if (!relayIntoTls(client, upstream, fromClient)) relay(client, upstream, fromClient);
    if (clientRest.length > 0) start();
    // A client that ends without a byte has no head left to read: let the gateway's bytes go.
    client.once('end', start);

    client.once('finish', onFinish);
    upstream.once('finish', onFinish);
    // A side that closes after ending both ways cleanly has nothing left to lose, while the
    // other may still be writing out the last bytes it sent; only other closes end it all.
    const onClose = (side: Duplex) => () => {
      if (side.readableEnded && side.writableFinished) return;
      finish();
    };
    client.once('close', onClose(client));
    upstream.once('close', onClose(upstream));
    client.on('error', finish);
    upstream.on('error', finish);
  });
}
