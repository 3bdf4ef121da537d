// The tunnel endpoint: crunch-run proves it knows the container's key and the connection
// becomes a yamux session that this sidecar holds and opens streams on.
import { GatewayError, asGatewayError } from '../errors.ts';
import { containerKey, sameSecret } from '../gateway/hmac.ts';
import { refuse, switchingProtocols, type UpgradeRequest } from '../http/upgrade.ts';
import { Session } from '../tunnel/yamux/index.ts';
import type { Tunnel } from '../tunnel/registry.ts';
import { clusterConfig, isContainerUuid, requestId, type GatewayContext } from './context.ts';

/** handleTunnel serves POST .../{uuid}/gateway_tunnel. */
export async function handleTunnel(
  up: UpgradeRequest,
  uuid: string,
  ctx: GatewayContext,
): Promise<void> {
  const log = ctx.log.child({ req_id: requestId(up.headers['x-request-id']), route: 'tunnel',
    container_uuid: uuid });
  const started = performance.now();
  const done = (outcome: string) => {
    ctx.metrics.requests.labels('tunnel', outcome).inc();
    ctx.metrics.requestDuration.labels('tunnel').observe((performance.now() - started) / 1000);
  };
  try {
    if (!isContainerUuid(uuid)) throw new GatewayError(400, 'invalid container UUID');
    const config = clusterConfig(ctx);
    const secret = up.form.get('auth_secret') ?? '';
    if (!sameSecret(secret, containerKey(config.systemRootToken, uuid))) {
      ctx.metrics.tunnelAuthFailures.inc();
      log.warn({ remote_addr: up.remoteAddress }, 'tunnel refused: wrong auth_secret');
      throw new GatewayError(401, 'authentication error');
    }
    if (ctx.draining()) {
      throw new GatewayError(503, 'sidecar is shutting down', { 'Retry-After': '1' });
    }
    if (ctx.registry.size >= ctx.settings.maxTunnels && !ctx.registry.get(uuid)) {
      ctx.metrics.refusedFull.labels('tunnels').inc();
      throw new GatewayError(503, 'too many tunnels held by this sidecar',
        { 'Retry-After': '5' });
    }
  } catch (err) {
    const gerr = asGatewayError(err);
    done(`error_${gerr.status}`);
    refuse(up.socket, gerr);
    return;
  }

  const socket = up.socket;
  // The 101 head goes out alone; yamux frames are only written after it has been flushed.
  socket.write(switchingProtocols('tunnel', { 'X-Arvados-Internal-Url': ctx.ownUrl() }));
  if (up.rest.length > 0) socket.unshift(up.rest);
  const session = new Session(socket, {
    role: 'server',
    maxStreams: ctx.settings.maxStreamsPerTunnel,
    // Only this side opens streams. Streams crunch-run opens are never accepted, so each one
    // kept in the backlog could only hold a full window (256 KiB) of memory until the end.
    acceptBacklog: 1,
    // What this side grants on the streams it opens. Above the protocol's 256 KiB, the gateway
    // is stopped for a window update less often: in npm run bench, 8 streams gateway→client
    // went from about 1.2× to 1.35× Go's throughput at 1 MiB, mostly in the gateway's CPU.
    // The part above 256 KiB comes from one budget for all tunnels, so that many clients that
    // stop reading cannot each hold a large window.
    maxStreamWindow: ctx.settings.tunnelStreamWindow,
    windowBudget: ctx.windowBudget,
  });
  const tunnel: Tunnel = {
    containerUuid: uuid,
    session,
    remoteAddr: up.remoteAddress,
    connectedAt: new Date(),
  };
  const replaced = ctx.registry.register(tunnel);
  ctx.metrics.tunnelConnects.inc();
  ctx.metrics.tunnelsHeld.set(ctx.registry.size);
  done('ok');
  log.info({ remote_addr: up.remoteAddress, replaced: replaced !== undefined }, 'tunnel opened');

  session.on('protocol-error', (err: Error) => {
    ctx.metrics.yamuxProtocolErrors.inc();
    log.warn({ err: err.message }, 'tunnel broke the yamux protocol');
  });
  session.once('close', (err?: Error) => {
    ctx.registry.unregister(tunnel);
    ctx.metrics.tunnelsHeld.set(ctx.registry.size);
    ctx.metrics.closedTunnelBytes.toGateway += session.bytesOut;
    ctx.metrics.closedTunnelBytes.fromGateway += session.bytesIn;
    const reason = closeReason(err);
    ctx.metrics.tunnelDisconnects.labels(reason).inc();
    log.info({
      reason,
      bytes_in: session.bytesIn,
      bytes_out: session.bytesOut,
      duration_ms: Date.now() - tunnel.connectedAt.getTime(),
    }, 'tunnel closed');
  });
}

function closeReason(err?: Error): string {
  if (!err) return 'closed';
  const code = (err as { code?: string }).code ?? '';
  if (/keepalive|timeout/i.test(code + err.message)) return 'keepalive_timeout';
  if (/protocol/i.test(code + err.message)) return 'protocol_error';
  return 'error';
}
