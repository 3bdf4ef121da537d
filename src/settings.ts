// The sidecar's own settings. Every setting has an environment variable and a default and is
// validated at start, so a typo fails loudly with the setting's name instead of at first use.
import { readFileSync } from 'node:fs';
import convict from 'convict';

convict.addFormat({
  name: 'host-port',
  validate(value: unknown) {
    if (typeof value !== 'string' || parseHostPort(value) === undefined) {
      throw new Error('must be host:port, e.g. 0.0.0.0:8443 or [::1]:9090');
    }
  },
});

convict.addFormat({
  name: 'strict-boolean',
  validate(value: unknown) {
    if (typeof value !== 'boolean') throw new Error('must be true or false');
  },
  coerce(value: string) {
    const v = String(value).trim().toLowerCase();
    if (v === 'true' || v === '1') return true;
    if (v === 'false' || v === '0') return false;
    return value;
  },
});

/**
 * addWholeNumberFormat registers a format for whole numbers from min to max; a value outside
 * is refused as "must be a whole number " followed by what.
 */
function addWholeNumberFormat(name: string, min: number, max: number, what: string): void {
  convict.addFormat({
    name,
    validate(value: unknown) {
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min ||
        value > max) {
        throw new Error(`must be a whole number ${what}`);
      }
    },
    // A number too large to hold exactly stays as it was set, for the error to quote.
    coerce(value: string) {
      const n = Number(value);
      return /^\s*\d+\s*$/.test(String(value)) && Number.isSafeInteger(n) ? n : value;
    },
  });
}

addWholeNumberFormat('positive-int', 1, Number.MAX_SAFE_INTEGER, 'of at least 1');

convict.addFormat({
  name: 'url',
  validate(value: unknown) {
    if (typeof value !== 'string' || !URL.canParse(value)) throw new Error('must be a URL');
    const scheme = new URL(value).protocol;
    if (scheme !== 'http:' && scheme !== 'https:') throw new Error('must be an http(s) URL');
  },
});

convict.addFormat({
  name: 'optional-url',
  validate(value: unknown) {
    if (value === '') return;
    if (typeof value !== 'string' || !URL.canParse(value)) throw new Error('must be a URL');
    const scheme = new URL(value).protocol;
    if (scheme !== 'http:' && scheme !== 'https:') throw new Error('must be an http(s) URL');
  },
});

convict.addFormat({
  name: 'namespace-name',
  validate(value: unknown) {
    if (value === '') return;
    if (typeof value !== 'string' || !/^[a-z0-9-.]+\/[a-z0-9-.]+$/.test(value)) {
      throw new Error('must be namespace/name');
    }
  },
});

convict.addFormat({
  name: 'cidr-list',
  validate(value: unknown) {
    if (typeof value !== 'string') throw new Error('must be a comma-separated list of CIDRs');
    for (const part of splitList(value)) {
      if (parseCidr(part) === undefined) throw new Error(`${part} is not a CIDR`);
    }
  },
});

addWholeNumberFormat('busy-poll-us', 0, 1000, 'of microseconds from 0 to 1000');

// A yamux stream's receive window: at least the protocol's 256 KiB, at most 16 MiB.
const MIN_STREAM_WINDOW = 256 * 1024;
const MAX_STREAM_WINDOW = 16 * 1024 * 1024;

addWholeNumberFormat('stream-window', MIN_STREAM_WINDOW, MAX_STREAM_WINDOW,
  `of bytes from ${MIN_STREAM_WINDOW} (256 KiB) to ${MAX_STREAM_WINDOW} (16 MiB)`);

const MAX_WINDOW_BUDGET = 64 * 1024 ** 3;

addWholeNumberFormat('window-budget', 0, MAX_WINDOW_BUDGET,
  `of bytes from 0 to ${MAX_WINDOW_BUDGET} (64 GiB)`);

