// The sidecar put together: settings in, listeners up, and the life cycle of a pod around them
// (ready once the config has loaded, drain on SIGTERM).
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ArvadosClient } from './arvados/client.ts';
import { ClusterConfigStore, redactedClusterConfig, type ClusterConfig } from
  './arvados/cluster-config.ts';
import { watchConfigFile, watchTokenFile } from './arvados/config-file.ts';
import { Limits, type GatewayContext } from './endpoints/context.ts';
import { Passthrough } from './endpoints/passthrough.ts';
import { handleLogs } from './endpoints/logs.ts';
import { handleSsh } from './endpoints/ssh.ts';
import { handleTunnel } from './endpoints/tunnel.ts';
import { GatewayLocator, sameOrigin } from './gateway/locate.ts';
import { startAdmin } from './http/admin.ts';
import { FrontDoor } from './http/front.ts';
import type { Logger } from './log.ts';
import { ConfigMapSource } from './kube/configmap-source.ts';
import { PeerResolver, ownInternalUrl, type ResolveFn } from './kube/peers.ts';
import { busyPoll } from './net/busy-poll.ts';
import { Metrics } from './observability/metrics.ts';
import { parseHostPort, type Settings } from './settings.ts';
import { TunnelRegistry } from './tunnel/registry.ts';
import { WindowBudget } from './tunnel/yamux/index.ts';

// Log requests are recognised loosely here (also in absolute form) and checked strictly by
// the endpoint, so a malformed log path gets the endpoint's 400 rather than reaching the
// controller.
const LOG_ROUTE = /^(?:https?:\/\/[^/]+)?\/arvados\/v1\/container_requests\/[^/?]+\/log(?:[/?]|$)/i;

/** SidecarOptions are what a caller may inject besides settings (tests, the demo). */
export interface SidecarOptions {
  settings: Settings;
  log: Logger;
  processMetrics?: boolean;
  /** resolvePeers replaces DNS for the peers' headless Service (tests). */
  resolvePeers?: ResolveFn;
}

/** Sidecar is a running sidecar. */
export class Sidecar {
  readonly settings: Settings;
  readonly log: Logger;
  readonly metrics: Metrics;
  readonly config: ClusterConfigStore;
  readonly registry = new TunnelRegistry();
  readonly ctx: GatewayContext;
  #front: FrontDoor;
  #admin: Server | undefined;
  #passthrough: Passthrough;
  #api: ArvadosClient;
  #stoppers: (() => void)[] = [];
  #frontAddress: AddressInfo | undefined;
  #ownUrl = '';
  #draining = false;
  #listening = false;
  #peers: PeerResolver | undefined;

