// A fake Kubernetes API server for ConfigMaps that speaks the real wire format, so the same
// server can be checked against kubectl and then used to drive the sidecar's ConfigMap source.
// It keeps one global resourceVersion counter and a history of watch events whose oldest part
// can be compacted away, which is what makes a real apiserver answer 410 Gone.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/** FakeConfigMap is a ConfigMap as the fake stores and serves it. */
export interface FakeConfigMap {
  apiVersion: 'v1';
  kind: 'ConfigMap';
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    resourceVersion: string;
    creationTimestamp: string;
  };
  data?: Record<string, string>;
}

/** WatchEventType lists the event types of the watch protocol. */
export type WatchEventType = 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';

/** RecordedRequest is one request the fake received, for assertions. */
export interface RecordedRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  accept: string;
  status: number;
}

/** FakeApiServerOptions configures a FakeApiServer. */
export interface FakeApiServerOptions {
  /** token is the bearer token every request must carry; a random one by default. */
  token?: string;
  /** namespace is the default namespace of put() and delete(); "default" by default. */
  namespace?: string;
  /** tls serves HTTPS with a fresh self-signed certificate for 127.0.0.1 (needs openssl). */
  tls?: boolean;
  /** historyLimit is how many events are kept before the oldest are compacted away. */
  historyLimit?: number;
  /** expiredAsHttpStatus answers a too-old watch with HTTP 410 instead of an ERROR event. */
  expiredAsHttpStatus?: boolean;
}

/** KubeconfigOptions selects what writeKubeconfig puts in the file. */
export interface KubeconfigOptions {
  /** path is where to write; a fresh temporary file by default. */
  path?: string;
  /** token overrides the server's token, e.g. to test a wrong one. */
  token?: string;
  /** namespace is the context's namespace. */
  namespace?: string;
  /** insecure skips TLS verification; with false and TLS, the certificate is the CA. */
  insecure?: boolean;
}

interface HistoryEntry {
  rv: number;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: FakeConfigMap;
}

interface Watcher {
  res: ServerResponse;
  namespace: string | undefined;
  name: string | undefined;
  bookmarks: boolean;
  table: boolean;
  timer: NodeJS.Timeout | undefined;
}

interface Status {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Failure';
  message: string;
  reason: string;
  code: number;
  details?: { name?: string; kind?: string };
}

const run = promisify(execFile);

const REASONS: Record<number, string> = {
  400: 'BadRequest',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  405: 'MethodNotAllowed',
  410: 'Expired',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
};

function status(code: number, message: string, details?: Status['details']): Status {
  const s: Status = {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message,
    reason: REASONS[code] ?? 'Unknown',
    code,
  };
  if (details) s.details = details;
  return s;
}

const API_RESOURCES = {
  kind: 'APIResourceList',
  groupVersion: 'v1',
  resources: [
    {
      name: 'configmaps',
      singularName: 'configmap',
      namespaced: true,
      kind: 'ConfigMap',
      verbs: ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch'],
      shortNames: ['cm'],
      storageVersionHash: 'qFsyl6wFWjQ=',
    },
    {
      name: 'namespaces',
      singularName: 'namespace',
      namespaced: false,
      kind: 'Namespace',
      verbs: ['get'],
      shortNames: ['ns'],
    },
  ],
};

const NAMESPACE_PATH = /^\/api\/v1\/namespaces\/([^/]+)$/;
const CONFIGMAP_PATH = /^\/api\/v1\/(?:namespaces\/([^/]+)\/)?configmaps(?:\/([^/]+))?$/;

// Parses the only field selectors the fake understands: metadata.name and metadata.namespace
// equality, which is all that kubectl and the sidecar send.
function parseFieldSelector(sel: string | null): { name?: string; namespace?: string } | Error {
  const out: { name?: string; namespace?: string } = {};
  if (!sel) return out;
  for (const term of sel.split(',')) {
    const m = /^(metadata\.name|metadata\.namespace)(==?)(.*)$/.exec(term.trim());
    if (!m) return new Error(`unsupported field selector term "${term}"`);
    if (m[1] === 'metadata.name') out.name = m[3];
    else out.namespace = m[3];
  }
  return out;
}

// Kubernetes timestamps have whole seconds.
function nowTimestamp(): string {
  return new Date().toISOString().replace(/\.\d+Z$/, 'Z');
}

function wantsTable(accept: string): boolean {
  return /as=Table/.test(accept);
}

function isTrue(v: string | null): boolean {
  return v === 'true' || v === '1';
}

