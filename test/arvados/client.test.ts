import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ArvadosClient } from '../../src/arvados/client.ts';
import { FakeArvados } from '../../src/demo/fake-arvados.ts';

const api = new FakeArvados('root-token-for-client-test');
let url: string;
const outcomes: string[] = [];
let client: ArvadosClient;

before(async () => {
  url = await api.listen();
  client = new ArvadosClient({ baseUrl: url, timeoutMs: 300,
    observe: (call, outcome) => outcomes.push(`${call} ${outcome}`) });
});
after(async () => {
  await client.close();
  await api.close();
});

test('the caller\'s token and the request id reach the API', async () => {
  const alice = api.addUser('zzzzz-tpzed-alice0000000001');
  const me = await client.currentUser(alice.token, 'req-abc');
  assert.equal(me.uuid, alice.uuid);
  const call = api.calls.at(-1)!;
  assert.equal(call.token, alice.token);
  assert.equal(call.requestId, 'req-abc');
  assert.ok(outcomes.includes('users.current ok'));
});

test('API errors keep their status and message', async () => {
  await assert.rejects(client.currentUser('bad', 'r'), { status: 401, message: 'Not logged in' });
  await assert.rejects(client.getContainer('root-token-for-client-test',
    'zzzzz-dz642-000000000000000', ['uuid'], 'r'), { status: 404, message: 'Path not found' });
  api.failures.set('GET users', 500);
  await assert.rejects(client.currentUser('x', 'r'), { status: 500, message: /injected/ });
});

test('a stalled API times out with a 502 that names no secret', async () => {
  api.stallMs = 1000;
  try {
    await assert.rejects(client.currentUser('secret-token-x', 'r'),
        (err: Error & { status: number }) =>
      err.status === 502 && err.message === 'Arvados API request failed: timeout' &&
      !err.message.includes('secret-token-x'));
    assert.ok(outcomes.includes('users.current unreachable'));
  } finally {
    api.stallMs = 0;
  }
});

test('paging collects every container request, and a short count is a 500', async () => {
  const alice = api.addUser('zzzzz-tpzed-alice0000000002');
  api.addContainer('zzzzz-dz642-paging000000001', 'Running', [alice, alice, alice]);
  api.pageLimit = 1;
  try {
    const all = await client.listAllRequestsFor('root-token-for-client-test',
      'zzzzz-dz642-paging000000001', 'r');
    assert.equal(all.length, 3);
    api.undercount = 2;
    await assert.rejects(client.listAllRequestsFor('root-token-for-client-test',
      'zzzzz-dz642-paging000000001', 'r'),
    { status: 500, message: 'incomplete response while checking permission' });
  } finally {
    api.pageLimit = 1000;
    api.undercount = 0;
  }
});
