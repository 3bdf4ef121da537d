// What an operator relies on: the metrics after a real session, and a graceful drain of a
// sidecar process on SIGTERM while a tunnel and an SSH session are up.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createServer } from 'node:net';
import { request } from 'undici';
import { LocalCluster, urlOf } from '../src/demo/cluster.ts';
import { runSsh } from '../src/demo/run.ts';
import { NODE_FLAGS } from '../src/node-flags.ts';
import { startCrunchRun, type CrunchRun } from './lib/crunch-run.ts';
import { buildGo } from '../scripts/build-go.ts';
import { rawUpgrade } from './lib/upgrade.ts';
import { containerKey } from '../src/gateway/hmac.ts';
import { waitFor } from '../test/lib/wait.ts';

const MAIN = fileURLToPath(new URL('../src/main.ts', import.meta.url));

describe('metrics after a tunnel, SSH and logs session', () => {
  const cluster = new LocalCluster();
  let crunchRun: CrunchRun;
  after(async () => {
    await crunchRun?.stop();
    await cluster.stop();
  });

  test('the scrape parses and shows the session', async () => {
    await buildGo(['crunch-run']);
    await cluster.start();
    const sidecar = await cluster.startSidecar();
    const alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    const uuid = 'zzzzz-dz642-metricstest0001';
    const ctr = cluster.api.addContainer(uuid, 'Running', [alice]);
    const logDir = join(cluster.dir, 'log');
    mkdirSync(logDir);
    writeFileSync(join(logDir, 'stderr.txt'), 'x'.repeat(1000));
    crunchRun = await startCrunchRun({ uuid, systemRootToken: cluster.rootToken, logDir,
      tunnelUrl: urlOf(sidecar), apiUrl: urlOf(sidecar), apiToken: ctr.runtime_token });
    await crunchRun.waitFor('gateway_address_set');
    assert.equal((await runSsh(urlOf(sidecar), uuid, alice.token, 'echo m')).stdout, 'm\n');
    const cr = [...cluster.api.requests.values()].find((r) => r.container_uuid === uuid)!;
    const logPath = `/arvados/v1/container_requests/${cr.uuid}/log/${uuid}/stderr.txt`;
    const log = await request(`${urlOf(sidecar)}${logPath}`,
      { headers: { authorization: `Bearer ${alice.token}` } });
    assert.equal((await log.body.text()).length, 1000);
    await request(`${urlOf(sidecar)}/arvados/v1/users/current`,
      { headers: { authorization: `Bearer ${alice.token}` } }).then((r) => r.body.dump());
    // A wrong tunnel secret counts as an auth failure.
    const bad = await rawUpgrade(sidecar.frontPort, `/arvados/v1/connect/${uuid}/gateway_tunnel`,
      { upgrade: 'tunnel', form: { auth_secret: '00' } });
    assert.equal(bad.status, 401);

    const text = await (await fetch(`http://127.0.0.1:${sidecar.adminPort}/metrics`)).text();
    const samples = parseExposition(text);
    const value = (name: string, labels: Record<string, string> = {}) => {
      const s = samples.find((x) => x.name === name &&
        Object.entries(labels).every(([k, v]) => x.labels[k] === v));
      return s?.value;
    };
    assert.equal(value('arvados_gateway_tunnels'), 1);
    assert.equal(value('arvados_gateway_tunnel_connects_total'), 1);
    assert.ok(value('arvados_gateway_tunnel_streams_opened_total')! >= 2);
    assert.ok(value('arvados_gateway_tunnel_bytes_total', { direction: 'to_gateway' })! > 0);
    assert.ok(value('arvados_gateway_tunnel_bytes_total', { direction: 'from_gateway' })! > 1000);
    assert.equal(value('arvados_gateway_requests_total', { route: 'ssh', outcome: 'tunnel' }), 1);
    assert.equal(value('arvados_gateway_requests_total', { route: 'logs', outcome: 'tunnel' }), 1);
    assert.equal(value('arvados_gateway_requests_total', { route: 'tunnel', outcome: 'ok' }), 1);
    assert.ok(value('arvados_gateway_requests_total', { route: 'passthrough',
        outcome: 'ok' })! >= 1);
    assert.ok(value('arvados_gateway_session_bytes_total', { direction: 'to_client' })! > 0);
    assert.equal(value('arvados_gateway_request_duration_seconds_count', { route: 'ssh' }), 1);
    assert.ok(value('arvados_gateway_api_call_duration_seconds_count',
      { call: 'users.current', outcome: 'ok' })! >= 1);
    assert.equal(value('arvados_gateway_config_reloads_total', { result: 'ok' }), 1);
    assert.equal(value('arvados_gateway_ready'), 1);
    assert.equal(value('arvados_gateway_tunnel_auth_failures_total'), 1);
    // Busy polling is on by default, and the reads above opened windows.
    assert.ok(value('arvados_gateway_busy_poll_seconds_total')! > 0);
    // No UUID, URL or token is ever a label value.
    for (const s of samples) {
      for (const v of Object.values(s.labels)) {
        assert.doesNotMatch(v, /[a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{15}|:\/\/|v2\//, `${s.name} ${v}`);
      }
    }
    assert.ok(!text.includes(alice.token) && !text.includes(cluster.rootToken));
  });
});

describe('graceful drain of a sidecar process', () => {
  const cluster = new LocalCluster();
  let child: ChildProcess;
  let crunchRun: CrunchRun;
  after(async () => {
    child?.kill('SIGKILL');
    await crunchRun?.stop();
    await cluster.stop();
  });

  test('SIGTERM: unready, GoAway to crunch-run, the session finishes, exit 0', async () => {
    await buildGo(['crunch-run']);
    await cluster.start();
    const [port, adminPort] = [await freePort(), await freePort()];
    // Started as the Dockerfile starts it.
    child = spawn(process.execPath, [...NODE_FLAGS, MAIN], {
      env: { ...process.env, GATEWAY_LISTEN: `127.0.0.1:${port}`,
        GATEWAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`, ARVADOS_CONFIG: cluster.configPath,
        GATEWAY_CONTROLLER_URL: cluster.apiUrl, GATEWAY_DRAIN_GRACE_SECONDS: '20' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let logs = '';
    child.stdout!.on('data', (d) => { logs += d; });
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const front = `http://127.0.0.1:${port}`;
    await waitFor(async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)
      .catch(() => undefined))?.status === 200);

    const alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    const uuid = 'zzzzz-dz642-draintest000001';
    const ctr = cluster.api.addContainer(uuid, 'Running', [alice]);
    crunchRun = await startCrunchRun({ uuid, systemRootToken: cluster.rootToken,
      tunnelUrl: front, apiUrl: front, apiToken: ctr.runtime_token, redialIntervalMs: 60_000 });
    await crunchRun.waitFor('gateway_address_set');

    const session = runSsh(front, uuid, alice.token, 'sleep 2; echo finished');
    await waitFor(async () => logs.includes('"route":"ssh"') ||
      cluster.api.containers.get(uuid)!.interactive_session_started);
    child.kill('SIGTERM');
    await waitFor(async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)
      .catch(() => undefined))?.status === 503);
    await crunchRun.waitFor('goaway');
    const refused = await rawUpgrade(port, `/arvados/v1/connect/${uuid}/gateway_tunnel`, {
      upgrade: 'tunnel', form: { auth_secret: containerKey(cluster.rootToken, uuid) },
    });
    assert.equal(refused.status, 503);
    assert.deepEqual(refused.json, { errors: ['sidecar is shutting down'] });
    const result = await session;
    assert.equal(result.stdout, 'finished\n', result.stderr);
    assert.equal(await exited, 0);
    assert.match(logs, /"msg":"draining"/);
    assert.doesNotMatch(logs, /without the sidecar's flags/);
  });

  test('a second signal exits at once, without waiting for sessions', async () => {
    const [port, adminPort] = [await freePort(), await freePort()];
    // Started without NODE_FLAGS: it runs, and says what it lacks.
    const c = spawn(process.execPath, [MAIN], {
      env: { ...process.env, GATEWAY_LISTEN: `127.0.0.1:${port}`,
        GATEWAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`, ARVADOS_CONFIG: cluster.configPath,
        GATEWAY_CONTROLLER_URL: cluster.apiUrl, GATEWAY_ALLOW_LOOPBACK_GATEWAYS: 'true' },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let logs = '';
    c.stdout!.on('data', (d) => { logs += d; });
    const exited = new Promise<number | null>((r) => c.once('exit', (code) => r(code)));
    await waitFor(async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)
      .catch(() => undefined))?.status === 200);
    const alice = cluster.api.addUser('zzzzz-tpzed-bob000000000001');
    const uuid = 'zzzzz-dz642-secondsignal001';
    const direct = await startCrunchRun({ uuid, systemRootToken: cluster.rootToken });
    try {
      const ctr = cluster.api.addContainer(uuid, 'Running', [alice], direct.gatewayAddress);
      const session = runSsh(`http://127.0.0.1:${port}`, uuid, alice.token, 'sleep 60');
      await waitFor(() => ctr.interactive_session_started);
      c.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(c.exitCode, null, 'the first signal waits for the session');
      c.kill('SIGTERM');
      assert.equal(await exited, 1);
      assert.notEqual((await session).code, 0);
      const line = logs.split('\n').find((l) => l.includes("without the sidecar's flags"));
      assert.ok(line?.includes(JSON.stringify({ missing: NODE_FLAGS }).slice(1, -1)), line);
    } finally {
      await direct.stop();
    }
  });
});

describe('npm start', () => {
  const cluster = new LocalCluster();
  after(() => cluster.stop());

  test('SIGTERM to npm\'s own process reaches the sidecar: it drains and exits', async () => {
    await cluster.start();
    const [port, adminPort] = [await freePort(), await freePort()];
    const npm = spawn('npm', ['start', '--silent'], {
      cwd: fileURLToPath(new URL('..', import.meta.url)),
      env: { ...process.env, GATEWAY_LISTEN: `127.0.0.1:${port}`,
        GATEWAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`, ARVADOS_CONFIG: cluster.configPath,
        GATEWAY_CONTROLLER_URL: cluster.apiUrl },
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    let logs = '';
    npm.stdout!.on('data', (d) => { logs += d; });
    const readyz = () => fetch(`http://127.0.0.1:${adminPort}/readyz`).catch(() => undefined);
    let children: number[] = [];
    try {
      await waitFor(async () => (await readyz())?.status === 200);
      children = childrenOf(npm.pid!);
      const exited = new Promise((r) => npm.once('exit', r));
      npm.kill('SIGTERM');
      await exited;
      await waitFor(async () => (await readyz()) === undefined, 10_000, 'the sidecar to exit');
      assert.match(logs, /"msg":"draining"/);
    } finally {
      for (const pid of [npm.pid!, ...children]) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Already gone, as it should be.
        }
      }
    }
  });
});

// childrenOf lists the processes whose parent is pid.
function childrenOf(pid: number): number[] {
  return execFileSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' })
    .split('\n').map((l) => Number(l.trim())).filter((n) => n > 0);
}

/** parseExposition checks the Prometheus text format strictly enough to catch breakage. */
function parseExposition(text: string) {
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  const typed = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        assert.match(meta[3], /^(counter|gauge|histogram|summary|untyped)$/);
        typed.add(meta[2]);
      }
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not exposition format: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2];
    }
    const value = Number(m[3]);
    assert.ok(!Number.isNaN(value) || m[3] === 'NaN', line);
    const base = m[1].replace(/_(bucket|sum|count)$/, '');
    assert.ok(typed.has(m[1]) || typed.has(base), `sample without TYPE: ${line}`);
    samples.push({ name: m[1], labels, value });
  }
  return samples;
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}
