// BusyPoll keeps the event loop turning for a window after small reads. These tests drive it
// with a clock and a scheduler of their own, so they check what it does, not how fast.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { BULK_QUIET_MS, BULK_READ, BusyPoll, SLICE_US, busyPoll } from '../../src/net/busy-poll.ts';
import { readInto } from '../../src/net/read-into.ts';
import { loadSettings } from '../../src/settings.ts';

/** manual is a clock (in ms) and a scheduler the test moves by hand. */
function manual() {
  const queue: (() => void)[] = [];
  const m = {
    ms: 1000,
    queue,
    now: () => m.ms,
    schedule: (fn: () => void) => {
      queue.push(fn);
    },
    /** opts are BusyPoll's options for this clock: no slice, which would wait for ever. */
    get opts() {
      return { now: m.now, schedule: m.schedule, sliceUs: 0 };
    },
    /** turn runs what the last turn scheduled, as the event loop would. */
    turn(): void {
      for (const fn of queue.splice(0)) fn();
    },
    /** runOut turns the loop, stepMs apart, until nothing is scheduled; it counts the turns. */
    runOut(stepMs: number): number {
      let turns = 0;
      while (queue.length > 0 && turns < 1000) {
        m.ms += stepMs;
        m.turn();
        turns++;
      }
      return turns;
    },
  };
  return m;
}

test('reads close together grow the window to the longest; the loop turns through it', () => {
  const m = manual();
  const poll = new BusyPoll(100, m.opts);
  const windows: number[] = [];
  for (let i = 0; i < 5; i++) {
    poll.afterRead(64);
    windows.push(poll.windowUs);
    if (i > 0) assert.equal(poll.spinning, true);
    // 50 µs later, within the longest window: the loop turns every 10 µs until then.
    m.ms += 0.05;
    m.turn();
  }
  // The first read follows no other, so it opens nothing; each later one doubles the window.
  assert.deepEqual(windows, [0, 25, 50, 100, 100]);
  // The last window (100 µs) was opened 50 µs ago: five more turns of 10 µs close it (six,
  // where the clock's decimal steps round down).
  const turns = m.runOut(0.01);
  assert.ok(turns === 5 || turns === 6, String(turns));
  assert.equal(poll.spinning, false);
  // The 25 and 50 µs windows closed before the next read came; the 100 µs one caught the last
  // two reads and was moved on by each.
  assert.equal(poll.windows, 3);
  // The 25 and 50 µs windows stayed open 50 µs each, until the turn that found them over; the
  // last one from the fourth read (at 150 µs) to 100 µs after the fifth (at 200 µs): 250 µs.
  assert.ok(Math.abs(poll.spentSeconds - 0.25e-3) <= 0.011e-3, String(poll.spentSeconds));
});

test('reads far apart shrink the window to none, and then the loop sleeps at once', () => {
  const m = manual();
  const poll = new BusyPoll(100, m.opts);
  for (let i = 0; i < 4; i++) {
    poll.afterRead(64);
    m.ms += 0.01;
  }
  assert.equal(poll.windowUs, 100);
  m.runOut(0.01);
  const windows: number[] = [];
  for (let i = 0; i < 5; i++) {
    m.ms += 5; // a keystroke's pace
    poll.afterRead(64);
    windows.push(poll.windowUs);
    m.runOut(0.01);
  }
  assert.deepEqual(windows, [50, 25, 13, 0, 0]);
  const before = poll.windows;
  m.ms += 5;
  poll.afterRead(64);
  assert.equal(poll.windows, before);
  assert.equal(m.queue.length, 0, 'nothing scheduled');
});

test('a read inside an open window moves its end instead of opening another', () => {
  const m = manual();
  const poll = new BusyPoll(100, m.opts);
  poll.afterRead(64);
  m.ms += 0.01;
  poll.afterRead(64); // 25 µs window, to 1000.035
  m.ms += 0.02;
  m.turn();
  poll.afterRead(64); // 50 µs window from 1000.03, to 1000.08
  assert.equal(m.queue.length, 1, 'one turn in flight, not two');
  m.ms += 0.04;
  m.turn();
  assert.equal(poll.spinning, true, 'at 1000.07 the moved window is still open');
  m.ms += 0.01;
  m.turn();
  assert.equal(poll.spinning, false);
  assert.equal(poll.windows, 1);
});

test('bulk reads, and small reads just after them, neither open a window nor count', () => {
  const m = manual();
  const poll = new BusyPoll(100, m.opts);
  for (let i = 0; i < 4; i++) {
    poll.afterRead(BULK_READ);
    m.ms += 0.01;
  }
  assert.equal(poll.reads, 0);
  assert.equal(poll.windowUs, 0);
  assert.equal(m.queue.length, 0);
  // Small reads beside a transfer (window updates, a socket's last bytes) open none either.
  poll.afterRead(12);
  poll.afterRead(BULK_READ - 1);
  assert.equal(poll.reads, 0);
  assert.equal(m.queue.length, 0);
  m.ms += BULK_QUIET_MS;
  poll.afterRead(BULK_READ - 1);
  poll.afterRead(BULK_READ - 1);
  assert.equal(poll.reads, 2);
  assert.equal(poll.spinning, true);
});

