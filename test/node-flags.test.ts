// The V8 flags the sidecar is started with take effect in the node this project runs on: a
// renamed or ignored flag would quietly undo what src/node-flags.ts measured.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { NODE_FLAGS } from '../src/node-flags.ts';

const PROBE = `
  import v8 from 'node:v8';
  const space = (name) => v8.getHeapSpaceStatistics().find((s) => s.space_name === name);
  console.log(JSON.stringify({ newSpace: space('new_space').space_size }));
`;

function probe(flags: readonly string[]): { newSpace: number } {
  const r = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', PROBE],
    { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as { newSpace: number };
}

test('NODE_FLAGS hold the young generation at 16 MiB or more; without them it starts smaller',
  () => {
    const MiB = 1024 * 1024;
    assert.ok(probe(NODE_FLAGS).newSpace >= 16 * MiB);
    assert.ok(probe([]).newSpace < 16 * MiB, 'the default is already this large: drop the flag');
  });
