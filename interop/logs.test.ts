// Container logs through the sidecar with real clients: the `arvados-client logs` request
// pattern, cadaver and rclone; live logs from the Go test crunch-run (through a tunnel and
// directly) and saved logs from the Go test keep-web; then every status of the log route.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { request } from 'undici';
import { LocalCluster, urlOf } from '../src/demo/cluster.ts';
import type { Sidecar } from '../src/sidecar.ts';
import { startCrunchRun, type CrunchRun } from './lib/crunch-run.ts';
import { startKeepWeb, type KeepWeb } from './lib/keep-web.ts';
import { buildGo } from '../scripts/build-go.ts';
import { waitFor } from '../test/lib/wait.ts';

const run = promisify(execFile);
const LIVE_T = 'zzzzz-dz642-livetunnel00001';
const LIVE_D = 'zzzzz-dz642-livedirect00001';
const DONE = 'zzzzz-dz642-finished0000001';
const QUEUED = 'zzzzz-dz642-queued000000001';
const SAVED = 'zzzzz-4zz18-savedlogs000001';
const STDERR = 'this line is thirty-eight bytes long\n\n';

describe('container logs through the sidecar', () => {
  const cluster = new LocalCluster();
  let sidecar: Sidecar;
  let base: string;
  let keepWeb: KeepWeb;
  const crunchRuns: CrunchRun[] = [];
  let alice: ReturnType<LocalCluster['api']['addUser']>;
  const liveDirs: Record<string, string> = {};

  const crOf = (ctr: string) =>
    [...cluster.api.requests.values()].find((cr) => cr.container_uuid === ctr)!.uuid;
  const logUrl = (ctr: string, path = '') =>
    `${base}/arvados/v1/container_requests/${crOf(ctr)}/log${path}`;
  const get = (url: string, headers: Record<string, string> = {}, method = 'GET') =>
    request(url, { method: method as 'GET', headers: { authorization: `Bearer ${alice.token}`,
        ...headers } });

  before(async () => {
    await buildGo(['crunch-run', 'keep-web']);
    const keepRoot = join(cluster.dir, 'keep');
    mkdirSync(join(keepRoot, SAVED, `log for container ${DONE}`), { recursive: true });
    writeFileSync(join(keepRoot, SAVED, 'stderr.txt'), 'saved stderr\n');
    writeFileSync(join(keepRoot, SAVED, `log for container ${DONE}`, 'stderr.txt'), STDERR);
    await cluster.start();
    keepWeb = await startKeepWeb({ root: keepRoot, token: cluster.rootToken });
    cluster.writeConfig({ webdavInternalUrls: [keepWeb.url + '/'] });
    sidecar = await cluster.startSidecar({ allowLoopbackGateways: true });
    base = urlOf(sidecar);
    await waitFor(() => (sidecar.ctx.config.current?.webdavInternalUrls.length ?? 0) > 0);
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');

    for (const [uuid, tunnel] of [[LIVE_T, true], [LIVE_D, false]] as const) {
      const ctr = cluster.api.addContainer(uuid, 'Running', [alice]);
      const dir = join(cluster.dir, uuid);
      mkdirSync(join(dir, 'sub'), { recursive: true });
      writeFileSync(join(dir, 'stderr.txt'), STDERR);
      writeFileSync(join(dir, 'sub', 'big.bin'), Buffer.alloc(3 << 20, uuid));
      liveDirs[uuid] = dir;
      const cr = await startCrunchRun({
        uuid, systemRootToken: cluster.rootToken, logDir: dir,
        ...(tunnel ? { tunnelUrl: base, apiUrl: base, apiToken: ctr.runtime_token } : {}),
      });
      crunchRuns.push(cr);
      if (tunnel) await cr.waitFor('gateway_address_set');
      else ctr.gateway_address = cr.gatewayAddress;
    }
    cluster.api.addContainer(DONE, 'Complete', [alice]);
    cluster.api.requests.get(crOf(DONE))!.log_uuid = SAVED;
    cluster.api.addContainer(QUEUED, 'Queued', [alice]);
  });

  after(async () => {
    await Promise.all(crunchRuns.map((c) => c.stop()));
    await keepWeb?.stop();
    await cluster.stop();
  });

  for (const ctr of [LIVE_T, LIVE_D]) {
    const how = ctr === LIVE_T ? 'through the tunnel' : 'directly';
    test(`arvados-client logs pattern, live ${how}`, async () => {
      const opts = await get(logUrl(ctr, '/'), {}, 'OPTIONS');
      assert.ok(opts.headers.dav, 'OPTIONS .../log/ carries Dav');
      await opts.body.dump();

      const size = await get(logUrl(ctr, `/${ctr}/stderr.txt`), { range: 'bytes=-0' });
      assert.equal(size.statusCode, 206);
      assert.equal(size.headers['content-range'], 'bytes 38-37/38');
      assert.equal(size.headers['x-arvados-authorization-response'], undefined);
      await size.body.dump();

      appendFileSync(join(liveDirs[ctr], 'stderr.txt'), 'appended\n');
      const more = await get(logUrl(ctr, `/${ctr}/stderr.txt`), { range: 'bytes=38-' });
      assert.equal(more.statusCode, 206);
      assert.equal(await more.body.text(), 'appended\n');

      const missing = await get(logUrl(ctr, `/${ctr}/stdout.txt`), { range: 'bytes=-0' });
      assert.equal(missing.statusCode, 404);
      await missing.body.dump();
    });

    test(`Workbench's PROPFIND without a trailing slash, live ${how}`, async () => {
      const path = `/arvados/v1/container_requests/${crOf(ctr)}/log/${ctr}`;
      const res = await get(base + path, { depth: '1' }, 'PROPFIND');
      assert.equal(res.statusCode, 207);
      const hrefs = [...(await res.body.text()).matchAll(/<D:href>([^<]*)<\/D:href>/gi)]
        .map((m) => decodeURIComponent(m[1]));
      assert.ok(hrefs.includes(`${path}/stderr.txt`), hrefs.join(' '));
      assert.ok(hrefs.includes(`${path}/sub/`), hrefs.join(' '));
    });

    test(`cadaver lists and downloads, live ${how}`, async () => {
      const out = await cadaver(cluster.dir, base, logUrl(ctr, `/${ctr}/`), alice.token,
        ['ls', 'get stderr.txt cadaver-' + ctr]);
      assert.match(out, /stderr\.txt/);
      assert.equal(readFileSync(join(cluster.dir, 'cadaver-' + ctr), 'utf8'),
        readFileSync(join(liveDirs[ctr], 'stderr.txt'), 'utf8'));
    });

    test(`rclone copies the log directory byte for byte, live ${how}`, async () => {
      const dest = join(cluster.dir, 'rclone-' + ctr);
      await rcloneCopy(logUrl(ctr, `/${ctr}`), alice.token, dest);
      assert.deepEqual(readdirSync(dest).sort(), ['stderr.txt', 'sub']);
      assert.ok(readFileSync(join(dest, 'sub', 'big.bin')).equals(
        readFileSync(join(liveDirs[ctr], 'sub', 'big.bin'))));
    });
  }

  test('saved logs from keep-web: pattern, cadaver and rclone', async () => {
    const size = await get(logUrl(DONE, `/${DONE}/stderr.txt`), { range: 'bytes=-0' });
    assert.equal(size.statusCode, 206);
    assert.equal(size.headers['content-range'], 'bytes 38-37/38');
    await size.body.dump();
    const root = await get(logUrl(DONE, '/stderr.txt'));
    assert.equal(await root.body.text(), 'saved stderr\n');
    // keep-web sends its own CORS header; the sidecar must not add a second one.
    assert.equal(root.headers['access-control-allow-origin'], '*');
    const out = await cadaver(cluster.dir, base, logUrl(DONE, '/'), alice.token,
      ['ls', 'get stderr.txt cadaver-saved']);
    assert.match(out, /stderr\.txt/);
    assert.equal(readFileSync(join(cluster.dir, 'cadaver-saved'), 'utf8'), 'saved stderr\n');
    const dest = join(cluster.dir, 'rclone-saved');
    await rcloneCopy(logUrl(DONE, `/${DONE}`), alice.token, dest);
    assert.equal(readFileSync(join(dest, 'stderr.txt'), 'utf8'), STDERR);
  });

  test('no log collection yet: an empty read-only collection, without a hop', async () => {
    const opts = await get(logUrl(QUEUED, '/'), {}, 'OPTIONS');
    assert.equal(opts.statusCode, 200);
    assert.ok(opts.headers.dav);
    await opts.body.dump();
    const list = await get(logUrl(QUEUED), { depth: '1' }, 'PROPFIND');
    assert.equal(list.statusCode, 207);
    assert.match(await list.body.text(), /<D:collection/);
    const below = await get(logUrl(QUEUED, `/${QUEUED}/stderr.txt`));
    assert.equal(below.statusCode, 404);
    await below.body.dump();
    const out = await cadaver(cluster.dir, base, logUrl(QUEUED, '/'), alice.token, ['ls']);
    assert.doesNotMatch(out, /stderr/);
  });

  describe('statuses', () => {
    test('CORS preflight needs no token', async () => {
      const res = await request(logUrl(LIVE_T, '/'), { method: 'OPTIONS',
        headers: { 'access-control-request-method': 'GET', origin: 'https://wb.example' } });
      assert.equal(res.statusCode, 200);
      assert.equal(res.headers['access-control-allow-origin'], '*');
      assert.match(String(res.headers['access-control-allow-methods']), /PROPFIND/);
      assert.equal(res.headers['access-control-max-age'], '86400');
      await res.body.dump();
    });

    test('write methods and unknown methods: 405', async () => {
      for (const method of ['PUT', 'DELETE', 'MKCOL', 'PATCH']) {
        const res = await get(logUrl(LIVE_T, `/${LIVE_T}/stderr.txt`), {}, method);
        assert.equal(res.statusCode, 405, method);
        assert.ok((await res.body.json() as { errors: string[] }).errors[0]);
      }
    });

    test('no token or a bad one: 401 with a Basic challenge; Basic password works', async () => {
      for (const headers of [{}, { authorization: 'Bearer nope' }]) {
        const res = await request(logUrl(LIVE_T, '/'), { headers });
        assert.equal(res.statusCode, 401);
        assert.equal(res.headers['www-authenticate'], 'Basic realm="collections"');
        await res.body.dump();
      }
      const basic = Buffer.from(`anyone:${alice.token}`).toString('base64');
      const ok = await request(logUrl(LIVE_T, `/${LIVE_T}/stderr.txt`),
        { headers: { authorization: `Basic ${basic}` } });
      assert.equal(ok.statusCode, 200);
      await ok.body.dump();
    });

    test('a container request the user cannot read: 404', async () => {
      const unknown = 'zzzzz-xvhdp-000000000000000';
      const res = await get(`${base}/arvados/v1/container_requests/${unknown}/log/`);
      assert.equal(res.statusCode, 404);
      await res.body.dump();
    });

    test('bad paths: 400 or 404 before any API call', async () => {
      const before = cluster.api.calls.length;
      const cr = crOf(LIVE_T);
      for (const [path, status] of [
        [`/arvados/v1/container_requests/${cr}/log/../../x`, 400],
        [`/arvados/v1/container_requests/${cr}/log/%2e%2e/x`, 400],
        [`/arvados/v1/container_requests/${cr}/log/a%2fb`, 400],
        ['/arvados/v1/container_requests/not-a-uuid/log/', 404],
      ] as const) {
        const res = await rawGet(sidecar.frontPort, path, alice.token);
        assert.equal(res.status, status, path);
      }
      assert.equal(cluster.api.calls.length, before);
    });

    test('gateway unreachable: 503 while running, keep-web once it finished meanwhile', async () =>
        {
      const gone = 'zzzzz-dz642-gatewaygone0001';
      cluster.api.addContainer(gone, 'Running', [alice], '127.0.0.1:9');
      const res = await get(logUrl(gone, `/${gone}/stderr.txt`));
      assert.equal(res.statusCode, 503);
      assert.match((await res.body.json() as { errors: string[] }).errors[0], /^proxy error: /);

      const raced = 'zzzzz-dz642-racedfinish0001';
      cluster.api.addContainer(raced, 'Running', [alice], '127.0.0.1:9');
      cluster.api.requests.get(crOf(raced))!.log_uuid = SAVED;
      // crunch-run "exits" right after the sidecar's first look at the container.
      cluster.api.afterAnswer.push((call) => {
        if (call.path.endsWith(raced)) cluster.api.containers.get(raced)!.state = 'Complete';
      });
      const fallback = await get(logUrl(raced, '/stderr.txt'));
      assert.equal(fallback.statusCode, 200);
      assert.equal(await fallback.body.text(), 'saved stderr\n');
    });

    test('no keep-web configured: 500', async () => {
      cluster.writeConfig({ webdavInternalUrls: [] });
      await waitFor(() => sidecar.ctx.config.current?.webdavInternalUrls.length === 0);
      try {
        const res = await get(logUrl(DONE, '/stderr.txt'));
        assert.equal(res.statusCode, 500);
        assert.deepEqual(await res.body.json(),
          { errors: ['no internalURLs configured for WebDAV service'] });
      } finally {
        cluster.writeConfig({ webdavInternalUrls: [keepWeb.url + '/'] });
        await waitFor(() => sidecar.ctx.config.current?.webdavInternalUrls.length === 1);
      }
    });

    test('a gateway with the wrong respondAuth: 502 and nothing passed on', async () => {
      const { createServer } = await import('node:https');
      const { execFileSync } = await import('node:child_process');
      const key = join(cluster.dir, 'bad.key');
      const cert = join(cluster.dir, 'bad.crt');
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt',
        'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
        '-subj', '/CN=bad'], { stdio: 'ignore' });
      const bad = createServer({ key: readFileSync(key), cert: readFileSync(cert) }, (_q, r) => {
        r.writeHead(200, { 'X-Arvados-Authorization-Response': '0'.repeat(64) });
        r.end('secret-looking data');
      });
      await new Promise<void>((r) => bad.listen(0, '127.0.0.1', r));
      const ctr = 'zzzzz-dz642-badgateway00001';
      cluster.api.addContainer(ctr, 'Running', [alice],
        `127.0.0.1:${(bad.address() as { port: number }).port}`);
      const res = await get(logUrl(ctr, `/${ctr}/stderr.txt`));
      assert.equal(res.statusCode, 502);
      assert.deepEqual(await res.body.json(),
        { errors: ['bad X-Arvados-Authorization-Response header'] });
      bad.close();
    });
  });
});

