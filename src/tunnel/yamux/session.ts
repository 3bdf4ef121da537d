// A yamux session over one byte stream (usually a TCP socket). It owns the socket: it reads
// frames from it, routes them to streams, answers pings, and closes it when the session ends.
// Behaviour follows hashicorp/yamux so that Go peers (crunch-run) interoperate.
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { readInto } from '../../net/read-into.ts';
import { resolveConfig, type SessionConfig, type SessionOptions } from './config.ts';
import {
  FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, GO_AWAY_INTERNAL_ERROR, GO_AWAY_NORMAL,
  GO_AWAY_PROTOCOL_ERROR, INITIAL_STREAM_WINDOW, MAX_STREAM_ID, TYPE_DATA, TYPE_GO_AWAY,
  TYPE_PING, TYPE_WINDOW_UPDATE, YamuxError, type YamuxErrorCode,
} from './const.ts';
import { encodeHeader, FrameDecoder } from './frame.ts';
import {
  kAccept, kData, kExpect, kFin, kOpen, kRemoteEnded, kSend, kTerminate, kWindow, Stream,
  type StreamLink, type WriteCallback,
} from './stream.ts';

interface AcceptWaiter {
  resolve: (stream: Stream) => void;
  reject: (err: Error) => void;
}

interface PendingPing {
  start: number;
  timer: NodeJS.Timeout;
  resolve: (rttMs: number) => void;
  reject: (err: Error) => void;
}

// One read buffer serves every session: each read is parsed, and its payload delivered or
// copied, before the next read can land in it. It is large because a read's payload is shared
// among the streams it carries, and each stream's share goes to its client in one write at the
// end of the turn: with 8 busy streams, 64 KiB reads made writes of about 8 KiB, and 256 KiB
// reads make them four times larger, for fewer system calls and wake-ups on both sides.
export const READ_BUFFER_SIZE = 256 * 1024;
const sharedReadBuffer = Buffer.allocUnsafeSlow(READ_BUFFER_SIZE);

/**
 * SEND_QUEUE_LIMIT is how much may wait unsent in the socket before streams hold their data
 * back and take turns, in the order they came, as it leaves. Each stream may send a whole
 * window at once, so without a limit a peer that reads slowly would have a window per busy
 * stream queued here (a tunnel's 1024 streams at yamux's 256 KiB: 256 MiB). A turn of the
 * event loop with eight busy streams queues about 2 MiB, well under the limit.
 */
export const SEND_QUEUE_LIMIT = 4 * 1024 * 1024;

// A write of no bytes, whose callback tells that everything written before it has left.
const PROGRESS_MARK = Buffer.alloc(0);

/**
 * Session multiplexes streams over one socket, which it owns and closes. Events: 'close'
 * (err?: Error) once when the session ends, 'goaway' (reason: number) the first time the peer
 * sends GoAway, and 'protocol-error' (err: YamuxError) when malformed input makes this side
 * send GoAway(1) and close. It never emits 'error'. When the session ends, open streams are
 * destroyed: with an error when the peer or the socket went away or close(err) was called,
 * without one after a plain close() or once their reading side had ended. A stream listener
 * that throws while data is delivered ends the session with ERR_YAMUX_INTERNAL (the thrown
 * value is its cause) instead of escaping the socket handler.
 */
export class Session extends EventEmitter {
  readonly #socket: Duplex;
  readonly #config: SessionConfig;
  readonly #decoder: FrameDecoder;
  readonly #link: StreamLink;
  readonly #streams = new Map<number, Stream>();
  readonly #backlog: Stream[] = [];
  // Streams with data to send that wait for room in the socket, in the order they came, and the
  // one taking its turn now.
  readonly #sendWaiters = new Set<Stream>();
  #sending: Stream | null = null;
  // Whether a PROGRESS_MARK is on its way out.
  #marking = false;
  readonly #acceptWaiters: AcceptWaiter[] = [];
  readonly #pings = new Map<number, PendingPing>();
  #nextId: number;
  // Highest id the peer opened; lower unknown ids belong to streams that already ended.
  #maxInboundId = 0;
  #nextPingId = 0;
  // The stream receiving the Data payload now being decoded, and whether that frame had FIN.
  #rx: Stream | null = null;
  #rxFin = false;
  #closed = false;
  #closeError: Error | undefined;
  #localGoAway = false;
  #remoteGoAway = false;
  #bytesIn = 0;
  #bytesOut = 0;
  // Frames are held in the corked socket until a flush; see #writeFrame.
  #corked = false;
  #flushAtTick = false;
  #flushAtImmediate = false;
  // Set while the payload being delivered is a view of sharedReadBuffer.
  #lent = false;
  #keepAliveTimer: NodeJS.Timeout | null = null;
  #keepAliveInFlight = false;
  // One timer for all drain waits, restarted with refresh() rather than allocated per write.
  #drainTimer: NodeJS.Timeout | null = null;
  #awaitingDrain = false;

