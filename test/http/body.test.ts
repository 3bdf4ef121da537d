import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chunkedBody, framingOf, lengthBody, type BodyReader } from '../../src/http/body.ts';

// feedAll feeds pieces and returns the body found and whether it completed.
function feedAll(reader: BodyReader, pieces: Buffer[]): { body: string; done: boolean } {
  const parts: Buffer[] = [];
  let done = false;
  for (const p of pieces) {
    done = reader.feed(p, (part) => parts.push(Buffer.from(part)));
    if (done) break;
  }
  return { body: Buffer.concat(parts).toString(), done };
}

const CODED = '5;ext="a b"\r\nhello\r\n' + 'A \r\n, chunked!\r\n' + '0\r\nX-T: 1\r\nY: 2\r\n\r\n';

test('chunked: the same body whatever the reads are cut at, and nothing after its end', () => {
  const all = Buffer.from(CODED + 'GARBAGE');
  for (let a = 0; a <= all.length; a++) {
    for (let b = a; b <= all.length; b += 5) {
      const got = feedAll(chunkedBody(), [all.subarray(0, a), all.subarray(a, b),
        all.subarray(b)]);
      assert.deepEqual(got, { body: 'hello, chunked!', done: true }, `cut at ${a}, ${b}`);
    }
  }
});

test('chunked: incomplete is not done; malformed and endless parts are refused', () => {
  assert.equal(feedAll(chunkedBody(), [Buffer.from(CODED.slice(0, -1))]).done, false);
  const bad = ['x\r\n', '\r\n', '5\r\nhelloXX', '5\nhello\r\n', '10000000000000\r\n',
    `5;${'e'.repeat(5000)}\r\n`, `0\r\n${'t'.repeat(70_000)}`, '0\r\n\rX'];
  for (const text of bad) {
    assert.throws(() => chunkedBody().feed(Buffer.from(text), () => {}),
      { status: 502, message: /malformed chunked body/ }, JSON.stringify(text.slice(0, 40)));
  }
});

test('length: exactly that many bytes; zero is done at once', () => {
  assert.deepEqual(feedAll(lengthBody(4), [Buffer.from('ab'), Buffer.from('cdef')]),
    { body: 'abcd', done: true });
  assert.equal(lengthBody(0).feed(Buffer.alloc(0), () => assert.fail('no body')), true);
});

test('framing follows RFC 9112 section 6.3, and only chunked is a transfer coding', () => {
  const kind = (method: string, status: number, headers: Record<string, string>) => {
    const { body, length } = framingOf(method, status, headers);
    if (body.endsWithSource) return `close ${length}`;
    return `${body.feed(Buffer.alloc(0), () => {}) ? 'empty' : 'framed'} ${length}`;
  };
  assert.equal(kind('HEAD', 200, { 'content-length': '9' }), 'empty 9');
  assert.equal(kind('GET', 204, {}), 'empty undefined');
  assert.equal(kind('GET', 304, { 'content-length': '9' }), 'empty 9');
  assert.equal(kind('GET', 200, { 'content-length': '9' }), 'framed 9');
  // With a transfer coding, Content-Length is neither used nor declared.
  assert.equal(kind('GET', 200, { 'transfer-encoding': 'Chunked ', 'content-length': '9' }),
    'framed undefined');
  assert.equal(kind('GET', 200, {}), 'close undefined');
  assert.equal(kind('GET', 200, { 'content-length': '7, 7' }), 'framed 7');
  for (const coding of ['gzip, chunked', 'chunked, gzip', 'gzip', '']) {
    assert.throws(() => framingOf('GET', 200, { 'transfer-encoding': coding }),
      { status: 502, message: /unsupported Transfer-Encoding/ }, coding);
  }
  for (const bad of ['7, 8', '-1', '1e3', '', '9999999999999999']) {
    assert.throws(() => framingOf('GET', 200, { 'content-length': bad }), { status: 502 }, bad);
    assert.throws(() => framingOf('HEAD', 200, { 'content-length': bad }), { status: 502 }, bad);
  }
});
