// The SSH endpoint: a user's `arvados-client shell` (an OpenSSH ProxyCommand) asks to upgrade
// to a byte stream that ends at the SSH server in the container's gateway.
import type { Duplex } from 'node:stream';
import type { Container } from '../arvados/client.ts';
import { GatewayError, asGatewayError, errorsIn } from '../errors.ts';
import { checkRespondAuth, dialGateway } from '../gateway/dial.ts';
import { TUNNEL_DOWN, type GatewayRoute } from '../gateway/locate.ts';
import { splice } from '../gateway/splice.ts';
import { readSomeBody, sendUpgrade, type UpgradeAnswer } from '../gateway/upgrade-client.ts';
import { connectUrl } from '../http/connect.ts';
import type { Logger } from '../log.ts';
import { bearerToken, refuse, switchingProtocols, type UpgradeRequest } from '../http/upgrade.ts';
import { clusterConfig, isContainerUuid, requestId, type GatewayContext } from './context.ts';

const FORM_FIELDS = ['detach_keys', 'login_username', 'no_forward'] as const;

/** handleSsh serves POST .../{uuid}/ssh. */
export async function handleSsh(up: UpgradeRequest, uuid: string, ctx: GatewayContext) {
  const reqId = requestId(up.headers['x-request-id']);
  const log = ctx.log.child({ req_id: reqId, route: 'ssh', container_uuid: uuid });
  const started = performance.now();
  let outcome = 'error';
  let release = () => {};
  try {
    release = ctx.limits.acquire('ssh');
    const { upstream, upstreamRest, route } = await connectSsh(up, uuid, reqId, ctx, log);
    outcome = route;
    ctx.metrics.requests.labels('ssh', outcome).inc();
    ctx.metrics.requestDuration.labels('ssh').observe((performance.now() - started) / 1000);
    up.socket.write(switchingProtocols('ssh'));
    const result = await splice(up.socket, up.rest, upstream, upstreamRest);
    ctx.metrics.sessionBytes.labels('from_client').inc(result.bytesFromClient);
    ctx.metrics.sessionBytes.labels('to_client').inc(result.bytesToClient);
    log.info({
      outcome, bytes_in: result.bytesFromClient, bytes_out: result.bytesToClient,
      duration_ms: Math.round(performance.now() - started),
    }, 'ssh session ended');
  } catch (err) {
    const gerr = asGatewayError(err);
    if (!(err instanceof GatewayError)) log.error({ err }, 'ssh request failed');
    else if (gerr.status >= 500) log.warn({ status: gerr.status, err: gerr.message },
        'ssh refused');
    else log.info({ status: gerr.status, err: gerr.message }, 'ssh refused');
    ctx.metrics.requests.labels('ssh', `error_${gerr.status}`).inc();
    ctx.metrics.requestDuration.labels('ssh').observe((performance.now() - started) / 1000);
    refuse(up.socket, gerr);
  } finally {
    release();
  }
}

interface Upstream {
  upstream: Duplex;
  upstreamRest: Buffer;
  route: 'direct' | 'tunnel' | 'peer';
}

async function connectSsh(
  up: UpgradeRequest,
  uuid: string,
  reqId: string,
  ctx: GatewayContext,
  log: Logger,
): Promise<Upstream> {
  if (!isContainerUuid(uuid)) throw new GatewayError(400, 'invalid container UUID');
  for (const name of FORM_FIELDS) {
    if (/[\0-\x1f\x7f]/.test(up.form.get(name) ?? '')) {
      throw new GatewayError(400, `invalid ${name}: control characters are not allowed`);
    }
  }
  const token = bearerToken(up.headers.authorization);
  if (token === '') throw new GatewayError(401, 'Not logged in');
  const config = clusterConfig(ctx);

  const user = await ctx.api.currentUser(token, reqId);
  const select = ['uuid', 'state', 'gateway_address', 'interactive_session_started'];
  const ctr = await ctx.api.getContainer(token, uuid, select, reqId);
  if (!(user.is_admin && config.shellAccess.admin)) {
    if (!config.shellAccess.user) throw new GatewayError(503, 'shell access is disabled in config');
    const requests = await ctx.api.listAllRequestsFor(config.systemRootToken, uuid, reqId);
    if (requests.some((cr) => cr.modified_by_user_uuid !== user.uuid)) {
      throw new GatewayError(403,
        'permission denied: container is associated with requests submitted by other users');
    }
  }
  checkRunning(ctr);

  const noForward = up.form.get('no_forward') === 'true';
  const route = await ctx.locator.locate(uuid, ctr.gateway_address ?? '', noForward,
    (msg, fields) => log.warn(fields, msg));
  const connected = route.kind === 'peer'
    ? await forwardToPeer(route.url, up, uuid, token, reqId, ctx)
    : await upgradeAtGateway(route, up, uuid, config.systemRootToken, ctr, ctx);

  if (!ctr.interactive_session_started) {
    try {
      await ctx.api.updateContainer(config.systemRootToken, uuid,
        { interactive_session_started: true }, reqId);
    } catch (err) {
      connected.upstream.destroy();
      throw new GatewayError(500,
        `could not record interactive session start: ${asGatewayError(err).message}`);
    }
  }
  return connected;
}

