// Self-test of the Go crunch-run stand-in, without the sidecar: the gateway's auth handshake,
// SSH upgrade, logs, the exact bytes of the tunnel request, and the Go unit tests behind it.
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { buildGo, GOPATH } from '../scripts/build-go.ts';
import {
  authSecretFor,
  gatewayRequestAuth,
  gatewayResponseAuth,
  startCrunchRun,
  type CrunchRun,
} from './lib/crunch-run.ts';

const run = promisify(execFile);
const UUID = 'zzzzz-dz642-0123456789abcde';
const CR_UUID = 'zzzzz-xvhdp-0123456789abcde';
const SECRET = 'a1'.repeat(32);
const LOG_TEXT = 'line one\nline two\nline three\n';
const goEnv = { ...process.env, GO111MODULE: 'off', GOPATH, GOFLAGS: '' };
const repoRoot = path.resolve(import.meta.dirname, '..');

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface Upgraded {
  status: number;
  headers: http.IncomingHttpHeaders;
  socket: net.Socket;
  head: Buffer;
}

interface GatewayRequest {
  method: string;
  path: string;
  headers?: Record<string, string>;
  body?: string;
  /** uuid goes in X-Arvados-Container-Gateway-Uuid (default: the right one). */
  uuid?: string;
  /** secret signs the request auth (default: the right one). */
  secret?: string;
}

/** Connects like the controller does: TLS without CA checks, auth bound to the certificate. */
async function gatewayRequest(address: string, r: GatewayRequest): Promise<
  { answer?: Answer; upgraded?: Upgraded; requestAuth: string }> {
  const [host, port] = splitHostPort(address);
  const socket = tls.connect(
    { host, port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] });
  await once(socket, 'secureConnect');
  const requestAuth = gatewayRequestAuth(r.secret ?? SECRET, socket.getPeerCertificate().raw);
  const req = http.request({
    createConnection: () => socket,
    method: r.method,
    path: r.path,
    headers: {
      Host: 'gateway',
      'X-Arvados-Container-Gateway-Uuid': r.uuid ?? UUID,
      'X-Arvados-Authorization': requestAuth,
      ...(r.body === undefined ? {} : { 'Content-Length': String(Buffer.byteLength(r.body)) }),
      ...r.headers,
    },
  });
  const result = new Promise<{ answer?: Answer; upgraded?: Upgraded }>((resolve, reject) => {
    req.once('error', reject);
    req.once('upgrade', (res, upSocket, head) => {
      resolve({ upgraded: { status: res.statusCode ?? 0, headers: res.headers, socket: upSocket,
        head } });
    });
    req.once('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.once('end', () => {
        socket.destroy();
        resolve({ answer: { status: res.statusCode ?? 0, headers: res.headers,
          body: Buffer.concat(chunks).toString() } });
      });
    });
  });
  req.end(r.body);
  return { ...(await result), requestAuth };
}

async function answerOf(address: string, r: GatewayRequest): Promise<Answer> {
  const { answer } = await gatewayRequest(address, r);
  assert.ok(answer, `${r.method} ${r.path} was answered with an upgrade`);
  return answer;
}

function splitHostPort(address: string): [string, number] {
  const i = address.lastIndexOf(':');
  return [address.slice(0, i).replace(/^\[|\]$/g, ''), Number(address.slice(i + 1))];
}

/** Reads from socket until text appears, starting with bytes already received. */
async function readUntil(socket: net.Socket, head: Buffer, text: string): Promise<string> {
  let got = head.toString('latin1');
  while (!got.includes(text)) {
    const [chunk] = (await Promise.race([
      once(socket, 'data'),
      once(socket, 'end').then(() => { throw new Error(`connection ended before ${text}`); }),
    ])) as [Buffer];
    got += chunk.toString('latin1');
  }
  return got;
}

