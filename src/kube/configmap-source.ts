// The Kubernetes side of the cluster-config source: it follows one key of one ConfigMap with
// list-then-watch, so a config edit reaches the sidecar within a watch round trip.
//
// RBAC grants get/list/watch on that one ConfigMap only; resourceNames restricts list and watch
// only when they carry a fieldSelector on metadata.name, so both requests always send one.
import { EventEmitter } from 'node:events';
import {
  ApiException,
  CoreV1Api,
  KubeConfig,
  Observable,
  Watch,
  type ConfigurationOptions,
  type ObservableMiddleware,
  type RequestContext,
  type ResponseContext,
  type V1ConfigMap,
} from '@kubernetes/client-node';
import type { Logger } from '../log.ts';

/** ConfigMapSourceOptions configures a ConfigMapSource. */
export interface ConfigMapSourceOptions {
  /** namespace holds the ConfigMap. */
  namespace: string;
  /** name is the ConfigMap's name. */
  name: string;
  /** key is the data key whose text is the cluster config. */
  key: string;
  /**
   * kubeconfigPath selects a kubeconfig file; without it the in-cluster service account is
   * used when KUBERNETES_SERVICE_HOST is set, else the default kubeconfig loading rules.
   */
  kubeconfigPath?: string;
  /** backoffInitialMs is the first reconnect delay; 500 ms by default. */
  backoffInitialMs?: number;
  /** backoffMaxMs caps the reconnect delay; 30 s by default. */
  backoffMaxMs?: number;
  /**
   * watchTimeoutSeconds asks the server to end each watch after this long; 25 s by default,
   * because @kubernetes/client-node aborts a watch that has been silent for 30 s.
   */
  watchTimeoutSeconds?: number;
  /** listTimeoutMs bounds each list request, so a hung server cannot stall start(); 30 s. */
  listTimeoutMs?: number;
  /** logger receives the source's logs; it never gets credentials. */
  logger: Logger;
}

/** ConfigMapSourceError describes a failed list or watch, as emitted with 'watch-error'. */
export class ConfigMapSourceError extends Error {
  /** phase tells which request failed. */
  readonly phase: 'list' | 'watch';
  /** statusCode is the HTTP or Status code, when the server answered. */
  readonly statusCode: number | undefined;
  constructor(phase: 'list' | 'watch', message: string, statusCode?: number) {
    super(message);
    this.name = 'ConfigMapSourceError';
    this.phase = phase;
    this.statusCode = statusCode;
  }
}

interface ConfigMapSourceEvents {
  config: [text: string, resourceVersion: string];
  deleted: [];
  'watch-error': [err: ConfigMapSourceError];
}

// How one watch connection ended.
interface WatchOutcome {
  gone: boolean;
  connected: boolean;
  /** progressed is true once the watch delivered any event. */
  progressed: boolean;
  error: ConfigMapSourceError | undefined;
}

interface StatusLike {
  code?: number;
  reason?: string;
  message?: string;
}

const DEFAULT_BACKOFF_INITIAL_MS = 500;
const DEFAULT_BACKOFF_MAX_MS = 30_000;
const DEFAULT_WATCH_TIMEOUT_SECONDS = 25;
const DEFAULT_LIST_TIMEOUT_MS = 30_000;