  constructor(opts: SidecarOptions) {
    const { settings, log } = opts;
    this.settings = settings;
    this.log = log;
    this.metrics = new Metrics(opts.processMetrics ?? true);
    this.config = new ClusterConfigStore(settings.clusterId);
    this.#api = new ArvadosClient({
      baseUrl: settings.controllerUrl,
      timeoutMs: settings.apiTimeoutMs,
      observe: (call, outcome, seconds) => this.metrics.observeApiCall(call, outcome, seconds),
    });
    this.#passthrough = new Passthrough(settings.controllerUrl, log, this.metrics);
    if (settings.peersService) {
      this.#peers = new PeerResolver({
        serviceName: settings.peersService, resolve: opts.resolvePeers, logger: log,
      });
    }
    const locator = new GatewayLocator({
      registry: this.registry,
      ownUrl: () => this.#ownUrl,
      isKnownPeer: async (url) => this.#isKnownPeer(url),
      allowLoopbackGateways: settings.allowLoopbackGateways,
      allowedNetworks: settings.gatewayNetworks,
    });
    this.ctx = {
      settings, log, metrics: this.metrics, api: this.#api, config: this.config,
      registry: this.registry, locator, ownUrl: () => this.#ownUrl,
      windowBudget: new WindowBudget(settings.tunnelWindowBudget),
      limits: new Limits({
        sessions: settings.maxSessions, ssh: settings.maxSshSessions,
        logs: settings.maxLogRequests, passthrough: settings.maxPassthrough,
      }, (n) => this.metrics.sessionsActive.set(n),
      (limit) => this.metrics.refusedFull.labels(limit).inc()),
      draining: () => this.#draining,
    };
    this.#front = new FrontDoor({
      log,
      headTimeoutMs: settings.headTimeoutMs,
      tlsCertFile: settings.tlsCert || undefined,
      tlsKeyFile: settings.tlsKey || undefined,
      handlers: {
        upgrade: (up, route) => route.kind === 'tunnel'
          ? handleTunnel(up, route.uuid, this.ctx)
          : handleSsh(up, route.uuid, this.ctx),
        request: (req, res, secure) => LOG_ROUTE.test(req.url ?? '')
          ? handleLogs(req, res, this.ctx)
          : this.#passthrough.handle(req, res, secure, this.ctx.limits),
        otherUpgrade: (req, socket, head) => this.#passthrough.handleUpgrade(req, socket, head),
      },
    });
    this.config.on('change', (c: ClusterConfig, source: string) => {
      this.metrics.configReloads.labels('ok').inc();
      this.metrics.configLastReloadOk.set(1);
      log.info({ source, cluster_id: c.clusterId }, 'cluster config loaded');
    });
    this.config.on('rejected', (err: Error, source: string) => {
      this.metrics.configReloads.labels('error').inc();
      this.metrics.configLastReloadOk.set(0);
      log.error({ source, err: err.message }, this.config.current
        ? 'cluster config refused; keeping the last good one'
        : 'cluster config refused; no good config yet, not ready');
    });
  }

  /** ownUrl is this sidecar's internal URL, as crunch-run records it and peers dial it. */
  get ownUrl(): string {
    return this.#ownUrl;
  }

  /** frontPort is the port the front door listens on. */
  get frontPort(): number {
    return this.#frontAddress?.port ?? 0;
  }

  /** adminPort is the port the admin listener listens on. */
  get adminPort(): number {
    return (this.#admin?.address() as AddressInfo | undefined)?.port ?? 0;
  }

  /** ready says whether the sidecar should receive traffic, and if not why. */
  ready(): { ready: boolean; reason: string } {
    if (this.#draining) return { ready: false, reason: 'draining' };
    if (!this.#listening) return { ready: false, reason: 'listeners are not up' };
    if (this.config.rootTokenError) {
      return { ready: false, reason: `root token file: ${this.config.rootTokenError}` };
    }
    if (!this.config.current) return { ready: false, reason: 'cluster config is not loaded' };
    return { ready: true, reason: 'ok' };
  }

  /** start loads the config sources and opens the listeners. */
  async start(): Promise<void> {
    const s = this.settings;
    if (s.rootTokenFile) this.#stoppers.push(watchTokenFile(s.rootTokenFile, this.config,
        this.log));
    if (s.configMap) await this.#watchConfigMap();
    else this.#stoppers.push(watchConfigFile(s.arvadosConfig, this.config, this.log));

    const admin = parseHostPort(s.adminListen)!;
    this.#admin = await listening('GATEWAY_ADMIN_LISTEN', s.adminListen, startAdmin(admin.host,
      admin.port, {
      ready: () => this.ready(),
      metrics: async () => {
        const sessions = this.registry.all().map((t) => t.session);
        this.metrics.streamsOpen.set(sessions.reduce((n, s) => n + s.numStreams, 0));
        this.metrics.updateTunnelBytes(sessions);
        this.metrics.windowBudgetTaken.set(this.ctx.windowBudget.taken);
        this.metrics.ready.set(this.ready().ready ? 1 : 0);
        return { contentType: this.metrics.registry.contentType,
          body: await this.metrics.registry.metrics() };
      },
      tunnels: () => this.registry.describe(),
      config: () => ({
        cluster: this.config.current ? redactedClusterConfig(this.config.current) : null,
        last_error: this.config.lastError,
        own_url: this.#ownUrl,
        settings: { ...this.settings },
      }),
    }));
    const front = parseHostPort(s.listen)!;
    this.#frontAddress = await listening('GATEWAY_LISTEN', s.listen,
      this.#front.listen(front.host, front.port));
    this.#ownUrl = s.internalUrl || this.#defaultOwnUrl();
    if (!s.internalUrl && !s.podIp && !s.podName && !isLoopback(front.host)) {
      this.log.warn({ own_url: this.#ownUrl }, 'no GATEWAY_INTERNAL_URL or POD_IP: crunch-run ' +
        'and peers will be told a loopback URL');
    }
    // One event loop, so one window for the process: the last sidecar started sets it.
    busyPoll.setWindow(s.busyPollUs);
    this.#listening = true;
    this.log.info({
      listen: `${this.#frontAddress.address}:${this.#frontAddress.port}`,
      admin: `${admin.host}:${this.adminPort}`,
      own_url: this.#ownUrl,
    }, 'sidecar listening');
  }

  /**
   * drain is the first half of a graceful stop: readiness falls, new tunnels are refused, and
   * held tunnels get a GoAway so crunch-run redials another pod. Streams already open go on.
   */
  drain(): void {
    if (this.#draining) return;
    this.#draining = true;
    for (const tunnel of this.registry.all()) tunnel.session.goAway();
    this.log.info({ tunnels: this.registry.size, requests: this.ctx.limits.busy }, 'draining');
  }

  /** waitForRequests resolves when no request or session is in progress, or after graceMs. */
  async waitForRequests(graceMs: number): Promise<boolean> {
    const deadline = Date.now() + graceMs;
    while (this.ctx.limits.busy > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    return this.ctx.limits.busy === 0;
  }

  /** stop closes everything now. */
  async stop(): Promise<void> {
    for (const stop of this.#stoppers) stop();
    this.#listening = false;
    const closing = this.#front.stopAccepting();
    for (const tunnel of this.registry.all()) tunnel.session.close();
    this.#front.destroyAll();
    await closing;
    await new Promise<void>((resolve) => {
      if (!this.#admin) return resolve();
      this.#admin.close(() => resolve());
      this.#admin.closeAllConnections();
    });
    await Promise.allSettled([this.#api.close(), this.#passthrough.close()]);
  }

  // The ConfigMap is the cluster config's source of truth in Kubernetes: a broken edit is
  // refused by the store (the last good config stays), and a deleted ConfigMap leaves the last
  // good config in force until it comes back.
  async #watchConfigMap(): Promise<void> {
    const [namespace, name] = this.settings.configMap.split('/');
    const source = new ConfigMapSource({
      namespace, name, key: this.settings.configMapKey,
      kubeconfigPath: this.settings.kubeconfig || undefined, logger: this.log,
    });
    source.on('config', (text) => this.config.update(text, `configmap ${namespace}/${name}`));
    source.on('deleted', () => {
      this.metrics.configReloads.labels('deleted').inc();
      this.log.error({ configmap: this.settings.configMap },
        'cluster config ConfigMap was deleted; keeping the last good config');
    });
    source.on('watch-error', () => this.metrics.configReloads.labels('watch_error').inc());
    this.#stoppers.push(() => source.stop());
    await source.start();
  }

  async #isKnownPeer(url: URL): Promise<boolean> {
    const config = this.config.current;
    if (config?.controllerInternalUrls.some((u) => sameOrigin(u, url.href))) return true;
    return this.#peers ? this.#peers.isPeer(url) : false;
  }

  #defaultOwnUrl(): string {
    const scheme = this.settings.tlsCert ? 'https' : 'http';
    const port = this.frontPort;
    const { podIp, podName, podNamespace, peersService } = this.settings;
    if (podIp || (podName && peersService)) {
      return ownInternalUrl({ podIp, podName, namespace: podNamespace, service: peersService,
        scheme, port });
    }
    const host = this.#frontAddress?.address ?? '127.0.0.1';
    const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
    return `${scheme}://${h.includes(':') ? `[${h}]` : h}:${port}/`;
  }
}

async function listening<T>(name: string, address: string, started: Promise<T>): Promise<T> {
  try {
    return await started;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new Error(`${name}: cannot listen on ${address}: ${code}`);
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}
