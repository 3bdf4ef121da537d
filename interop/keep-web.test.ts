// Self-test of the keep-web stand-in on its own, without the sidecar: the sidecar's log tests
// only mean something if this program answers the way the real keep-web does.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { request, type IncomingHttpHeaders } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startKeepWeb, type KeepWeb } from './lib/keep-web.ts';

const TOKEN = 'v2/zzzzz-gj3su-000000000000000/systemroottokenfortests';
const COLL = 'zzzzz-4zz18-aaaaaaaaaaaaaaa';
const OTHER = 'zzzzz-4zz18-bbbbbbbbbbbbbbb';
const CTR = 'zzzzz-dz642-000000000000001';
const PREFIX = '/arvados/v1/container_requests/zzzzz-xvhdp-000000000000001/log';
const STDERR = 'container started\nhello from stderr!!\n';
const OLD_STDERR = 'first attempt failed\n';
const HOST = `${COLL}.internal`;
const AUTH = { authorization: `Bearer ${TOKEN}` };

interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
}

let kw: KeepWeb;
let root: string;

function send(method: string, target: string, headers: Record<string, string> = {},
  body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(new URL(target, kw.url), {
      method, headers: { host: HOST, ...headers }, agent: false, timeout: 10_000,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders,
        body: Buffer.concat(chunks).toString('utf8'),
      }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${target} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

function hrefs(xml: string): string[] {
  return [...xml.matchAll(/<D:href>([^<]*)<\/D:href>/g)].map((m) => m[1]).sort();
}

function corsCount(a: Answer): number {
  return a.rawHeaders.filter((h, i) => i % 2 === 0 &&
    h.toLowerCase() === 'access-control-allow-origin').length;
}

before(async () => {
  assert.equal(Buffer.byteLength(STDERR), 38);
  root = mkdtempSync(path.join(tmpdir(), 'keep-web-test-'));
  mkdirSync(path.join(root, COLL, `log for container ${CTR}`), { recursive: true });
  writeFileSync(path.join(root, COLL, 'stderr.txt'), STDERR);
  writeFileSync(path.join(root, COLL, `log for container ${CTR}`, 'stderr.txt'), OLD_STDERR);
  mkdirSync(path.join(root, OTHER));
  writeFileSync(path.join(root, OTHER, 'stderr.txt'), 'other collection\n');
  kw = await startKeepWeb({ root, token: TOKEN });
});

after(async () => {
  await kw?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('keep-web stand-in', () => {
  it('prints an http URL on loopback when ready', () => {
    assert.match(kw.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.ok(kw.pid > 0);
  });

  it('picks the collection from the Host header, port or not', async () => {
    const a = await send('GET', '/stderr.txt', AUTH);
    assert.equal(a.status, 200);
    assert.equal(a.body, STDERR);
    const b = await send('GET', '/stderr.txt', { ...AUTH, host: `${OTHER}.internal:1234` });
    assert.equal(b.status, 200);
    assert.equal(b.body, 'other collection\n');
  });

  it('answers 404 for an unknown collection or a host that names none', async () => {
    const unknown = await send('GET', '/stderr.txt',
      { ...AUTH, host: 'zzzzz-4zz18-ccccccccccccccc.internal' });
    assert.equal(unknown.status, 404);
    for (const host of ['localhost', `${COLL}.example.com`, 'zzzzz-4zz18-..internal']) {
      const a = await send('GET', '/stderr.txt', { ...AUTH, host });
      assert.equal(a.status, 404, host);
    }
  });

  it('answers 401 with a Basic challenge when no token is given', async () => {
    const a = await send('GET', '/stderr.txt');
    assert.equal(a.status, 401);
    assert.equal(a.headers['www-authenticate'], 'Basic realm="collections"');
    assert.match(a.body, /401/);
    assert.doesNotMatch(a.body, /hello/);
  });

  it('refuses a wrong token and accepts OAuth2 and Basic forms of the right one', async () => {
    const wrong = await send('GET', '/stderr.txt', { authorization: 'Bearer not-the-token' });
    assert.ok(wrong.status === 401 || wrong.status === 403, `status ${wrong.status}`);
    assert.doesNotMatch(wrong.body, /hello/);
    const oauth = await send('GET', '/stderr.txt', { authorization: `OAuth2 ${TOKEN}` });
    assert.equal(oauth.status, 200);
    const basic = Buffer.from(`user:${TOKEN}`).toString('base64');
    const b = await send('GET', '/stderr.txt', { authorization: `Basic ${basic}` });
    assert.equal(b.status, 200);
  });

  it('gives Go\'s 206 with Content-Range bytes 38-37/38 for Range: bytes=-0', async () => {
    const a = await send('GET', '/stderr.txt', { ...AUTH, range: 'bytes=-0' });
    assert.equal(a.status, 206);
    assert.equal(a.headers['content-range'], 'bytes 38-37/38');
    assert.equal(a.body, '');
  });

  it('serves the rest of the file for Range: bytes=10-', async () => {
    const a = await send('GET', '/stderr.txt', { ...AUTH, range: 'bytes=10-' });
    assert.equal(a.status, 206);
    assert.equal(a.headers['content-range'], 'bytes 10-37/38');
    assert.equal(a.body, STDERR.slice(10));
  });

  it('answers HEAD with the length and no body', async () => {
    const a = await send('HEAD', '/stderr.txt', AUTH);
    assert.equal(a.status, 200);
    assert.equal(a.headers['content-length'], '38');
    assert.equal(a.body, '');
  });

  it('answers OPTIONS with a Dav header', async () => {
    const a = await send('OPTIONS', '/', AUTH);
    assert.equal(a.status, 200);
    assert.match(String(a.headers.dav), /1/);
  });

  it('puts X-Webdav-Prefix back on every PROPFIND href', async () => {
    const a = await send('PROPFIND', PREFIX, { ...AUTH, depth: '1', 'x-webdav-prefix': PREFIX });
    assert.equal(a.status, 207);
    assert.deepEqual(hrefs(a.body), [
      `${PREFIX}/`,
      `${PREFIX}/log%20for%20container%20${CTR}/`,
      `${PREFIX}/stderr.txt`,
    ]);
    const file = await send('GET', `${PREFIX}/stderr.txt`, { ...AUTH, 'x-webdav-prefix': PREFIX });
    assert.equal(file.status, 200);
    assert.equal(file.body, STDERR);
  });

  it('answers Depth 0 with the one resource asked for', async () => {
    const a = await send('PROPFIND', `${PREFIX}/stderr.txt`,
      { ...AUTH, depth: '0', 'x-webdav-prefix': PREFIX });
    assert.equal(a.status, 207);
    assert.deepEqual(hrefs(a.body), [`${PREFIX}/stderr.txt`]);
    assert.match(a.body, /<D:getcontentlength>38<\/D:getcontentlength>/);
  });

  it('refuses a path outside the prefix or beside it on no segment boundary', async () => {
    const beside = await send('GET', `${PREFIX}x/stderr.txt`,
      { ...AUTH, 'x-webdav-prefix': PREFIX });
    assert.equal(beside.status, 404);
    // Were the prefix cut mid-segment, this would name /stderr.txt.
    const glued = await send('GET', `${PREFIX}stderr.txt`, { ...AUTH, 'x-webdav-prefix': PREFIX });
    assert.equal(glued.status, 404);
    const outside = await send('GET', '/stderr.txt', { ...AUTH, 'x-webdav-prefix': PREFIX });
    assert.equal(outside.status, 404);
    const bad = await send('GET', '/stderr.txt', { ...AUTH, 'x-webdav-prefix': 'no-slash' });
    assert.equal(bad.status, 400);
  });

  it('serves the X-Webdav-Source sub-directory instead of the collection root', async () => {
    const prefix = `${PREFIX}/${CTR}`;
    const headers = {
      ...AUTH, 'x-webdav-prefix': prefix, 'x-webdav-source': `/log for container ${CTR}/`,
    };
    const file = await send('GET', `${prefix}/stderr.txt`, headers);
    assert.equal(file.status, 200);
    assert.equal(file.body, OLD_STDERR);
    const list = await send('PROPFIND', prefix, { ...headers, depth: '1' });
    assert.equal(list.status, 207);
    assert.deepEqual(hrefs(list.body), [`${prefix}/`, `${prefix}/stderr.txt`]);
    const missing = await send('GET', `${prefix}/stderr.txt`,
      { ...headers, 'x-webdav-source': '/no such dir/' });
    assert.equal(missing.status, 404);
    const escape = await send('GET', `${prefix}/stderr.txt`,
      { ...headers, 'x-webdav-source': '/../' });
    assert.equal(escape.status, 400);
  });

  it('refuses every writing method with 405 and leaves the files alone', async () => {
    const target = path.join(root, COLL, 'new.txt');
    const put = await send('PUT', '/new.txt', AUTH, 'data');
    assert.equal(put.status, 405);
    assert.equal(existsSync(target), false);
    for (const method of ['DELETE', 'MKCOL', 'MOVE', 'COPY', 'PROPPATCH', 'LOCK', 'UNLOCK']) {
      const a = await send(method, '/stderr.txt',
        { ...AUTH, destination: `${kw.url}/moved.txt` });
      assert.equal(a.status, 405, method);
    }
    assert.equal(readFileSync(path.join(root, COLL, 'stderr.txt'), 'utf8'), STDERR);
    assert.equal(existsSync(path.join(root, COLL, 'moved.txt')), false);
  });

  it('sends Access-Control-Allow-Origin exactly once on every kind of answer', async () => {
    const answers = [
      await send('GET', '/stderr.txt', AUTH),
      await send('GET', '/stderr.txt', { ...AUTH, range: 'bytes=-0' }),
      await send('PROPFIND', '/', { ...AUTH, depth: '1' }),
      await send('GET', '/stderr.txt'),
      await send('GET', '/missing.txt', AUTH),
      await send('PUT', '/stderr.txt', AUTH, 'x'),
    ];
    assert.deepEqual(answers.map((a) => a.status), [200, 206, 207, 401, 404, 405]);
    for (const a of answers) {
      assert.equal(corsCount(a), 1, `status ${a.status}`);
      assert.equal(a.headers['access-control-allow-origin'], '*');
    }
  });

  it('logs requests on stderr but never the token', async () => {
    await send('GET', '/stderr.txt?api_token=' + encodeURIComponent(TOKEN), AUTH);
    const log = kw.log();
    assert.match(log, /GET "\/stderr\.txt"/);
    assert.match(log, new RegExp(`host="${HOST}"`));
    assert.ok(!log.includes(TOKEN), 'token in log');
    assert.ok(!log.includes('systemroottokenfortests'), 'token in log');
  });
});

describe('startKeepWeb', () => {
  it('stop() ends the process', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'keep-web-stop-'));
    try {
      const other = await startKeepWeb({ root: dir, token: 'x' });
      await other.stop();
      assert.throws(() => process.kill(other.pid, 0), { code: 'ESRCH' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects with the program\'s complaint when it cannot start', async () => {
    await assert.rejects(startKeepWeb({ root: '/nonexistent/keep-web-root', token: 'x' }),
      /exited with code 2 before ready.*not a directory/s);
  });
});
