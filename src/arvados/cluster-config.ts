// The parts of Arvados' cluster config (config.yml) the sidecar uses, parsed and validated, and
// a store that keeps the last good version while sources (a file, a ConfigMap) feed it text.
import { EventEmitter } from 'node:events';
import { parse as parseYaml } from 'yaml';

/** ClusterConfig holds the fields of one cluster's config that the gateway needs. */
export interface ClusterConfig {
  clusterId: string;
  systemRootToken: string;
  controllerInternalUrls: string[];
  webdavInternalUrls: string[];
  shellAccess: { admin: boolean; user: boolean };
  tlsInsecure: boolean;
}

/** parseClusterConfig parses config.yml text; it throws an Error naming what is wrong. */
export function parseClusterConfig(text: string, clusterId = ''): ClusterConfig {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new Error(`cluster config is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  const clusters = field(doc, 'Clusters');
  if (!isObject(clusters)) throw new Error('cluster config has no Clusters section');
  const ids = Object.keys(clusters);
  const id = clusterId || (ids.length === 1 ? ids[0] : '');
  if (id === '') {
    throw new Error(`cluster config holds ${ids.length} clusters; set ARVADOS_CLUSTER_ID`);
  }
  const cluster = clusters[id];
  if (!isObject(cluster)) throw new Error(`cluster config has no cluster ${id}`);

  const token = field(cluster, 'SystemRootToken');
  if (token !== undefined && typeof token !== 'string') {
    throw new Error('Clusters.' + id + '.SystemRootToken must be a string');
  }
  const services = field(cluster, 'Services');
  const shell = field(field(cluster, 'Containers'), 'ShellAccess');
  return {
    clusterId: id,
    systemRootToken: token ?? '',
    controllerInternalUrls: internalUrls(field(services, 'Controller'), `${id}.Controller`),
    webdavInternalUrls: internalUrls(field(services, 'WebDAV'), `${id}.WebDAV`),
    // Arvados' defaults: both admins and users may open shells.
    shellAccess: {
      admin: bool(field(shell, 'Admin'), true, 'Containers.ShellAccess.Admin'),
      user: bool(field(shell, 'User'), true, 'Containers.ShellAccess.User'),
    },
    tlsInsecure: bool(field(field(cluster, 'TLS'), 'Insecure'), false, 'TLS.Insecure'),
  };
}

/** redactedClusterConfig is the config as /debug/config shows it: secrets replaced. */
export function redactedClusterConfig(config: ClusterConfig): Record<string, unknown> {
  return { ...config, systemRootToken: config.systemRootToken ? '[redacted]' : '' };
}

/** ClusterConfigStore holds the current config and keeps the last good one on a bad update. */
export class ClusterConfigStore extends EventEmitter {
  #current: ClusterConfig | undefined;
  #clusterId: string;
  #rootTokenOverride = '';
  #lastText = '';
  #lastError = '';
  #rootTokenError = '';

  constructor(clusterId = '') {
    super();
    this.#clusterId = clusterId;
  }

  /** current is the last good config; undefined until one has loaded. */
  get current(): ClusterConfig | undefined {
    return this.#current;
  }

  /** lastError is the reason the newest update was refused, or empty. */
  get lastError(): string {
    return this.#lastError;
  }

  /** rootTokenError says why the root token file could not be used, or is empty. */
  get rootTokenError(): string {
    return this.#rootTokenError;
  }

  /** setRootTokenOverride uses a token from a mounted Secret instead of the config's. */
  setRootTokenOverride(token: string): void {
    this.#rootTokenOverride = token.trim();
    this.#rootTokenError = this.#rootTokenOverride === '' ? 'the file is empty' : '';
    if (this.#lastText !== '') this.update(this.#lastText, 'root token file', true);
  }

  /**
   * rootTokenUnreadable records that the token file named in the settings cannot be read. The
   * config's own token is not used instead: the operator asked for the file's.
   */
  rootTokenUnreadable(reason: string): void {
    this.#rootTokenError = reason;
  }

  /** sourceFailed records that a source could not deliver the config at all. */
  sourceFailed(reason: string, source: string): void {
    this.#lastError = reason;
    this.emit('rejected', new Error(reason), source);
  }

  /**
   * update offers new config text from a source. A good config replaces the current one and
   * emits 'change'; a bad one keeps the current one, emits 'rejected' and returns the error.
   */
  update(text: string, source: string, force = false): Error | undefined {
    if (text === this.#lastText && !force) {
      // The last good text came back after a refused edit: that is a recovery, not a no-op.
      if (this.#lastError !== '') {
        this.#lastError = '';
        this.emit('change', this.#current, source);
      }
      return undefined;
    }
    try {
      const parsed = parseClusterConfig(text, this.#clusterId);
      if (this.#rootTokenOverride !== '') parsed.systemRootToken = this.#rootTokenOverride;
      if (parsed.systemRootToken === '') {
        throw new Error('SystemRootToken is empty (set it in the config or a token file)');
      }
      this.#lastText = text;
      this.#lastError = '';
      this.#current = parsed;
      this.emit('change', parsed, source);
      return undefined;
    } catch (err) {
      this.#lastError = (err as Error).message;
      this.emit('rejected', err, source);
      return err as Error;
    }
  }
}

function internalUrls(service: unknown, name: string): string[] {
  const urls = field(service, 'InternalURLs');
  if (urls === undefined || urls === null) return [];
  if (!isObject(urls)) throw new Error(`Services.${name}.InternalURLs must be a map`);
  for (const url of Object.keys(urls)) {
    if (!URL.canParse(url)) throw new Error(`Services.${name}.InternalURLs: bad URL ${url}`);
  }
  return Object.keys(urls);
}

function bool(value: unknown, fallback: boolean, name: string): boolean {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'boolean') throw new Error(`${name} must be true or false`);
  return value;
}

function field(obj: unknown, key: string): unknown {
  return isObject(obj) ? obj[key] : undefined;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
