// Hostile input at the front door: oversized, malformed and slow heads, slow and huge upgrade
// bodies, traversal in log paths, control characters in forwarded values, things that are not
// UUIDs, and a fuzzer over mutated requests. Each must get a 4xx JSON error (or, for fuzz, any
// well-formed answer but an internal error), reach nothing behind the sidecar it should not, and
// never throw out of the sidecar, which runs in this process.
// FRONT_FUZZ_INPUTS sets the number of fuzz inputs (default 300); FRONT_FUZZ_SEED the seed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { LocalCluster } from '../../src/demo/cluster.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { containerKey } from '../../src/gateway/hmac.ts';
import { MAX_HEAD_BYTES } from '../../src/http/head.ts';
import { FakeGateway } from './lib/fake-gateway.ts';
import {
  LeakCheck, assertJsonError, envCount, exchange, report, seenBodies, selfSigned, upgradeRequest,
  type RawAnswer,
} from './lib/wire.ts';
import { prng } from '../lib/prng.ts';

const CTR = 'zzzzz-dz642-hostile00000001';
const HEAD_TIMEOUT_MS = 300;
const FUZZ_INPUTS = envCount('FRONT_FUZZ_INPUTS', 300);
const FUZZ_SEED = envCount('FRONT_FUZZ_SEED', 0x0f00d);

