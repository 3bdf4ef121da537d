// Several sidecars behave as one: the tunnel lands on one of them (through a stand-in for the
// controller Service), requests arrive at any of them and are forwarded to the holder. The
// peers are known from Services.Controller.InternalURLs, or from the headless Service.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { LocalCluster, urlOf } from '../src/demo/cluster.ts';
import { runSsh } from '../src/demo/run.ts';
import type { Sidecar } from '../src/sidecar.ts';
import { startCrunchRun, type CrunchRun } from './lib/crunch-run.ts';
import { rawUpgrade } from './lib/upgrade.ts';
import { buildGo } from '../scripts/build-go.ts';
import { waitFor } from '../test/lib/wait.ts';

const CTR = 'zzzzz-dz642-peerstest000001';

/** ServiceStandIn is a TCP forwarder playing the controller Service: it picks a live pod. */
class ServiceStandIn {
  target = 0;
  readonly server: Server;
  readonly sockets = new Set<Socket>();
  constructor() {
    this.server = createServer((client) => {
      const upstream = connect(this.target, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => { client.destroy(); upstream.destroy(); });
      }
      client.pipe(upstream).pipe(client);
    });
  }
  async listen(): Promise<string> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(this.server.address() as { port: number }).port}`;
  }
  close(): void {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}

describe('two sidecars as one', () => {
  const cluster = new LocalCluster();
  const service = new ServiceStandIn();
  let a: Sidecar;
  let b: Sidecar;
  let crunchRun: CrunchRun;
  let alice: ReturnType<LocalCluster['api']['addUser']>;
  let logDir: string;
  const crUuid = () =>
    [...cluster.api.requests.values()].find((cr) => cr.container_uuid === CTR)!.uuid;
  const logGet = (sidecar: Sidecar) => request(
    `${urlOf(sidecar)}/arvados/v1/container_requests/${crUuid()}/log/${CTR}/stderr.txt`,
    { headers: { authorization: `Bearer ${alice.token}` } });
  const peersConfig = (...sidecars: Sidecar[]) => {
    cluster.writeConfig({ controllerInternalUrls: sidecars.map((s) => s.ownUrl) });
    return waitFor(() => sidecars.every((s) => sidecars.every((p) =>
      s.ctx.config.current?.controllerInternalUrls.includes(p.ownUrl))));
  };

  before(async () => {
    await buildGo(['crunch-run']);
    await cluster.start();
    a = await cluster.startSidecar();
    b = await cluster.startSidecar();
    await peersConfig(a, b);
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    const ctr = cluster.api.addContainer(CTR, 'Running', [alice]);
    logDir = join(cluster.dir, 'log');
    mkdirSync(logDir);
    writeFileSync(join(logDir, 'stderr.txt'), 'peer log\n');
    service.target = a.frontPort;
    const front = await service.listen();
    crunchRun = await startCrunchRun({
      uuid: CTR, systemRootToken: cluster.rootToken, tunnelUrl: front, apiUrl: front,
      apiToken: ctr.runtime_token, logDir, workdir: cluster.dir, redialIntervalMs: 200,
    });
    await crunchRun.waitFor('gateway_address_set');
    assert.equal(ctr.gateway_address, `tunnel ${a.ownUrl}`);
  });

  after(async () => {
    await crunchRun?.stop();
    service.close();
    await cluster.stop();
  });

  test('SSH and live logs requested at B reach the tunnel held by A', async () => {
    const r = await runSsh(urlOf(b), CTR, alice.token, 'echo via peer');
    assert.equal(r.stdout, 'via peer\n', r.stderr);
    const log = await logGet(b);
    assert.equal(log.statusCode, 200);
    assert.equal(await log.body.text(), 'peer log\n');
    assert.equal(b.registry.size, 0);
    assert.equal(a.registry.size, 1);
  });

  test('a forwarded request is never forwarded again', async () => {
    // The record points at A, but A holds nothing for this container: A must not bounce the
    // request back to B (or anywhere), since it arrives with no_forward=true.
    const other = 'zzzzz-dz642-nottheholder001';
    cluster.api.addContainer(other, 'Running', [alice], `tunnel ${a.ownUrl}`);
    const before = cluster.api.calls.length;
    const res = await rawUpgrade(b.frontPort, `/arvados/v1/connect/${other}/ssh`,
      { upgrade: 'ssh', token: alice.token });
    assert.equal(res.status, 503);
    assert.deepEqual(res.json, { errors: ['container is running but tunnel is down'] });
    // B: user + container + list; A (forwarded once): the same three. No third hop.
    const lookups = cluster.api.calls.slice(before).filter((c) => c.path.endsWith(other));
    assert.equal(lookups.length, 2);
  });

  test('a tunnel URL that is no peer is refused and never dialled', async () => {
    let connections = 0;
    const trap = createServer((s) => { connections++; s.destroy(); });
    await new Promise<void>((r) => trap.listen(0, '127.0.0.1', r));
    const port = (trap.address() as { port: number }).port;
    const evil = 'zzzzz-dz642-notapeer0000001';
    cluster.api.addContainer(evil, 'Running', [alice], `tunnel http://127.0.0.1:${port}/`);
    const res = await rawUpgrade(b.frontPort, `/arvados/v1/connect/${evil}/ssh`,
      { upgrade: 'ssh', token: alice.token });
    assert.equal(res.status, 503);
    assert.deepEqual(res.json,
      { errors: ['container gateway is running but tunnel endpoint is invalid'] });
    const crs = [...cluster.api.requests.values()].find((c) => c.container_uuid === evil)!;
    const log = await request(`${urlOf(b)}/arvados/v1/container_requests/${crs.uuid}/log/${evil}/x`,
      { headers: { authorization: `Bearer ${alice.token}` } });
    assert.equal(log.statusCode, 503);
    await log.body.dump();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(connections, 0);
    trap.close();
  });

  test('A dies: B says the tunnel is down; crunch-run redials B; a new A forwards to B',
    async () => {
      await a.stop();
      const down = await rawUpgrade(b.frontPort, `/arvados/v1/connect/${CTR}/ssh`,
        { upgrade: 'ssh', token: alice.token });
      assert.equal(down.status, 503);
      assert.deepEqual(down.json, { errors: ['container is running but tunnel is down'] });
      const log = await logGet(b);
      assert.equal(log.statusCode, 503);
      assert.deepEqual(await log.body.json(),
          { errors: ['container is running but tunnel is down'] });

      service.target = b.frontPort;
      const ctr = cluster.api.containers.get(CTR)!;
      await waitFor(() => ctr.gateway_address === `tunnel ${b.ownUrl}`, 15_000);
      assert.equal(b.registry.size, 1);

      const a2 = await cluster.startSidecar();
      await peersConfig(a2, b);
      const r = await runSsh(urlOf(a2), CTR, alice.token, 'echo back again');
      assert.equal(r.stdout, 'back again\n', r.stderr);
      const again = await logGet(a2);
      assert.equal(await again.body.text(), 'peer log\n');
    });
});

