import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseLogTarget, pickKeepWeb } from '../../src/endpoints/logs.ts';

const CR = 'zzzzz-xvhdp-0123456789abcde';

test('log targets are split into request, path and no_forward', () => {
  assert.deepEqual(parseLogTarget(`/arvados/v1/container_requests/${CR}/log`),
    { cr: CR, path: '', pathAndQuery: `/arvados/v1/container_requests/${CR}/log`,
        noForward: false });
  const t = parseLogTarget(`/arvados/v1/container_requests/${CR}/log/x/stderr.txt?no_forward=true`);
  assert.equal(t.path, '/x/stderr.txt');
  assert.equal(t.noForward, true);
});

test('traversal, encoded separators and non-UUIDs are refused', () => {
  const base = `/arvados/v1/container_requests/${CR}/log`;
  for (const bad of [`${base}/../x`, `${base}/%2e%2e/x`, `${base}/a%2fb`, `${base}/a%5cb`,
    `${base}/%00`, `${base}/a%0d%0ab`, `${base}/%zz`]) {
    assert.throws(() => parseLogTarget(bad), { status: 400 }, bad);
  }
  assert.throws(() => parseLogTarget('/arvados/v1/container_requests/nope/log'), { status: 404 });
  assert.throws(() => parseLogTarget(
    '/arvados/v1/container_requests/zzzzz-dz642-0123456789abcde/log'), { status: 404 });
});

test('keep-web on this host is preferred', () => {
  const settings = { podName: 'ctl-0', podIp: '10.0.0.5' } as never;
  assert.equal(pickKeepWeb(['http://kw:9002/', 'http://127.0.0.1:9002/'], { settings }).host,
    '127.0.0.1:9002');
  assert.equal(pickKeepWeb(['http://kw:9002/', 'http://10.0.0.5:9002/'], { settings }).host,
    '10.0.0.5:9002');
  assert.throws(() => pickKeepWeb([], { settings }),
    { status: 500, message: 'no internalURLs configured for WebDAV service' });
});
