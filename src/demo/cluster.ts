// A whole Arvados-like cluster on loopback for the demo and the tests: a fake API server, a
// cluster config file, and any number of real sidecars in front of the fake API.
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { FakeArvados } from './fake-arvados.ts';
import { createLogger, type Logger } from '../log.ts';
import { loadSettings, type Settings } from '../settings.ts';
import { Sidecar } from '../sidecar.ts';
import type { ResolveFn } from '../kube/peers.ts';

/** ClusterConfigFields are the cluster config values a test may change. */
export interface ClusterConfigFields {
  controllerInternalUrls?: string[];
  webdavInternalUrls?: string[];
  shellAccess?: { Admin?: boolean; User?: boolean };
  tlsInsecure?: boolean;
}

/** LocalCluster is a fake API and a cluster config that sidecars can be started against. */
export class LocalCluster {
  readonly rootToken = randomBytes(24).toString('hex');
  readonly clusterId = 'zzzzz';
  readonly dir = mkdtempSync(join(tmpdir(), 'gateway-cluster-'));
  readonly configPath = join(this.dir, 'config.yml');
  readonly api = new FakeArvados(this.rootToken);
  readonly sidecars: Sidecar[] = [];
  /** logLines collects every log line of every sidecar, for tests that scan them. */
  readonly logLines: string[] = [];
  apiUrl = '';
  #fields: ClusterConfigFields = {};

  /** start starts the fake API and writes the config. */
  async start(fields: ClusterConfigFields = {}): Promise<this> {
    this.apiUrl = await this.api.listen();
    this.writeConfig(fields);
    return this;
  }

  /** writeConfig rewrites the cluster config file; sidecars pick it up within a second. */
  writeConfig(fields: ClusterConfigFields = this.#fields): void {
    this.#fields = fields;
    writeFileSync(this.configPath, this.configText(fields));
  }

  /** configText renders the cluster config as Arvados' config.yml. */
  configText(fields: ClusterConfigFields = {}): string {
    const urls = (list: string[] = []) =>
      list.length === 0 ? '{}' : '\n' + list.map((u) => `          "${u}": {}`).join('\n');
    return [
      'Clusters:',
      `  ${this.clusterId}:`,
      `    SystemRootToken: ${this.rootToken}`,
      '    Services:',
      '      Controller:',
      `        InternalURLs: ${urls(fields.controllerInternalUrls)}`,
      '      WebDAV:',
      `        InternalURLs: ${urls(fields.webdavInternalUrls)}`,
      '    Containers:',
      '      ShellAccess:',
      `        Admin: ${fields.shellAccess?.Admin ?? true}`,
      `        User: ${fields.shellAccess?.User ?? true}`,
      '    TLS:',
      `      Insecure: ${fields.tlsInsecure ?? true}`,
      '',
    ].join('\n');
  }

  /** startSidecar starts a sidecar on loopback with test-friendly settings. */
  async startSidecar(
    overrides: Partial<Settings> = {},
    log?: Logger,
    resolvePeers?: ResolveFn,
  ): Promise<Sidecar> {
    const settings = loadSettings({}, {
      listen: '127.0.0.1:0',
      adminListen: '127.0.0.1:0',
      arvadosConfig: this.configPath,
      controllerUrl: this.apiUrl,
      logLevel: 'info',
      apiTimeoutMs: 5000,
      dialTimeoutMs: 5000,
      ...overrides,
    });
    const lines = this.logLines;
    const sink = new Writable({
      write(chunk, _enc, cb) {
        lines.push(...String(chunk).split('\n').filter(Boolean));
        cb();
      },
    });
    const sidecar = new Sidecar({
      settings, log: log ?? createLogger(settings.logLevel, sink), processMetrics: false,
      resolvePeers,
    });
    await sidecar.start();
    this.sidecars.push(sidecar);
    return sidecar;
  }

  /** stop stops every sidecar and the fake API and removes the config. */
  async stop(): Promise<void> {
    await Promise.allSettled(this.sidecars.map((s) => s.stop()));
    await this.api.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** urlOf is the front door URL of a sidecar on loopback. */
export function urlOf(sidecar: Sidecar): string {
  return `http://127.0.0.1:${sidecar.frontPort}`;
}