async function cadaver(dir: string, base: string, url: string, token: string, cmds: string[]) {
  // cadaver reads credentials from ~/.netrc: the token is the Basic password.
  const home = join(dir, 'home');
  mkdirSync(home, { recursive: true });
  const host = new URL(base).hostname;
  writeFileSync(join(home, '.netrc'), `machine ${host} login arvados password ${token}\n`,
    { mode: 0o600 });
  const script = join(dir, 'cadaver.cmds');
  writeFileSync(script, [...cmds, 'quit', ''].join('\n'));
  const { stdout, stderr } = await run('sh', ['-c',
      `cd "${dir}" && cadaver -t "${url}" < "${script}"`],
    { env: { ...process.env, HOME: home }, timeout: 30_000 });
  assert.doesNotMatch(stdout + stderr, /failed|Could not/i, stdout + stderr);
  return stdout;
}

async function rcloneCopy(url: string, token: string, dest: string): Promise<void> {
  const { stdout: obscured } = await run('rclone', ['obscure', token]);
  await run('rclone', ['copy', ':webdav:', dest, '--webdav-url', url, '--webdav-user', 'arvados',
    '--webdav-pass', obscured.trim(), '--config', '/dev/null', '--retries', '1',
    '--low-level-retries', '1'], { timeout: 60_000 });
}

async function rawGet(port: number, path: string, token: string): Promise<{ status: number }> {
  const { connect } = await import('node:net');
  const socket = connect(port, '127.0.0.1');
  socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
    'Connection: close\r\n\r\n');
  let text = '';
  for await (const chunk of socket) text += chunk;
  return { status: Number(text.split(' ')[1]) };
}
