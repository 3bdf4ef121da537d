// BusyPoll keeps the event loop turning for a window after small reads. These tests drive it
// with a clock and a scheduler of their own, so they check what it does, not how fast.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import {
  BULK_QUIET_MS, BULK_READ, BusyPoll, MAX_BACKOFF, PAY_READS, SLICE_US, busyPoll,
} from '../../src/net/busy-poll.ts';
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
    /**
     * readEvery makes n small reads, the loop turning after each: the i-th (from 1) is
     * followed by gapMs(i) milliseconds, or by gapMs if it is a number.
     */
    readEvery(poll: BusyPoll, n: number, gapMs: number | ((i: number) => number)): void {
      for (let i = 1; i <= n; i++) {
        poll.afterRead(64);
        m.ms += typeof gapMs === 'number' ? gapMs : gapMs(i);
        m.turn();
      }
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

test('a small read opens a window; the loop turns through it, then lets go', () => {
  const m = manual();
  const poll = new BusyPoll(100, m.opts);
  poll.afterRead(64);
  assert.equal(poll.spinning, true);
  assert.equal(poll.windows, 1);
  // Turns every 10 µs: 10, ..., 90 µs are inside the window; the turn at 100 µs lets go.
  const turns = m.runOut(0.01);
  assert.ok(turns === 10 || turns === 11, String(turns)); // 11 where decimal steps round down
  assert.equal(poll.spinning, false);
  assert.ok(Math.abs(poll.spentSeconds - 100e-6) <= 10e-6, String(poll.spentSeconds));
});

test('a read inside an open window moves its end, and a window that caught one goes on', () => {
  const m = manual();
  const poll = new BusyPoll(200, m.opts);
  for (let i = 0; i < 20; i++) {
    poll.afterRead(64);
    m.ms += 0.06; // an answer 60 µs later: inside the window, and within half of it
    m.turn();
    assert.equal(poll.spinning, true);
  }
  assert.equal(poll.windows, 1, 'one window, moved on by each read');
  assert.equal(m.queue.length, 1, 'one turn in flight, not one per read');
  m.runOut(0.01);
  assert.equal(poll.backoff, 0, 'it caught reads, so the next read polls again');
  poll.afterRead(64);
  assert.equal(poll.windows, 2);
});

test('round trips keep a window open through an answer that is late now and then', () => {
  // Reads 70 µs apart, as a round trip's two halves come, and every 20th read 180 µs late:
  // past a 100 µs window, inside a 200 µs one, and the window still pays.
  const m = manual();
  const poll = new BusyPoll(200, m.opts);
  m.readEvery(poll, 2000, (i) => (i % 20 === 0 ? 0.18 : 0.07));
  assert.equal(poll.windows, 1);
  assert.equal(poll.spinning, true);
  m.runOut(0.01);
  assert.equal(poll.backoff, 0);
});

test('windows that catch nothing back off, up to MAX_BACKOFF reads; windows that pay halve it', () => {
  const m = manual();
  const poll = new BusyPoll(100, m.opts);
  const opened: number[] = [];
  for (let read = 1; read <= 200; read++) {
    const before = poll.windows;
    poll.afterRead(64);
    if (poll.windows > before) opened.push(read);
    m.runOut(0.01);
    m.ms += 1; // a millisecond apart: no window catches the next read
  }
  // Skips of 1, 2, 4, ... 64, 64: the reads that opened a window.
  assert.deepEqual(opened, [1, 3, 6, 11, 20, 37, 70, 135, 200]);
  assert.equal(poll.backoff, MAX_BACKOFF);
  // Reads come close together again, in exchanges of four reads 50 µs apart, and the window is
  // 200 µs. Once the skips run out, each window that catches an exchange pays and halves the
  // backoff, 32, ... 1, 0.
  poll.setWindow(200);
  const backoffs: number[] = [];
  while (poll.backoff > 0 && backoffs.length < 40) {
    m.readEvery(poll, 4, 0.05);
    m.runOut(0.01);
    m.ms += 1;
    backoffs.push(poll.backoff);
  }
  assert.deepEqual([...new Set(backoffs)], [64, 32, 16, 8, 4, 2, 1, 0]);
});

test('a stretch of reads that pays halves the backoff, so occasional late reads cost little',
  () => {
    // Reads 90 µs apart and every 40th 190 µs late: the stretch of PAY_READS reads around a late
    // one averages over half a window and closes it; the stretches that pay bring the backoff
    // back down, and the loop polls nearly all the time.
    const m = manual();
    const poll = new BusyPoll(200, m.opts);
    const start = m.ms;
    m.readEvery(poll, 4000, (i) => (i % 40 === 0 ? 0.19 : 0.09));
    assert.ok(poll.backoff <= 1, String(poll.backoff));
    const share = poll.spentSeconds / ((m.ms - start) / 1000);
    assert.ok(share > 0.9, `polled ${(share * 100).toFixed(1)} % of the time`);
  });

test('short exchanges whose reads come within half a window each pay for their window', () => {
  // Six reads 70 µs apart every 5 ms, as a command and its answers come: every exchange polls.
  const m = manual();
  const poll = new BusyPoll(200, m.opts);
  for (let exchange = 0; exchange < 50; exchange++) {
    m.readEvery(poll, 6, 0.07);
    m.runOut(0.01);
    m.ms += 5;
  }
  assert.equal(poll.windows, 50);
  assert.equal(poll.backoff, 0);
});

test('a message read in two parts counts once: frames whose header and body come apart', () => {
  // hashicorp/yamux writes a frame's header and its body separately. Messages every 150 µs,
  // each read as two parts 10 µs apart, are reads 150 µs apart, not 75, and do not pay.
  const m = manual();
  const poll = new BusyPoll(200, m.opts);
  const start = m.ms;
  for (let i = 0; i < 5000; i++) {
    poll.afterRead(12);
    m.ms += 0.01;
    m.turn();
    poll.afterRead(64);
    m.ms += 0.14;
    m.turn();
  }
  assert.equal(poll.backoff, MAX_BACKOFF);
  const share = poll.spentSeconds / ((m.ms - start) / 1000);
  assert.ok(share < 0.15, `polled ${(share * 100).toFixed(1)} % of the time`);
});

test('a window that caught a read but cost more than half a window per catch backs off too', () => {
  const m = manual();
  const poll = new BusyPoll(200, m.opts);
  poll.afterRead(64);
  m.ms += 0.15;
  m.turn();
  poll.afterRead(64); // caught at 150 µs; the window now ends at 350 µs
  m.runOut(0.01);
  // Open 350 µs for one wake-up saved: more than the 100 µs it may cost.
  assert.equal(poll.backoff, 1);
  const before = poll.windows;
  poll.afterRead(64);
  assert.equal(poll.windows, before, 'the next read was skipped');
});

test('reads that keep a window open but come over half a window apart close it and back off',
  () => {
    // 150 µs apart with a 200 µs window: each read comes before the window ends, so only the
    // check every PAY_READS reads stops it spinning all the time.
    const m = manual();
    const poll = new BusyPoll(200, m.opts);
    const reads = 10_000;
    m.readEvery(poll, reads, 0.15);
    m.runOut(0.01);
    assert.equal(poll.backoff, MAX_BACKOFF);
    // Once backed off all the way, a window per MAX_BACKOFF skipped reads, each open for
    // PAY_READS reads: about a tenth of the time, against all of it.
    const perWindow = PAY_READS * 150e-6;
    assert.ok(poll.windows <= reads / (MAX_BACKOFF + PAY_READS) + 10, String(poll.windows));
    assert.ok(poll.spentSeconds <= poll.windows * perWindow + 1e-6, String(poll.spentSeconds));
    assert.ok(poll.spentSeconds < 0.15 * reads * 150e-6, String(poll.spentSeconds));
  });

test('a window closed between turns keeps one turn in flight when the next one opens', () => {
  const m = manual();
  const poll = new BusyPoll(200, m.opts);
  for (let i = 0; i <= PAY_READS; i++) {
    poll.afterRead(64);
    m.ms += 0.15;
  }
  assert.equal(poll.spinning, false, 'closed by the check, not by its turn');
  assert.equal(m.queue.length, 1);
  const spent = poll.spentSeconds;
  poll.afterRead(64); // skipped: the window did not pay
  m.ms += 0.05;
  poll.afterRead(64); // opens the next window, served by the turn already scheduled
  assert.equal(poll.windows, 2);
  assert.equal(m.queue.length, 1);
  m.turn();
  assert.equal(m.queue.length, 1, 'the open window goes on turning');
  m.runOut(0.01);
  assert.equal(poll.spinning, false);
  assert.ok(poll.spentSeconds - spent <= 220e-6, 'the first window counted once');
});

test('reads just too far apart for the window cost a window per MAX_BACKOFF reads at most', () => {
  // 150 µs apart with a 100 µs window: every window ends before the next read.
  const m = manual();
  const poll = new BusyPoll(100, m.opts);
  const reads = 10_000;
  m.readEvery(poll, reads, 0.15);
  m.runOut(0.01);
  assert.ok(poll.windows <= reads / (MAX_BACKOFF + 1) + 10, String(poll.windows));
  // Each window stays open until the turn that finds it over, here the next read's.
  assert.ok(poll.spentSeconds <= poll.windows * 150e-6 + 1e-9, String(poll.spentSeconds));
});

test('bulk reads, and small reads just after them, neither open a window nor count', () => {
  const m = manual();
  const poll = new BusyPoll(100, m.opts);
  for (let i = 0; i < 4; i++) {
    poll.afterRead(BULK_READ);
    m.ms += 0.01;
  }
  assert.equal(poll.reads, 0);
  assert.equal(m.queue.length, 0);
  // Small reads beside a transfer (window updates, a socket's last bytes) open none either.
  poll.afterRead(12);
  poll.afterRead(BULK_READ - 1);
  assert.equal(poll.reads, 0);
  assert.equal(m.queue.length, 0);
  m.ms += BULK_QUIET_MS;
  poll.afterRead(BULK_READ - 1);
  assert.equal(poll.reads, 1);
  assert.equal(poll.spinning, true);
});

test('a window of 0 schedules nothing; it can be changed, within 0 to 1000 µs', () => {
  const m = manual();
  const poll = new BusyPoll(0, m.opts);
  poll.afterRead(64);
  assert.equal(m.queue.length, 0);
  assert.equal(poll.reads, 0);
  poll.setWindow(200);
  assert.equal(poll.windowUs, 200);
  poll.afterRead(64);
  assert.equal(m.queue.length, 1);
  assert.throws(() => poll.setWindow(-1), RangeError);
  assert.throws(() => poll.setWindow(1001), RangeError);
  assert.throws(() => poll.setWindow(Number.NaN), RangeError);
  assert.equal(poll.windowUs, 200, 'a refused window changes nothing');
});

test('each turn of an open window waits out a slice first, so turns are few', () => {
  // A clock that moves 0.1 µs each time it is read, as a busy loop reading it would see.
  // Turning flat out would be about a thousand turns in a 100 µs window, each an immediate
  // allocated; in slices of SLICE_US it is a few.
  const m = manual();
  const ticking = { ...m.opts, sliceUs: SLICE_US, now: () => (m.ms += 0.0001) };
  const poll = new BusyPoll(100, ticking);
  poll.afterRead(64);
  let turns = 0;
  while (m.queue.length > 0 && turns < 10_000) {
    m.turn();
    turns++;
  }
  assert.equal(poll.spinning, false);
  assert.ok(turns <= 100 / SLICE_US + 2, String(turns));
});

test('GATEWAY_BUSY_POLL_US: 200 by default, 0 to 1000, anything else refused by name', () => {
  assert.equal(loadSettings({}).busyPollUs, 200);
  assert.equal(loadSettings({ GATEWAY_BUSY_POLL_US: '0' }).busyPollUs, 0);
  assert.equal(loadSettings({ GATEWAY_BUSY_POLL_US: '1000' }).busyPollUs, 1000);
  for (const bad of ['1001', '-5', '2.5', 'fast']) {
    assert.throws(() => loadSettings({ GATEWAY_BUSY_POLL_US: bad }),
      /GATEWAY_BUSY_POLL_US \(busyPollUs\): must be a whole number of microseconds/);
  }
});

test('on the real event loop a window turns the loop until it ends, then the process exits', () => {
  const script = `
    import { BusyPoll } from ${JSON.stringify(new URL('../../src/net/busy-poll.ts',
      import.meta.url).href)};
    const poll = new BusyPoll(1000);
    poll.afterRead(64);
    process.on('exit', () => { console.log(poll.spinning, poll.spentSeconds >= 1e-3); });
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
    busyPoll.setWindow(0);
  });
  busyPoll.setWindow(200);
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