/** FakeApiServer is a loopback Kubernetes API server that serves ConfigMaps. */
export class FakeApiServer {
  /** token is the bearer token the server requires. */
  readonly token: string;
  /** requests records every request received, in order. */
  readonly requests: RecordedRequest[] = [];

  #server: Server;
  #url = '';
  #tlsDir: string | undefined;
  #tempDirs: string[] = [];
  #cert: string | undefined;
  #namespace: string;
  #historyLimit: number;
  #expiredAsHttpStatus: boolean;
  #rv = 1;
  #compactedRv = 1;
  #uid = 0;
  #objects = new Map<string, FakeConfigMap>();
  #history: HistoryEntry[] = [];
  #watchers = new Set<Watcher>();
  #sockets = new Set<Socket>();
  #stalled = false;
  #held: Array<() => void> = [];
  #heldRequests = 0;
  #failStatus = 0;
  #failTimes = 0;

  private constructor(opts: FakeApiServerOptions, server: Server) {
    this.token = opts.token ?? `fake-${Math.random().toString(36).slice(2)}`;
    this.#namespace = opts.namespace ?? 'default';
    this.#historyLimit = opts.historyLimit ?? 1000;
    this.#expiredAsHttpStatus = opts.expiredAsHttpStatus ?? false;
    this.#server = server;
  }

