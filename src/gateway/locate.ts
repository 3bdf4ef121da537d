// Deciding how to reach a container's gateway from its gateway_address. The address is written
// by crunch-run on a worker, so it is untrusted: direct addresses must be in the allowed networks
// and a tunnel URL must belong to a known peer before anything is dialled.
import { BlockList, isIP } from 'node:net';
import { lookup } from 'node:dns/promises';
import { GatewayError } from '../errors.ts';
import type { Tunnel, TunnelRegistry } from '../tunnel/registry.ts';
import { parseCidr, parseHostPort, splitList } from '../settings.ts';

/** GatewayRoute is one way to reach a gateway. */
export type GatewayRoute =
  | { kind: 'direct'; host: string; port: number }
  | { kind: 'tunnel'; tunnel: Tunnel }
  | { kind: 'peer'; url: URL };

/** LocatorOptions configures a GatewayLocator. */
export interface LocatorOptions {
  registry: TunnelRegistry;
  ownUrl: () => string;
  isKnownPeer: (url: URL) => Promise<boolean>;
  allowLoopbackGateways: boolean;
  allowedNetworks: string;
  resolve?: (host: string) => Promise<string[]>;
}

/** Error messages a user sees when no route exists; clients and tests match on them. */
export const NOT_AVAILABLE = 'container is running but gateway is not available';
export const TUNNEL_DOWN = 'container is running but tunnel is down';
export const INVALID_ENDPOINT = 'container gateway is running but tunnel endpoint is invalid';

/** GatewayLocator turns a container's gateway_address into a route. */
export class GatewayLocator {
  #opts: LocatorOptions;
  #allowed: BlockList;
  #resolve: (host: string) => Promise<string[]>;

  constructor(opts: LocatorOptions) {
    this.#opts = opts;
    const loopback = opts.allowLoopbackGateways ? ',127.0.0.0/8,::1/128' : '';
    this.#allowed = networkList(opts.allowedNetworks + loopback);
    this.#resolve = opts.resolve ?? resolveAll;
  }

  /**
   * locate follows the order Arvados' controller uses: a direct address first (even when a
   * tunnel is held, since a direct path has one hop less), then a tunnel held here, then the
   * peer that holds it, unless the request was already forwarded once.
   */
  async locate(
    containerUuid: string,
    gatewayAddress: string,
    noForward: boolean,
    warn: (msg: string, fields: object) => void,
  ): Promise<GatewayRoute> {
    const direct = parseHostPort(gatewayAddress);
    const loopbackOnly = direct?.host === '127.0.0.1' && !this.#opts.allowLoopbackGateways;
    if (direct && !loopbackOnly) {
      const host = await this.#checkDirect(direct.host, warn);
      return { kind: 'direct', host, port: direct.port };
    }

    const tunnel = this.#opts.registry.get(containerUuid);
    if (tunnel) return { kind: 'tunnel', tunnel };

    if (gatewayAddress.startsWith('tunnel ')) {
      const target = gatewayAddress.slice('tunnel '.length);
      if (sameOrigin(target, this.#opts.ownUrl()) || noForward) {
        throw new GatewayError(503, TUNNEL_DOWN);
      }
      const url = URL.canParse(target) ? new URL(target) : undefined;
      if (!url || !(url.protocol === 'http:' || url.protocol === 'https:') ||
          !(await this.#opts.isKnownPeer(url))) {
        warn('refused tunnel endpoint that is not a known peer', { peer: target.slice(0, 200) });
        throw new GatewayError(503, INVALID_ENDPOINT);
      }
      return { kind: 'peer', url };
    }
    throw new GatewayError(503, gatewayAddress === '' ? NOT_AVAILABLE : TUNNEL_DOWN);
  }

  /** isAllowedAddress says whether an IP address is inside the allowed networks. */
  isAllowedAddress(address: string): boolean {
    const family = isIP(address);
    if (family === 0) return false;
    return this.#allowed.check(address, family === 6 ? 'ipv6' : 'ipv4');
  }

  // The name is resolved here and the checked address is what gets dialled, so a DNS answer
  // that changes between check and dial cannot steer the connection elsewhere.
  async #checkDirect(host: string, warn: (msg: string, fields: object) => void): Promise<string> {
    let addresses: string[];
    try {
      addresses = isIP(host) ? [host] : await this.#resolve(host);
    } catch {
      throw new GatewayError(503, `container gateway address ${host} cannot be resolved`);
    }
    const allowed = addresses.find((a) => this.isAllowedAddress(a));
    if (allowed === undefined) {
      warn('refused gateway address outside the allowed networks', { peer: host });
      throw new GatewayError(503, 'container gateway address is not in an allowed network');
    }
    return allowed;
  }
}

/** sameOrigin compares two URLs by scheme, host and port. */
export function sameOrigin(a: string, b: string): boolean {
  if (!URL.canParse(a) || !URL.canParse(b)) return false;
  return new URL(a).origin === new URL(b).origin;
}

function networkList(cidrs: string): BlockList {
  const list = new BlockList();
  for (const cidr of splitList(cidrs)) {
    const parsed = parseCidr(cidr);
    if (parsed) list.addSubnet(parsed.address, parsed.bits, parsed.v6 ? 'ipv6' : 'ipv4');
  }
  return list;
}

async function resolveAll(host: string): Promise<string[]> {
  const answers = await lookup(host, { all: true });
  return answers.map((a) => a.address);
}
