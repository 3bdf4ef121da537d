// Session option defaults and validation.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { resolveConfig } from '../../../src/tunnel/yamux/config.ts';

describe('yamux session options', () => {
  it('fills in hashicorp-compatible defaults', () => {
    assert.deepEqual(resolveConfig({ role: 'client' }), {
      client: true,
      keepAliveIntervalMs: 30_000,
      connectionWriteTimeoutMs: 10_000,
      maxStreamWindow: 262_144,
      windowBudget: null,
      acceptBacklog: 256,
      maxStreams: Number.POSITIVE_INFINITY,
      readInPlace: true,
    });
    assert.equal(resolveConfig({ role: 'server' }).client, false);
    assert.equal(resolveConfig({ role: 'server', keepAliveIntervalMs: 0 }).keepAliveIntervalMs, 0);
  });

  it('rejects values that cannot work', () => {
    assert.throws(() => resolveConfig({ role: 'peer' as 'client' }), TypeError);
    assert.throws(() => resolveConfig({ role: 'client', readInPlace: 1 as never }), TypeError);
    assert.throws(() => resolveConfig({ role: 'client', maxStreamWindow: 65_536 }), RangeError);
    assert.throws(() => resolveConfig({ role: 'client', maxStreamWindow: 2 ** 32 }), RangeError);
    assert.throws(
      () => resolveConfig({ role: 'client', connectionWriteTimeoutMs: 0 }), RangeError,
    );
    assert.throws(() => resolveConfig({ role: 'client', keepAliveIntervalMs: -1 }), RangeError);
    assert.throws(
      () => resolveConfig({ role: 'client', keepAliveIntervalMs: 2 ** 31 }), RangeError,
    );
    assert.throws(() => resolveConfig({ role: 'client', acceptBacklog: 0 }), RangeError);
    assert.throws(() => resolveConfig({ role: 'client', maxStreams: 1.5 }), RangeError);
  });
});
