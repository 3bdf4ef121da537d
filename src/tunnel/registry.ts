// The tunnels this sidecar holds: container UUID → the live yamux session crunch-run opened.
// crunch-run redials when it thinks a tunnel dropped, so an older session can linger while a
// newer one for the same container arrives; the newest wins, and a closing session removes
// itself only while it is still the registered one.
import type { Session } from './yamux/index.ts';

/** Tunnel is one held tunnel and what the debug view shows about it. */
export interface Tunnel {
  containerUuid: string;
  session: Session;
  remoteAddr: string;
  connectedAt: Date;
}

/** TunnelRegistry maps container UUIDs to the tunnels held for them. */
export class TunnelRegistry {
  #tunnels = new Map<string, Tunnel>();

  /** get returns the registered tunnel for a container, if any and still open. */
  get(containerUuid: string): Tunnel | undefined {
    const tunnel = this.#tunnels.get(containerUuid);
    return tunnel && !tunnel.session.closed ? tunnel : undefined;
  }

  /** register makes tunnel the one for its container and returns the one it replaced. */
  register(tunnel: Tunnel): Tunnel | undefined {
    const previous = this.#tunnels.get(tunnel.containerUuid);
    this.#tunnels.set(tunnel.containerUuid, tunnel);
    return previous;
  }

  /** unregister removes tunnel only if it is still the registered one for its container. */
  unregister(tunnel: Tunnel): boolean {
    if (this.#tunnels.get(tunnel.containerUuid) !== tunnel) return false;
    this.#tunnels.delete(tunnel.containerUuid);
    return true;
  }

  /** size is the number of containers with a registered tunnel. */
  get size(): number {
    return this.#tunnels.size;
  }

  /** all lists the registered tunnels. */
  all(): Tunnel[] {
    return [...this.#tunnels.values()];
  }

  /** describe is the debug view: one plain object per held tunnel. */
  describe(): object[] {
    return this.all().map((t) => ({
      container_uuid: t.containerUuid,
      remote_addr: t.remoteAddr,
      connected_at: t.connectedAt.toISOString(),
      streams_open: t.session.numStreams,
      bytes_in: t.session.bytesIn,
      bytes_out: t.session.bytesOut,
    }));
  }
}
