// Trust: who may hold a tunnel, which gateway the sidecar believes, where it is willing to
// connect, and where secrets go. The gateways and peers here are the tests' own listeners on
// loopback addresses (127.0.0.2 inside the allowed network, 127.0.0.1, 127.0.0.3 and ::1
// outside), each counting the connections it accepts, so "refused without any connection
// attempt" is a count of zero rather than a hope.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer, type IncomingMessage } from 'node:http';
import { request } from 'undici';
import { LocalCluster, urlOf } from '../../src/demo/cluster.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { containerKey } from '../../src/gateway/hmac.ts';
import { INVALID_ENDPOINT } from '../../src/gateway/locate.ts';
import { FakeGateway, type TunnelHandle } from './lib/fake-gateway.ts';
import {
  LeakCheck, Trap, assertJsonError, assertTunnelViewsAgree, exchange, metric, scrape, seenBodies,
  selfSigned, tlsRelay, upgradeRequest, waitFor,
  jsonOrUndefined,
} from './lib/wire.ts';

type User = ReturnType<LocalCluster['api']['addUser']>;

describe('trust', () => {
  const cluster = new LocalCluster();
  const leaks = new LeakCheck();
  const closers: (() => unknown)[] = [];
  let pem: { key: Buffer; cert: Buffer };
  let alice: User;
  let admin: User;
  let n = 0;

  const newUuid = (tag: string) =>
    `zzzzz-dz642-${String(n++).padStart(3, '0')}${tag.padEnd(12, '0').slice(0, 12)}`;
  const crOf = (uuid: string) =>
    [...cluster.api.requests.values()].find((r) => r.container_uuid === uuid)!.uuid;
  const getLog = async (sidecar: Sidecar, uuid: string, token = alice.token) => {
    const res = await request(
      `${urlOf(sidecar)}/arvados/v1/container_requests/${crOf(uuid)}/log/${uuid}/stderr.txt`,
      { headers: { authorization: `Bearer ${token}` } });
    const body = await res.body.text();
    seenBodies.push(body);
    return { status: res.statusCode, headers: res.headers, body, json: jsonOrUndefined(body) };
  };
  const ssh = (sidecar: Sidecar, uuid: string, token = alice.token) =>
    exchange(sidecar.frontPort, upgradeRequest(sidecar.frontPort,
      `/arvados/v1/connect/${uuid}/ssh`, 'ssh', {}, { Authorization: `Bearer ${token}` }),
    { untilAnswer: true });
  const gateway = (uuid: string) => {
    const gw = new FakeGateway({ uuid, systemRootToken: cluster.rootToken, ...pem });
    gw.files.set('stderr.txt', Buffer.from(`log of ${uuid}\n`));
    closers.push(() => gw.close());
    leaks.add(`auth secret of ${uuid}`, containerKey(cluster.rootToken, uuid));
    return gw;
  };
  const trap = async (host: string) => {
    const t = new Trap();
    const port = await t.listen(host);
    closers.push(() => t.close());
    return { trap: t, port };
  };

  before(async () => {
    await cluster.start();
    pem = selfSigned(cluster.dir, 'gateway');
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    admin = cluster.api.addUser('zzzzz-tpzed-admin0000000001', true);
    leaks.add('SystemRootToken', cluster.rootToken);
    leaks.add('alice\'s token', alice.token);
    leaks.add('the admin\'s token', admin.token);
  });

  after(async () => {
    for (const close of closers.reverse()) await close();
    await cluster.stop();
  });

  test('a wrong or replayed auth_secret is refused with 401 and counted', async () => {
    const sidecar = await cluster.startSidecar();
    const a = newUuid('secreta');
    const b = newUuid('secretb');
    cluster.api.addContainer(b, 'Running', [alice], `tunnel ${sidecar.ownUrl}`);
    const held = await gateway(a).openTunnel(sidecar.frontPort);
    const tunnel = (uuid: string, form: Record<string, string>) => exchange(sidecar.frontPort,
      upgradeRequest(sidecar.frontPort, `/arvados/v1/connect/${uuid}/gateway_tunnel`, 'tunnel',
        form));
    const wrong: Record<string, string>[] = [
      // A's secret, which a tunnel for A just used, replayed for B.
      { auth_secret: containerKey(cluster.rootToken, a) },
      { auth_secret: containerKey('another cluster\'s root token', b) },
      { auth_secret: containerKey(cluster.rootToken, b).toUpperCase() },
      { auth_secret: containerKey(cluster.rootToken, b).slice(0, 63) },
      { auth_secret: '' },
      {},
      // The root token itself is not a container's secret.
      { auth_secret: cluster.rootToken },
    ];
    for (const form of wrong) {
      assertJsonError(await tunnel(b, form), 401, 'authentication error');
    }
    // The right secret is the one derived for B; with it the tunnel is held.
    const gwB = gateway(b);
    const ok = await gwB.openTunnel(sidecar.frontPort);
    assert.deepEqual(await assertTunnelViewsAgree(sidecar.adminPort), [a, b].sort());
    assert.equal((await getLog(sidecar, b)).body, `log of ${b}\n`);
    const { samples } = await scrape(sidecar.adminPort);
    assert.equal(metric(samples, 'arvados_gateway_tunnel_auth_failures_total'), wrong.length);
    assert.equal(metric(samples, 'arvados_gateway_tunnel_connects_total'), 2);
    held.close();
    ok.close();
  });

  test('a gateway that cannot prove the key: 502 on SSH and logs, through a tunnel', async () => {
    const sidecar = await cluster.startSidecar();
    for (const respond of ['wrong', 'none'] as const) {
      const uuid = newUuid(`proof${respond}`);
      cluster.api.addContainer(uuid, 'Running', [alice], `tunnel ${sidecar.ownUrl}`);
      const gw = gateway(uuid);
      gw.respond = respond;
      gw.files.set('stderr.txt', Buffer.from('must not be passed on'));
      await gw.openTunnel(sidecar.frontPort);
      const log = await getLog(sidecar, uuid);
      assertJsonError(log, 502, 'bad X-Arvados-Authorization-Response header');
      assert.ok(!log.body.includes('must not be passed on'));
      assertJsonError(await ssh(sidecar, uuid), 502, 'bad X-Arvados-Authorization-Response header');
      assert.equal(cluster.api.containers.get(uuid)!.interactive_session_started, false,
        'a session was recorded for an impostor');
    }
  });

  test('a relay with its own certificate in front of the gateway: 502 on logs and SSH',
    async () => {
      const sidecar = await cluster.startSidecar({ allowLoopbackGateways: true });
      const uuid = newUuid('mitmrelay');
      const gw = gateway(uuid);
      const real = await gw.listen('127.0.0.1');
      // The relay terminates TLS with a certificate of its own and speaks TLS to the gateway:
      // what it forwards is the sidecar's proof, bound to the relay's certificate.
      const relay = await tlsRelay(selfSigned(cluster.dir, 'relay'), real);
      closers.push(() => relay.close());
      cluster.api.addContainer(uuid, 'Running', [alice], relay.address);
      const log = await getLog(sidecar, uuid);
      assertJsonError(log, 502, 'bad X-Arvados-Authorization-Response header');
      assertJsonError(await ssh(sidecar, uuid), 502, /^unexpected status 401 /);
      assert.ok(relay.relayed() >= 2, 'the relay was not in the path');
      // The gateway saw the proof and refused it: it was made for another certificate.
      assert.ok(gw.requests.length >= 2);
    });

  test('direct addresses outside GATEWAY_ALLOWED_NETWORKS are never dialled', async () => {
    const sidecar = await cluster.startSidecar({ allowLoopbackGateways: false,
      gatewayNetworks: '127.0.0.2/32' });
    const inside = newUuid('allowed');
    const gw = gateway(inside);
    cluster.api.addContainer(inside, 'Running', [alice], await gw.listen('127.0.0.2'));
    // The positive control: inside the allowlist, the gateway is reached.
    assert.equal((await getLog(sidecar, inside)).body, `log of ${inside}\n`);
    assert.equal((await ssh(sidecar, inside)).status, 101);
    assert.ok(gw.accepted >= 2);

    const t3 = await trap('127.0.0.3');
    const t1 = await trap('127.0.0.1');
    const t6 = await trap('::1');
    const cases: [string, string][] = [
      [`127.0.0.3:${t3.port}`, 'container gateway address is not in an allowed network'],
      [`[::1]:${t6.port}`, 'container gateway address is not in an allowed network'],
      [`[::ffff:127.0.0.3]:${t3.port}`, 'container gateway address is not in an allowed network'],
      // Names and odd spellings are resolved first, and the answer is what is checked.
      [`localhost:${t1.port}`, 'container gateway address is not in an allowed network'],
      [`2130706435:${t3.port}`, 'container gateway address is not in an allowed network'],
      [`127.3:${t3.port}`, 'container gateway address is not in an allowed network'],
      [`0x7f000003:${t3.port}`, 'container gateway address is not in an allowed network'],
      [`0.0.0.0:${t1.port}`, 'container gateway address is not in an allowed network'],
      // Loopback is for single-host mode only; without it, 127.0.0.1 means "ask the tunnel".
      [`127.0.0.1:${t1.port}`, 'container is running but tunnel is down'],
    ];
    for (const [address, message] of cases) {
      const uuid = newUuid('outside');
      cluster.api.addContainer(uuid, 'Running', [alice], address);
      assertJsonError(await getLog(sidecar, uuid), 503, message);
      assertJsonError(await ssh(sidecar, uuid), 503, message);
    }
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual([t1.trap.accepted, t3.trap.accepted, t6.trap.accepted], [0, 0, 0]);
    assert.ok(cluster.logLines.some((l) => l.includes('outside the allowed networks')));
  });

  test('the default allowlist holds no loopback and no link-local address', async () => {
    const sidecar = await cluster.startSidecar({ allowLoopbackGateways: false });
    const t = await trap('127.0.0.3');
    const uuid = newUuid('default');
    cluster.api.addContainer(uuid, 'Running', [alice], `127.0.0.3:${t.port}`);
    assertJsonError(await ssh(sidecar, uuid), 503,
      'container gateway address is not in an allowed network');
    assert.equal(sidecar.ctx.locator.isAllowedAddress('169.254.169.254'), false);
    assert.equal(sidecar.ctx.locator.isAllowedAddress('fe80::1'), false);
    assert.equal(sidecar.ctx.locator.isAllowedAddress('10.1.2.3'), true);
    assert.equal(t.trap.accepted, 0);
  });

  test('tunnel URLs that are not peers are refused without any connection', async () => {
    const peer = await trap('127.0.0.2');
    const peerUrl = `http://127.0.0.2:${peer.port}/`;
    cluster.writeConfig({ controllerInternalUrls: [peerUrl] });
    const sidecar = await cluster.startSidecar();
    await waitFor(() => sidecar.ctx.config.current?.controllerInternalUrls.length === 1);
    const t3 = await trap('127.0.0.3');
    const other = await trap('127.0.0.2');
    const targets = [
      `http://127.0.0.3:${t3.port}/`,
      `http://127.0.0.2:${other.port}/`,
      `https://127.0.0.2:${peer.port}/`,
      `http://user:pw@127.0.0.3:${t3.port}/`,
      `http://127.0.0.2:${peer.port}@127.0.0.3:${t3.port}/`,
      `ftp://127.0.0.3:${t3.port}/`,
      ` http://127.0.0.3:${t3.port}/`,
      `http://2130706435:${t3.port}/`,
      'not a url',
    ];
    try {
      for (const target of targets) {
        const uuid = newUuid('notapeer');
        cluster.api.addContainer(uuid, 'Running', [alice], `tunnel ${target}`);
        assertJsonError(await getLog(sidecar, uuid), 503, INVALID_ENDPOINT);
        assertJsonError(await ssh(sidecar, uuid), 503, INVALID_ENDPOINT);
      }
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual([t3.trap.accepted, other.trap.accepted, peer.trap.accepted], [0, 0, 0]);

      // The positive control: the peer itself is asked, with the caller's token and
      // no_forward=true, and never with the root token.
      const uuid = newUuid('realpeer');
      cluster.api.addContainer(uuid, 'Running', [alice], `tunnel ${peerUrl}`);
      assertJsonError(await getLog(sidecar, uuid), 503, 'container is running but tunnel is down');
      assertJsonError(await ssh(sidecar, uuid), 503, 'container is running but tunnel is down');
      assert.equal(peer.trap.accepted, 2);
      for (const head of peer.trap.heads) {
        assert.ok(head.includes(`Bearer ${alice.token}`), head);
        assert.match(head, /no_forward=true|^POST /);
        assert.ok(!head.includes(cluster.rootToken), 'the root token went to a peer');
      }
    } finally {
      cluster.writeConfig({});
    }
  });

  test('a gateway receives proofs, never a token, directly or through a tunnel', async () => {
    const sidecar = await cluster.startSidecar({ allowLoopbackGateways: true });
    const direct = newUuid('directrec');
    const gwDirect = gateway(direct);
    cluster.api.addContainer(direct, 'Running', [alice], await gwDirect.listen('127.0.0.1'));
    const tunnelled = newUuid('tunnelrec');
    cluster.api.addContainer(tunnelled, 'Running', [alice], `tunnel ${sidecar.ownUrl}`);
    const gwTunnel = gateway(tunnelled);
    const handle: TunnelHandle = await gwTunnel.openTunnel(sidecar.frontPort);
    for (const uuid of [direct, tunnelled]) {
      for (const token of [alice.token, admin.token]) {
        assert.equal((await getLog(sidecar, uuid, token)).status, 200);
        const s = await ssh(sidecar, uuid, token);
        assert.equal(s.status, 101);
      }
    }
    assert.deepEqual(gwDirect.requests.map((r) => r.via), ['direct', 'direct', 'direct', 'direct']);
    assert.deepEqual(gwTunnel.requests.map((r) => r.via), ['tunnel', 'tunnel', 'tunnel', 'tunnel']);
    for (const req of [...gwDirect.requests, ...gwTunnel.requests]) {
      assert.ok(req.rawHeaders.some((h) => /^X-Arvados-Authorization: [0-9a-f]{64}$/i.test(h)));
      assert.ok(!req.rawHeaders.some((h) => /^(authorization|cookie):/i.test(h)),
        req.rawHeaders.join('\n'));
      leaks.scan('what a gateway received', [req.url, ...req.rawHeaders]);
    }
    // On the wire of the tunnel, the sidecar's side: the 101, yamux frames and TLS records.
    leaks.scan('the bytes the sidecar sent on a tunnel', [Buffer.concat(handle.received)
      .toString('latin1')]);
    assert.ok(Buffer.concat(handle.received).length > 1000);
  });

  test('the root token is used only where the protocol says', async () => {
    const keepWeb = createHttpServer((req: IncomingMessage, res) => {
      keepWebSaw.push(String(req.headers.authorization));
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      res.end('saved log\n');
    });
    const keepWebSaw: string[] = [];
    await new Promise<void>((r) => keepWeb.listen(0, '127.0.0.1', r));
    closers.push(() => keepWeb.close());
    cluster.writeConfig({
      webdavInternalUrls: [`http://127.0.0.1:${(keepWeb.address() as { port: number }).port}/`],
    });
    const sidecar = await cluster.startSidecar();
    await waitFor(() => sidecar.ctx.config.current?.webdavInternalUrls.length === 1);
    try {
      const done = newUuid('finished');
      cluster.api.addContainer(done, 'Complete', [alice]);
      cluster.api.requests.get(crOf(done))!.log_uuid = 'zzzzz-4zz18-savedlogs000001';
      const before = cluster.api.calls.length;
      assert.equal((await getLog(sidecar, done)).body, 'saved log\n');
      await request(`${urlOf(sidecar)}/arvados/v1/collections`,
        { headers: { authorization: `Bearer ${alice.token}` } }).then((r) => r.body.dump());
      assert.deepEqual(keepWebSaw, [`Bearer ${cluster.rootToken}`]);
      // Every API call made with the root token, in this whole file, is one of the protocol's.
      const rootCalls = cluster.api.calls.filter((c) => c.token === cluster.rootToken);
      for (const call of rootCalls) {
        assert.ok(
          (call.method === 'GET' && call.path === '/arvados/v1/container_requests') ||
          (call.method === 'PUT' && /^\/arvados\/v1\/containers\/[a-z0-9-]+$/.test(call.path)) ||
          (call.method === 'GET' && /^\/arvados\/v1\/containers\/[a-z0-9-]+$/.test(call.path)),
          `${call.method} ${call.path} with the root token`);
      }
      // A passthrough request carries the caller's own token and nothing else.
      const passthrough = cluster.api.calls.slice(before).filter((c) =>
        c.path === '/arvados/v1/collections');
      assert.deepEqual(passthrough.map((c) => c.token), [alice.token]);
    } finally {
      cluster.writeConfig({});
    }
  });

  test('no secret in any answer, log line, metric or debug view', async () => {
    const bodies = leaks.scan('answer bodies', seenBodies);
    leaks.scan('log lines', cluster.logLines);
    for (const s of cluster.sidecars) await leaks.scanSidecar(s.adminPort);
    assert.ok(bodies > 30 && cluster.logLines.length > 30 && leaks.size > 8);
  });
});
