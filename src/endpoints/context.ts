// What every endpoint needs, built once by the sidecar and handed down.
import { randomBytes } from 'node:crypto';
import type { ArvadosClient } from '../arvados/client.ts';
import type { ClusterConfig, ClusterConfigStore } from '../arvados/cluster-config.ts';
import { GatewayError } from '../errors.ts';
import type { GatewayLocator } from '../gateway/locate.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../observability/metrics.ts';
import type { Settings } from '../settings.ts';
import type { TunnelRegistry } from '../tunnel/registry.ts';
import type { WindowBudget } from '../tunnel/yamux/index.ts';

/** GatewayContext is the shared state and services the endpoints use. */
export interface GatewayContext {
  settings: Settings;
  log: Logger;
  metrics: Metrics;
  api: ArvadosClient;
  config: ClusterConfigStore;
  registry: TunnelRegistry;
  /** windowBudget is shared by every tunnel's streams (GATEWAY_TUNNEL_WINDOW_BUDGET). */
  windowBudget: WindowBudget;
  locator: GatewayLocator;
  ownUrl: () => string;
  limits: Limits;
  draining: () => boolean;
}

/** UUID matches an Arvados UUID: cluster, type and id parts. */
export const UUID = /^[a-z0-9]{5}-[a-z0-9]{5}-[a-z0-9]{15}$/;

/** isContainerUuid says whether a UUID names a container. */
export function isContainerUuid(uuid: string): boolean {
  return UUID.test(uuid) && uuid.slice(5, 12) === '-dz642-';
}

/** clusterConfig is the current cluster config, or the 503 a request gets before one loaded. */
export function clusterConfig(ctx: GatewayContext): ClusterConfig {
  const config = ctx.config.current;
  if (!config) throw new GatewayError(503, 'cluster config is not loaded yet');
  return config;
}

/** requestId is the caller's X-Request-Id if it is sane, else a new one in Arvados' form. */
export function requestId(header: string | undefined): string {
  if (header && /^[A-Za-z0-9_.:-]{1,64}$/.test(header)) return header;
  return 'req-' + randomBytes(15).toString('base64url').toLowerCase().replace(/[-_]/g, 'x')
    .slice(0, 20);
}

/** Route names a kind of request with its own concurrency limit. */
export type LimitedRoute = 'ssh' | 'logs' | 'passthrough';

/** Limiter bounds how many of one kind of request run at once. */
export class Limiter {
  #active = 0;
  #max: number;
  #what: string;
  #onChange: (active: number) => void;

  constructor(what: string, max: number, onChange: (active: number) => void = () => {}) {
    this.#what = what;
    this.#max = max;
    this.#onChange = onChange;
  }

  /** active is the number running now. */
  get active(): number {
    return this.#active;
  }

  /** acquire takes a place or throws a 503 with Retry-After; call the result to give it back. */
  acquire(): () => void {
    if (this.#active >= this.#max) {
      throw new GatewayError(503, `too many ${this.#what} in progress, try again later`,
        { 'Retry-After': '5' });
    }
    this.#active++;
    this.#onChange(this.#active);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#active--;
      this.#onChange(this.#active);
    };
  }
}

/**
 * Limits holds the concurrency limits: one per route, and one over all spliced sessions and
 * log transfers, so that no single route can take every place.
 */
export class Limits {
  readonly sessions: Limiter;
  readonly routes: Record<LimitedRoute, Limiter>;
  #refused: (limit: string) => void;

  constructor(
    max: { sessions: number; ssh: number; logs: number; passthrough: number },
    onSessions: (active: number) => void,
    refused: (limit: string) => void,
  ) {
    this.sessions = new Limiter('sessions', max.sessions, onSessions);
    this.routes = {
      ssh: new Limiter('SSH sessions', max.ssh),
      logs: new Limiter('log requests', max.logs),
      passthrough: new Limiter('controller requests', max.passthrough),
    };
    this.#refused = refused;
  }

  /** acquire takes a place for a request of route (and a session place unless passthrough). */
  acquire(route: LimitedRoute): () => void {
    let releaseRoute: () => void;
    try {
      releaseRoute = this.routes[route].acquire();
    } catch (err) {
      this.#refused(route);
      throw err;
    }
    if (route === 'passthrough') return releaseRoute;
    try {
      const releaseSession = this.sessions.acquire();
      return () => {
        releaseSession();
        releaseRoute();
      };
    } catch (err) {
      releaseRoute();
      this.#refused('sessions');
      throw err;
    }
  }

  /** busy is the number of requests of every route in progress. */
  get busy(): number {
    return Object.values(this.routes).reduce((n, l) => n + l.active, 0);
  }
}
