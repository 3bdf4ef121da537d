// The sidecar reads a gateway's answer to a log request off the socket itself (see
// src/gateway/request.ts), so every way HTTP/1.1 lets an answer be framed is tried here, each
// written in pieces that arrive in separate reads: a client gets the body whole, a JSON error
// when the head is unusable, or a cut connection when the body breaks off after the head has
// gone out, never a shortened body that looks complete.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import { Client, request } from 'undici';
import { LocalCluster, urlOf } from '../../src/demo/cluster.ts';
import type { Sidecar } from '../../src/sidecar.ts';
import { FakeGateway } from './lib/fake-gateway.ts';
import { assertJsonError, jsonOrUndefined, selfSigned, waitFor } from './lib/wire.ts';

describe('gateway answers, however framed', () => {
  const cluster = new LocalCluster();
  const gateways: FakeGateway[] = [];
  let sidecar: Sidecar;
  let gw: FakeGateway;
  let url: string;
  let token: string;
  let pem: { key: Buffer; cert: Buffer };
  let alice: ReturnType<LocalCluster['api']['addUser']>;

  before(async () => {
    await cluster.start();
    pem = selfSigned(cluster.dir, 'gateway');
    alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
    token = alice.token;
    sidecar = await cluster.startSidecar({});
    const uuid = 'zzzzz-dz642-answers00000001';
    cluster.api.addContainer(uuid, 'Running', [alice], `tunnel ${sidecar.ownUrl}`);
    gw = new FakeGateway({ uuid, systemRootToken: cluster.rootToken, ...pem });
    gateways.push(gw);
    await gw.openTunnel(sidecar.frontPort);
    const cr = [...cluster.api.requests.values()].find((r) => r.container_uuid === uuid)!.uuid;
    url = `${urlOf(sidecar)}/arvados/v1/container_requests/${cr}/log/${uuid}/stderr.txt`;
  });

  after(async () => {
    await Promise.all(gateways.map((g) => g.close()));
    await cluster.stop();
  });

  const get = async (method = 'GET', body?: string) => {
    const res = await request(url, {
      method: method as 'GET', body,
      headers: { authorization: `Bearer ${token}` },
    });
    return { status: res.statusCode, headers: res.headers, res };
  };
  const bytes = async (method = 'GET', body?: string) => {
    const { status, headers, res } = await get(method, body);
    return { status, headers, body: Buffer.from(await res.body.arrayBuffer()) };
  };
  const getJson = async () => {
    const { status, headers, body } = await bytes();
    return { status, headers, json: jsonOrUndefined(body.toString()) };
  };
  const pattern = (n: number) => {
    const data = Buffer.alloc(n);
    for (let i = 0; i < n; i++) data[i] = (i * 7 + (i >> 9)) & 0xff;
    return data;
  };

  test('chunked, with extensions and trailers, split at odd places', async () => {
    const data = pattern(300_000);
    const coded = Buffer.concat([
      Buffer.from('186A0;name=value\r\n'), data.subarray(0, 100_000), Buffer.from('\r\n'),
      Buffer.from('30d40 \r\n'), data.subarray(100_000), Buffer.from('\r\n'),
      Buffer.from('0\r\nX-Trailer: yes\r\n\r\n'),
    ]);
    gw.rawAnswer = (proof) => [
      // The head and the body's first byte share a read; the rest comes in odd pieces.
      Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\n${proof}Transfer-Encoding: chunked\r\n` +
        'Content-Type: text/plain\r\n\r\n'), coded.subarray(0, 1)]),
      coded.subarray(1, 4), coded.subarray(4, 100_019), coded.subarray(100_019, 100_030),
      coded.subarray(100_030),
    ];
    const res = await bytes();
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-type'], 'text/plain');
    assert.equal(sha256(res.body), sha256(data));
  });

  test('interim answers are dropped; the final one passes', async () => {
    gw.rawAnswer = (proof) => [
      'HTTP/1.1 100 Continue\r\n\r\n', 'HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n',
      `HTTP/1.1 200 OK\r\n${proof}Content-Length: 5\r\n\r\n`, 'hello',
    ];
    const res = await bytes();
    assert.equal(res.status, 200);
    assert.equal(res.body.toString(), 'hello');
    assert.equal(res.headers.link, undefined);
  });

  test('more interim answers than any gateway sends: 502', async () => {
    const interim = Array.from({ length: 40 }, () => 'HTTP/1.1 103 Early Hints\r\n\r\n');
    gw.rawAnswer = (proof) => [interim.join(''),
      `HTTP/1.1 200 OK\r\n${proof}Content-Length: 2\r\n\r\nok`];
    assertJsonError(await getJson(), 502, 'gateway sent too many interim answers');
  });

  test('the client is told the length the sidecar framed the body by, and no other', async () => {
    // A Content-Length beside chunked coding must not reach the client: it would read 5 bytes
    // as the answer and the rest as the answer to its next request on the same connection.
    const injected = 'HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Smuggled: yes\r\n\r\nINJECTED';
    const coded = `5\r\nhello\r\n${injected.length.toString(16)}\r\n${injected}\r\n0\r\n\r\n`;
    const client = new Client(new URL(url).origin, { pipelining: 1 });
    try {
      const ask = async () => {
        const res = await client.request({ path: new URL(url).pathname, method: 'GET',
          headers: { authorization: `Bearer ${token}` } });
        return { status: res.statusCode, headers: res.headers, body: await res.body.text() };
      };
      gw.rawAnswer = (proof) => [`HTTP/1.1 200 OK\r\n${proof}Content-Length: 5\r\n` +
        'Transfer-Encoding: chunked\r\n\r\n', coded];
      const first = await ask();
      assert.equal(first.status, 200);
      assert.equal(first.body, 'hello' + injected);
      assert.equal(first.headers['content-length'], undefined);
      gw.rawAnswer = (proof) => [`HTTP/1.1 200 OK\r\n${proof}Content-Length: 2\r\n` +
        'Content-Length: 2\r\n\r\nok'];
      const second = await ask();
      assert.equal(second.headers['x-smuggled'], undefined);
      assert.equal(second.body, 'ok');
      assert.equal(second.headers['content-length'], '2');
    } finally {
      await client.close();
    }
    gw.rawAnswer = (proof) => [`HTTP/1.1 200 OK\r\n${proof}Transfer-Encoding: gzip\r\n\r\n`,
      'not gzip at all'];
    assertJsonError(await getJson(), 502, 'gateway sent an unsupported Transfer-Encoding');
  });

  test('a body that runs until the close', async () => {
    const data = pattern(200_000);
    gw.rawAnswer = (proof) => [`HTTP/1.1 200 OK\r\n${proof}Connection: close\r\n\r\n`,
      data.subarray(0, 70_000), data.subarray(70_000)];
    const res = await bytes();
    assert.equal(res.status, 200);
    assert.equal(sha256(res.body), sha256(data));
  });

  test('HEAD and 304 answers have no body, whatever their Content-Length says', async () => {
    gw.rawAnswer = (proof) => [`HTTP/1.1 200 OK\r\n${proof}Content-Length: 1000\r\n\r\n`];
    const head = await get('HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.headers['content-length'], '1000');
    await head.res.body.dump();
    gw.rawAnswer = (proof) => [`HTTP/1.1 304 Not Modified\r\n${proof}ETag: "x"\r\n\r\n`];
    const notModified = await bytes();
    assert.equal(notModified.status, 304);
    assert.equal(notModified.body.length, 0);
  });

  test('a body cut short after the head: the client\'s connection is cut', async () => {
    const cases: Array<[string, (proof: string) => Array<string | Buffer>]> = [
      ['Content-Length', (proof) => [`HTTP/1.1 200 OK\r\n${proof}Content-Length: 100000\r\n\r\n`,
        Buffer.alloc(70_000, 1)]],
      ['chunked', (proof) => [`HTTP/1.1 200 OK\r\n${proof}Transfer-Encoding: chunked\r\n\r\n`,
        '10\r\n0123456789abcdef\r\n', '10\r\n01234']],
      ['malformed chunk size', (proof) => [
        `HTTP/1.1 200 OK\r\n${proof}Transfer-Encoding: chunked\r\n\r\n`,
        '10\r\n0123456789abcdef\r\n', 'zz\r\nnot a size\r\n0\r\n\r\n']],
      ['chunk without its CRLF', (proof) => [
        `HTTP/1.1 200 OK\r\n${proof}Transfer-Encoding: chunked\r\n\r\n`,
        '4\r\nabcdXY0\r\n\r\n']],
    ];
    for (const [name, answer] of cases) {
      gw.rawAnswer = answer;
      // The head may have gone out or not, depending on when the break is seen.
      const outcome = await get().then(({ status, res }) => res.body.arrayBuffer()
        .then(() => `complete with ${status}`, () => 'cut'), () => 'cut');
      assert.equal(outcome, 'cut', `${name}: the body must not look complete`);
    }
  });

  test('heads that cannot be trusted: 502 in Arvados\' error form, nothing passed on', async () => {
    const cases: Array<[string, string, RegExp]> = [
      ['two lengths', 'Content-Length: 5\r\nContent-Length: 6\r\n', /invalid Content-Length/],
      ['a signed length', 'Content-Length: -5\r\n', /invalid Content-Length/],
      ['not HTTP', 'X', /malformed answer head/],
      ['a control character in a value', 'X-Odd: a\x01b\r\nContent-Length: 5\r\n',
        /malformed answer head/],
    ];
    for (const [name, lines, message] of cases) {
      gw.rawAnswer = (proof) => name === 'not HTTP'
        ? ['SSH-2.0-OpenSSH\r\n\r\n']
        : [`HTTP/1.1 200 OK\r\n${proof}${lines}\r\n`, 'hello'];
      const res = await getJson();
      assertJsonError(res, 502, message);
    }
    for (const status of ['099', '600', '20x']) {
      gw.rawAnswer = (proof) => [`HTTP/1.1 ${status} Odd\r\n${proof}Content-Length: 0\r\n\r\n`];
      assertJsonError(await getJson(), 502, /malformed answer head/);
    }
    gw.rawAnswer = (proof) => [`HTTP/1.1 200 O\x02K\r\n${proof}Content-Length: 0\r\n\r\n`];
    assertJsonError(await getJson(), 502, /malformed answer head/);
    gw.rawAnswer = () => [];
    assertJsonError(await getJson(), 503, /^proxy error: gateway closed the connection/);
  });

  test('the proof is checked on raw answers too', async () => {
    gw.rawAnswer = () => ['HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n', 'secret'];
    const res = await getJson();
    assertJsonError(res, 502, 'bad X-Arvados-Authorization-Response header');
  });

  // multiStatus makes the gateway answer 207 "ok" and keep the request body it got.
  const multiStatus = () => {
    const seen: { body: Buffer } = { body: Buffer.alloc(0) };
    gw.rawAnswer = (proof, body) => {
      seen.body = body;
      return [`HTTP/1.1 207 Multi-Status\r\n${proof}Content-Length: 2\r\n\r\nok`];
    };
    return seen;
  };

  test('a request body reaches the gateway, chunked when its length was not given', async () => {
    const seen = multiStatus();
    const propfind = '<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>';
    const res = await bytes('PROPFIND', propfind);
    assert.equal(res.status, 207);
    assert.equal(res.body.toString(), 'ok');
    assert.equal(seen.body.toString(), propfind);

    const streamed = await request(url, {
      method: 'PROPFIND' as 'GET',
      body: Readable.from((async function* () {
        yield Buffer.from('<?xml version="1.0"?>');
        await new Promise((r) => setTimeout(r, 10));
        yield Buffer.from('<propfind xmlns="DAV:"/>');
      })()),
      headers: { authorization: `Bearer ${token}` },
    });
    assert.equal(streamed.statusCode, 207);
    await streamed.body.dump();
    assert.equal(seen.body.toString(), '<?xml version="1.0"?><propfind xmlns="DAV:"/>');
    const last = gw.requests[gw.requests.length - 1];
    assert.ok(last.rawHeaders.some((h) => /^transfer-encoding: chunked$/i.test(h)),
      last.rawHeaders.join('\n'));
  });

  test('interim answers do not stretch the time the final one may take', async () => {
    const patient = await cluster.startSidecar({ dialTimeoutMs: 500 });
    const uuid = 'zzzzz-dz642-interim00000001';
    cluster.api.addContainer(uuid, 'Running', [alice], `tunnel ${patient.ownUrl}`);
    const slow = new FakeGateway({ uuid, systemRootToken: cluster.rootToken, ...pem });
    gateways.push(slow);
    await slow.openTunnel(patient.frontPort);
    // 10 interim answers 100 ms apart: the last comes long after the 500 ms allowed.
    slow.rawGapMs = 100;
    const interim = Array.from({ length: 10 }, () => 'HTTP/1.1 102 Processing\r\n\r\n');
    slow.rawAnswer = (proof) => [...interim,
      `HTTP/1.1 200 OK\r\n${proof}Content-Length: 2\r\n\r\nok`];
    const cr = [...cluster.api.requests.values()].find((r) => r.container_uuid === uuid)!.uuid;
    const res = await request(
      `${urlOf(patient)}/arvados/v1/container_requests/${cr}/log/${uuid}/stderr.txt`,
      { headers: { authorization: `Bearer ${token}` } });
    const body = await res.body.text();
    assertJsonError({ status: res.statusCode, headers: res.headers, json: jsonOrUndefined(body) },
      504, 'upstream did not answer in time');
  });

  test('a request body goes on framed, whatever the Connection header names', async () => {
    const seen = multiStatus();
    const body = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
    const u = new URL(url);
    const socket = connect(Number(u.port), u.hostname);
    socket.write(`PROPFIND ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\n` +
      `Authorization: Bearer ${token}\r\nConnection: keep-alive, content-length\r\n` +
      `Content-Length: ${body.length}\r\n\r\n${body}`);
    let answer = '';
    socket.on('data', (d: Buffer) => { answer += d.toString(); });
    await waitFor(() => answer.includes('\r\n\r\nok'), 5000, 'the answer');
    socket.destroy();
    assert.match(answer, /^HTTP\/1\.1 207 /);
    assert.equal(seen.body.toString(), body);
    const last = gw.requests[gw.requests.length - 1];
    assert.ok(last.rawHeaders.includes(`content-length: ${body.length}`),
      last.rawHeaders.join('\n'));
    assert.equal(gw.requests.filter((r) => r.url === '/smuggled').length, 0);
  });

  test('the tunnel carries on after all of that', async () => {
    gw.rawAnswer = null;
    gw.files.set('stderr.txt', Buffer.from('log data\n'));
    const res = await bytes();
    assert.equal(res.status, 200);
    assert.equal(res.body.toString(), 'log data\n');
    assert.equal(sidecar.registry.size, 1);
  });
});

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
