import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { MAX_HEAD_BYTES, parseHead, readBody, readHead } from '../../src/http/head.ts';

test('reads a head split at every byte, keeping what follows', async () => {
  const text = 'POST http://h/arvados/v1/connect/x/ssh HTTP/1.1\r\nUpgrade: ssh\r\n' +
    'Content-Length: 3\r\n\r\nabcREST';
  for (let cut = 1; cut < text.length; cut += 7) {
    const s = new PassThrough();
    const p = readHead(s, 1000);
    s.write(text.slice(0, cut));
    s.write(text.slice(cut));
    const { head, rest, raw } = await p;
    assert.deepEqual(head.parts, ['POST', 'http://h/arvados/v1/connect/x/ssh', 'HTTP/1.1']);
    assert.equal(head.headers.upgrade, 'ssh');
    assert.equal(raw.toString(), text.slice(0, text.indexOf('abc')));
    assert.ok('abcREST'.startsWith(rest.toString()));
    const body = await readBody(s, rest, 7, 1000);
    assert.equal(body.body.toString(), 'abcREST');
    assert.equal(body.rest.length, 0);
  }
});

test('refuses oversized, malformed and slow heads', async () => {
  const big = new PassThrough();
  const p = readHead(big, 1000);
  big.write('GET / HTTP/1.1\r\nX: ' + 'a'.repeat(MAX_HEAD_BYTES + 10));
  await assert.rejects(p, { status: 431 });

  const slow = new PassThrough();
  const q = readHead(slow, 50);
  slow.write('GET / HTTP/1.1\r\n');
  await assert.rejects(q, { status: 408 });

  assert.throws(() => parseHead('GET / HTTP/1.1\r\nbad header'), { status: 400 });
  assert.throws(() => parseHead('GET / HTTP/1.1\r\nba d: x'), { status: 400 });
  assert.throws(() => parseHead('NONSENSE'), { status: 400 });
});

test('repeated headers are joined as one value', () => {
  const head = parseHead('HTTP/1.1 101 Switching Protocols\r\nA: 1\r\na: 2');
  assert.equal(head.headers.a, '1, 2');
  assert.equal(head.parts[1], '101');
});