/** checkRunning throws the error a user sees for a container that is not running. */
export function checkRunning(ctr: Container): void {
  if (ctr.state === 'Queued' || ctr.state === 'Locked') {
    throw new GatewayError(503,
        `container is not running yet (state is ${JSON.stringify(ctr.state)})`);
  }
  if (ctr.state !== 'Running') {
    throw new GatewayError(410, `container has ended (state is ${JSON.stringify(ctr.state)})`);
  }
}

async function upgradeAtGateway(
  route: Exclude<GatewayRoute, { kind: 'peer' }>,
  up: UpgradeRequest,
  uuid: string,
  rootToken: string,
  ctr: Container,
  ctx: GatewayContext,
): Promise<Upstream> {
  const conn = await dialGateway(route, uuid, rootToken, ctx.settings.dialTimeoutMs);
  if (route.kind === 'tunnel') ctx.metrics.streamsOpened.inc();
  const form = new URLSearchParams({ uuid });
  for (const name of FORM_FIELDS) form.set(name, up.form.get(name) ?? '');
  try {
    const host = route.kind === 'direct' ? ctr.gateway_address : uuid;
    const answer = await sendUpgrade(conn.socket, '/ssh', {
      Host: host,
      Upgrade: 'ssh',
      Connection: 'upgrade',
      'X-Arvados-Container-Gateway-Uuid': uuid,
      'X-Arvados-Authorization': conn.requestAuth,
    }, form, ctx.settings.dialTimeoutMs);
    await checkUpgradeAnswer(answer, conn.socket);
    checkRespondAuth(answer.head.headers['x-arvados-authorization-response'], conn);
    return { upstream: conn.socket, upstreamRest: answer.rest, route: route.kind };
  } catch (err) {
    conn.socket.destroy();
    throw err;
  }
}

async function checkUpgradeAnswer(answer: UpgradeAnswer, socket: Duplex): Promise<void> {
  if (answer.status !== 101) {
    const body = await readSomeBody(socket, answer, 512, 2000);
    const text = body.toString('utf8').trim();
    throw new GatewayError(502,
      `unexpected status ${answer.status} ${answer.reason} ${JSON.stringify(text)}`);
  }
  const h = answer.head.headers;
  if ((h.upgrade ?? '').toLowerCase() !== 'ssh'
      || (h.connection ?? '').toLowerCase() !== 'upgrade') {
    throw new GatewayError(502, 'bad upgrade');
  }
}

// The same upgrade is repeated at the peer that holds the tunnel, with the caller's own token,
// so the peer makes its own permission checks; no_forward=true stops it from forwarding again.
async function forwardToPeer(
  peer: URL,
  up: UpgradeRequest,
  uuid: string,
  token: string,
  reqId: string,
  ctx: GatewayContext,
): Promise<Upstream> {
  const socket = await connectPeer(peer, ctx);
  const form = new URLSearchParams();
  for (const name of FORM_FIELDS) form.set(name, up.form.get(name) ?? '');
  form.set('no_forward', 'true');
  try {
    const answer = await sendUpgrade(socket, `/arvados/v1/containers/${uuid}/ssh`, {
      Host: peer.host,
      Authorization: `Bearer ${token}`,
      Upgrade: 'ssh',
      'X-Request-Id': reqId,
    }, form, ctx.settings.dialTimeoutMs);
    if (answer.status !== 101) {
      ctx.metrics.peerForwards.labels('ssh', 'refused').inc();
      throw await peerError(answer, socket);
    }
    ctx.metrics.peerForwards.labels('ssh', 'ok').inc();
    return { upstream: socket, upstreamRest: answer.rest, route: 'peer' };
  } catch (err) {
    socket.destroy();
    throw err;
  }
}

// A peer's refusal is passed on with its own status and message: it made the same checks we
// would, so its answer is the user's answer.
async function peerError(answer: UpgradeAnswer, socket: Duplex): Promise<GatewayError> {
  const body = await readSomeBody(socket, answer, 4096, 2000);
  return new GatewayError(answer.status,
    errorsIn(body.toString('utf8')) ?? `peer answered ${answer.status} ${answer.reason}`);
}

/** connectPeer opens a connection to a peer sidecar's front door. */
async function connectPeer(peer: URL, ctx: GatewayContext): Promise<Duplex> {
  const insecure = ctx.config.current?.tlsInsecure ?? false;
  try {
    return await connectUrl(peer, { rejectUnauthorized: !insecure,
      timeoutMs: ctx.settings.dialTimeoutMs });
  } catch (err) {
    // The peer that held the tunnel is gone (restarted, scaled down): from the user's side the
    // tunnel is down until crunch-run redials, which it does within seconds.
    ctx.metrics.peerForwards.labels('ssh', 'unreachable').inc();
    ctx.log.warn({ peer: peer.origin, err: (err as { code?: string }).code ?? String(err) },
      'peer holding the tunnel is unreachable');
    throw new GatewayError(503, TUNNEL_DOWN);
  }
}
