// The main job end to end on real peers: the Go test crunch-run (hashicorp/yamux,
// x/crypto/ssh) opens a tunnel to the sidecar, and OpenSSH's client runs a command in the
// "container" through it; then every refusal of the tunnel and SSH endpoints.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { execFileSync } from 'node:child_process';
import { LocalCluster, urlOf } from '../src/demo/cluster.ts';
import { runSsh } from '../src/demo/run.ts';
import type { Sidecar } from '../src/sidecar.ts';
import { containerKey } from '../src/gateway/hmac.ts';
import { startCrunchRun, type CrunchRun } from './lib/crunch-run.ts';
import { rawUpgrade } from './lib/upgrade.ts';
import { buildGo } from '../scripts/build-go.ts';
import { waitFor } from '../test/lib/wait.ts';

const TUNNELLED = 'zzzzz-dz642-tunnelled000001';
const DIRECT = 'zzzzz-dz642-direct000000001';

describe('ssh through the sidecar with real peers', () => {
  const cluster = new LocalCluster();
  let sidecar: Sidecar;
  let port: number;
  const crunchRuns: CrunchRun[] = [];
  let alice: ReturnType<LocalCluster['api']['addUser']>;
  let bob: ReturnType<LocalCluster['api']['addUser']>;
  let admin: ReturnType<LocalCluster['api']['addUser']>;

  const ssh = (uuid: string, token: string, cmd: string) => runSsh(urlOf(sidecar), uuid, token,
      cmd);
  const upgrade = (uuid: string, token: string | undefined, form: Record<string, string> = {}) =>
    rawUpgrade(port, `/arvados/v1/connect/${uuid}/ssh`, { upgrade: 'ssh', token, form });

  before(async () => {
    await buildGo(['crunch-run']);
    await cluster.start();
    sidecar = await cluster.startSidecar({ allowLoopbackGateways: true });
    port = sidecar.frontPort;
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    bob = cluster.api.addUser('zzzzz-tpzed-bob000000000001');
    admin = cluster.api.addUser('zzzzz-tpzed-admin0000000001', true);
    const work = join(cluster.dir, 'work');
    mkdirSync(work, { recursive: true });

    const tunnelled = cluster.api.addContainer(TUNNELLED, 'Running', [alice]);
    const t = await startCrunchRun({
      uuid: TUNNELLED, systemRootToken: cluster.rootToken, tunnelUrl: urlOf(sidecar),
      apiUrl: urlOf(sidecar), apiToken: tunnelled.runtime_token, workdir: work,
      listen: '127.0.0.1:0',
    });
    crunchRuns.push(t);
    await t.waitFor('tunnel_up');
    await t.waitFor('gateway_address_set');
    assert.match(tunnelled.gateway_address, /^tunnel http:\/\/127\.0\.0\.1:\d+\/$/);

    const direct = cluster.api.addContainer(DIRECT, 'Running', [alice]);
    const d = await startCrunchRun({ uuid: DIRECT, systemRootToken: cluster.rootToken,
      workdir: work });
    crunchRuns.push(d);
    direct.gateway_address = d.gatewayAddress;
  });

  after(async () => {
    await Promise.all(crunchRuns.map((c) => c.stop()));
    await cluster.stop();
  });

  test('OpenSSH runs a command through the tunnel', async () => {
    const r = await ssh(TUNNELLED, alice.token, 'echo hello');
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'hello\n');
    assert.equal(r.code, 0);
    assert.equal(cluster.api.containers.get(TUNNELLED)!.interactive_session_started, true);
    const tunnels = sidecar.registry.describe() as { container_uuid: string }[];
    assert.deepEqual(tunnels.map((t) => t.container_uuid), [TUNNELLED]);
  });

  test('OpenSSH runs a command on a directly reachable gateway', async () => {
    const r = await ssh(DIRECT, alice.token, 'echo hello; exit 3');
    assert.equal(r.stdout, 'hello\n');
    assert.equal(r.code, 3);
  });

  test('an admin may open a shell in anyone\'s container', async () => {
    const r = await ssh(TUNNELLED, admin.token, 'echo admin');
    assert.equal(r.stdout, 'admin\n');
  });

  test('a front proxy\'s Connection: upgrade works too, and the 101 head is exact', async () => {
    const a = await rawUpgrade(port, `/arvados/v1/containers/${TUNNELLED}/ssh`, {
      upgrade: 'ssh', token: alice.token, form: { no_forward: 'false' },
      extraHeaders: { Connection: 'upgrade' },
    });
    assert.equal(a.raw.toString(),
      'HTTP/1.1 101 Switching Protocols\r\nUpgrade: ssh\r\nConnection: upgrade\r\n\r\n');
    // The gateway's bytes are held until the client speaks, so none came with the head.
    assert.equal(a.rest.length, 0);
    a.socket.write('SSH-2.0-test\r\n');
    const banner = await new Promise<Buffer>((resolve) => {
      a.socket.once('data', resolve);
      a.socket.resume();
    });
    assert.match(banner.toString(), /^SSH-2\.0-/);
    a.socket.destroy();
  });

  test('X-Request-Id is passed to the API, and generated when absent', async () => {
    const a = await rawUpgrade(port, `/arvados/v1/connect/${TUNNELLED}/ssh`, {
      upgrade: 'ssh', token: alice.token, extraHeaders: { 'X-Request-Id': 'req-test0000000000001' },
    });
    a.socket.destroy();
    assert.ok(cluster.api.calls.some((c) => c.requestId === 'req-test0000000000001'));
    assert.ok(cluster.api.calls.every((c) => c.token !== cluster.rootToken ||
      c.path.startsWith('/arvados/v1/container_requests') ||
      c.path.startsWith('/arvados/v1/containers/')));
  });

  describe('refusals', () => {
    const expectError = async (p: Promise<{ status: number; json?: { errors?: string[] } }>,
      status: number, message: string | RegExp) => {
      const a = await p;
      assert.equal(a.status, status, JSON.stringify(a.json));
      const got = a.json?.errors?.[0] ?? '';
      if (typeof message === 'string') assert.equal(got, message);
      else assert.match(got, message);
    };

    test('tunnel: wrong auth_secret is 401 authentication error', async () => {
      await expectError(rawUpgrade(port, `/arvados/v1/connect/${TUNNELLED}/gateway_tunnel`, {
        upgrade: 'tunnel', token: alice.token, form: { auth_secret: 'ab'.repeat(32) },
      }), 401, 'authentication error');
      // A secret for another container is just as wrong.
      await expectError(rawUpgrade(port, `/arvados/v1/connect/${TUNNELLED}/gateway_tunnel`, {
        upgrade: 'tunnel', form: { auth_secret: containerKey(cluster.rootToken, DIRECT) },
      }), 401, 'authentication error');
    });

    test('no token, a bad token: 401', async () => {
      await expectError(upgrade(TUNNELLED, undefined), 401, /Not logged in/);
      await expectError(upgrade(TUNNELLED, 'v2/zzzzz-gj3su-000000000000000/nope'), 401,
        /Not logged in/);
    });

    test('a container the user cannot read: the API\'s 404', async () => {
      const ctr = 'zzzzz-dz642-notreadable0001';
      cluster.api.addContainer(ctr, 'Running', [bob]);
      await expectError(upgrade(ctr, alice.token), 404, 'Path not found');
    });

    test('requests by other users: 403', async () => {
      const ctr = 'zzzzz-dz642-shared000000001';
      cluster.api.addContainer(ctr, 'Running', [alice, bob]);
      await expectError(upgrade(ctr, alice.token), 403,
        'permission denied: container is associated with requests submitted by other users');
    });

    test('an incomplete list of requests: 500', async () => {
      const ctr = 'zzzzz-dz642-incomplete00001';
      cluster.api.addContainer(ctr, 'Running', [alice]);
      cluster.api.undercount = 1;
      try {
        await expectError(upgrade(ctr, alice.token), 500,
          'incomplete response while checking permission');
      } finally {
        cluster.api.undercount = 0;
      }
    });

    test('states: Queued and Locked 503, Complete and Cancelled 410', async () => {
      for (const [state, status, message] of [
        ['Queued', 503, 'container is not running yet (state is "Queued")'],
        ['Locked', 503, 'container is not running yet (state is "Locked")'],
        ['Complete', 410, 'container has ended (state is "Complete")'],
        ['Cancelled', 410, 'container has ended (state is "Cancelled")'],
      ] as const) {
        const ctr = `zzzzz-dz642-state${state.toLowerCase().padEnd(10, '0')}`;
        cluster.api.addContainer(ctr, state, [alice]);
        await expectError(upgrade(ctr, alice.token), status, message);
      }
    });

    test('no gateway, tunnel down, a non-peer tunnel endpoint: 503', async () => {
      const none = 'zzzzz-dz642-nogateway000001';
      cluster.api.addContainer(none, 'Running', [alice], '');
      await expectError(upgrade(none, alice.token), 503,
        'container is running but gateway is not available');
      const down = 'zzzzz-dz642-tunneldown00001';
      cluster.api.addContainer(down, 'Running', [alice], `tunnel ${sidecar.ownUrl}`);
      await expectError(upgrade(down, alice.token), 503, 'container is running but tunnel is down');
      const evil = 'zzzzz-dz642-notapeer0000001';
      cluster.api.addContainer(evil, 'Running', [alice], 'tunnel http://127.0.0.1:9/');
      await expectError(upgrade(evil, alice.token), 503,
        'container gateway is running but tunnel endpoint is invalid');
      assert.ok(cluster.logLines.some((l) => l.includes('not a known peer')));
    });

    test('shell access switched off in config', async () => {
      cluster.writeConfig({ shellAccess: { User: false, Admin: true } });
      await waitFor(() => sidecar.ctx.config.current?.shellAccess.user === false);
      try {
        await expectError(upgrade(TUNNELLED, alice.token), 503,
            'shell access is disabled in config');
        const ok = await upgrade(TUNNELLED, admin.token);
        assert.equal(ok.status, 101);
        ok.socket.destroy();
        cluster.writeConfig({ shellAccess: { User: false, Admin: false } });
        await waitFor(() => sidecar.ctx.config.current?.shellAccess.admin === false);
        await expectError(upgrade(TUNNELLED, admin.token), 503,
            'shell access is disabled in config');
      } finally {
        cluster.writeConfig({});
        await waitFor(() => sidecar.ctx.config.current?.shellAccess.user === true);
      }
    });

    test('control characters in forwarded form values: 400', async () => {
      await expectError(upgrade(TUNNELLED, alice.token, { login_username: 'root\r\nX-Evil: 1' }),
        400, 'invalid login_username: control characters are not allowed');
    });

    test('an attacker in the middle is detected (wrong respondAuth, or a relay)', async () =>
        {
      const pem = selfSigned(cluster.dir);
      // A gateway impostor: it answers the upgrade but cannot make the proof.
      const impostor = createTlsServer(pem, (s) => {
        s.once('data', () => s.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: ssh\r\n' +
          'Connection: upgrade\r\nX-Arvados-Authorization-Response: ' + 'f'.repeat(64) +
          '\r\n\r\n'));
        s.on('error', () => {});
      });
      await new Promise<void>((r) => impostor.listen(0, '127.0.0.1', r));
      const ctr = 'zzzzz-dz642-impostor0000001';
      cluster.api.addContainer(ctr, 'Running', [alice],
        `127.0.0.1:${(impostor.address() as { port: number }).port}`);
      await expectError(upgrade(ctr, alice.token), 502,
        'bad X-Arvados-Authorization-Response header');

      // A relay with its own certificate in front of the real gateway: the proof the sidecar
      // makes is bound to the relay's certificate, so the real gateway refuses it.
      const real = crunchRuns[1].gatewayAddress.split(':');
      const { connect } = await import('node:tls');
      const relay = createTlsServer(pem, (s) => {
        const up = connect({ host: real[0], port: Number(real[1]), rejectUnauthorized: false });
        s.pipe(up).pipe(s);
        s.on('error', () => up.destroy());
        up.on('error', () => s.destroy());
      });
      await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
      const ctr2 = 'zzzzz-dz642-relayed00000001';
      cluster.api.addContainer(ctr2, 'Running', [alice],
        `127.0.0.1:${(relay.address() as { port: number }).port}`);
      // The relay forwards to crunch-run for DIRECT, which also refuses the wrong UUID.
      await expectError(upgrade(ctr2, alice.token), 502, /^unexpected status (401|502) /);
      impostor.close();
      relay.close();
    });

    test('a marking failure after the upgrade is a 500', async () => {
      const ctr = cluster.api.containers.get(TUNNELLED)!;
      ctr.interactive_session_started = false;
      cluster.api.failures.set('PUT containers', 500);
      await expectError(upgrade(TUNNELLED, alice.token), 500,
        /^could not record interactive session start/);
    });

    test('tokens never reach the logs', () => {
      const all = cluster.logLines.join('\n');
      for (const secret of [alice.token, bob.token, admin.token, cluster.rootToken]) {
        assert.ok(!all.includes(secret));
      }
    });
  });
});

function selfSigned(dir: string): { key: Buffer; cert: Buffer } {
  const key = join(dir, 'mitm.key');
  const cert = join(dir, 'mitm.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
    '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=mitm'],
        { stdio: 'ignore' });
  return { key: readFileSync(key), cert: readFileSync(cert) };
}