  /** start listens on 127.0.0.1 on a free port and returns the running server. */
  static async start(opts: FakeApiServerOptions = {}): Promise<FakeApiServer> {
    let tlsDir: string | undefined;
    let server: Server;
    let cert: string | undefined;
    if (opts.tls) {
      tlsDir = await mkdtemp(join(tmpdir(), 'fake-apiserver-tls-'));
      const keyPath = join(tlsDir, 'key.pem');
      const certPath = join(tlsDir, 'cert.pem');
      await run('openssl', [
        'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
        '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', '/CN=fake-apiserver',
        '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
      ]);
      cert = await readFile(certPath, 'utf8');
      server = createHttpsServer({ key: await readFile(keyPath), cert });
    } else {
      server = createHttpServer();
    }
    const fake = new FakeApiServer(opts, server);
    fake.#tlsDir = tlsDir;
    fake.#cert = cert;
    server.on('request', (req, res) => fake.#onRequest(req, res));
    server.on('connection', (sock: Socket) => {
      fake.#sockets.add(sock);
      sock.on('close', () => fake.#sockets.delete(sock));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    fake.#url = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
    return fake;
  }

  /** url is the server's base URL, e.g. http://127.0.0.1:PORT. */
  get url(): string {
    return this.#url;
  }

  /** resourceVersion is the server's current resourceVersion. */
  get resourceVersion(): string {
    return String(this.#rv);
  }

  /** watchCount is the number of open watch connections. */
  get watchCount(): number {
    return this.#watchers.size;
  }

  /** heldRequests is the number of requests stall() is holding unanswered. */
  get heldRequests(): number {
    return this.#heldRequests;
  }

  /** get returns the stored ConfigMap, or undefined. */
  get(name: string, namespace = this.#namespace): FakeConfigMap | undefined {
    const obj = this.#objects.get(`${namespace}/${name}`);
    return obj ? structuredClone(obj) : undefined;
  }

  /** put creates or replaces a ConfigMap's data and notifies watchers; it returns the object. */
  put(name: string, data: Record<string, string>, namespace = this.#namespace): FakeConfigMap {
    const key = `${namespace}/${name}`;
    const old = this.#objects.get(key);
    const rv = ++this.#rv;
    const obj: FakeConfigMap = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: {
        name,
        namespace,
        uid: old?.metadata.uid ?? this.#newUid(),
        resourceVersion: String(rv),
        creationTimestamp: old?.metadata.creationTimestamp ?? nowTimestamp(),
      },
      data: { ...data },
    };
    this.#objects.set(key, obj);
    this.#record({ rv, type: old ? 'MODIFIED' : 'ADDED', object: obj });
    return structuredClone(obj);
  }

  /** delete removes a ConfigMap and notifies watchers; it returns false if there was none. */
  delete(name: string, namespace = this.#namespace): boolean {
    const key = `${namespace}/${name}`;
    const old = this.#objects.get(key);
    if (!old) return false;
    this.#objects.delete(key);
    const rv = ++this.#rv;
    // Like etcd, the DELETED event carries the last state at the deletion's revision.
    const object = structuredClone(old);
    object.metadata.resourceVersion = String(rv);
    this.#record({ rv, type: 'DELETED', object });
    return true;
  }

  /** compact forgets all history, so any watch from an older resourceVersion gets 410. */
  compact(): void {
    this.#history = [];
    this.#compactedRv = this.#rv;
  }

  /** bookmark sends a BOOKMARK with the current resourceVersion to watches that asked for them. */
  bookmark(): void {
    for (const w of this.#watchers) {
      if (w.bookmarks) this.#send(w, 'BOOKMARK', this.#bookmarkObject());
    }
  }

  /** expireWatches sends an ERROR 410 event on every open watch and ends it, as on compaction. */
  expireWatches(): void {
    const s = status(410, `too old resource version: ${this.#compactedRv} (${this.#rv})`);
    for (const w of [...this.#watchers]) {
      this.#send(w, 'ERROR', s);
      this.#endWatch(w);
    }
  }

  /** dropWatches ends every open watch: cleanly, or by resetting the connection when abrupt. */
  dropWatches(opts: { abrupt?: boolean } = {}): void {
    for (const w of [...this.#watchers]) {
      if (opts.abrupt) {
        this.#watchers.delete(w);
        if (w.timer) clearTimeout(w.timer);
        w.res.socket?.destroy();
      } else {
        this.#endWatch(w);
      }
    }
  }

  /** stall holds every new request unanswered, and delays watch events, until stall(false). */
  stall(on = true): void {
    this.#stalled = on;
    if (!on) {
      const held = this.#held;
      this.#held = [];
      this.#heldRequests = 0;
      for (const resume of held) resume();
    }
  }

  /** fail answers the next `times` resource requests with an error Status of that code. */
  fail(code = 500, times = Number.POSITIVE_INFINITY): void {
    this.#failStatus = code;
    this.#failTimes = times;
  }

  /** heal undoes fail(). */
  heal(): void {
    this.#failStatus = 0;
    this.#failTimes = 0;
  }

  /**
   * writeKubeconfig writes a kubeconfig (JSON, which is valid YAML) and returns its path; a
   * temporary one is removed by close().
   */
  async writeKubeconfig(opts: KubeconfigOptions = {}): Promise<string> {
    let path = opts.path;
    if (!path) {
      const dir = await mkdtemp(join(tmpdir(), 'fake-kubeconfig-'));
      this.#tempDirs.push(dir);
      path = join(dir, 'kubeconfig');
    }
    const cluster: Record<string, unknown> = { server: this.#url };
    if (opts.insecure === false && this.#cert) {
      cluster['certificate-authority-data'] = Buffer.from(this.#cert).toString('base64');
    } else {
      // Clients refuse plain HTTP unless TLS verification is explicitly off.
      cluster['insecure-skip-tls-verify'] = true;
    }
    const config = {
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'fake', cluster }],
      users: [{ name: 'fake', user: { token: opts.token ?? this.token } }],
      contexts: [
        {
          name: 'fake',
          context: { cluster: 'fake', user: 'fake', namespace: opts.namespace ?? this.#namespace },
        },
      ],
      'current-context': 'fake',
      preferences: {},
    };
    await writeFile(path, JSON.stringify(config, null, 2), { mode: 0o600 });
    return path;
  }

  /** close ends all watches and connections and stops the server. */
  async close(): Promise<void> {
    this.stall(false);
    for (const w of [...this.#watchers]) this.#endWatch(w);
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    for (const s of this.#sockets) s.destroy();
    await closed;
    for (const dir of [this.#tlsDir, ...this.#tempDirs]) {
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  }

  #newUid(): string {
    const n = (++this.#uid).toString(16).padStart(12, '0');
    return `00000000-0000-4000-8000-${n}`;
  }

  #bookmarkObject(): unknown {
    return { kind: 'ConfigMap', apiVersion: 'v1', metadata: { resourceVersion: String(this.#rv) } };
  }

  #record(entry: HistoryEntry): void {
    this.#history.push(entry);
    while (this.#history.length > this.#historyLimit) {
      const dropped = this.#history.shift();
      if (dropped) this.#compactedRv = dropped.rv;
    }
    for (const w of this.#watchers) {
      if (this.#matches(w, entry.object)) this.#send(w, entry.type, entry.object);
    }
  }

  #matches(w: Watcher, obj: FakeConfigMap): boolean {
    if (w.namespace !== undefined && obj.metadata.namespace !== w.namespace) return false;
    if (w.name !== undefined && obj.metadata.name !== w.name) return false;
    return true;
  }

  #send(w: Watcher, type: WatchEventType, object: unknown): void {
    const body = w.table && (type === 'ADDED' || type === 'MODIFIED' || type === 'DELETED')
      ? this.#table([object as FakeConfigMap], false)
      : object;
    const line = `${JSON.stringify({ type, object: body })}\n`;
    if (this.#stalled) {
      this.#held.push(() => {
        if (this.#watchers.has(w)) w.res.write(line);
      });
    } else {
      w.res.write(line);
    }
  }

  #endWatch(w: Watcher): void {
    this.#watchers.delete(w);
    if (w.timer) clearTimeout(w.timer);
    w.res.end();
  }

  #reply(res: ServerResponse, code: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(code, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(text),
      'Cache-Control': 'no-cache, private',
    });
    res.end(text);
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    if (this.#stalled) {
      this.#heldRequests++;
      this.#held.push(() => this.#onRequest(req, res));
      return;
    }
    const url = new URL(req.url ?? '/', 'http://fake');
    const rec: RecordedRequest = {
      method: req.method ?? 'GET',
      path: url.pathname,
      query: url.searchParams,
      accept: req.headers.accept ?? '',
      status: 200,
    };
    this.requests.push(rec);
    res.on('finish', () => {
      rec.status = res.statusCode;
    });
    req.resume();

    if (req.headers.authorization !== `Bearer ${this.token}`) {
      this.#reply(res, 401, status(401, 'Unauthorized'));
      return;
    }
    if (req.method !== 'GET') {
      this.#reply(res, 405,
        status(405, 'the server does not allow this method on the requested resource'));
      return;
    }
    switch (url.pathname) {
      case '/version':
        this.#reply(res, 200, {
          major: '1',
          minor: '34',
          gitVersion: 'v1.34.0-fake',
          gitCommit: '0000000000000000000000000000000000000000',
          gitTreeState: 'clean',
          buildDate: '2025-01-01T00:00:00Z',
          goVersion: 'go1.24.0',
          compiler: 'gc',
          platform: 'linux/amd64',
        });
        return;
      case '/api':
        // Plain JSON (not the aggregated discovery media type) makes clients fall back to
        // per-group-version discovery, which is all the fake needs to serve.
        this.#reply(res, 200, {
          kind: 'APIVersions',
          versions: ['v1'],
          serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: url.host }],
        });
        return;
      case '/apis':
        this.#reply(res, 200, { kind: 'APIGroupList', apiVersion: 'v1', groups: [] });
        return;
      case '/api/v1':
        this.#reply(res, 200, API_RESOURCES);
        return;
    }
    const nsMatch = NAMESPACE_PATH.exec(url.pathname);
    if (nsMatch) {
      // Every namespace exists; kubectl reads one to explain a NotFound.
      this.#reply(res, 200, {
        kind: 'Namespace',
        apiVersion: 'v1',
        metadata: { name: decodeURIComponent(nsMatch[1]), resourceVersion: '1' },
        spec: { finalizers: ['kubernetes'] },
        status: { phase: 'Active' },
      });
      return;
    }
    const m = CONFIGMAP_PATH.exec(url.pathname);
    if (!m) {
      this.#reply(res, 404, status(404, 'the server could not find the requested resource'));
      return;
    }
    if (this.#failTimes > 0) {
      this.#failTimes--;
      this.#reply(res, this.#failStatus, status(this.#failStatus, 'fake apiserver failure'));
      return;
    }
    const namespace = m[1] ? decodeURIComponent(m[1]) : undefined;
    const name = m[2] ? decodeURIComponent(m[2]) : undefined;
    const table = wantsTable(rec.accept);
    if (name !== undefined) {
      if (namespace === undefined) {
        this.#reply(res, 404, status(404, 'the server could not find the requested resource'));
        return;
      }
      if (isTrue(url.searchParams.get('watch'))) {
        this.#watch(req, res, url, namespace, name, table);
        return;
      }
      const obj = this.#objects.get(`${namespace}/${name}`);
      if (!obj) {
        this.#reply(res, 404,
          status(404, `configmaps "${name}" not found`, { name, kind: 'configmaps' }));
        return;
      }
      this.#reply(res, 200, table ? this.#table([obj], true) : obj);
      return;
    }
    const sel = parseFieldSelector(url.searchParams.get('fieldSelector'));
    if (sel instanceof Error) {
      this.#reply(res, 400, status(400, sel.message));
      return;
    }
    if (sel.namespace !== undefined && namespace !== undefined && sel.namespace !== namespace) {
      this.#reply(res, 200, this.#list([], table));
      return;
    }
    const ns = namespace ?? sel.namespace;
    if (isTrue(url.searchParams.get('watch'))) {
      this.#watch(req, res, url, ns, sel.name, table);
      return;
    }
    const items = [...this.#objects.values()]
      .filter((o) => (ns === undefined || o.metadata.namespace === ns))
      .filter((o) => (sel.name === undefined || o.metadata.name === sel.name))
      .sort((a, b) => `${a.metadata.namespace}/${a.metadata.name}`
        .localeCompare(`${b.metadata.namespace}/${b.metadata.name}`));
    this.#reply(res, 200, this.#list(items, table));
  }

  #list(items: FakeConfigMap[], table: boolean): unknown {
    if (table) return this.#table(items, true);
    return {
      kind: 'ConfigMapList',
      apiVersion: 'v1',
      metadata: { resourceVersion: String(this.#rv) },
      // Items of a list carry no kind or apiVersion of their own.
      items: items.map(({ kind: _k, apiVersion: _a, ...rest }) => structuredClone(rest)),
    };
  }

  // Server-side printing, as kubectl asks for it when it prints a human-readable table.
  #table(items: FakeConfigMap[], withHeader: boolean): unknown {
    const t: Record<string, unknown> = {
      kind: 'Table',
      apiVersion: 'meta.k8s.io/v1',
      metadata: { resourceVersion: String(this.#rv) },
      rows: items.map((o) => ({
        cells: [o.metadata.name, Object.keys(o.data ?? {}).length, '1s'],
        object: {
          kind: 'PartialObjectMetadata',
          apiVersion: 'meta.k8s.io/v1',
          metadata: structuredClone(o.metadata),
        },
      })),
    };
    if (withHeader) {
      t.columnDefinitions = [
        { name: 'Name', type: 'string', format: 'name', description: 'Name', priority: 0 },
        { name: 'Data', type: 'string', format: '', description: 'Data keys', priority: 0 },
        { name: 'Age', type: 'string', format: '', description: 'Age', priority: 0 },
      ];
    }
    return t;
  }

  #watch(
    req: IncomingMessage,
    res: ServerResponse,
    url: URL,
    namespace: string | undefined,
    name: string | undefined,
    table: boolean,
  ): void {
    const q = url.searchParams;
    const rvParam = q.get('resourceVersion') ?? '';
    const w: Watcher = {
      res,
      namespace,
      name,
      bookmarks: isTrue(q.get('allowWatchBookmarks')),
      table,
      timer: undefined,
    };
    let backlog: Array<{ type: WatchEventType; object: unknown }>;
    if (rvParam === '' || rvParam === '0') {
      // "Any version": start with the current state as synthetic ADDED events.
      backlog = [...this.#objects.values()]
        .filter((o) => this.#matches(w, o))
        .map((object) => ({ type: 'ADDED' as const, object }));
    } else {
      const from = Number(rvParam);
      if (!Number.isSafeInteger(from) || from < 0) {
        this.#reply(res, 400, status(400, `invalid resource version "${rvParam}"`));
        return;
      }
      if (from < this.#compactedRv) {
        const s = status(410, `too old resource version: ${from} (${this.#compactedRv})`);
        if (this.#expiredAsHttpStatus) {
          this.#reply(res, 410, s);
          return;
        }
        res.writeHead(200, {
          'Content-Type': 'application/json',
          'Cache-Control': 'no-cache, private',
        });
        res.end(`${JSON.stringify({ type: 'ERROR', object: s })}\n`);
        return;
      }
      backlog = this.#history
        .filter((e) => e.rv > from && this.#matches(w, e.object))
        .map((e) => ({ type: e.type, object: e.object }));
    }
    res.writeHead(200, {
      'Content-Type': 'application/json',
      'Cache-Control': 'no-cache, private',
      'Transfer-Encoding': 'chunked',
    });
    res.flushHeaders();
    this.#watchers.add(w);
    const timeout = Number(q.get('timeoutSeconds') ?? '0');
    if (timeout > 0) w.timer = setTimeout(() => this.#endWatch(w), timeout * 1000);
    res.on('close', () => {
      this.#watchers.delete(w);
      if (w.timer) clearTimeout(w.timer);
    });
    for (const e of backlog) this.#send(w, e.type, e.object);
  }
}