  constructor(socket: Duplex, options: SessionOptions) {
    super();
    this.#config = resolveConfig(options);
    this.#socket = socket;
    this.#nextId = this.#config.client ? 1 : 2;
    this.#decoder = new FrameDecoder({
      onFrame: (type, flags, id, length) => this.#onFrame(type, flags, id, length),
      onData: (piece, last) => this.#onData(piece, last),
      onError: (err) => this.#protocolError(err),
    });
    this.#link = {
      maxWindow: this.#config.maxStreamWindow,
      budget: this.#config.windowBudget,
      isClosed: () => this.#closed,
      writeFrame: (type, flags, id, length, payload, cb) =>
        this.#writeFrame(type, flags, id, length, payload, cb),
      release: (stream) => {
        if (this.#streams.get(stream.id) === stream) this.#streams.delete(stream.id);
      },
      mustWait: (stream) => {
        if (this.#socket.writableLength >= SEND_QUEUE_LIMIT) return true;
        return this.#sending !== stream && this.#sendWaiters.size > 0;
      },
      waitToSend: (stream) => {
        // A stream already waiting keeps its place.
        this.#sendWaiters.add(stream);
        this.#watchProgress();
      },
    };
    // Frames are small and latency matters for pings and interactive streams; writes are
    // batched by cork() already (see #writeFrame), so Nagle only adds delay.
    const tcp = socket as Duplex & { setNoDelay?: (noDelay?: boolean) => unknown };
    if (typeof tcp.setNoDelay === 'function') tcp.setNoDelay(true);
    socket.on('end', this.#onSocketEnd);
    socket.on('error', this.#onSocketError);
    socket.on('close', this.#onSocketClose);
    socket.on('drain', this.#onDrain);
    this.#startReading(socket);
    if (this.#config.keepAliveIntervalMs > 0) {
      this.#keepAliveTimer = setInterval(this.#keepAlive, this.#config.keepAliveIntervalMs);
      this.#keepAliveTimer.unref();
    }
    if (socket.destroyed) process.nextTick(() => this.close());
  }

  /** closed tells whether the session has ended. */
  get closed(): boolean {
    return this.#closed;
  }

  /** remoteGoAway tells whether the peer asked for no new streams. */
  get remoteGoAway(): boolean {
    return this.#remoteGoAway;
  }

  /** localGoAway tells whether this side refuses new inbound streams. */
  get localGoAway(): boolean {
    return this.#localGoAway;
  }

  /** numStreams is how many streams are open (including ones waiting for accept()). */
  get numStreams(): number {
    return this.#streams.size;
  }

  /** bytesIn counts Data payload bytes received for streams. */
  get bytesIn(): number {
    return this.#bytesIn;
  }

  /** bytesOut counts Data payload bytes sent. */
  get bytesOut(): number {
    return this.#bytesOut;
  }

  // Limitation: open() does not wait while acceptBacklog SYNs are un-ACKed, as hashicorp's
  // OpenStream does — that needs an async open(); the peer's backlog RST covers the overload.
  /** open starts a new outbound stream; it throws a YamuxError when that is not allowed. */
  open(): Stream {
    if (this.#closed) throw new YamuxError('ERR_YAMUX_SESSION_SHUTDOWN');
    if (this.#remoteGoAway) throw new YamuxError('ERR_YAMUX_REMOTE_GOAWAY');
    if (this.#streams.size >= this.#config.maxStreams) {
      throw new YamuxError('ERR_YAMUX_TOO_MANY_STREAMS');
    }
    const id = this.#nextId;
    if (id > MAX_STREAM_ID) throw new YamuxError('ERR_YAMUX_STREAMS_EXHAUSTED');
    this.#nextId = id + 2;
    const stream = new Stream(this, id, this.#link, FLAG_SYN);
    this.#streams.set(id, stream);
    stream[kOpen]();
    return stream;
  }

  /** accept resolves with the next inbound stream; it rejects once the session is closed. */
  accept(): Promise<Stream> {
    const stream = this.#backlog.shift();
    if (stream !== undefined) {
      stream[kAccept]();
      return Promise.resolve(stream);
    }
    if (this.#closed) return Promise.reject(this.#shutdownError());
    return new Promise((resolve, reject) => this.#acceptWaiters.push({ resolve, reject }));
  }

  /** goAway tells the peer to open no more streams; streams already open go on. */
  goAway(reason: number = GO_AWAY_NORMAL): void {
    if (!Number.isInteger(reason) || reason < 0 || reason > 0xffff_ffff) {
      throw new RangeError('yamux: go away reason must be a 32-bit unsigned integer');
    }
    if (this.#closed) return;
    this.#localGoAway = true;
    this.#writeFrame(TYPE_GO_AWAY, 0, 0, reason, null);
  }

  /** ping measures one round trip to the peer in milliseconds. */
  ping(): Promise<number> {
    if (this.#closed) return Promise.reject(this.#shutdownError());
    const id = this.#nextPingId;
    this.#nextPingId = (id + 1) >>> 0;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pings.delete(id);
        reject(new YamuxError('ERR_YAMUX_PING_TIMEOUT'));
      }, this.#config.connectionWriteTimeoutMs);
      timer.unref();
      this.#pings.set(id, { start: performance.now(), timer, resolve, reject });
      this.#writeFrame(TYPE_PING, FLAG_SYN, 0, id, null);
    });
  }

  /**
   * close ends the session and its socket. Open streams are destroyed with err when one is
   * given (unless they were read to the end), and without an error otherwise.
   */
  close(err?: Error): void {
    this.#shutdown(err, err ?? null);
  }

  // streamErr is what open streams are destroyed with: a peer that goes away mid-transfer is an
  // error for them even when the session itself ended cleanly.
  #shutdown(err: Error | undefined, streamErr: Error | null): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = err;
    this.#decoder.stop();
    this.#rx = null;
    if (this.#keepAliveTimer !== null) clearInterval(this.#keepAliveTimer);
    if (this.#drainTimer !== null) clearTimeout(this.#drainTimer);
    this.#sendWaiters.clear();
    // Nobody holds un-accepted streams, so they end quietly rather than with an error that no
    // listener would catch.
    for (const stream of this.#backlog.splice(0)) stream[kTerminate](null);
    const streams = [...this.#streams.values()];
    this.#streams.clear();
    // A stream whose consumer already read to the end lost nothing it could still receive, so
    // it closes quietly; pending writes still fail through their callbacks.
    for (const stream of streams) stream[kTerminate](stream.readableEnded ? null : streamErr);
    const reason = this.#shutdownError();
    for (const waiter of this.#acceptWaiters.splice(0)) waiter.reject(reason);
    for (const ping of this.#pings.values()) {
      clearTimeout(ping.timer);
      ping.reject(reason);
    }
    this.#pings.clear();
    this.#endSocket();
    this.emit('close', err);
  }

  #shutdownError(): Error {
    return this.#closeError ?? new YamuxError('ERR_YAMUX_SESSION_SHUTDOWN');
  }

  // Ends our side of the socket after queued frames (a GoAway, say) are flushed. The socket is
  // destroyed when the peer closes too, or after the write timeout if it never does.
  #endSocket(): void {
    const socket = this.#socket;
    if (this.#corked) {
      this.#corked = false;
      socket.uncork();
    }
    if (socket.destroyed) return;
    const timer = setTimeout(() => socket.destroy(), this.#config.connectionWriteTimeoutMs);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
    socket.end();
  }

  #writeFrame(
    type: number, flags: number, id: number, length: number,
    payload: Buffer[] | null, cb?: WriteCallback,
  ): void {
    const socket = this.#socket;
    if (this.#closed || socket.writableEnded || socket.destroyed) {
      if (cb !== undefined) process.nextTick(cb, this.#shutdownError());
      return;
    }
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
    }
    // Data waits until the event loop has run this turn's I/O callbacks, so that the frames
    // of every stream fed in this turn leave in one writev: the peer then wakes and reads once
    // rather than once per stream. Control frames (window updates, pings, FIN, RST, GoAway)
    // leave at the end of this tick, taking any data held with them: a window update may be
    // what the peer's sender is stalled on.
    if (payload === null) {
      if (!this.#flushAtTick) {
        this.#flushAtTick = true;
        process.nextTick(this.#tickFlush);
      }
    } else if (!this.#flushAtImmediate) {
      this.#flushAtImmediate = true;
      setImmediate(this.#immediateFlush);
    }
    const header = encodeHeader(type, flags, id, length);
    let ok: boolean;
    if (payload === null) {
      ok = socket.write(header, cb);
    } else {
      socket.write(header);
      const last = payload.length - 1;
      ok = true;
      for (let i = 0; i <= last; i++) ok = socket.write(payload[i], i === last ? cb : undefined);
      this.#bytesOut += length;
    }
    if (!ok) this.#armDrainTimer();
  }

  #tickFlush = (): void => {
    this.#flushAtTick = false;
    this.#uncork();
  };

  #immediateFlush = (): void => {
    this.#flushAtImmediate = false;
    this.#uncork();
  };

  #uncork(): void {
    if (!this.#corked) return;
    this.#corked = false;
    this.#socket.uncork();
  }

  // A refused write starts the write timeout. The session is closed when the peer takes
  // nothing for that long: a zero-length PROGRESS_MARK written behind what is queued tells
  // when everything before it has left, which restarts the clock, and the next mark goes
  // behind what is queued then. Waiting for 'drain' alone would close a session whose peer
  // reads steadily while busy streams keep some data queued, as 'drain' needs an empty queue.
  #armDrainTimer(): void {
    if (this.#awaitingDrain) return;
    this.#awaitingDrain = true;
    this.#watchProgress();
  }

  #watchProgress(): void {
    if (this.#marking || this.#closed) return;
    const socket = this.#socket;
    if (socket.writableEnded || socket.destroyed) return;
    if (this.#drainTimer === null) {
      this.#drainTimer = setTimeout(this.#onDrainTimeout, this.#config.connectionWriteTimeoutMs);
      this.#drainTimer.unref();
    } else {
      this.#drainTimer.refresh();
    }
    this.#marking = true;
    socket.write(PROGRESS_MARK, this.#onProgress);
  }

  #onProgress = (err?: Error | null): void => {
    this.#marking = false;
    if (err || this.#closed) return;
    this.#sendTurns();
    if (this.#socket.writableLength === 0) this.#awaitingDrain = false;
    if (this.#awaitingDrain || this.#sendWaiters.size > 0) this.#watchProgress();
  };

  #onDrain = (): void => {
    this.#awaitingDrain = false;
    this.#sendTurns();
  };

  // Gives waiting streams their turns, in order, while the socket has room. A stream that
  // fills it waits anew, behind the others.
  #sendTurns(): void {
    for (const stream of this.#sendWaiters) {
      if (this.#socket.writableLength >= SEND_QUEUE_LIMIT) return;
      this.#sendWaiters.delete(stream);
      this.#sending = stream;
      try {
        stream[kSend]();
      } finally {
        this.#sending = null;
      }
    }
  }

  #onDrainTimeout = (): void => {
    if ((this.#awaitingDrain || this.#marking) && !this.#closed) {
      this.close(new YamuxError('ERR_YAMUX_WRITE_TIMEOUT'));
    }
  };

  #keepAlive = (): void => {
    if (this.#keepAliveInFlight || this.#closed) return;
    this.#keepAliveInFlight = true;
    this.ping().then(
      () => {
        this.#keepAliveInFlight = false;
      },
      () => {
        this.#keepAliveInFlight = false;
        if (!this.#closed) this.close(new YamuxError('ERR_YAMUX_KEEPALIVE_TIMEOUT'));
      },
    );
  };

  // A socket reads into the buffer all sessions share (see net/read-into.ts), and a frame's
  // payload is handed to its stream as a view of it, lent until the delivery returns. Other
  // transports emit 'data' as usual. Either way the session owns the socket from here on: a
  // socket that an HTTP head reader paused does not flow again on its own, so it is resumed.
  #startReading(socket: Duplex): void {
    const onRead = (data: Buffer): boolean => {
      this.#lent = true;
      try {
        this.#onSocketData(data);
      } finally {
        this.#lent = false;
      }
      return true;
    };
    const earlier = this.#config.readInPlace ? readInto(socket, sharedReadBuffer, onRead) : null;
    // Bytes read past the HTTP head before the switch are the session's first bytes.
    if (earlier === null) socket.on('data', this.#onSocketData);
    else for (const chunk of earlier) this.#onSocketData(chunk);
    socket.resume();
  }

  #onSocketData = (chunk: Buffer | string): void => {
    if (this.#closed) return;
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk;
    try {
      this.#decoder.push(buf);
    } catch (err) {
      // A stream consumer's listener threw while we delivered data, or we have a bug; either
      // way the session cannot continue, and the error must not escape the socket's handler.
      this.#internalError(err);
    }
  };

  #onSocketEnd = (): void => {
    if (this.#closed) {
      // Both sides are done; let our last frames (a GoAway, say) flush before letting go.
      const socket = this.#socket;
      if (socket.writableFinished) socket.destroy();
      else socket.once('finish', () => socket.destroy());
      return;
    }
    const err = this.#decoder.idle ? undefined : new YamuxError('ERR_YAMUX_TRUNCATED');
    this.#shutdown(err, err ?? new YamuxError('ERR_YAMUX_SESSION_SHUTDOWN'));
  };

  #onSocketError = (err: Error): void => {
    this.close(err);
  };

  #onSocketClose = (): void => {
    this.#shutdown(undefined, new YamuxError('ERR_YAMUX_SESSION_SHUTDOWN'));
  };

  #internalError(cause: unknown): void {
    if (this.#closed) return;
    this.#localGoAway = true;
    this.#writeFrame(TYPE_GO_AWAY, 0, 0, GO_AWAY_INTERNAL_ERROR, null);
    this.close(new YamuxError('ERR_YAMUX_INTERNAL', { cause }));
  }

  #protocolError(err: YamuxError): void {
    if (this.#closed) return;
    this.#localGoAway = true;
    this.#writeFrame(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR, null);
    try {
      this.emit('protocol-error', err);
    } finally {
      this.close(err);
    }
  }

  #fail(code: YamuxErrorCode): false {
    this.#protocolError(new YamuxError(code));
    return false;
  }

  #onFrame(type: number, flags: number, id: number, length: number): boolean {
    if (type === TYPE_DATA || type === TYPE_WINDOW_UPDATE) {
      return this.#onStreamFrame(type, flags, id, length);
    }
    if (type === TYPE_PING) this.#onPing(flags, length);
    else this.#onGoAway(length);
    return false;
  }

  #onStreamFrame(type: number, flags: number, id: number, length: number): boolean {
    let stream = this.#streams.get(id);
    if ((flags & FLAG_SYN) !== 0) {
      if (stream !== undefined) return this.#fail('ERR_YAMUX_DUPLICATE_STREAM');
      if (id === 0 || (id & 1) === (this.#config.client ? 1 : 0)) {
        return this.#fail('ERR_YAMUX_INVALID_STREAM_ID');
      }
      if (id > this.#maxInboundId) this.#maxInboundId = id;
      stream = this.#incoming(id);
      if (stream === undefined) return this.#skip(type, length, INITIAL_STREAM_WINDOW);
    } else if (stream === undefined) {
      // Frames for streams that ended (for instance ones we reset) are still in flight and are
      // dropped like hashicorp does; a stream that never existed means the peer is broken.
      if (!this.#mayHaveExisted(id)) return this.#fail('ERR_YAMUX_UNKNOWN_STREAM');
      return this.#skip(type, length, this.#config.maxStreamWindow);
    }
    if ((flags & FLAG_RST) !== 0) {
      this.#reset(stream);
      return false;
    }
    if (type === TYPE_WINDOW_UPDATE) {
      if (!stream[kWindow](length)) return this.#fail('ERR_YAMUX_SEND_WINDOW_OVERFLOW');
      if ((flags & FLAG_FIN) !== 0) this.#remoteFin(stream);
      return false;
    }
    if (stream[kRemoteEnded]()) {
      // hashicorp can race a write past its own FIN; such data has nowhere to go.
      return this.#skip(type, length, this.#config.maxStreamWindow);
    }
    if (length === 0) {
      if ((flags & FLAG_FIN) !== 0) this.#remoteFin(stream);
      return false;
    }
    if (!stream[kExpect](length)) return this.#fail('ERR_YAMUX_RECV_WINDOW_EXCEEDED');
    this.#rx = stream;
    this.#rxFin = (flags & FLAG_FIN) !== 0;
    return true;
  }

  #skip(type: number, length: number, limit: number): false {
    if (type === TYPE_DATA && length > limit) return this.#fail('ERR_YAMUX_RECV_WINDOW_EXCEEDED');
    return false;
  }

  #mayHaveExisted(id: number): boolean {
    if (id === 0) return false;
    const ours = (id & 1) === (this.#config.client ? 1 : 0);
    return ours ? id < this.#nextId : id <= this.#maxInboundId;
  }

  #onData(piece: Buffer, last: boolean): void {
    this.#bytesIn += piece.length;
    const stream = this.#rx;
    if (stream === null) return;
    stream[kData](piece, this.#lent);
    if (!last) return;
    this.#rx = null;
    if (this.#rxFin && this.#streams.get(stream.id) === stream) this.#remoteFin(stream);
  }

  #remoteFin(stream: Stream): void {
    if (!stream[kFin]()) this.#fail('ERR_YAMUX_UNEXPECTED_FLAG');
  }

  #reset(stream: Stream): void {
    const queued = this.#backlog.indexOf(stream);
    if (queued >= 0) {
      this.#backlog.splice(queued, 1);
      stream[kTerminate](null);
      return;
    }
    stream[kTerminate](new YamuxError('ERR_YAMUX_STREAM_RESET'));
  }

  #incoming(id: number): Stream | undefined {
    if (
      this.#localGoAway ||
      this.#backlog.length >= this.#config.acceptBacklog ||
      this.#streams.size >= this.#config.maxStreams
    ) {
      this.#writeFrame(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0, null);
      return undefined;
    }
    const stream = new Stream(this, id, this.#link, FLAG_ACK);
    this.#streams.set(id, stream);
    const waiter = this.#acceptWaiters.shift();
    if (waiter === undefined) {
      this.#backlog.push(stream);
    } else {
      stream[kAccept]();
      waiter.resolve(stream);
    }
    return stream;
  }

  #onPing(flags: number, value: number): void {
    // Limitation: replies to a ping flood from a peer that does not read queue up until the
    // write timeout closes the session — a cap on unflushed control frames would bound them.
    if ((flags & FLAG_SYN) !== 0) {
      this.#writeFrame(TYPE_PING, FLAG_ACK, 0, value, null);
      return;
    }
    if ((flags & FLAG_ACK) === 0) return;
    const ping = this.#pings.get(value);
    if (ping === undefined) return;
    this.#pings.delete(value);
    clearTimeout(ping.timer);
    ping.resolve(performance.now() - ping.start);
  }

  #onGoAway(reason: number): void {
    const first = !this.#remoteGoAway;
    this.#remoteGoAway = true;
    if (first) this.emit('goaway', reason);
    if (reason === GO_AWAY_NORMAL) return;
    const code: YamuxErrorCode =
      reason === GO_AWAY_PROTOCOL_ERROR ? 'ERR_YAMUX_REMOTE_PROTOCOL_ERROR'
        : reason === GO_AWAY_INTERNAL_ERROR ? 'ERR_YAMUX_REMOTE_INTERNAL_ERROR'
          : 'ERR_YAMUX_REMOTE_UNKNOWN_GOAWAY';
    this.close(new YamuxError(code));
  }
}
