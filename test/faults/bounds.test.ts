// Every limit of the sidecar, filled to the brim: the next request gets a 503 JSON error with a
// Retry-After header, the refusal is counted, nothing else breaks, and once the place is given
// back the same request succeeds. Gateways are the tests' own (test/faults/lib/fake-gateway.ts),
// held open through real tunnels, so a request can be kept in flight for as long as needed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { request } from 'undici';
import { LocalCluster, urlOf } from '../../src/demo/cluster.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { containerKey } from '../../src/gateway/hmac.ts';
import { readHead } from '../../src/http/head.ts';
import { FakeGateway } from './lib/fake-gateway.ts';
import {
  LeakCheck, assertJsonError, assertTunnelViewsAgree, exchange, metric, scrape, selfSigned,
  seenBodies, upgradeRequest, waitFor,
  jsonOrUndefined,
} from './lib/wire.ts';

const BUSY = /^too many .* in progress, try again later$/;

describe('bounds: full means 503 with Retry-After', () => {
  const cluster = new LocalCluster();
  const leaks = new LeakCheck();
  const gateways: FakeGateway[] = [];
  let pem: { key: Buffer; cert: Buffer };
  let alice: ReturnType<LocalCluster['api']['addUser']>;
  let n = 0;

  // A container with a gateway of our own, tunnelled to sidecar.
  const tunnelled = async (sidecar: Sidecar, file = Buffer.from('log data\n')) => {
    const uuid = `zzzzz-dz642-${String(n++).padStart(3, '0')}bounds000000`;
    cluster.api.addContainer(uuid, 'Running', [alice], `tunnel ${sidecar.ownUrl}`);
    const gw = new FakeGateway({ uuid, systemRootToken: cluster.rootToken, ...pem });
    gw.files.set('stderr.txt', file);
    gateways.push(gw);
    const tunnel = await gw.openTunnel(sidecar.frontPort);
    leaks.add(`auth secret of ${uuid}`, containerKey(cluster.rootToken, uuid));
    return { uuid, gw, tunnel };
  };
  const logUrl = (sidecar: Sidecar, uuid: string) => {
    const cr = [...cluster.api.requests.values()].find((r) => r.container_uuid === uuid)!.uuid;
    return `${urlOf(sidecar)}/arvados/v1/container_requests/${cr}/log/${uuid}/stderr.txt`;
  };
  const getLog = async (sidecar: Sidecar, uuid: string) => {
    const res = await request(logUrl(sidecar, uuid),
      { headers: { authorization: `Bearer ${alice.token}` } });
    const body = await res.body.text();
    seenBodies.push(body);
    return { status: res.statusCode, headers: res.headers, body, json: jsonOrUndefined(body) };
  };
  const assertBusy = (answer: Parameters<typeof assertJsonError>[0], message: RegExp = BUSY) => {
    assertJsonError(answer, 503, message);
    assert.match(String(answer.headers['retry-after']), /^\d+$/, 'Retry-After is missing');
  };

  before(async () => {
    await cluster.start();
    pem = selfSigned(cluster.dir, 'gateway');
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    leaks.add('SystemRootToken', cluster.rootToken);
    leaks.add('alice\'s token', alice.token);
  });

  after(async () => {
    await Promise.all(gateways.map((g) => g.close()));
    await cluster.stop();
  });

  test('GATEWAY_MAX_TUNNELS: one more is refused, a redial of a held one is not', async () => {
    const sidecar = await cluster.startSidecar({ maxTunnels: 2 });
    const a = await tunnelled(sidecar);
    const b = await tunnelled(sidecar);
    const uuid = 'zzzzz-dz642-boundsthird0001';
    const third = await exchange(sidecar.frontPort, upgradeRequest(sidecar.frontPort,
      `/arvados/v1/connect/${uuid}/gateway_tunnel`, 'tunnel',
      { auth_secret: containerKey(cluster.rootToken, uuid) }));
    assertBusy(third, /^too many tunnels held by this sidecar$/);
    assert.deepEqual(await assertTunnelViewsAgree(sidecar.adminPort), [a.uuid, b.uuid].sort());

    // crunch-run redials a tunnel it thinks dropped: that replaces, it does not add.
    const again = await a.gw.openTunnel(sidecar.frontPort);
    await waitFor(() => sidecar.registry.get(a.uuid)?.session !== a.tunnel.session);
    assert.equal(sidecar.registry.size, 2);
    assert.equal((await getLog(sidecar, a.uuid)).body, 'log data\n');
    // The replaced tunnel closing late must not take the new one with it.
    const replacedAt = sidecar.registry.get(a.uuid);
    a.tunnel.close();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(sidecar.registry.get(a.uuid), replacedAt);
    assert.equal((await getLog(sidecar, a.uuid)).body, 'log data\n');

    // A place given back is a place: the refused one gets in now.
    b.tunnel.close();
    await waitFor(() => sidecar.registry.size === 1, 5000, 'the closed tunnel to go');
    const ok = new FakeGateway({ uuid, systemRootToken: cluster.rootToken, ...pem });
    gateways.push(ok);
    await ok.openTunnel(sidecar.frontPort);
    assert.deepEqual(await assertTunnelViewsAgree(sidecar.adminPort), [a.uuid, uuid].sort());
    const { samples } = await scrape(sidecar.adminPort);
    assert.equal(metric(samples, 'arvados_gateway_refused_full_total', { limit: 'tunnels' }), 1);
    again.close();
  });

  test('GATEWAY_MAX_STREAMS_PER_TUNNEL: a full tunnel refuses logs and SSH alike', async () => {
    const sidecar = await cluster.startSidecar({ maxStreamsPerTunnel: 2 });
    const { uuid, gw } = await tunnelled(sidecar);
    const other = await tunnelled(sidecar);
    gw.hold = true;
    const inFlight = [getLog(sidecar, uuid), getLog(sidecar, uuid)];
    await waitFor(() => gw.heldCount === 2, 5000, 'two held requests');

    const refused = await getLog(sidecar, uuid);
    assertBusy(refused, /^too many streams open on this container's tunnel, try again later$/);
    const ssh = await exchange(sidecar.frontPort, upgradeRequest(sidecar.frontPort,
      `/arvados/v1/connect/${uuid}/ssh`, 'ssh', {}, { Authorization: `Bearer ${alice.token}` }));
    assertBusy(ssh, /^too many streams open on this container's tunnel, try again later$/);
    // Another container's tunnel is not affected by this one being full.
    assert.equal((await getLog(sidecar, other.uuid)).body, 'log data\n');

    gw.hold = false;
    gw.release();
    for (const res of await Promise.all(inFlight)) assert.equal(res.body, 'log data\n');
    await waitFor(() => sidecar.registry.get(uuid)!.session.numStreams === 0, 5000,
      'the streams to close');
    assert.equal((await getLog(sidecar, uuid)).status, 200);
    assert.equal(sidecar.ctx.limits.busy, 0);
  });

  test('GATEWAY_TUNNEL_STREAM_WINDOW and _WINDOW_BUDGET: what a gateway may send ahead',
    async () => {
      // The window updates the sidecar sent on the log's stream: the first rides on the SYN;
      // each later one hands back what was passed on, and at most the whole window.
      const updates = (received: Buffer[]) => {
        const bytes = Buffer.concat(received.slice(1));
        const deltas: number[] = [];
        for (let at = 0; at + 12 <= bytes.length;) {
          const type = bytes[at + 1];
          const length = bytes.readUInt32BE(at + 8);
          if (type === 1 && bytes.readUInt32BE(at + 4) !== 0) deltas.push(length);
          at += 12 + (type === 0 ? length : 0);
        }
        return deltas;
      };
      const cases = [
        // A stream opens at 256 KiB and takes the rest of its window from the budget once it
        // has passed half a window on.
        [{}, 1024 * 1024],
        [{ tunnelStreamWindow: 300_000 }, 300_000],
        [{ tunnelStreamWindow: 256 * 1024 }, 256 * 1024],
        // No budget: every stream stays at 256 KiB.
        [{ tunnelWindowBudget: 0 }, 256 * 1024],
        // A budget smaller than the window's excess grows a stream as far as it goes.
        [{ tunnelWindowBudget: 100 * 1024 }, 356 * 1024],
      ] as const;
      for (const [overrides, window] of cases) {
        const what = JSON.stringify(overrides);
        const sidecar = await cluster.startSidecar(overrides);
        const { uuid, tunnel } = await tunnelled(sidecar, Buffer.alloc(3 * 1024 * 1024, 'w'));
        const log = await getLog(sidecar, uuid);
        assert.equal(log.status, 200);
        assert.equal(log.body.length, 3 * 1024 * 1024);
        const [syn, ...later] = updates(tunnel.received);
        assert.equal(syn, 0, `${what}: the SYN grants no more than 256 KiB`);
        const largest = Math.max(...later);
        assert.ok(largest > window / 2 && largest <= window,
          `${what}: largest update ${largest} for a ${window}-byte window`);
        // The budget is given back when the stream closes.
        await waitFor(() => sidecar.ctx.windowBudget.taken === 0, 5000, 'the budget back');
        const { samples } = await scrape(sidecar.adminPort);
        assert.equal(metric(samples, 'arvados_gateway_tunnel_window_budget_taken_bytes'), 0);
        // Five sidecars watching one config file at once would be more than Node expects.
        cluster.sidecars.splice(cluster.sidecars.indexOf(sidecar), 1);
        await sidecar.stop();
      }
    });

  test('GATEWAY_MAX_LOG_REQUESTS', async () => {
    const sidecar = await cluster.startSidecar({ maxLogRequests: 2 });
    const { uuid, gw } = await tunnelled(sidecar);
    gw.hold = true;
    const inFlight = [getLog(sidecar, uuid), getLog(sidecar, uuid)];
    await waitFor(() => gw.heldCount === 2, 5000, 'two held requests');
    assertBusy(await getLog(sidecar, uuid), /^too many log requests in progress/);
    // Other routes still have their places.
    const ssh = await openSsh(sidecar, uuid, alice.token);
    assert.equal(await echo(ssh, 'still here'), 'still here');
    ssh.destroy();
    gw.hold = false;
    gw.release();
    await Promise.all(inFlight);
    assert.equal((await getLog(sidecar, uuid)).status, 200);
    const { samples } = await scrape(sidecar.adminPort);
    assert.equal(metric(samples, 'arvados_gateway_refused_full_total', { limit: 'logs' }), 1);
  });

  test('GATEWAY_MAX_SSH_SESSIONS', async () => {
    const sidecar = await cluster.startSidecar({ maxSshSessions: 1 });
    const { uuid } = await tunnelled(sidecar);
    const first = await openSsh(sidecar, uuid, alice.token);
    assert.equal(await echo(first, 'one'), 'one');
    const second = await exchange(sidecar.frontPort, upgradeRequest(sidecar.frontPort,
      `/arvados/v1/connect/${uuid}/ssh`, 'ssh', {}, { Authorization: `Bearer ${alice.token}` }));
    assertBusy(second, /^too many SSH sessions in progress/);
    // The session that holds the place is not disturbed by the refusal.
    assert.equal(await echo(first, 'two'), 'two');
    first.destroy();
    await waitFor(() => sidecar.ctx.limits.routes.ssh.active === 0, 5000, 'the session to end');
    const third = await openSsh(sidecar, uuid, alice.token);
    assert.equal(await echo(third, 'three'), 'three');
    third.destroy();
  });

  test('GATEWAY_MAX_SESSIONS spans SSH and logs', async () => {
    const sidecar = await cluster.startSidecar({ maxSessions: 2 });
    const { uuid, gw } = await tunnelled(sidecar);
    gw.hold = true;
    const log = getLog(sidecar, uuid);
    await waitFor(() => gw.heldCount === 1, 5000, 'a held request');
    const ssh = await openSsh(sidecar, uuid, alice.token);
    assertBusy(await getLog(sidecar, uuid), /^too many sessions in progress/);
    const sshRefused = await exchange(sidecar.frontPort, upgradeRequest(sidecar.frontPort,
      `/arvados/v1/connect/${uuid}/ssh`, 'ssh', {}, { Authorization: `Bearer ${alice.token}` }));
    assertBusy(sshRefused, /^too many sessions in progress/);
    const { samples, text } = await scrape(sidecar.adminPort);
    assert.equal(metric(samples, 'arvados_gateway_sessions_active'), 2, text);
    assert.equal(metric(samples, 'arvados_gateway_refused_full_total', { limit: 'sessions' }), 2);
    ssh.destroy();
    gw.hold = false;
    gw.release();
    await log;
    await waitFor(() => sidecar.ctx.limits.busy === 0, 5000, 'every place to be given back');
    assert.equal(metric((await scrape(sidecar.adminPort)).samples,
      'arvados_gateway_sessions_active'), 0);
  });

  test('GATEWAY_MAX_PASSTHROUGH', async () => {
    // A controller that keeps requests until told to answer.
    const held: ServerResponse[] = [];
    const controller = createServer((_req: IncomingMessage, res: ServerResponse) => {
      held.push(res);
    });
    await new Promise<void>((r) => controller.listen(0, '127.0.0.1', r));
    const controllerUrl = `http://127.0.0.1:${(controller.address() as { port: number }).port}`;
    const sidecar = await cluster.startSidecar({ maxPassthrough: 2, controllerUrl });
    const get = () => request(`${urlOf(sidecar)}/arvados/v1/collections`).then(async (r) => ({
      status: r.statusCode, headers: r.headers, json: await r.body.json().catch(() => undefined),
    }));
    const inFlight = [get(), get()];
    await waitFor(() => held.length === 2, 5000, 'two held controller requests');
    assertBusy(await get(), /^too many controller requests in progress/);
    for (const res of held.splice(0)) {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end('{"items":[]}');
    }
    for (const res of await Promise.all(inFlight)) assert.equal(res.status, 200);
    const late = get();
    await waitFor(() => held.length === 1, 5000, 'the next request to reach the controller');
    held[0].writeHead(200, { 'Content-Type': 'application/json' }).end('{}');
    assert.equal((await late).status, 200);
    controller.closeAllConnections();
    controller.close();
  });

  test('nothing in the refusals, logs or admin views carries a secret', async () => {
    leaks.scan('answer bodies', seenBodies);
    leaks.scan('log lines', cluster.logLines);
    for (const s of cluster.sidecars) await leaks.scanSidecar(s.adminPort);
    assert.ok(seenBodies.length > 10);
  });
});

// An SSH upgrade whose gateway side is FakeGateway's echo: a socket after the 101.
async function openSsh(sidecar: Sidecar, uuid: string, token: string): Promise<Socket> {
  const socket = connect(sidecar.frontPort, '127.0.0.1');
  socket.on('error', () => {});
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(upgradeRequest(sidecar.frontPort, `/arvados/v1/connect/${uuid}/ssh`, 'ssh', {},
    { Authorization: `Bearer ${token}` }));
  const answer = await readHead(socket, 10_000);
  assert.equal(answer.head.parts[1], '101', answer.rest.toString());
  return socket;
}

async function echo(socket: Socket, text: string): Promise<string> {
  socket.write(text);
  let got = '';
  socket.resume();
  await new Promise<void>((resolve) => {
    const onData = (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) {
        socket.off('data', onData);
        socket.pause();
        resolve();
      }
    };
    socket.on('data', onData);
  });
  return got;
}