test('a longest window of 0 schedules nothing; it can be changed, within 0 to 1000 µs', () => {
  const m = manual();
  const poll = new BusyPoll(0, m.opts);
  poll.afterRead(64);
  poll.afterRead(64);
  assert.equal(m.queue.length, 0);
  assert.equal(poll.reads, 0);
  poll.setMaxWindow(200);
  poll.afterRead(64);
  poll.afterRead(64);
  poll.afterRead(64);
  assert.equal(poll.windowUs, 100);
  poll.setMaxWindow(40);
  assert.equal(poll.windowUs, 40, 'a lower limit cuts the window down');
  assert.throws(() => poll.setMaxWindow(-1), RangeError);
  assert.throws(() => poll.setMaxWindow(1001), RangeError);
  assert.throws(() => poll.setMaxWindow(Number.NaN), RangeError);
  assert.equal(poll.windowUs, 40, 'a refused limit changes nothing');
});

test('GATEWAY_BUSY_POLL_US: 100 by default, 0 to 1000, anything else refused by name', () => {
  assert.equal(loadSettings({}).busyPollUs, 100);
  assert.equal(loadSettings({ GATEWAY_BUSY_POLL_US: '0' }).busyPollUs, 0);
  assert.equal(loadSettings({ GATEWAY_BUSY_POLL_US: '1000' }).busyPollUs, 1000);
  for (const bad of ['1001', '-5', '2.5', 'fast']) {
    assert.throws(() => loadSettings({ GATEWAY_BUSY_POLL_US: bad }),
      /GATEWAY_BUSY_POLL_US \(busyPollUs\): must be a whole number of microseconds/);
  }
});

test('each turn of an open window waits out a slice first, so turns are few', () => {
  // With the real clock: a 1000 µs window in slices of SLICE_US is at most 1000 / SLICE_US
  // turns, each an immediate allocated, however quickly the loop itself turns.
  let turns = 0;
  const poll = new BusyPoll(1000, { schedule: (fn) => {
    turns++;
    queueMicrotask(fn);
  } });
  poll.afterRead(64);
  poll.afterRead(64); // opens a 250 µs window; the microtasks run it to its end
  return new Promise<void>((resolve) => setImmediate(() => {
    assert.equal(poll.spinning, false);
    assert.ok(turns >= 1 && turns <= 250 / SLICE_US + 1, String(turns));
    resolve();
  }));
});

test('on the real event loop a window turns the loop until it ends, then the process exits', () => {
  const script = `
    import { BusyPoll } from ${JSON.stringify(new URL('../../src/net/busy-poll.ts',
      import.meta.url).href)};
    const poll = new BusyPoll(1000);
    poll.afterRead(64);
    poll.afterRead(64);
    process.on('exit', () => { console.log(poll.spinning, poll.spentSeconds >= 250e-6); });
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script],
    { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.signal, null, 'the process had to be killed');
  assert.equal(r.status, 0, r.stderr);
  // Had the loop slept (an unreferenced immediate) the process would have exited at once, with
  // the window still open.
  assert.equal(r.stdout.trim(), 'false true');
});

test('reads through readInto reach the process poller, small ones only', async (t) => {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect(port, '127.0.0.1');
  const [peer] = await accepted;
  t.after(() => {
    client.destroy();
    peer.destroy();
    server.close();
    busyPoll.setMaxWindow(0);
  });
  busyPoll.setMaxWindow(200);
  const before = busyPoll.reads;
  const sizes: number[] = [];
  let lastBulk = Number.NEGATIVE_INFINITY;
  let expected = 0;
  readInto(peer, Buffer.alloc(BULK_READ), (data) => {
    sizes.push(data.length);
    const now = performance.now();
    if (data.length === BULK_READ) lastBulk = now;
    else if (now - lastBulk >= BULK_QUIET_MS) expected++;
    return true;
  });
  const total = () => sizes.reduce((a, b) => a + b, 0);
  client.write('one');
  while (total() < 3) await new Promise((r) => setTimeout(r, 5));
  client.write(Buffer.alloc(4 * BULK_READ, 'x'));
  while (total() < 3 + 4 * BULK_READ) await new Promise((r) => setTimeout(r, 5));
  // 'one' counted; the bulk reads did not, nor any short tail that came just after them.
  assert.ok(sizes.some((n) => n === BULK_READ), `reads: ${sizes}`);
  assert.ok(expected >= 1);
  assert.equal(busyPoll.reads - before, expected, `reads: ${sizes}`);
});
