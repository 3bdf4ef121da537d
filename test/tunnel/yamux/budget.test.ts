// A window budget shared by sessions: streams open at 256 KiB, take the rest of their window
// once their consumer has read half a window, and give it back when they close. Two of our
// sessions over loopback TCP; the side with the budget opens the streams and receives, as the
// sidecar does with crunch-run's gateway.
import assert from 'node:assert/strict';
import net from 'node:net';
import { afterEach, describe, it } from 'node:test';
import { INITIAL_STREAM_WINDOW } from '../../../src/tunnel/yamux/const.ts';
import { Session, type Stream, WindowBudget } from '../../../src/tunnel/yamux/index.ts';
import { loopbackPair } from './loopback.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const T = { timeout: 30_000 };
const cleanups: Array<() => void> = [];

afterEach(() => {
  for (const fn of cleanups.splice(0)) fn();
});

async function sessions(budget: WindowBudget, window = MiB): Promise<[Session, Session]> {
  const [a, b] = await loopbackPair();
  const receiver = new Session(b, {
    role: 'server', keepAliveIntervalMs: 0, maxStreamWindow: window, windowBudget: budget,
  });
  const sender = new Session(a, { role: 'client', keepAliveIntervalMs: 0 });
  cleanups.push(() => {
    receiver.close();
    sender.close();
    a.destroy();
    b.destroy();
  });
  return [receiver, sender];
}

