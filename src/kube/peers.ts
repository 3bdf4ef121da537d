// Peer discovery through the peers' headless Service: its DNS name resolves to the addresses of
// the ready pods, which is the set of sidecars a request may be forwarded to. Forwarding only to
// members of this set keeps a tunnel URL taken from a container record from becoming a way to
// make the sidecar dial arbitrary hosts.
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Logger } from '../log.ts';

/** ResolveFn returns all addresses of a host name; an empty list means the name has none. */
export type ResolveFn = (hostname: string) => Promise<string[]>;

/** PeerResolverOptions configures a PeerResolver. */
export interface PeerResolverOptions {
  /** serviceName is the headless Service's DNS name, e.g. peers.ns.svc.cluster.local. */
  serviceName: string;
  /** ttlMs is how long a resolution is trusted before it is redone; 5 s by default. */
  ttlMs?: number;
  /** resolve replaces DNS, for tests; by default A and AAAA records are queried. */
  resolve?: ResolveFn;
  /** now replaces Date.now, for tests. */
  now?: () => number;
  /** logger receives resolution failures. */
  logger?: Logger;
}

/** OwnUrlParts are the inputs of ownInternalUrl, usually from the downward API. */
export interface OwnUrlParts {
  podName?: string;
  podIp?: string;
  namespace?: string;
  /**
   * service is the headless Service the pod's subdomain is set to: a short name (qualified
   * with namespace and .svc) or an already qualified DNS name.
   */
  service?: string;
  scheme: 'http' | 'https';
  port: number;
}

const DEFAULT_TTL_MS = 5_000;
// A bound on remembered per-pod host names, so hostile URLs cannot grow the cache.
const MAX_HOST_CACHE = 256;
// Answers that mean "this name has no such records", as opposed to "DNS failed".
const NO_RECORDS = new Set(['ENODATA', 'ENOTFOUND', 'NXDOMAIN']);

/**
 * dnsResolver returns a ResolveFn that queries A and AAAA records, from the given DNS servers
 * or the system's; a name with records of neither family resolves to no addresses.
 */
export function dnsResolver(servers?: string[]): ResolveFn {
  const resolver = new Resolver({ timeout: 2000, tries: 2 });
  if (servers) resolver.setServers(servers);
  return async (hostname) => {
    const [v4, v6] = await Promise.allSettled([
      resolver.resolve4(hostname),
      resolver.resolve6(hostname),
    ]);
    const out: string[] = [];
    for (const r of [v4, v6]) {
      if (r.status === 'fulfilled') out.push(...r.value);
      // A family without records is an answer; anything else (a timeout, SERVFAIL) means the
      // set is unknown, and a partial set would wrongly drop the other family's peers.
      else if (!NO_RECORDS.has((r.reason as { code?: string }).code ?? '')) throw r.reason;
    }
    return out;
  };
}

