// Public API of the yamux implementation: sessions, streams, options and errors.
export { READ_BUFFER_SIZE, Session } from './session.ts';
export { Stream } from './stream.ts';
export { WindowBudget } from './budget.ts';
export {
  DEFAULT_ACCEPT_BACKLOG, DEFAULT_CONNECTION_WRITE_TIMEOUT_MS, DEFAULT_KEEPALIVE_INTERVAL_MS,
  type SessionOptions,
} from './config.ts';
export {
  GO_AWAY_INTERNAL_ERROR, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, INITIAL_STREAM_WINDOW,
  isYamuxError, YAMUX_ERRORS, YamuxError, type YamuxErrorCode,
} from './const.ts';