describe('hostile input at the front door', () => {
  const cluster = new LocalCluster();
  const leaks = new LeakCheck();
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown) => {
    uncaught.push(err);
  };
  let sidecar: Sidecar;
  let port: number;
  let gateway: FakeGateway;
  let alice: ReturnType<LocalCluster['api']['addUser']>;
  let cr: string;

  const send = (bytes: string | Buffer) => exchange(port, bytes);
  const ssh = (path: string, form: Record<string, string> = {}, token = alice.token) =>
    upgradeRequest(port, path, 'ssh', form, { Authorization: `Bearer ${token}` });
  const get = (path: string) =>
    `GET ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${alice.token}\r\n` +
    'Connection: close\r\n\r\n';
  const apiCalls = () => cluster.api.calls.length;

  before(async () => {
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onUncaught);
    await cluster.start();
    sidecar = await cluster.startSidecar({ headTimeoutMs: HEAD_TIMEOUT_MS,
      allowLoopbackGateways: true });
    port = sidecar.frontPort;
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    gateway = new FakeGateway({ uuid: CTR, systemRootToken: cluster.rootToken,
      ...selfSigned(cluster.dir, 'gateway') });
    gateway.files.set('stderr.txt', Buffer.from('hostile\n'));
    cluster.api.addContainer(CTR, 'Running', [alice], await gateway.listen('127.0.0.1'));
    cr = [...cluster.api.requests.values()].find((r) => r.container_uuid === CTR)!.uuid;
    for (const [name, secret] of [['SystemRootToken', cluster.rootToken],
      ['alice\'s token', alice.token], ['the auth secret', containerKey(cluster.rootToken, CTR)]]) {
      leaks.add(name, secret);
    }
  });

  after(async () => {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
    await gateway.close();
    await cluster.stop();
  });

  test('a sane request works, so the refusals below mean something', async () => {
    const res = await send(get(`/arvados/v1/container_requests/${cr}/log/${CTR}/stderr.txt`));
    assert.equal(res.status, 200);
    assert.equal(res.body, 'hostile\n');
  });

  test('oversized heads: 431', async () => {
    const big = 'X-Filler: ' + 'a'.repeat(MAX_HEAD_BYTES) + '\r\n';
    // Past the front door's own limit, on an upgrade route and on any other, ended or not.
    assertJsonError(await send(`POST /arvados/v1/connect/${CTR}/ssh HTTP/1.1\r\n${big}` +
      'Upgrade: ssh\r\n\r\n'), 431, 'request head too large');
    assertJsonError(await send(`GET / HTTP/1.1\r\n${big}`), 431, 'request head too large');
    assertJsonError(await send(`GET / HTTP/1.1\r\n${big}\r\n`), 431, 'request head too large');
    // Many small header lines add up the same way.
    const many = Array.from({ length: 8000 }, (_, i) => `X-${i}: y\r\n`).join('');
    assertJsonError(await send(`GET / HTTP/1.1\r\n${many}\r\n`), 431);
    // Under the front door's limit but over Node's, and on a kept-alive connection's 2nd request.
    const mid = 'X-Filler: ' + 'a'.repeat(20_000) + '\r\n';
    assertJsonError(await send(`GET / HTTP/1.1\r\nHost: x\r\n${mid}\r\n`), 431);
    const second = await send('GET /arvados/v1/users/current HTTP/1.1\r\nHost: x\r\n\r\n' +
      `GET / HTTP/1.1\r\nHost: x\r\n${mid}\r\n`);
    assert.ok([401, 431].includes(second.status), second.raw.slice(0, 200));
    assert.match(second.raw, /HTTP\/1\.1 431 /);
  });

  test('malformed heads: 400', async () => {
    const cases: [string, string | RegExp][] = [
      ['GARBAGE\r\n\r\n', /^malformed request/],
      ['GET / HTTP/1.1\nHost: x\n\n', 'malformed head: lines must end with CRLF'],
      ['GET /\r\n\r\n', 'malformed request line'],
      ['GET / HTTP/1.1\r\nNoColonHere\r\n\r\n', 'malformed header line'],
      ['GET / HTTP/1.1\r\n: empty name\r\n\r\n', 'malformed header line'],
      ['GET / HTTP/1.1\r\nBad Name: x\r\n\r\n', 'malformed header name'],
      ['GET / HTTP/1.1\r\nX: a\0b\r\n\r\n', 'malformed header value'],
      ['GET / HTTP/1.1\r\nX: a\rb\r\n\r\n', 'malformed header value'],
      ['POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n' +
        '0\r\n\r\n', 'malformed request'],
      ['GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab',
        'malformed request'],
    ];
    for (const [bytes, message] of cases) {
      assertJsonError(await send(bytes), 400, message);
    }
    // Upgrade bodies are read by the front door itself, so it checks their framing itself.
    const path = `/arvados/v1/connect/${CTR}/ssh`;
    const framing: [Record<string, string>, string][] = [
      [{ 'Transfer-Encoding': 'chunked' }, 'upgrade request body must have a Content-Length'],
      [{ 'Content-Length': '-1' }, 'malformed Content-Length'],
      [{ 'Content-Length': '1e1' }, 'malformed Content-Length'],
      [{ 'Content-Length': '0x10' }, 'malformed Content-Length'],
      [{ 'Content-Length': '+5' }, 'malformed Content-Length'],
      [{ 'Content-Length': '5, 6' }, 'malformed Content-Length'],
    ];
    for (const [headers, message] of framing) {
      const head = Object.entries({ Host: 'x', Upgrade: 'ssh', ...headers })
        .map(([k, v]) => `${k}: ${v}\r\n`).join('');
      assertJsonError(await send(`POST ${path} HTTP/1.1\r\n${head}\r\n0123456789abcdef`), 400,
        message);
    }
  });

  test('slow heads and slow upgrade bodies: 408', async () => {
    // The head never ends.
    assertJsonError(await exchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n'), 408,
      'timeout reading request head');
    // A byte at a time, forever: arriving data does not extend the deadline.
    const trickle = await exchange(port, async (socket) => {
      for (let i = 0; i < 400 && !socket.destroyed; i++) {
        socket.write(i === 0 ? 'G' : 'a');
        await new Promise((r) => setTimeout(r, 10));
      }
    });
    assertJsonError(trickle, 408, 'timeout reading request head');
    // TLS on the plain port is told at once.
    const hello = Buffer.from('16030100c4010000c00303', 'hex');
    assertJsonError(await exchange(port, hello), 400, 'TLS handshake on a plain HTTP port');
    // An upgrade whose body is late, or never comes.
    const before = apiCalls();
    const slowBody = ssh(`/arvados/v1/connect/${CTR}/ssh`).replace(/Content-Length: \d+/,
      'Content-Length: 100');
    assertJsonError(await exchange(port, slowBody + 'login_username=ro'), 408,
      'timeout reading request body');
    assertJsonError(await exchange(port, slowBody), 408, 'timeout reading request body');
    assert.equal(apiCalls(), before, 'a request still being read reached the API');
  });

  test('upgrade requests with huge bodies: 413 before the body is read', async () => {
    for (const length of ['16385', '10737418240']) {
      // No body is sent at all: the answer must not wait for it.
      const res = await exchange(port, `POST /arvados/v1/connect/${CTR}/ssh HTTP/1.1\r\n` +
        `Host: x\r\nUpgrade: ssh\r\nAuthorization: Bearer ${alice.token}\r\n` +
        `Content-Length: ${length}\r\n\r\n`);
      assertJsonError(res, 413, 'upgrade request body too large');
    }
    const tunnel = upgradeRequest(port, `/arvados/v1/connect/${CTR}/gateway_tunnel`, 'tunnel',
      { auth_secret: 'a'.repeat(20_000) });
    assertJsonError(await send(tunnel), 413, 'upgrade request body too large');
  });

  test('traversal and encoded separators in log paths: 400; malformed ones 404', async () => {
    const base = `/arvados/v1/container_requests/${cr}/log`;
    const cases: [string, number][] = [
      [`${base}/../../x`, 400],
      [`${base}/${CTR}/../${CTR}/stderr.txt`, 400],
      [`${base}/${CTR}/./stderr.txt`, 400],
      [`${base}/%2e%2e/x`, 400],
      [`${base}/%2E%2e/x`, 400],
      [`${base}/.%2e/x`, 400],
      [`${base}/${CTR}%2fstderr.txt`, 400],
      [`${base}/${CTR}%2Fstderr.txt`, 400],
      [`${base}/${CTR}%5cstderr.txt`, 400],
      [`${base}/${CTR}\\stderr.txt`, 400],
      [`${base}/${CTR}/stderr.txt%00.png`, 400],
      [`${base}/${CTR}/%0d%0aX-Injected:%201`, 400],
      [`${base}/%c0%ae%c0%ae/x`, 400],
      [`${base}/%zz`, 400],
      [`${base}/..;/x`, 404],
      ['/arvados/v1/container_requests/not-a-uuid/log/', 404],
      [`/arvados/v1/container_requests/${CTR}/log/`, 404],
      [`/arvados/v1/container_requests/${cr.toUpperCase()}/log/`, 404],
      [`/arvados/v1/container_requests/${cr}x/log/`, 404],
      [`/arvados/v1/container_requests/%2e%2e/log/`, 400],
      [`http://evil.example${base}/../../x`, 404],
    ];
    const before = apiCalls();
    for (const [path, status] of cases) {
      const res = await send(get(path));
      assert.equal(res.status, status, path);
      if (status === 404 && res.status === 404 && res.json === undefined) continue;
      assertJsonError(res, status);
    }
    // Only the ..; case (a name, not a dot segment) is a real lookup.
    assert.ok(apiCalls() - before <= 2, `${apiCalls() - before} API calls for bad paths`);
    // Double encoding is a literal name: the gateway gets it still encoded, never decoded twice.
    const double = await send(get(`${base}/${CTR}/%252e%252e/missing.txt`));
    assert.equal(double.status, 404);
    const seen = gateway.requests.at(-1)!.url;
    assert.equal(seen, `${base}/${CTR}/%252e%252e/missing.txt`);
  });

  test('CR, LF and other control characters in forwarded values: 400', async () => {
    const path = `/arvados/v1/connect/${CTR}/ssh`;
    const before = apiCalls();
    for (const name of ['login_username', 'detach_keys', 'no_forward']) {
      for (const value of ['root\r\nX-Evil: 1', 'a\nb', 'ctrl-p\r', 'x\0', 'x\x7f', '\x1b[2J']) {
        assertJsonError(await send(ssh(path, { [name]: value })), 400,
          `invalid ${name}: control characters are not allowed`);
      }
      // The query string is part of the form too.
      assertJsonError(await send(ssh(`${path}?${name}=a%0d%0ab`)), 400,
        `invalid ${name}: control characters are not allowed`);
    }
    assert.equal(apiCalls(), before, 'a refused value reached the API');
    // The refusal comes before the token check: no token is needed to be told.
    assertJsonError(await send(upgradeRequest(port, path, 'ssh', { detach_keys: '\r\n' })), 400);
  });

  test('tokens with control characters or non-ASCII bytes: 401, never a 5xx', async () => {
    const logPath = `/arvados/v1/container_requests/${cr}/log/${CTR}/stderr.txt`;
    const before = apiCalls();
    for (const token of ['v2/zzzzz-gj3su-000000000000000/\x1cabc', 'tok\x7fen', 'tøken\xff']) {
      const raw = `Bearer ${token}`;
      const basic = `Basic ${Buffer.from(`arvados:${token}`, 'latin1').toString('base64')}`;
      // A Basic password may hold CR and LF, which would split a header we write by hand.
      const split = `Basic ${Buffer.from('arvados:x\r\nX-Evil: 1').toString('base64')}`;
      for (const authorization of [raw, basic, split]) {
        const sshRes = await send(upgradeRequest(port, `/arvados/v1/connect/${CTR}/ssh`, 'ssh', {},
          { Authorization: authorization }));
        assertJsonError(sshRes, 401, /Not logged in/);
        const logRes = await send(`GET ${logPath} HTTP/1.1\r\nHost: x\r\n` +
          `Authorization: ${authorization}\r\nConnection: close\r\n\r\n`);
        // Node's own parser already refuses some control characters in header values.
        if (logRes.status === 400) assertJsonError(logRes, 400, 'malformed request');
        else assertJsonError(logRes, 401, /Not logged in/);
      }
    }
    assert.equal(apiCalls(), before, 'a malformed token was sent to the API');
  });

  test('things that are not container UUIDs: 400', async () => {
    const bad = ['not-a-uuid', 'zzzzz-xvhdp-012345678901234', 'ZZZZZ-DZ642-012345678901234',
      'zzzzz-dz642-0123456789', 'zzzzz-dz642-0123456789abcdef', '..%2f..%2fetc',
      'zzzzz%2ddz642-012345678901234', 'zzzzz-dz642-01234567890123%20', '%00'];
    const before = apiCalls();
    for (const uuid of bad) {
      for (const [kind, upgrade] of [['ssh', 'ssh'], ['gateway_tunnel', 'tunnel']]) {
        const path = `/arvados/v1/connect/${uuid}/${kind}`;
        const req = upgradeRequest(port, path, upgrade, { auth_secret: 'x' },
          { Authorization: `Bearer ${alice.token}` });
        assertJsonError(await send(req), 400, 'invalid container UUID');
        // The same through a front proxy that turned it into a real upgrade.
        const proxied = req.replace('\r\nUpgrade:', '\r\nConnection: upgrade\r\nUpgrade:');
        assertJsonError(await send(proxied), 400, 'invalid container UUID');
      }
    }
    assert.equal(apiCalls(), before);
    assert.equal(sidecar.registry.size, 0);
  });

  test(`front door fuzz: ${FUZZ_INPUTS} mutated requests (seed ${FUZZ_SEED})`, async () => {
    const seeds = [
      ssh(`/arvados/v1/connect/${CTR}/ssh`, { login_username: 'root' }),
      upgradeRequest(port, `/arvados/v1/containers/${CTR}/gateway_tunnel`, 'tunnel',
        { auth_secret: containerKey('wrong', CTR) }),
      get(`/arvados/v1/container_requests/${cr}/log/${CTR}/stderr.txt`),
      `PROPFIND /arvados/v1/container_requests/${cr}/log/ HTTP/1.1\r\nHost: x\r\nDepth: 1\r\n` +
        `Authorization: Bearer ${alice.token}\r\nContent-Length: 0\r\n\r\n`,
      'GET /arvados/v1/users/current HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    ].map((s) => Buffer.from(s, 'latin1'));
    const rand = prng(FUZZ_SEED);
    const statuses = new Map<number, number>();
    let next = 0;
    const worker = async () => {
      while (next < FUZZ_INPUTS) {
        next++;
        const input = mutate(rand, seeds[Math.floor(rand() * seeds.length)]);
        const res: RawAnswer = await exchange(port, input,
          { untilAnswer: true, timeoutMs: HEAD_TIMEOUT_MS * 10 });
        statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        if (res.status === 0) continue;
        assert.match(res.raw, /^HTTP\/1\.1 [1-5]\d\d /,
          `odd answer to ${input.toString('latin1')}`);
        // Client garbage is the client's error: never an internal one, never a library's code.
        assert.ok(!/internal error|UND_ERR|ERR_/.test(res.body),
          `${res.body} for ${JSON.stringify(input.toString('latin1'))}`);
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    report({ suite: 'front-door-fuzz', inputs: FUZZ_INPUTS,
      answers: [...statuses].map(([s, n]) => `${s}:${n}`).join(' ') });
    // The corpus must reach both the refusals and the routes behind them.
    assert.ok([...statuses.keys()].some((s) => s >= 400 && s < 500));
    assert.ok([...statuses.keys()].some((s) => s === 101 || (s >= 200 && s < 300)));
    const after = await send(get(`/arvados/v1/container_requests/${cr}/log/${CTR}/stderr.txt`));
    assert.equal(after.body, 'hostile\n');
  });

  test('nothing threw out of the sidecar, and no secret was shown', async () => {
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(uncaught, []);
    assert.ok(!cluster.logLines.some((l) => l.includes('"level":"error"') &&
      l.includes('handler failed')), 'a handler failed');
    leaks.scan('answer bodies', seenBodies);
    leaks.scan('log lines', cluster.logLines);
    await leaks.scanSidecar(sidecar.adminPort);
    const health = await fetch(`http://127.0.0.1:${sidecar.adminPort}/healthz`);
    assert.equal(health.status, 200);
  });
});


const SPICE = ['\r\n', '\r', '\n', '\0', ':', ' ', '%', '%2f', '..', '/', 'Upgrade: tunnel\r\n',
  'Content-Length: 99999999\r\n', 'Transfer-Encoding: chunked\r\n', 'Connection: upgrade\r\n',
  '\r\n\r\n', '\xff', 'HTTP/1.1'];

function mutate(rand: () => number, seed: Buffer): Buffer {
  let buf = Buffer.from(seed);
  const rounds = 1 + Math.floor(rand() * 4);
  for (let r = 0; r < rounds; r++) {
    const at = Math.floor(rand() * (buf.length + 1));
    const kind = rand();
    if (kind < 0.25 && buf.length > 0) {
      buf[Math.min(at, buf.length - 1)] ^= 1 << Math.floor(rand() * 8);
    } else if (kind < 0.45) {
      const spice = Buffer.from(SPICE[Math.floor(rand() * SPICE.length)], 'latin1');
      buf = Buffer.concat([buf.subarray(0, at), spice, buf.subarray(at)]);
    } else if (kind < 0.6) {
      buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at + 1 + Math.floor(rand() * 8))]);
    } else if (kind < 0.7) {
      buf = buf.subarray(0, at);
    } else if (kind < 0.85) {
      const len = Math.floor(rand() * 40);
      buf = Buffer.concat([buf.subarray(0, at), buf.subarray(at, at + len), buf.subarray(at)]);
    } else {
      const noise = Buffer.alloc(1 + Math.floor(rand() * 12));
      for (let i = 0; i < noise.length; i++) noise[i] = Math.floor(rand() * 256);
      buf = Buffer.concat([buf.subarray(0, at), noise, buf.subarray(at)]);
    }
  }
  return buf;
}