const schema = {
  listen: {
    doc: 'Front door host:port. Plain HTTP, or HTTPS when GATEWAY_TLS_CERT and GATEWAY_TLS_KEY ' +
      'are set.',
    format: 'host-port', default: '0.0.0.0:8443', env: 'GATEWAY_LISTEN',
  },
  tlsCert: {
    doc: 'PEM certificate file for the front door (HTTPS).',
    format: String, default: '', env: 'GATEWAY_TLS_CERT',
  },
  tlsKey: {
    doc: 'PEM private key file for the front door (HTTPS).',
    format: String, default: '', env: 'GATEWAY_TLS_KEY',
  },
  adminListen: {
    doc: 'Admin host:port: /healthz, /readyz, /metrics, /debug/*.',
    format: 'host-port', default: '0.0.0.0:9090', env: 'GATEWAY_ADMIN_LISTEN',
  },
  arvadosConfig: {
    doc: 'Path of the Arvados cluster config (config.yml), re-read when it changes.',
    format: String, default: '/etc/arvados/config.yml', env: 'ARVADOS_CONFIG',
  },
  clusterId: {
    doc: 'Cluster ID to use when the config holds more than one cluster.',
    format: String, default: '', env: 'ARVADOS_CLUSTER_ID',
  },
  rootTokenFile: {
    doc: 'File holding SystemRootToken (a mounted Secret); overrides the config\'s value.',
    format: String, default: '', env: 'ARVADOS_SYSTEM_ROOT_TOKEN_FILE',
  },
  configMap: {
    doc: 'namespace/name of a ConfigMap holding the cluster config, watched instead of the file.',
    format: 'namespace-name', default: '', env: 'GATEWAY_CONFIGMAP',
  },
  configMapKey: {
    doc: 'Key of the cluster config inside the ConfigMap.',
    format: String, default: 'config.yml', env: 'GATEWAY_CONFIGMAP_KEY',
  },
  kubeconfig: {
    doc: 'Kubeconfig file used outside a cluster (in a pod the service account is used).',
    format: String, default: '', env: 'KUBECONFIG',
  },
  controllerUrl: {
    doc: 'The controller this sidecar fronts: API calls and every other request go there.',
    format: 'url', default: 'http://127.0.0.1:8003', env: 'GATEWAY_CONTROLLER_URL',
  },
  internalUrl: {
    doc: 'This sidecar\'s own URL as peers and crunch-run see it; else built from the pod ' +
      '(POD_IP, or POD_NAME and GATEWAY_PEERS_SERVICE), else from GATEWAY_LISTEN (127.0.0.1 ' +
      'for 0.0.0.0).',
    format: 'optional-url', default: '', env: 'GATEWAY_INTERNAL_URL',
  },
  peersService: {
    doc: 'DNS name of the peers\' headless Service, resolved to the current peer addresses.',
    format: String, default: '', env: 'GATEWAY_PEERS_SERVICE',
  },
  podName: { doc: 'This pod\'s name (downward API).', format: String, default: '',
      env: 'POD_NAME' },
  podIp: { doc: 'This pod\'s IP (downward API).', format: String, default: '', env: 'POD_IP' },
  podNamespace: {
    doc: 'This pod\'s namespace (downward API).',
    format: String, default: '', env: 'POD_NAMESPACE',
  },
  allowLoopbackGateways: {
    doc: 'Single-host mode: dial gateway addresses on 127.0.0.1 instead of requiring a tunnel.',
    format: 'strict-boolean', default: false, env: 'GATEWAY_ALLOW_LOOPBACK_GATEWAYS',
  },
  gatewayNetworks: {
    doc: 'CIDRs a direct gateway address may be in. Link-local (cloud metadata) and loopback ' +
      'are outside the default; single-host mode adds loopback.',
    format: 'cidr-list',
    default: '10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7',
    env: 'GATEWAY_ALLOWED_NETWORKS',
  },
  apiTimeoutMs: {
    doc: 'Timeout for one Arvados API call, in milliseconds.',
    format: 'positive-int', default: 30_000, env: 'GATEWAY_API_TIMEOUT_MS',
  },
  dialTimeoutMs: {
    doc: 'Timeout for reaching a container gateway (connect, TLS, upgrade), in milliseconds.',
    format: 'positive-int', default: 15_000, env: 'GATEWAY_DIAL_TIMEOUT_MS',
  },
  headTimeoutMs: {
    doc: 'Time a client has to send a complete request head and upgrade body, in milliseconds.',
    format: 'positive-int', default: 30_000, env: 'GATEWAY_HEAD_TIMEOUT_MS',
  },
  drainGraceSeconds: {
    doc: 'After SIGTERM, how long spliced sessions may go on before the process exits.',
    format: 'nat', default: 30, env: 'GATEWAY_DRAIN_GRACE_SECONDS',
    // 0 is allowed here: exit as soon as SIGTERM arrives.
  },
  maxTunnels: {
    doc: 'Most tunnels held at once; more are refused with 503.',
    format: 'positive-int', default: 20_000, env: 'GATEWAY_MAX_TUNNELS',
  },
  maxStreamsPerTunnel: {
    doc: 'Most streams open at once on one tunnel.',
    format: 'positive-int', default: 1024, env: 'GATEWAY_MAX_STREAMS_PER_TUNNEL',
  },
  tunnelStreamWindow: {
    doc: 'Bytes a gateway may send on one tunnel stream before this sidecar has passed them on ' +
      '(the yamux receive window, 256 KiB to 16 MiB). Larger means fewer window updates, so ' +
      'less CPU on both ends of a busy stream; it is also what a stream whose client reads ' +
      'slowly may hold in memory.',
    format: 'stream-window', default: 1024 * 1024, env: 'GATEWAY_TUNNEL_STREAM_WINDOW',
  },
  tunnelWindowBudget: {
    doc: 'Bytes of tunnel stream window above 256 KiB granted at once, over all streams. A ' +
      'stream starts at 256 KiB and grows to GATEWAY_TUNNEL_STREAM_WINDOW once half a ' +
      'window has been taken from it, if this budget has room; 0 keeps every stream at ' +
      '256 KiB. What streams whose clients stop reading can hold is then 256 KiB each plus ' +
      'this budget.',
    format: 'window-budget', default: 64 * 1024 * 1024, env: 'GATEWAY_TUNNEL_WINDOW_BUDGET',
  },
  maxSessions: {
    doc: 'Most spliced SSH sessions and log transfers at once; more are refused with 503.',
    format: 'positive-int', default: 4096, env: 'GATEWAY_MAX_SESSIONS',
  },
  maxSshSessions: {
    doc: 'Most SSH sessions at once.',
    format: 'positive-int', default: 2048, env: 'GATEWAY_MAX_SSH_SESSIONS',
  },
  maxLogRequests: {
    doc: 'Most log requests at once.',
    format: 'positive-int', default: 2048, env: 'GATEWAY_MAX_LOG_REQUESTS',
  },
  maxPassthrough: {
    doc: 'Most requests to the controller at once.',
    format: 'positive-int', default: 4096, env: 'GATEWAY_MAX_PASSTHROUGH',
  },
  busyPollUs: {
    doc: 'After each small read, keep the event loop polling this many microseconds before it ' +
      'sleeps (0 to 1000; 0 is off): shorter round trips for some CPU time.',
    format: 'busy-poll-us', default: 200, env: 'GATEWAY_BUSY_POLL_US',
  },
  logLevel: {
    doc: 'Log level: trace, debug, info, warn, error, fatal, or silent (no logs).',
    format: ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'],
    default: 'info', env: 'LOG_LEVEL',
  },
};