async function until(cond: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

// A stream pair: the receiver's end counts what its consumer has read.
async function pair(receiver: Session, sender: Session) {
  const accepted = sender.accept();
  const incoming = receiver.open();
  const outgoing = await accepted;
  // A session that closes destroys its streams with an error.
  incoming.on('error', () => {});
  outgoing.on('error', () => {});
  let read = 0;
  const consume = () => incoming.on('data', (chunk: Buffer) => { read += chunk.length; });
  return { incoming, outgoing, consume, read: () => read };
}

async function send(to: { outgoing: Stream; read: () => number }, bytes: number) {
  const before = to.read();
  to.outgoing.write(Buffer.alloc(bytes, 'x'));
  await until(() => to.read() === before + bytes, `${bytes} bytes read`);
}

describe('yamux session: window budget', () => {
  it('grows a stream once it has read half a window, and takes it back on close', T,
    async () => {
      const budget = new WindowBudget(MiB);
      const [receiver, sender] = await sessions(budget);
      const s1 = await pair(receiver, sender);
      s1.consume();
      assert.equal(s1.incoming.receiveWindow, INITIAL_STREAM_WINDOW);
      await send(s1, 64 * KiB);
      assert.equal(s1.incoming.receiveWindow, INITIAL_STREAM_WINDOW, 'not yet bulk');
      assert.equal(budget.taken, 0);
      await send(s1, 200 * KiB);
      assert.equal(s1.incoming.receiveWindow, MiB);
      assert.equal(budget.taken, 768 * KiB);
      // The peer may now send more than 256 KiB ahead.
      await until(() => s1.outgoing.sendWindow > 512 * KiB, 'the peer to see the window');

      // A second stream gets what is left; a third, nothing.
      const s2 = await pair(receiver, sender);
      s2.consume();
      await send(s2, 300 * KiB);
      assert.equal(s2.incoming.receiveWindow, 512 * KiB);
      const s3 = await pair(receiver, sender);
      s3.consume();
      await send(s3, 300 * KiB);
      assert.equal(s3.incoming.receiveWindow, INITIAL_STREAM_WINDOW);
      assert.equal(budget.taken, MiB);
      // Still moving data, at 256 KiB.
      await send(s3, 2 * MiB);

      // Closed both ways, a stream gives its part back; a reset one too.
      s1.outgoing.end();
      s1.incoming.end();
      await until(() => budget.taken === 256 * KiB, 's1 to give back');
      s2.outgoing.destroy();
      await until(() => budget.taken === 0, 's2 to give back');
    });

  it('does not grow a stream whose consumer has not read', T, async () => {
    const budget = new WindowBudget(MiB);
    const [receiver, sender] = await sessions(budget);
    const s = await pair(receiver, sender);
    s.outgoing.write(Buffer.alloc(INITIAL_STREAM_WINDOW, 'x'));
    await until(() => s.incoming.bufferedInbound === INITIAL_STREAM_WINDOW, 'a full window');
    assert.equal(s.outgoing.sendWindow, 0);
    assert.equal(budget.taken, 0);
    assert.equal(s.incoming.receiveWindow, INITIAL_STREAM_WINDOW);
  });

  it('does not grow a stream whose consumer took one chunk and paused', T, async () => {
    const budget = new WindowBudget(MiB);
    const [receiver, sender] = await sessions(budget);
    const s = await pair(receiver, sender);
    let took = 0;
    s.incoming.once('data', (chunk: Buffer) => {
      took = chunk.length;
      s.incoming.pause();
    });
    s.outgoing.write(Buffer.alloc(INITIAL_STREAM_WINDOW, 'x'));
    // What was pushed to the paused Readable's buffer has not been taken by the consumer.
    await until(() => took + s.incoming.readableLength + s.incoming.bufferedInbound ===
      INITIAL_STREAM_WINDOW, 'the whole window to arrive');
    assert.ok(took < 128 * KiB && s.incoming.readableLength > 0, `took ${took}`);
    assert.equal(s.incoming.receiveWindow, INITIAL_STREAM_WINDOW);
    assert.equal(budget.taken, 0);
  });

  it('keeps a closed stream\'s part while its unread data waits', T, async () => {
    const budget = new WindowBudget(MiB);
    const [receiver, sender] = await sessions(budget);
    const s = await pair(receiver, sender);
    s.consume();
    await send(s, 200 * KiB);
    assert.equal(budget.taken, 768 * KiB);
    s.incoming.pause();
    // The peer fills the grown window and closes; so does this side.
    s.outgoing.end(Buffer.alloc(900 * KiB, 'y'));
    s.incoming.end();
    await until(() => s.incoming.bufferedInbound + s.incoming.readableLength >= 800 * KiB,
      'the unread data');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(budget.taken, 768 * KiB, 'held while the data waits');
    s.incoming.resume();
    await until(() => s.read() === 1100 * KiB, 'everything read');
    await until(() => budget.taken === 0, 'the budget back once read');
  });

  it('gives every stream\'s part back when the session closes', T, async () => {
    const budget = new WindowBudget(4 * MiB);
    const [receiver, sender] = await sessions(budget, 2 * MiB);
    for (let i = 0; i < 2; i++) {
      const s = await pair(receiver, sender);
      s.consume();
      await send(s, 200 * KiB);
    }
    assert.equal(budget.taken, 2 * (2 * MiB - INITIAL_STREAM_WINDOW));
    sender.close();
    await until(() => budget.taken === 0, 'the budget back');
  });

  it('is one budget for every session that shares it', T, async () => {
    const budget = new WindowBudget(MiB);
    const [r1, p1] = await sessions(budget);
    const [r2, p2] = await sessions(budget);
    const a = await pair(r1, p1);
    const b = await pair(r2, p2);
    a.consume();
    b.consume();
    await send(a, 200 * KiB);
    await send(b, 200 * KiB);
    assert.equal(a.incoming.receiveWindow, MiB);
    assert.equal(b.incoming.receiveWindow, 512 * KiB);
  });

  it('refuses a budget that is not a whole number of bytes', () => {
    for (const bad of [-1, 1.5, Number.NaN, Infinity]) {
      assert.throws(() => new WindowBudget(bad), RangeError);
    }
    assert.throws(() => new Session(new net.Socket(), {
      role: 'server', windowBudget: { take: () => 0 } as unknown as WindowBudget,
    }), TypeError);
  });
});
