// Reading a socket into one buffer the caller owns, instead of a fresh buffer per read.
//
// Every read of a Node socket normally allocates a new buffer outside the JavaScript heap, and
// V8 runs a full mark-compact each time about 64 MB of those have piled up: at a few hundred
// MB/s that is most of a core, spent collecting garbage. Node's own answer is the onread option
// of net.connect and tls.connect, which reads into one buffer and calls back instead of
// emitting 'data'. That option is taken only when Node creates the socket itself, and not by a
// TLS socket layered over another stream (a tunnel stream), which are the sockets the gateway
// paths read from. readInto applies the same mechanism to a socket that already exists, by
// setting the fields the option sets. Node does not promise those fields: they are found by
// their names on a socket made with the option, and when they are not there readInto changes
// nothing and says so, and the caller reads the usual way.
import { Socket } from 'node:net';
import { busyPoll } from './busy-poll.ts';

/**
 * OnRead gets the bytes just read, as a view of the caller's buffer that the next read
 * overwrites: they must be used or copied before it returns. Returning false stops reading
 * until the socket's resume() is called.
 */
export type OnRead = (data: Buffer) => boolean;

interface Fields {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

type Handle = { useUserBuffer?: (buf: Buffer) => void };
type Internals = Record<symbol, unknown> & { _handle?: Handle | null };

const fields = findFields();
const switched = new WeakSet<Socket>();

function findFields(): Fields | null {
  const buffer = Buffer.alloc(1);
  const callback = () => true;
  const probe = new Socket({ onread: { buffer, callback } }) as unknown as Internals;
  const byName = new Map<string, symbol>();
  for (const s of Object.getOwnPropertySymbols(probe)) {
    if (s.description) byName.set(s.description, s);
  }
  const found = {
    buffer: byName.get('kBuffer'),
    callback: byName.get('kBufferCb'),
    generator: byName.get('kBufferGen'),
  };
  (probe as unknown as Socket).destroy();
  if (!found.buffer || !found.callback || !found.generator) return null;
  if (probe[found.buffer] !== buffer || probe[found.callback] !== callback) return null;
  return found as Fields;
}

/** readIntoSupported tells whether this Node lets readInto switch a socket. */
export const readIntoSupported = fields !== null;

/**
 * readInto makes socket read into buffer from now on, calling onRead for each read. It
 * returns the bytes the socket had already read before the switch, which come first, as
 * buffers of their own; or null, having changed nothing, when the socket is not open or this
 * Node lacks the mechanism.
 */
export function readInto(socket: unknown, buffer: Buffer, onRead: OnRead): Buffer[] | null {
  if (fields === null || !(socket instanceof Socket) || switched.has(socket)) return null;
  if (socket.destroyed || socket.connecting) return null;
  const internals = socket as unknown as Internals;
  const handle = internals._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function') return null;
  switched.add(socket);
  const call = (n: number, buf: Buffer) => {
    const more = onRead(buf.subarray(0, n));
    // The next read is likely to follow soon: see busy-poll.ts.
    busyPoll.afterRead(n);
    return more;
  };
  internals[fields.buffer] = buffer;
  internals[fields.callback] = call;
  internals[fields.generator] = null;
  handle.useUserBuffer(buffer);
  const earlier: Buffer[] = [];
  for (let c = socket.read() as Buffer | null; c !== null; c = socket.read()) earlier.push(c);
  return earlier;
}
