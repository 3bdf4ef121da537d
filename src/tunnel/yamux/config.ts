// Session options, their defaults and validation. Defaults match hashicorp/yamux's
// DefaultConfig so a session behaves like the Go peers it talks to.
import { WindowBudget } from './budget.ts';
import { INITIAL_STREAM_WINDOW, MAX_WINDOW } from './const.ts';

/** SessionOptions tunes one yamux session; only `role` is required. */
export interface SessionOptions {
  /** role decides stream id parity: a client opens odd ids, a server even ones. */
  role: 'client' | 'server';
  /** keepAliveIntervalMs is the time between keepalive pings; 0 disables them. */
  keepAliveIntervalMs?: number;
  /** connectionWriteTimeoutMs bounds how long a ping reply or a socket drain may take. */
  connectionWriteTimeoutMs?: number;
  /** maxStreamWindow is the receive window granted per stream, at least 256 KiB. */
  maxStreamWindow?: number;
  /**
   * windowBudget, shared by sessions, holds the part of maxStreamWindow above 256 KiB: each
   * stream starts at 256 KiB and takes the rest once its consumer has taken half a window.
   * Unset, every stream grants maxStreamWindow from its SYN.
   */
  windowBudget?: WindowBudget;
  /** acceptBacklog is how many inbound streams may wait for accept() before new ones get RST. */
  acceptBacklog?: number;
  /** maxStreams caps the streams open at once; unset means no cap. */
  maxStreams?: number;
  /**
   * readInPlace (default true) reads a net.Socket into one buffer shared by all sessions
   * instead of a fresh buffer per read; the socket then emits no 'data' events. false keeps
   * them, for code that watches the socket itself.
   */
  readInPlace?: boolean;
}

/** SessionConfig is SessionOptions with every default filled in. */
export interface SessionConfig {
  readonly client: boolean;
  readonly keepAliveIntervalMs: number;
  readonly connectionWriteTimeoutMs: number;
  readonly maxStreamWindow: number;
  readonly windowBudget: WindowBudget | null;
  readonly acceptBacklog: number;
  readonly maxStreams: number;
  readonly readInPlace: boolean;
}

/** DEFAULT_KEEPALIVE_INTERVAL_MS is the keepalive period when none is given. */
export const DEFAULT_KEEPALIVE_INTERVAL_MS = 30_000;
/** DEFAULT_CONNECTION_WRITE_TIMEOUT_MS is the dead-peer limit when none is given. */
export const DEFAULT_CONNECTION_WRITE_TIMEOUT_MS = 10_000;
/** DEFAULT_ACCEPT_BACKLOG is the un-accepted stream limit when none is given. */
export const DEFAULT_ACCEPT_BACKLOG = 256;

/** resolveConfig validates options and fills in defaults; it throws TypeError/RangeError. */
export function resolveConfig(options: SessionOptions): SessionConfig {
  if (options === null || typeof options !== 'object') {
    throw new TypeError('yamux: options must be an object');
  }
  if (options.role !== 'client' && options.role !== 'server') {
    throw new TypeError("yamux: role must be 'client' or 'server'");
  }
  const keepAliveIntervalMs = integer(
    'keepAliveIntervalMs', options.keepAliveIntervalMs, DEFAULT_KEEPALIVE_INTERVAL_MS, 0, MAX_TIMER,
  );
  const connectionWriteTimeoutMs = integer(
    'connectionWriteTimeoutMs', options.connectionWriteTimeoutMs,
    DEFAULT_CONNECTION_WRITE_TIMEOUT_MS, 1, MAX_TIMER,
  );
  const maxStreamWindow = integer(
    'maxStreamWindow', options.maxStreamWindow, INITIAL_STREAM_WINDOW, INITIAL_STREAM_WINDOW,
    MAX_WINDOW,
  );
  if (options.windowBudget !== undefined && !(options.windowBudget instanceof WindowBudget)) {
    throw new TypeError('yamux: windowBudget must be a WindowBudget');
  }
  const acceptBacklog = integer(
    'acceptBacklog', options.acceptBacklog, DEFAULT_ACCEPT_BACKLOG, 1, Number.MAX_SAFE_INTEGER,
  );
  if (options.readInPlace !== undefined && typeof options.readInPlace !== 'boolean') {
    throw new TypeError('yamux: readInPlace must be a boolean');
  }
  const maxStreams = integer(
    'maxStreams', options.maxStreams, Number.POSITIVE_INFINITY, 1, Number.MAX_SAFE_INTEGER,
  );
  return {
    client: options.role === 'client',
    keepAliveIntervalMs,
    connectionWriteTimeoutMs,
    maxStreamWindow,
    windowBudget: options.windowBudget ?? null,
    acceptBacklog,
    maxStreams,
    readInPlace: options.readInPlace ?? true,
  };
}

// Node clamps longer timer delays to 1 ms, which would turn a long timeout into an instant one.
const MAX_TIMER = 2 ** 31 - 1;

function integer(
  name: string, value: number | undefined, fallback: number, min: number, max: number,
): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`yamux: ${name} must be an integer from ${min} to ${max}`);
  }
  return value;
}
