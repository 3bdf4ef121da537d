// BusyPoll keeps the event loop turning for a window after each read. These tests drive it with
// a clock and a scheduler of their own, so they check what it does, not how fast.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { BusyPoll, busyPoll } from '../../src/net/busy-poll.ts';
import { readInto } from '../../src/net/read-into.ts';
import { loadSettings } from '../../src/settings.ts';

/** manual is a clock and a scheduler the test moves by hand. */
function manual() {
  const queue: (() => void)[] = [];
  const m = {
    ms: 0,
    queue,
    now: () => m.ms,
    schedule: (fn: () => void) => {
      queue.push(fn);
    },
    /** turn runs what the last turn scheduled, as the event loop would. */
    turn(): number {
      const due = queue.splice(0);
      for (const fn of due) fn();
      return due.length;
    },
  };
  return m;
}

test('a read keeps the loop turning until the window has passed, then it stops', () => {
  const m = manual();
  const poll = new BusyPoll(50, m.now, m.schedule);
  poll.afterRead();
  assert.equal(poll.spinning, true);
  assert.equal(poll.windows, 1);
  let turns = 0;
  for (; turns < 10 && m.queue.length > 0; turns++) {
    m.ms += 0.02; // 20 µs per turn
    m.turn();
  }
  // 20, 40 µs are inside the 50 µs window; at 60 µs the loop is let go.
  assert.equal(turns, 3);
  assert.equal(poll.spinning, false);
  assert.equal(m.queue.length, 0);
  assert.ok(Math.abs(poll.spentSeconds - 60e-6) < 1e-9);
});

test('a read inside an open window moves its end instead of opening another', () => {
  const m = manual();
  const poll = new BusyPoll(50, m.now, m.schedule);
  poll.afterRead();
  m.ms += 0.04;
  m.turn();
  poll.afterRead(); // now ends at 90 µs
  assert.equal(m.queue.length, 1, 'one turn in flight, not two');
  m.ms += 0.04;
  m.turn();
  assert.equal(poll.spinning, true, 'at 80 µs the moved window is still open');
  m.ms += 0.02;
  m.turn();
  assert.equal(poll.spinning, false);
  assert.equal(poll.windows, 1);
  assert.ok(Math.abs(poll.spentSeconds - 100e-6) < 1e-9);
});

test('a window of 0 schedules nothing, and a window can be changed', () => {
  const m = manual();
  const poll = new BusyPoll(0, m.now, m.schedule);
  poll.afterRead();
  assert.equal(m.queue.length, 0);
  assert.equal(poll.spinning, false);
  poll.setWindow(30);
  assert.equal(poll.windowUs, 30);
  poll.afterRead();
  assert.equal(m.queue.length, 1);
  assert.throws(() => poll.setWindow(-1), RangeError);
  assert.throws(() => poll.setWindow(1001), RangeError);
  assert.throws(() => poll.setWindow(Number.NaN), RangeError);
  assert.equal(poll.windowUs, 30, 'a refused window leaves the old one');
});

test('GATEWAY_BUSY_POLL_US: 50 by default, 0 to 1000, anything else refused by name', () => {
  assert.equal(loadSettings({}).busyPollUs, 50);
  assert.equal(loadSettings({ GATEWAY_BUSY_POLL_US: '0' }).busyPollUs, 0);
  assert.equal(loadSettings({ GATEWAY_BUSY_POLL_US: '1000' }).busyPollUs, 1000);
  for (const bad of ['1001', '-5', '2.5', 'fast']) {
    assert.throws(() => loadSettings({ GATEWAY_BUSY_POLL_US: bad }),
      /GATEWAY_BUSY_POLL_US \(busyPollUs\): must be a whole number of microseconds/);
  }
});

test('an open window ends by itself, and the process exits', () => {
  const script = `
    import { BusyPoll } from ${JSON.stringify(new URL('../../src/net/busy-poll.ts',
      import.meta.url).href)};
    const poll = new BusyPoll(1000);
    poll.afterRead();
    process.on('exit', () => { console.log(poll.spinning, poll.spentSeconds >= 0.001); });
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script],
    { encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.signal, null, 'the process had to be killed');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'false true', 'the loop turned for the whole window, then let go');
});

test('every read through readInto opens or extends the process window', async (t) => {
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
  const before = busyPoll.windows;
  const got: string[] = [];
  readInto(peer, Buffer.alloc(1024), (data) => {
    got.push(data.toString());
    return true;
  });
  for (const word of ['one', 'two']) {
    client.write(word);
    while (!got.join('').endsWith(word)) await new Promise((r) => setTimeout(r, 5));
    // Past the window, so the next read finds the loop about to sleep.
    await new Promise((r) => setTimeout(r, 5));
  }
  assert.equal(got.join(''), 'onetwo');
  assert.equal(busyPoll.windows - before, 2);
  assert.equal(busyPoll.spinning, false);
});