describe('crunch-run stand-in', { timeout: 280_000 }, () => {
  let dir = '';
  let crunchRun: CrunchRun | undefined;
  let api: http.Server | undefined;
  const puts: { auth: string | undefined; body: string; url: string | undefined }[] = [];

  before(async () => {
    // npm test builds first; building here too keeps this file runnable on its own and never
    // tests a binary older than its sources.
    await buildGo(['crunch-run']);
    dir = await mkdtemp(path.join(tmpdir(), 'crunch-run-test-'));
    await writeFile(path.join(dir, 'stderr.txt'), LOG_TEXT);
    api = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => { body += c.toString(); });
      req.on('end', () => {
        puts.push({ auth: req.headers.authorization, body, url: `${req.method} ${req.url}` });
        res.writeHead(200, { 'Content-Type': 'application/json' }).end('{}');
      });
    });
    api.listen(0, '127.0.0.1');
    await once(api, 'listening');
    const { port } = api.address() as net.AddressInfo;
    crunchRun = await startCrunchRun({
      uuid: UUID,
      authSecret: SECRET,
      logDir: dir,
      workdir: dir,
      apiUrl: `http://127.0.0.1:${port}`,
      apiToken: 'api-token-1',
    });
  });

  after(async () => {
    await crunchRun?.stop();
    api?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('reports its listener and PUTs it as gateway_address in direct mode', async () => {
    assert.ok(crunchRun);
    assert.match(crunchRun.gatewayAddress, /^127\.0\.0\.1:\d+$/);
    assert.deepEqual(crunchRun.events[0],
      { event: 'ready', gateway_address: crunchRun.gatewayAddress });
    const set = await crunchRun.waitFor('gateway_address_set');
    assert.equal(set.gateway_address, crunchRun.gatewayAddress);
    assert.deepEqual(puts, [{
      auth: 'Bearer api-token-1',
      url: `PUT /arvados/v1/containers/${UUID}`,
      body: JSON.stringify({ container: { gateway_address: crunchRun.gatewayAddress } }),
    }]);
  });

  it('upgrades POST /ssh to SSH for a caller that proves the secret', async () => {
    assert.ok(crunchRun);
    const { upgraded, answer, requestAuth } = await gatewayRequest(crunchRun.gatewayAddress, {
      method: 'POST',
      path: '/ssh',
      headers: {
        Upgrade: 'ssh',
        Connection: 'upgrade',
        'Content-Type': 'application/x-www-form-urlencoded',
      },
      body: 'detach_keys=ctrl-p&login_username=root&no_forward=true',
    });
    assert.equal(answer, undefined, `expected an upgrade, got ${answer?.status} ${answer?.body}`);
    assert.ok(upgraded);
    try {
      assert.equal(upgraded.status, 101);
      assert.equal(upgraded.headers.upgrade, 'ssh');
      assert.equal(upgraded.headers.connection, 'upgrade');
      assert.equal(upgraded.headers['x-arvados-authorization-response'],
        gatewayResponseAuth(SECRET, requestAuth));
      // Behind the 101 the gateway is an SSH server: it opens with its version banner.
      assert.match(await readUntil(upgraded.socket, upgraded.head, '\r\n'), /^SSH-2\.0-/);
    } finally {
      upgraded.socket.destroy();
    }
  });

  it('answers a wrong secret with 401 and another container\'s request with 502', async () => {
    assert.ok(crunchRun);
    const wrongSecret = await answerOf(crunchRun.gatewayAddress,
      { method: 'GET', path: '/log/stderr.txt', secret: 'b2'.repeat(32) });
    assert.equal(wrongSecret.status, 401);
    assert.equal(wrongSecret.headers['x-arvados-authorization-response'], undefined);

    const misdirected = await answerOf(crunchRun.gatewayAddress,
      { method: 'GET', path: '/log/stderr.txt', uuid: 'zzzzz-dz642-999999999999999' });
    assert.equal(misdirected.status, 502);
    assert.equal(misdirected.body, 'misdirected request\n');

    const unknown = await answerOf(crunchRun.gatewayAddress, { method: 'GET', path: '/nothing' });
    assert.equal(unknown.status, 404);
    assert.match(String(unknown.headers['x-arvados-authorization-response']), /^[0-9a-f]{64}$/);
  });

  it('serves the log directory read-only, with Range and the controller\'s prefix', async () => {
    assert.ok(crunchRun);
    const ranged = await answerOf(crunchRun.gatewayAddress,
      { method: 'GET', path: '/log/stderr.txt', headers: { Range: 'bytes=9-16' } });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.body, 'line two');
    assert.equal(ranged.headers['content-range'], `bytes 9-16/${LOG_TEXT.length}`);

    const prefix = `/arvados/v1/container_requests/${CR_UUID}/log/${UUID}`;
    const webdav = { 'X-Webdav-Prefix': prefix, 'X-Webdav-Source': '/log' };
    const whole = await answerOf(crunchRun.gatewayAddress,
      { method: 'GET', path: `${prefix}/stderr.txt`, headers: webdav });
    assert.equal(whole.status, 200);
    assert.equal(whole.body, LOG_TEXT);

    const listing = await answerOf(crunchRun.gatewayAddress,
      { method: 'PROPFIND', path: `${prefix}/`, headers: { ...webdav, Depth: '1' } });
    assert.equal(listing.status, 207);
    assert.ok(listing.body.includes(`<D:href>${prefix}/stderr.txt</D:href>`), listing.body);

    const put = await answerOf(crunchRun.gatewayAddress,
      { method: 'PUT', path: '/log/stderr.txt', body: 'overwritten' });
    assert.equal(put.status, 405);
    assert.equal(await readFile(path.join(dir, 'stderr.txt'), 'utf8'), LOG_TEXT);
  });

  for (const style of ['connect', 'containers'] as const) {
    it(`sends the tunnel request byte for byte (${style} path) and reports a refusal`, async () => {
      const received: Buffer[] = [];
      const server = net.createServer((sock) => {
        sock.on('data', (chunk: Buffer) => {
          received.push(chunk);
          const text = Buffer.concat(received).toString('latin1');
          const end = text.indexOf('\r\n\r\n');
          const length = Number(/\r\nContent-Length: (\d+)\r\n/i.exec(text)?.[1] ?? NaN);
          if (end >= 0 && text.length >= end + 4 + length) {
            sock.end('HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\n' +
              'Content-Length: 16\r\nConnection: close\r\n\r\ninvalid token...');
          }
        });
      });
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      const base = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
      const tunneled = await startCrunchRun({
        uuid: UUID,
        systemRootToken: 'root-token',
        tunnelUrl: `${base}/`,
        tunnelPathStyle: style,
        apiToken: 'api-token-2',
        redialIntervalMs: 60_000,
      });
      try {
        const refused = await tunneled.waitFor('tunnel_refused');
        assert.equal(refused.status, 401);
        assert.equal(refused.body, 'invalid token...');
        const secret = authSecretFor('root-token', UUID);
        const body = `auth_secret=${secret}`;
        assert.equal(body.length, 76);
        assert.equal(Buffer.concat(received).toString('latin1'),
          `POST ${base}/arvados/v1/${style}/${UUID}/gateway_tunnel HTTP/1.1\r\n` +
          'Authorization: Bearer api-token-2\r\n' +
          `Host: ${base.slice('http://'.length)}\r\n` +
          'Upgrade: tunnel\r\n' +
          'Content-Type: application/x-www-form-urlencoded\r\n' +
          'Content-Length: 76\r\n' +
          '\r\n' +
          body);
        assert.equal(tunneled.events.some((e) => e.event === 'tunnel_up'), false);
        // SIGTERM is a clean shutdown, not a crash.
        assert.deepEqual(await tunneled.stop(), { code: 0, signal: null });
      } finally {
        await tunneled.stop();
        server.close();
      }
    });
  }

  it('refuses to start without a secret and says why', async () => {
    await assert.rejects(startCrunchRun({ uuid: UUID }),
      /exited with code 2 before ready[^]*-auth-secret or -system-root-token is required/);
  });

  it('passes its Go unit tests (SSH exec, WebDAV, tunnel via hashicorp yamux)', async () => {
    const { stdout } = await run('go', ['test', '-count=1', './interop/go/crunch-run'],
      { cwd: repoRoot, env: goEnv, timeout: 240_000 });
    assert.match(stdout, /^ok\s/m);
  });
});