/** normalizeAddress returns the canonical text of an IP literal, or undefined for a name. */
export function normalizeAddress(host: string): string | undefined {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  const family = isIP(bare);
  if (family === 4) return bare;
  if (family === 6) {
    // The URL parser yields the canonical compressed lower-case form of an IPv6 literal;
    // it refuses zone IDs, which no peer address has.
    try {
      return new URL(`http://[${bare}]/`).hostname.slice(1, -1);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

function normalizeName(host: string): string {
  return host.toLowerCase().replace(/\.$/, '');
}

/**
 * PeerResolver keeps the set of peer pod addresses behind a headless Service, re-resolving it
 * when older than the TTL. A URL is a peer's when its host is one of those addresses, or is a
 * per-pod name directly under the Service (<pod>.<service>, with the Service name possibly
 * shortened to a prefix such as <svc>.<ns>.svc) whose addresses all belong to the set.
 * Names are resolved with the same resolver as the Service, and only names under the Service
 * are ever resolved.
 */
export class PeerResolver {
  #service: string;
  #ttlMs: number;
  #resolve: ResolveFn;
  #now: () => number;
  #log: Logger | undefined;
  #members = new Set<string>();
  #resolvedAt = Number.NEGATIVE_INFINITY;
  #inflight: Promise<string[]> | undefined;
  #hosts = new Map<string, { addrs: string[]; at: number }>();

  constructor(opts: PeerResolverOptions) {
    this.#service = normalizeName(opts.serviceName);
    if (this.#service === '' || normalizeAddress(this.#service) !== undefined) {
      throw new Error(`peer service must be a DNS name: "${opts.serviceName}"`);
    }
    this.#ttlMs = opts.ttlMs ?? DEFAULT_TTL_MS;
    this.#resolve = opts.resolve ?? dnsResolver();
    this.#now = opts.now ?? Date.now;
    this.#log = opts.logger?.child({ component: 'peers', service: this.#service });
  }

  /** members returns the addresses from the last successful resolution, sorted. */
  members(): string[] {
    return [...this.#members].sort();
  }

  /**
   * refresh resolves the Service now (sharing a resolution already in flight) and returns the
   * members. On a DNS failure the previous set is kept and the error is thrown.
   */
  refresh(): Promise<string[]> {
    if (!this.#inflight) {
      this.#inflight = this.#resolveAll(this.#service)
        .then((addrs) => {
          this.#members = new Set(addrs);
          this.#resolvedAt = this.#now();
          return this.members();
        })
        .finally(() => {
          this.#inflight = undefined;
        });
    }
    return this.#inflight;
  }

  /** ensureFresh refreshes the set if it is older than the TTL; failures are logged. */
  async ensureFresh(): Promise<void> {
    if (this.#now() - this.#resolvedAt < this.#ttlMs) return;
    try {
      await this.refresh();
    } catch (err) {
      this.#log?.warn({ err: (err as Error).message }, 'peer service resolution failed');
    }
  }

  /**
   * isPeerUrl answers from what is already known, without I/O: the host is a member address,
   * or a per-pod name whose earlier resolution (by isPeer) is within the set. A stale set is
   * refreshed in the background for later calls.
   */
  isPeerUrl(url: URL): boolean {
    if (this.#now() - this.#resolvedAt >= this.#ttlMs) void this.ensureFresh();
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return false;
    const addr = normalizeAddress(url.hostname);
    if (addr !== undefined) return this.#members.has(addr);
    const name = normalizeName(url.hostname);
    if (!this.#isUnderService(name)) return false;
    const cached = this.#hosts.get(name);
    return cached !== undefined && this.#allMembers(cached.addrs);
  }

  /** isPeer is isPeerUrl with a fresh set and a fresh resolution of a per-pod name. */
  async isPeer(url: URL): Promise<boolean> {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return false;
    await this.ensureFresh();
    const addr = normalizeAddress(url.hostname);
    if (addr !== undefined) return this.#members.has(addr);
    const name = normalizeName(url.hostname);
    if (!this.#isUnderService(name)) return false;
    let cached = this.#hosts.get(name);
    if (!cached || this.#now() - cached.at >= this.#ttlMs) {
      try {
        cached = { addrs: await this.#resolveAll(name), at: this.#now() };
      } catch (err) {
        this.#log?.warn({ host: name, err: (err as Error).message }, 'peer name resolution failed');
        return false;
      }
      this.#hosts.delete(name);
      if (this.#hosts.size >= MAX_HOST_CACHE) {
        const oldest = this.#hosts.keys().next().value;
        if (oldest !== undefined) this.#hosts.delete(oldest);
      }
      this.#hosts.set(name, cached);
    }
    return this.#allMembers(cached.addrs);
  }

  async #resolveAll(name: string): Promise<string[]> {
    const addrs = await this.#resolve(name);
    const out = new Set<string>();
    for (const a of addrs) {
      const n = normalizeAddress(a);
      if (n !== undefined) out.add(n);
    }
    return [...out];
  }

  #allMembers(addrs: string[]): boolean {
    return addrs.length > 0 && addrs.every((a) => this.#members.has(a));
  }

  // True for "<one label>.<rest>" where rest is the Service name or a label-aligned prefix of
  // it that still names the Service and its namespace (at least two labels).
  #isUnderService(name: string): boolean {
    const dot = name.indexOf('.');
    if (dot <= 0) return false;
    const rest = name.slice(dot + 1);
    if (rest === this.#service) return true;
    return rest.includes('.') && this.#service.startsWith(`${rest}.`);
  }
}

/**
 * ownInternalUrl builds the URL peers and crunch-run use to reach this sidecar. The pod IP is
 * preferred whenever it is known, because it works for any workload kind; the per-pod name
 * <pod>.<service>.<namespace>.svc resolves only when the pod's hostname and subdomain are set
 * (as a StatefulSet does), so it is the fallback.
 */
export function ownInternalUrl(parts: OwnUrlParts): string {
  const { podName, podIp, namespace, service, scheme, port } = parts;
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`invalid port ${port}`);
  }
  if (podIp) {
    const addr = normalizeAddress(podIp);
    if (addr === undefined) throw new Error(`POD_IP is not an IP address: "${podIp}"`);
    const host = addr.includes(':') ? `[${addr}]` : addr;
    return `${scheme}://${host}:${port}/`;
  }
  if (podName && service?.includes('.')) {
    // Already qualified, e.g. the peers Service's full DNS name.
    return `${scheme}://${podName}.${normalizeName(service)}:${port}/`;
  }
  if (podName && service && namespace) {
    return `${scheme}://${podName}.${service}.${namespace}.svc:${port}/`;
  }
  throw new Error('cannot build the internal URL: set POD_IP, or POD_NAME with the peers service');
}