/** Settings is the validated, typed form of the sidecar's settings. */
export interface Settings {
  listen: string;
  tlsCert: string;
  tlsKey: string;
  adminListen: string;
  arvadosConfig: string;
  clusterId: string;
  rootTokenFile: string;
  configMap: string;
  configMapKey: string;
  kubeconfig: string;
  controllerUrl: string;
  internalUrl: string;
  peersService: string;
  podName: string;
  podIp: string;
  podNamespace: string;
  allowLoopbackGateways: boolean;
  gatewayNetworks: string;
  apiTimeoutMs: number;
  dialTimeoutMs: number;
  headTimeoutMs: number;
  drainGraceSeconds: number;
  maxTunnels: number;
  maxStreamsPerTunnel: number;
  tunnelStreamWindow: number;
  tunnelWindowBudget: number;
  maxSessions: number;
  maxSshSessions: number;
  maxLogRequests: number;
  maxPassthrough: number;
  busyPollUs: number;
  logLevel: string;
}

/** loadSettings reads the environment (and overrides), validates, and names any bad setting. */
export function loadSettings(
  env: NodeJS.ProcessEnv = process.env,
  overrides: Partial<Settings> = {},
): Settings {
  const config = convict(schema, { env, args: [] });
  config.load(overrides);
  try {
    config.validate({ allowed: 'strict' });
  } catch (err) {
    throw new Error(withVariableNames((err as Error).message));
  }
  const settings = config.getProperties() as Settings;
  if ((settings.tlsCert === '') !== (settings.tlsKey === '')) {
    throw new Error('GATEWAY_TLS_CERT and GATEWAY_TLS_KEY must be set together');
  }
  for (const [name, path] of [['GATEWAY_TLS_CERT', settings.tlsCert],
    ['GATEWAY_TLS_KEY', settings.tlsKey]]) {
    if (path === '') continue;
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      throw new Error(`${name}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code}`);
    }
    if (!text.includes('-----BEGIN ')) throw new Error(`${name}: ${path} is not a PEM file`);
  }
  return settings;
}

// convict names settings by their keys; operators know them by their environment variables.
function withVariableNames(message: string): string {
  return message.split('\n').map((line) => {
    const key = /^([A-Za-z]+):/.exec(line)?.[1];
    const env = key ? (schema as Record<string, { env?: string }>)[key]?.env : undefined;
    return env ? `${env} (${key})${line.slice(key!.length)}` : line;
  }).join('\n');
}

/** describeSettings lists every setting with its variable, default and doc, for the README. */
export function describeSettings(): { env: string; default: unknown; doc: string }[] {
  return Object.values(schema).map((s) => ({ env: s.env, default: s.default, doc: s.doc }));
}

/** parseHostPort splits "host:port" or "[v6]:port"; undefined when it is not one. */
export function parseHostPort(value: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(value);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  return { host: m[1] ?? m[2], port };
}

/** splitList splits a comma-separated setting, ignoring blanks. */
export function splitList(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

/** parseCidr checks "address/bits" for IPv4 or IPv6. */
export function parseCidr(
  value: string,
): { address: string; bits: number; v6: boolean } | undefined {
  const m = /^([0-9a-fA-F:.]+)\/(\d{1,3})$/.exec(value);
  if (!m) return undefined;
  const v6 = m[1].includes(':');
  const bits = Number(m[2]);
  if (bits > (v6 ? 128 : 32)) return undefined;
  return { address: m[1], bits, v6 };
}
