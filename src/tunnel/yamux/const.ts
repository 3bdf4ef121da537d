// Wire constants of the yamux protocol (hashicorp/yamux spec.md) and the error values this
// implementation reports. Numbers here are fixed by the wire format, so they are plain
// constants rather than options.

/** PROTOCOL_VERSION is the only version byte yamux puts on the wire. */
export const PROTOCOL_VERSION = 0;

/** HEADER_SIZE is the size in bytes of every frame header. */
export const HEADER_SIZE = 12;

/** TYPE_DATA marks a frame whose length field counts the payload bytes that follow. */
export const TYPE_DATA = 0;
/** TYPE_WINDOW_UPDATE marks a frame whose length field is a receive-window increment. */
export const TYPE_WINDOW_UPDATE = 1;
/** TYPE_PING marks a frame whose length field is an opaque value echoed by the peer. */
export const TYPE_PING = 2;
/** TYPE_GO_AWAY marks a frame whose length field is the reason the sender stops. */
export const TYPE_GO_AWAY = 3;

/** FLAG_SYN opens a stream, or asks for a ping reply. */
export const FLAG_SYN = 1;
/** FLAG_ACK acknowledges a stream open, or answers a ping. */
export const FLAG_ACK = 2;
/** FLAG_FIN half-closes the sender's side of a stream. */
export const FLAG_FIN = 4;
/** FLAG_RST aborts a stream at once. */
export const FLAG_RST = 8;

/** GO_AWAY_NORMAL asks the peer to open no more streams. */
export const GO_AWAY_NORMAL = 0;
/** GO_AWAY_PROTOCOL_ERROR tells the peer its input was malformed. */
export const GO_AWAY_PROTOCOL_ERROR = 1;
/** GO_AWAY_INTERNAL_ERROR tells the peer the sender failed on its own. */
export const GO_AWAY_INTERNAL_ERROR = 2;

/** INITIAL_STREAM_WINDOW is the receive window each side starts every stream with. */
export const INITIAL_STREAM_WINDOW = 256 * 1024;

/** MAX_DATA_FRAME caps one Data frame's payload so busy streams interleave fairly. */
export const MAX_DATA_FRAME = 64 * 1024;

/** MAX_STREAM_ID is the largest stream id that fits the 32-bit field. */
export const MAX_STREAM_ID = 0xffff_ffff;

/** MAX_WINDOW is the largest window a 32-bit counter can express. */
export const MAX_WINDOW = 0xffff_ffff;

/** YAMUX_ERRORS maps each error code to its exact message. */
export const YAMUX_ERRORS = {
  ERR_YAMUX_SESSION_SHUTDOWN: 'session shutdown',
  ERR_YAMUX_REMOTE_GOAWAY: 'remote end is not accepting connections',
  ERR_YAMUX_KEEPALIVE_TIMEOUT: 'keepalive timeout',
  ERR_YAMUX_WRITE_TIMEOUT: 'connection write timeout',
  ERR_YAMUX_PING_TIMEOUT: 'ping timeout',
  ERR_YAMUX_INVALID_VERSION: 'invalid protocol version',
  ERR_YAMUX_INVALID_TYPE: 'invalid message type',
  ERR_YAMUX_RECV_WINDOW_EXCEEDED: 'receive window exceeded',
  ERR_YAMUX_SEND_WINDOW_OVERFLOW: 'send window overflow',
  ERR_YAMUX_DUPLICATE_STREAM: 'duplicate stream opened',
  ERR_YAMUX_INVALID_STREAM_ID: 'invalid stream id for the sender role',
  ERR_YAMUX_UNKNOWN_STREAM: 'frame for a stream that was never opened',
  ERR_YAMUX_UNEXPECTED_FLAG: 'unexpected flag',
  ERR_YAMUX_TRUNCATED: 'connection closed in the middle of a frame',
  ERR_YAMUX_STREAM_RESET: 'stream reset',
  ERR_YAMUX_STREAM_CLOSED: 'stream closed',
  ERR_YAMUX_STREAMS_EXHAUSTED: 'stream ids exhausted',
  ERR_YAMUX_TOO_MANY_STREAMS: 'too many open streams',
  ERR_YAMUX_REMOTE_PROTOCOL_ERROR: 'peer reported a protocol error',
  ERR_YAMUX_REMOTE_INTERNAL_ERROR: 'peer reported an internal error',
  ERR_YAMUX_REMOTE_UNKNOWN_GOAWAY: 'peer sent go away with an unknown reason',
  ERR_YAMUX_INTERNAL: 'internal error',
} as const;

/** YamuxErrorCode is one of the codes in YAMUX_ERRORS. */
export type YamuxErrorCode = keyof typeof YAMUX_ERRORS;

/** YamuxError is the error type of every failure this package reports; `code` is stable. */
export class YamuxError extends Error {
  readonly code: YamuxErrorCode;

  constructor(code: YamuxErrorCode, options?: { cause?: unknown }) {
    super(YAMUX_ERRORS[code], options);
    this.name = 'YamuxError';
    this.code = code;
  }
}

/** isYamuxError tells whether err is a YamuxError, optionally with the given code. */
export function isYamuxError(err: unknown, code?: YamuxErrorCode): err is YamuxError {
  return err instanceof YamuxError && (code === undefined || err.code === code);
}