function loadKubeConfig(path: string | undefined): KubeConfig {
  const kc = new KubeConfig();
  if (path) kc.loadFromFile(path);
  else if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

// Turns anything a client-node call can throw into a short message without headers or
// credentials, plus the status code when there is one.
function describe(err: unknown): { message: string; statusCode: number | undefined } {
  if (err instanceof ApiException) {
    const body = err.body as StatusLike | string | undefined;
    let detail = '';
    if (body && typeof body === 'object' && typeof body.message === 'string') {
      detail = `: ${body.message}`;
    } else if (typeof body === 'string' && body !== '') {
      try {
        const parsed = JSON.parse(body) as StatusLike;
        if (typeof parsed.message === 'string') detail = `: ${parsed.message}`;
      } catch {
        detail = `: ${body.slice(0, 200)}`;
      }
    }
    return { message: `HTTP ${err.code}${detail}`, statusCode: err.code };
  }
  if (err instanceof Error) {
    const e = err as Error & { statusCode?: number; cause?: { code?: string; message?: string } };
    if (typeof e.statusCode === 'number') {
      return { message: `HTTP ${e.statusCode}: ${e.message}`, statusCode: e.statusCode };
    }
    const cause = e.cause?.code ?? e.cause?.message;
    return { message: cause ? `${e.message} (${cause})` : e.message, statusCode: undefined };
  }
  return { message: String(err), statusCode: undefined };
}

// Returns the options that attach an AbortSignal to one generated-client request, so stop()
// and the list timeout can end it.
function withSignal(signal: AbortSignal): ConfigurationOptions {
  const middleware: ObservableMiddleware = {
    pre: (ctx: RequestContext) => {
      ctx.setSignal(signal);
      return new Observable(Promise.resolve(ctx));
    },
    post: (ctx: ResponseContext) => new Observable(Promise.resolve(ctx)),
  };
  return { middleware: [middleware], middlewareMergeStrategy: 'append' };
}

/**
 * ConfigMapSource follows one key of one ConfigMap and emits 'config' (text, resourceVersion)
 * whenever the key's text changes, and 'deleted' when the ConfigMap goes away; the consumer
 * keeps its last good config then. Failures are logged and emitted as 'watch-error' for
 * metrics, never as 'error', and retried with capped, jittered exponential backoff.
 */
export class ConfigMapSource extends EventEmitter<ConfigMapSourceEvents> {
  #opts: Required<Omit<ConfigMapSourceOptions, 'kubeconfigPath' | 'logger'>>;
  #kubeconfigPath: string | undefined;
  #log: Logger;
  #core: CoreV1Api | undefined;
  #watcher: Watch | undefined;
  #running = false;
  #loop: Promise<void> | undefined;
  #resourceVersion = '';
  #lastText: string | undefined;
  #exists = false;
  #attempt = 0;
  #listAbort: AbortController | undefined;
  #watchAbort: AbortController | undefined;
  #sleepTimer: NodeJS.Timeout | undefined;
  #wake: (() => void) | undefined;

  constructor(opts: ConfigMapSourceOptions) {
    super();
    this.#opts = {
      namespace: opts.namespace,
      name: opts.name,
      key: opts.key,
      backoffInitialMs: opts.backoffInitialMs ?? DEFAULT_BACKOFF_INITIAL_MS,
      backoffMaxMs: opts.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS,
      watchTimeoutSeconds: opts.watchTimeoutSeconds ?? DEFAULT_WATCH_TIMEOUT_SECONDS,
      listTimeoutMs: opts.listTimeoutMs ?? DEFAULT_LIST_TIMEOUT_MS,
    };
    this.#kubeconfigPath = opts.kubeconfigPath;
    this.#log = opts.logger.child({
      component: 'configmap-source',
      configmap: `${opts.namespace}/${opts.name}`,
      key: opts.key,
    });
  }

  /** resourceVersion is the last resourceVersion seen from the list or watch. */
  get resourceVersion(): string {
    return this.#resourceVersion;
  }

  /**
   * start loads the kubeconfig and resolves once the first list attempt has finished, with
   * 'config' already emitted if it found the key; a failed attempt is retried in the
   * background. It rejects only when no kubeconfig can be loaded, or when called twice.
   */
  async start(): Promise<void> {
    if (this.#running || this.#loop) throw new Error('ConfigMapSource already started');
    const kc = loadKubeConfig(this.#kubeconfigPath);
    if (!kc.getCurrentCluster()) throw new Error('kubeconfig has no current cluster');
    this.#core = kc.makeApiClient(CoreV1Api);
    this.#watcher = new Watch(kc);
    this.#running = true;
    const listed = await this.#listOnce();
    this.#loop = this.#run(listed).catch((err: unknown) => {
      // #run handles its own errors; this only guards against a bug taking the process down.
      this.#log.error({ err: describe(err).message }, 'configmap source loop failed');
    });
  }

  /** stop aborts the current list or watch and any pending retry; no events follow. */
  stop(): void {
    this.#running = false;
    this.#listAbort?.abort();
    this.#watchAbort?.abort();
    if (this.#sleepTimer) clearTimeout(this.#sleepTimer);
    this.#sleepTimer = undefined;
    this.#wake?.();
  }

  async #run(listed: boolean): Promise<void> {
    let needList = !listed;
    let goneInARow = 0;
    if (needList) await this.#sleep();
    while (this.#running) {
      if (needList) {
        if (!(await this.#listOnce())) {
          await this.#sleep();
          continue;
        }
        needList = false;
      }
      const outcome = await this.#watchOnce();
      if (!this.#running) return;
      if (outcome.error) this.#report(outcome.error);
      if (outcome.gone) {
        // The server compacted past our resourceVersion: only a fresh list can resync.
        // Relist at once the first time; a server that keeps answering 410 gets backoff.
        needList = true;
        goneInARow++;
        if (goneInARow > 1) await this.#sleep();
        continue;
      }
      goneInARow = 0;
      if (outcome.connected && (!outcome.error || outcome.progressed)) {
        this.#attempt = 0;
        this.#log.debug({ resourceVersion: this.#resourceVersion }, 'watch ended, reconnecting');
      }
      await this.#sleep();
    }
  }

  // Lists the one ConfigMap; returns false (after logging) when the list failed.
  async #listOnce(): Promise<boolean> {
    const core = this.#core;
    if (!core || !this.#running) return false;
    const abort = new AbortController();
    this.#listAbort = abort;
    const signal = AbortSignal.any([abort.signal, AbortSignal.timeout(this.#opts.listTimeoutMs)]);
    try {
      const list = await core.listNamespacedConfigMap(
        {
          namespace: this.#opts.namespace,
          fieldSelector: `metadata.name=${this.#opts.name}`,
        },
        withSignal(signal),
      );
      if (!this.#running) return false;
      const rv = list.metadata?.resourceVersion ?? '';
      const item = list.items.find((cm) => cm.metadata?.name === this.#opts.name);
      if (item) {
        this.#apply(item, item.metadata?.resourceVersion ?? rv);
      } else if (this.#exists) {
        this.#gone(rv);
      } else {
        this.#log.warn('configmap not found; waiting for it to be created');
      }
      this.#resourceVersion = rv;
      return true;
    } catch (err) {
      if (!this.#running) return false;
      const d = describe(err);
      this.#report(new ConfigMapSourceError('list', `list configmap: ${d.message}`, d.statusCode));
      return false;
    } finally {
      if (this.#listAbort === abort) this.#listAbort = undefined;
    }
  }

  // Runs one watch from the current resourceVersion until it ends, fails or is stopped.
  #watchOnce(): Promise<WatchOutcome> {
    const watcher = this.#watcher;
    if (!watcher) {
      const idle = { gone: false, connected: false, progressed: false, error: undefined };
      return Promise.resolve(idle);
    }
    const path = `/api/v1/namespaces/${encodeURIComponent(this.#opts.namespace)}/configmaps`;
    const query = {
      fieldSelector: `metadata.name=${this.#opts.name}`,
      resourceVersion: this.#resourceVersion,
      allowWatchBookmarks: true,
      timeoutSeconds: this.#opts.watchTimeoutSeconds,
    };
    return new Promise<WatchOutcome>((resolve) => {
      let settled = false;
      let connected = false;
      let progressed = false;
      let gone = false;
      let eventError: ConfigMapSourceError | undefined;
      let controller: AbortController | undefined;
      const finish = (err: unknown) => {
        if (settled) return;
        settled = true;
        if (this.#watchAbort === controller) this.#watchAbort = undefined;
        let error = eventError;
        if (!error && !gone && err && this.#running) {
          const d = describe(err);
          if (d.statusCode === 410) gone = true;
          error = new ConfigMapSourceError('watch', `watch configmap: ${d.message}`, d.statusCode);
        }
        resolve({ gone, connected, progressed, error });
      };
      const onEvent = (type: string, obj: unknown) => {
        if (settled || !this.#running) return;
        progressed = true;
        try {
          const ended = this.#onEvent(type, obj);
          if (ended) {
            if (ended.statusCode === 410) gone = true;
            eventError = ended;
            controller?.abort();
            finish(null);
          }
        } catch (err) {
          // client-node would swallow this as a JSON parse error; make it visible.
          this.#log.error({ type, err: describe(err).message }, 'cannot handle watch event');
        }
      };
      watcher.watch(path, query, onEvent, finish).then(
        (ctl) => {
          controller = ctl;
          if (settled || !this.#running) {
            ctl.abort();
            finish(null);
            return;
          }
          // client-node calls done() before resolving when the request itself failed, so
          // getting here unsettled means the server accepted the watch.
          connected = true;
          this.#watchAbort = ctl;
        },
        (err: unknown) => finish(err ?? new Error('watch failed')),
      );
    });
  }

  // Applies one watch event; returns an error when the event ends the watch.
  #onEvent(type: string, obj: unknown): ConfigMapSourceError | undefined {
    if (type === 'ERROR') {
      const s = (obj ?? {}) as StatusLike;
      const code = typeof s.code === 'number' ? s.code : undefined;
      const msg =
        `watch configmap: ERROR event ${code ?? '?'} ${s.reason ?? ''}: ${s.message ?? ''}`;
      return new ConfigMapSourceError('watch', msg, code);
    }
    const cm = obj as V1ConfigMap | undefined;
    const rv = cm?.metadata?.resourceVersion;
    if (type === 'BOOKMARK') {
      if (rv) this.#resourceVersion = rv;
      return undefined;
    }
    if (!cm || cm.metadata?.name !== this.#opts.name) return undefined;
    switch (type) {
      case 'ADDED':
      case 'MODIFIED':
        if (rv) this.#resourceVersion = rv;
        this.#apply(cm, rv ?? this.#resourceVersion);
        break;
      case 'DELETED':
        if (rv) this.#resourceVersion = rv;
        this.#gone(rv ?? this.#resourceVersion);
        break;
      default:
        this.#log.warn({ type }, 'ignoring unknown watch event type');
    }
    return undefined;
  }

  #apply(cm: V1ConfigMap, rv: string): void {
    this.#exists = true;
    const data = cm.data ?? {};
    if (!Object.hasOwn(data, this.#opts.key)) {
      const inBinary = cm.binaryData && Object.hasOwn(cm.binaryData, this.#opts.key);
      this.#log.error(
        { resourceVersion: rv },
        inBinary
          ? 'configmap key is in binaryData, not data; keeping the last config'
          : 'configmap has no such key; keeping the last config',
      );
      return;
    }
    const text = data[this.#opts.key];
    if (text === this.#lastText) return;
    this.#lastText = text;
    this.#log.info({ resourceVersion: rv, bytes: Buffer.byteLength(text) }, 'config changed');
    this.#emitSafely(() => this.emit('config', text, rv));
  }

  #gone(rv: string): void {
    this.#exists = false;
    // Forget the text so that a re-created ConfigMap is announced even if it is identical.
    this.#lastText = undefined;
    this.#log.error({ resourceVersion: rv }, 'configmap deleted; keeping the last config');
    this.#emitSafely(() => this.emit('deleted'));
  }

  #report(err: ConfigMapSourceError): void {
    const fields = { phase: err.phase, statusCode: err.statusCode, err: err.message };
    if (err.statusCode === 410) this.#log.info(fields, 'resourceVersion expired; relisting');
    else this.#log.warn(fields, 'configmap list/watch failed; retrying');
    this.#emitSafely(() => this.emit('watch-error', err));
  }

  // Listeners run inside the watch's stream callbacks, where a throw would be swallowed or
  // break the stream; catch and log it instead.
  #emitSafely(emit: () => void): void {
    try {
      emit();
    } catch (err) {
      this.#log.error({ err: describe(err).message }, 'configmap source listener failed');
    }
  }

  // Waits the next backoff delay: exponential, capped, with "equal jitter" (half fixed, half
  // random) so that many sidecars restarted together do not reconnect in lockstep.
  #sleep(): Promise<void> {
    if (!this.#running) return Promise.resolve();
    const { backoffInitialMs, backoffMaxMs } = this.#opts;
    const ceiling = Math.min(backoffMaxMs, backoffInitialMs * 2 ** Math.min(this.#attempt, 30));
    this.#attempt++;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.#log.debug({ attempt: this.#attempt, delayMs: Math.round(delay) },
      'retrying after backoff');
    return new Promise<void>((resolve) => {
      this.#wake = () => {
        this.#wake = undefined;
        resolve();
      };
      this.#sleepTimer = setTimeout(() => {
        this.#sleepTimer = undefined;
        this.#wake?.();
      }, delay);
    });
  }
}
