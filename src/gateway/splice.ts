// Splicing a client's connection to an upstream one (gateway or peer) after an upgrade.
import type { Duplex } from 'node:stream';

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
    let ended = 0;
    const onEnd = () => {
      if (++ended === 2) finish();
    };

    const startUpstream = () => {
      if (upstreamRest.length > 0) {
        result.bytesToClient += upstreamRest.length;
        client.write(upstreamRest);
      }
      // One read from the gateway's connection decrypts into several TLS records, each its own
      // chunk: corking until the next tick sends them to the client in one write.
      let corked = false;
      const uncork = () => {
        corked = false;
        client.uncork();
      };
      upstream.on('data', (chunk: Buffer) => {
        result.bytesToClient += chunk.length;
        if (corked) return;
        corked = true;
        client.cork();
        process.nextTick(uncork);
      });
      upstream.pipe(client);
    };

    upstream.pause();
    if (clientRest.length > 0) upstream.write(clientRest);
    client.on('data', (chunk: Buffer) => { result.bytesFromClient += chunk.length; });
    client.pipe(upstream);
    if (clientRest.length > 0) startUpstream();
    else client.once('data', startUpstream);

    client.once('end', onEnd);
    upstream.once('end', onEnd);
    client.once('close', finish);
    upstream.once('close', finish);
    client.on('error', finish);
    upstream.on('error', finish);
  });
}