describe('peers from the headless Service', () => {
  const cluster = new LocalCluster();
  after(() => cluster.stop());

  test('members of the Service are peers; other addresses are not', async () => {
    await cluster.start();
    // The "Service" resolves to 127.0.0.1 only: a tunnel URL on 127.0.0.2 is not a member.
    const sidecar = await cluster.startSidecar({ peersService: 'peers.test.svc' },
      undefined, async (name) => (name === 'peers.test.svc' ? ['127.0.0.1'] : []));
    const alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    cluster.api.addContainer('zzzzz-dz642-memberpeer00001', 'Running', [alice],
      'tunnel http://127.0.0.1:9/');
    cluster.api.addContainer('zzzzz-dz642-strangerpeer001', 'Running', [alice],
      'tunnel http://127.0.0.2:9/');
    const member = await rawUpgrade(sidecar.frontPort,
      '/arvados/v1/connect/zzzzz-dz642-memberpeer00001/ssh', { upgrade: 'ssh',
          token: alice.token });
    assert.deepEqual(member.json, { errors: ['container is running but tunnel is down'] });
    const stranger = await rawUpgrade(sidecar.frontPort,
      '/arvados/v1/connect/zzzzz-dz642-strangerpeer001/ssh', { upgrade: 'ssh',
          token: alice.token });
    assert.deepEqual(stranger.json,
      { errors: ['container gateway is running but tunnel endpoint is invalid'] });
  });
});
