// What abuse costs in memory: the sidecar runs as a child process and its resident set
// (VmRSS in /proc/PID/status) is read before and while hundreds of connections hold partial
// heads, send endless heads, or a tunnel with a valid secret opens streams it fills and never
// lets the sidecar read. Each cost must stay bounded by the sidecar's limits, not grow with
// what the attacker sends; and the process must still answer afterwards.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { LocalCluster } from '../../src/demo/cluster.ts';
import { containerKey } from '../../src/gateway/hmac.ts';
import { MAX_HEAD_BYTES, readHead } from '../../src/http/head.ts';
import { NODE_FLAGS } from '../../src/node-flags.ts';
import { Session } from '../../src/tunnel/yamux/index.ts';
import { envCount, freePort, report, waitFor } from './lib/wire.ts';

const MAIN = fileURLToPath(new URL('../../src/main.ts', import.meta.url));
const MiB = 1024 * 1024;
const CONNECTIONS = envCount('MEMORY_CONNECTIONS', 200);

describe('bounded memory under abuse (sidecar in a child process)', () => {
  const cluster = new LocalCluster();
  let child: ChildProcess;
  let port: number;
  let adminPort: number;
  let output = '';
  const sockets: Socket[] = [];

  const rss = () => {
    const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
    return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)![1]) * 1024;
  };
  const healthy = async () =>
    (await fetch(`http://127.0.0.1:${adminPort}/healthz`).catch(() => undefined))?.status === 200;
  const open = async (): Promise<Socket> => {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => {});
    await new Promise((resolve) => s.once('connect', resolve));
    sockets.push(s);
    return s;
  };
  // Writes to many sockets, then waits until the sidecar has taken every byte off them.
  const flood = async (each: (s: Socket) => void, count: number) => {
    const opened = await Promise.all(Array.from({ length: count }, open));
    for (const s of opened) each(s);
    await waitFor(() => opened.every((s) => s.writableLength === 0 || s.destroyed), 20_000,
      'the sidecar to read what was sent');
    return opened;
  };
  const settle = () => new Promise((r) => setTimeout(r, 300));

  before(async () => {
    await cluster.start();
    [port, adminPort] = [await freePort(), await freePort()];
    // Started as the image starts it: the heap flag changes when garbage is collected.
    child = spawn(process.execPath, [...NODE_FLAGS, MAIN], {
      env: { ...process.env, GATEWAY_LISTEN: `127.0.0.1:${port}`,
        GATEWAY_ADMIN_LISTEN: `127.0.0.1:${adminPort}`, ARVADOS_CONFIG: cluster.configPath,
        GATEWAY_CONTROLLER_URL: cluster.apiUrl, GATEWAY_HEAD_TIMEOUT_MS: '60000',
        LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (d) => { output += d; });
    child.stderr!.on('data', (d) => { output += d; });
    await waitFor(healthy, 15_000, 'the sidecar to start');
    // Warm up the paths used below, so their code is not counted as growth.
    for (let i = 0; i < 20; i++) {
      const s = await open();
      s.write('GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    }
    await settle();
  });

  after(async () => {
    for (const s of sockets) s.destroy();
    child?.kill('SIGKILL');
    await cluster.stop();
  });

  test(`${CONNECTIONS} connections holding 60 KiB partial heads`, async () => {
    const base = rss();
    const partial = Buffer.from('GET / HTTP/1.1\r\nX-Filler: ' + 'a'.repeat(60 * 1024));
    const held = await flood((s) => s.write(partial), CONNECTIONS);
    await settle();
    const growth = rss() - base;
    report({ suite: 'memory', case: 'partial heads', connections: CONNECTIONS,
      growth_mib: +(growth / MiB).toFixed(1) });
    // What is held is what was sent (12 MiB for 200), with room for buffers and the heap.
    assert.ok(growth < CONNECTIONS * partial.length * 3 + 16 * MiB,
      `RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    assert.ok(held.every((s) => !s.destroyed), 'a connection was closed early');
    for (const s of held) s.destroy();
    assert.ok(await healthy());
  });

  test(`${CONNECTIONS} connections sending endless heads are cut off at the limit`, async () => {
    const base = rss();
    const answers: string[] = [];
    const chunk = Buffer.from('X-Filler: ' + 'b'.repeat(64 * 1024 - 12) + '\r\n');
    // Up to 4 MiB each, 64 times the limit, until the sidecar answers.
    const endless = await Promise.all(Array.from({ length: CONNECTIONS }, open));
    await Promise.all(endless.map(async (s) => {
      let got = '';
      s.on('data', (d) => { got += d; });
      s.write('GET / HTTP/1.1\r\n');
      for (let i = 0; i < 64 && !s.destroyed && got === ''; i++) {
        if (!s.write(chunk)) {
          await new Promise((r) => { s.once('drain', r); s.once('close', r); });
        }
      }
      await new Promise((r) => { if (s.destroyed) r(null); else s.once('close', r); });
      answers.push(got);
    }));
    const growth = rss() - base;
    report({ suite: 'memory', case: 'endless heads', connections: CONNECTIONS,
      growth_mib: +(growth / MiB).toFixed(1) });
    assert.ok(answers.every((a) => a.startsWith('HTTP/1.1 431 ')),
      answers.find((a) => !a.startsWith('HTTP/1.1 431 ')));
    // Read to the end, this would be 4 MiB a connection; the garbage of reading a head to its
    // limit stays well under that, whatever V8 keeps of its heap (about 330 KiB seen here).
    assert.ok(growth < CONNECTIONS * MAX_HEAD_BYTES * 10,
      `RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    assert.ok(await healthy());
  });

  test('a tunnel that opens streams and fills them costs a bounded amount', async () => {
    const uuid = 'zzzzz-dz642-memoryhog000001';
    const s = await open();
    const secret = containerKey(cluster.rootToken, uuid);
    s.write(`POST /arvados/v1/connect/${uuid}/gateway_tunnel HTTP/1.1\r\nHost: x\r\n` +
      'Upgrade: tunnel\r\nContent-Type: application/x-www-form-urlencoded\r\n' +
      `Content-Length: ${12 + secret.length}\r\n\r\nauth_secret=${secret}`);
    const answer = await readHead(s, 10_000);
    assert.equal(answer.head.parts[1], '101');
    if (answer.rest.length > 0) s.unshift(answer.rest);
    const session = new Session(s, { role: 'client', keepAliveIntervalMs: 0,
      connectionWriteTimeoutMs: 60_000 });
    s.resume();
    const base = rss();
    // The sidecar never accepts streams from crunch-run: these can only sit in its backlog.
    const fill = Buffer.alloc(256 * 1024, 0x5a);
    let refused = 0;
    for (let i = 0; i < 400; i++) {
      const stream = session.open();
      stream.on('error', () => { refused++; });
      stream.write(fill);
    }
    // Frames are handled in order: the answer to a ping sent last means the sidecar has been
    // through everything before it.
    await session.ping();
    await settle();
    const growth = rss() - base;
    report({ suite: 'memory', case: 'stream flood', streams: 400, refused,
      growth_mib: +(growth / MiB).toFixed(1) });
    // The backlog of streams the sidecar never accepts is one stream: 256 full windows, the
    // default backlog, were 64 MiB. The rest is the garbage of 100 MiB read and dropped.
    assert.ok(growth < 32 * MiB, `RSS grew by ${(growth / MiB).toFixed(1)} MiB`);
    session.close();
    assert.ok(await healthy());
  });

  test('the sidecar is alive and still serves', async () => {
    assert.equal(child.exitCode, null, output);
    const res = await fetch(`http://127.0.0.1:${port}/arvados/v1/users/current`);
    assert.equal(res.status, 401);
    await res.body?.cancel();
  });
});
