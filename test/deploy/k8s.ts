// Shared by the deployment tests: rendering the chart with helm, reading multi-document YAML
// the way the API server would, and validating each object offline.
//
// There is no API server here, so objects are checked against two independent sources:
// kubernetes-models' JSON Schemas (types, required fields, enums, formats such as quantities),
// and @kubernetes/client-node's generated type maps, which list every field of every kind and
// so catch a misspelt or misplaced field name (the JSON Schemas allow unknown fields). A few
// rules the API server enforces beyond its schema (name syntax, label values, references from
// mounts to volumes) are checked by hand, as is the ServiceMonitor, a CRD neither source knows.
import { execFile } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as clientNode from '@kubernetes/client-node';
import { ConfigMap, Pod, Secret, Service, ServiceAccount } from 'kubernetes-models/v1';
import { Deployment } from 'kubernetes-models/apps/v1';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1';
import { Role, RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1';
import { parseAllDocuments } from 'yaml';
import { installKubectl } from '../../scripts/install-kubectl.ts';

const run = promisify(execFile);

/** ROOT is the repository's top directory. */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** CHART is the chart's directory. */
export const CHART = join(ROOT, 'helm', 'arvados-gateway-sidecar');

/** DEPLOY_TESTS is this directory, where the non-default values files live. */
export const DEPLOY_TESTS = join(ROOT, 'test', 'deploy');

/** K8sObject is one rendered Kubernetes object. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>;
    annotations?: Record<string, string> };
  [field: string]: unknown;
}

/** HelmResult is the outcome of one helm command. */
export interface HelmResult {
  code: number;
  stdout: string;
  stderr: string;
}

let helmPath: Promise<string> | undefined;

/** helmBinary installs helm into .cache/bin if needed and returns its path. */
export function helmBinary(): Promise<string> {
  helmPath ??= installKubectl().then((tools) => tools.helm);
  return helmPath;
}

/** helm runs helm with args and returns its exit code and output, failing or not. */
export async function helm(args: string[]): Promise<HelmResult> {
  const bin = await helmBinary();
  try {
    const { stdout, stderr } = await run(bin, args, {
      cwd: ROOT, maxBuffer: 32 * 1024 * 1024, timeout: 60_000,
      // Keep helm from reading or writing the user's helm settings and caches.
      env: { ...process.env, HELM_CACHE_HOME: join(ROOT, '.cache', 'helm', 'cache'),
        HELM_CONFIG_HOME: join(ROOT, '.cache', 'helm', 'config'),
        HELM_DATA_HOME: join(ROOT, '.cache', 'helm', 'data') },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** DEFAULT_RELEASE and DEFAULT_NAMESPACE are the release the committed manifests render. */
export const DEFAULT_RELEASE = 'arvados';
export const DEFAULT_NAMESPACE = 'arvados';

/** templateArgs are the helm template arguments for a release, values files and --set pairs. */
export function templateArgs(valuesFiles: string[] = [], sets: string[] = [],
  release = DEFAULT_RELEASE, namespace = DEFAULT_NAMESPACE): string[] {
  return ['template', release, CHART, '--namespace', namespace,
    ...valuesFiles.flatMap((f) => ['--values', f]), ...sets.flatMap((s) => ['--set', s])];
}

/** render runs helm template and parses the objects; it throws with helm's message on failure. */
export async function render(valuesFiles: string[] = [], sets: string[] = [],
  release = DEFAULT_RELEASE, namespace = DEFAULT_NAMESPACE): Promise<K8sObject[]> {
  const result = await helm(templateArgs(valuesFiles, sets, release, namespace));
  if (result.code !== 0) throw new Error(`helm template failed: ${result.stderr.trim()}`);
  return parseManifests(result.stdout);
}

/**
 * parseManifests reads multi-document YAML as Kubernetes does (YAML 1.1, so 0440 is octal),
 * refusing duplicate keys and syntax errors, and skipping empty documents.
 */
export function parseManifests(text: string): K8sObject[] {
  const objects: K8sObject[] = [];
  for (const doc of parseAllDocuments(text, { version: '1.1', uniqueKeys: true })) {
    if (doc.errors.length > 0) throw new Error(`bad YAML: ${doc.errors[0].message}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    if (typeof value !== 'object' || Array.isArray(value)) {
      throw new Error(`a document is not an object: ${JSON.stringify(value).slice(0, 80)}`);
    }
    objects.push(value as K8sObject);
  }
  return objects;
}

/** find returns the one object of kind (and name, if given); it throws when there is not one. */
export function find<T = K8sObject>(objects: K8sObject[], kind: string, name?: string): T {
  const hits = objects.filter((o) => o.kind === kind && (name === undefined ||
    o.metadata.name === name));
  if (hits.length !== 1) {
    throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${hits.length}`);
  }
  return hits[0] as T;
}

interface Validatable {
  validate(): void;
}

type ModelClass = new (data: never) => Validatable;

// kubernetes-models classes by apiVersion/kind: the kinds this chart may render.
const MODELS: Record<string, ModelClass> = {
  'v1/ConfigMap': ConfigMap,
  'v1/Pod': Pod,
  'v1/Secret': Secret,
  'v1/Service': Service,
  'v1/ServiceAccount': ServiceAccount,
  'apps/v1/Deployment': Deployment,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
};

interface Attribute {
  baseName: string;
  type: string;
  format: string;
}

// The generated model classes, looked up by the type names their attribute maps use.
const TYPES = clientNode as unknown as Record<string, { getAttributeTypeMap?: () => Attribute[] }>;

// Fields that are resource quantities: the API accepts a number as well as a string there.
const QUANTITY_FIELDS = new Set(['limits', 'requests', 'sizeLimit']);

// Walks value as type, reporting fields the type does not have and values of the wrong kind.
function walk(value: unknown, type: string, format: string, path: string, field: string,
  problems: string[]): void {
  if (value === null || value === undefined) return;
  const bad = (what: string) => problems.push(`${path}: ${what}`);
  const array = /^Array<(.+)>$/.exec(type);
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (array) {
    if (!Array.isArray(value)) return void bad('must be a list');
    value.forEach((v, i) => walk(v, array[1], format, `${path}[${i}]`, field, problems));
  } else if (map) {
    if (typeof value !== 'object' || Array.isArray(value)) return void bad('must be a map');
    for (const [k, v] of Object.entries(value)) {
      if (QUANTITY_FIELDS.has(field) && typeof v === 'number') continue;
      walk(v, map[1], format, `${path}.${k}`, field, problems);
    }
  } else if (type === 'string' || type === 'Date') {
    if (QUANTITY_FIELDS.has(field) && typeof value === 'number') return;
    if (typeof value !== 'string') return void bad(`must be a string, not ${typeof value}`);
    if (format === 'byte' && !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) bad('must be base64');
  } else if (type === 'number') {
    if (typeof value !== 'number') return void bad(`must be a number, not ${typeof value}`);
    if ((format === 'int32' || format === 'int64') && !Number.isInteger(value)) {
      bad('must be an integer');
    }
  } else if (type === 'boolean') {
    if (typeof value !== 'boolean') bad(`must be true or false, not ${typeof value}`);
  } else if (type === 'IntOrString') {
    if (typeof value !== 'string' && !Number.isInteger(value)) bad('must be an integer or string');
  } else if (type === 'any' || type === 'object') {
    // Free-form by definition.
  } else {
    const model = TYPES[type];
    if (!model?.getAttributeTypeMap) return void bad(`no type ${type} to check against`);
    if (typeof value !== 'object' || Array.isArray(value)) return void bad('must be an object');
    const attributes = model.getAttributeTypeMap();
    const byName = new Map(attributes.map((a) => [a.baseName, a]));
    for (const [k, v] of Object.entries(value)) {
      const attribute = byName.get(k);
      if (!attribute) {
        bad(`unknown field ${JSON.stringify(k)} in ${type}`);
        continue;
      }
      walk(v, attribute.type, attribute.format, `${path}.${k}`, k, problems);
    }
  }
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_KEY = new RegExp(
  `^(${DNS_SUBDOMAIN.source.slice(1, -1)}/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`);

// Checks a few rules the API server applies beyond the OpenAPI schema.
function checkServerRules(obj: K8sObject, problems: string[]): void {
  const { name, labels = {} } = obj.metadata ?? {};
  if (typeof name !== 'string') {
    problems.push('metadata.name is missing');
    return;
  }
  if (obj.kind === 'Service') {
    if (name.length > 63 || !DNS_1035_LABEL.test(name)) {
      problems.push(`Service name ${name} is not a DNS-1035 label`);
    }
  } else if (name.length > 253 || !DNS_SUBDOMAIN.test(name)) {
    problems.push(`name ${name} is not a DNS subdomain`);
  }
  for (const [k, v] of Object.entries(labels)) {
    if (!LABEL_KEY.test(k) || k.split('/').pop()!.length > 63) problems.push(`bad label key ${k}`);
    if (typeof v !== 'string' || v.length > 63 || !LABEL_VALUE.test(v)) {
      problems.push(`bad value for label ${k}: ${JSON.stringify(v)}`);
    }
  }
  const podSpec = obj.kind === 'Pod' ? obj.spec
    : obj.kind === 'Deployment' ? (obj.spec as { template?: { spec?: unknown } })?.template?.spec
      : undefined;
  if (podSpec) checkPodSpec(podSpec as PodSpecLike, problems);
  if (obj.kind === 'Deployment') {
    const spec = obj.spec as { selector?: { matchLabels?: Record<string, string> };
      template?: { metadata?: { labels?: Record<string, string> } } };
    const podLabels = spec.template?.metadata?.labels ?? {};
    for (const [k, v] of Object.entries(spec.selector?.matchLabels ?? {})) {
      if (podLabels[k] !== v) problems.push(`selector ${k}=${v} does not match the pod labels`);
    }
  }
}

interface PodSpecLike {
  containers?: { name: string; ports?: { name?: string }[]; env?: { name: string }[];
    volumeMounts?: { name: string }[] }[];
  volumes?: { name: string }[];
}

function checkPodSpec(spec: PodSpecLike, problems: string[]): void {
  const volumes = new Set<string>();
  for (const v of spec.volumes ?? []) {
    if (volumes.has(v.name)) problems.push(`volume ${v.name} is defined twice`);
    if (!DNS_LABEL.test(v.name)) problems.push(`volume name ${v.name} is not a DNS label`);
    volumes.add(v.name);
  }
  const containers = new Set<string>();
  const portNames = new Set<string>();
  for (const c of spec.containers ?? []) {
    if (containers.has(c.name)) problems.push(`container ${c.name} is defined twice`);
    containers.add(c.name);
    for (const p of c.ports ?? []) {
      if (p.name === undefined) continue;
      if (p.name.length > 15 || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(p.name) ||
        !/[a-z]/.test(p.name)) {
        problems.push(`port name ${p.name} is not an IANA service name`);
      }
      if (portNames.has(p.name)) problems.push(`port name ${p.name} is used twice`);
      portNames.add(p.name);
    }
    const env = new Set<string>();
    for (const e of c.env ?? []) {
      if (env.has(e.name)) problems.push(`${c.name}: env ${e.name} is set twice`);
      env.add(e.name);
    }
    for (const m of c.volumeMounts ?? []) {
      if (!volumes.has(m.name)) problems.push(`${c.name}: volume mount ${m.name} has no volume`);
    }
  }
}

const DURATION = /^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$/;

// The ServiceMonitor fields this chart uses and the other common ones, with their kinds.
const SM_SPEC_FIELDS = new Set(['selector', 'namespaceSelector', 'endpoints', 'jobLabel',
  'targetLabels', 'podTargetLabels', 'sampleLimit']);
const SM_ENDPOINT_FIELDS = new Set(['port', 'targetPort', 'path', 'scheme', 'interval',
  'scrapeTimeout', 'honorLabels', 'honorTimestamps', 'params', 'relabelings',
  'metricRelabelings', 'tlsConfig', 'bearerTokenSecret', 'authorization', 'followRedirects']);

// Checks a monitoring.coreos.com/v1 ServiceMonitor against the CRD's main rules.
function checkServiceMonitor(obj: K8sObject, problems: string[]): void {
  const spec = obj.spec as Record<string, unknown> | undefined;
  if (!spec || typeof spec !== 'object') return void problems.push('spec is missing');
  for (const k of Object.keys(spec)) {
    if (!SM_SPEC_FIELDS.has(k)) problems.push(`unknown field spec.${k}`);
  }
  const selector = spec.selector as { matchLabels?: unknown } | undefined;
  if (!selector || typeof selector !== 'object') problems.push('spec.selector is required');
  const matchLabels = selector?.matchLabels;
  if (matchLabels !== undefined && (typeof matchLabels !== 'object' || matchLabels === null ||
    Object.values(matchLabels).some((v) => typeof v !== 'string'))) {
    problems.push('spec.selector.matchLabels must map strings to strings');
  }
  const ns = spec.namespaceSelector as { matchNames?: unknown; any?: unknown } | undefined;
  if (ns !== undefined) {
    for (const k of Object.keys(ns)) {
      if (k !== 'matchNames' && k !== 'any') problems.push(`unknown field namespaceSelector.${k}`);
    }
    if (ns.matchNames !== undefined && (!Array.isArray(ns.matchNames) ||
      ns.matchNames.some((n) => typeof n !== 'string'))) {
      problems.push('spec.namespaceSelector.matchNames must be a list of strings');
    }
  }
  const endpoints = spec.endpoints;
  if (!Array.isArray(endpoints) || endpoints.length === 0) {
    return void problems.push('spec.endpoints must be a non-empty list');
  }
  endpoints.forEach((e: Record<string, unknown>, i) => {
    for (const k of Object.keys(e)) {
      if (!SM_ENDPOINT_FIELDS.has(k)) problems.push(`unknown field spec.endpoints[${i}].${k}`);
    }
    if (typeof e.port !== 'string' && e.targetPort === undefined) {
      problems.push(`spec.endpoints[${i}] needs a port name`);
    }
    for (const k of ['interval', 'scrapeTimeout']) {
      if (e[k] !== undefined && (typeof e[k] !== 'string' || !DURATION.test(e[k] as string))) {
        problems.push(`spec.endpoints[${i}].${k} is not a duration`);
      }
    }
    if (e.scheme !== undefined && e.scheme !== 'http' && e.scheme !== 'https') {
      problems.push(`spec.endpoints[${i}].scheme must be http or https`);
    }
    if (e.path !== undefined && (typeof e.path !== 'string' || !e.path.startsWith('/'))) {
      problems.push(`spec.endpoints[${i}].path must be an absolute path`);
    }
  });
}

/** validateObject returns what is wrong with obj, or an empty list. */
export function validateObject(obj: K8sObject): string[] {
  const problems: string[] = [];
  const key = `${obj.apiVersion}/${obj.kind}`;
  if (key === 'monitoring.coreos.com/v1/ServiceMonitor') {
    checkServiceMonitor(obj, problems);
    checkServerRules(obj, problems);
    return problems;
  }
  const Model = MODELS[key];
  if (!Model) return [`no schema for ${key}`];
  try {
    new Model(obj as never).validate();
  } catch (err) {
    problems.push(`schema: ${(err as Error).message}`);
  }
  walk(obj, `V1${obj.kind}`, '', obj.kind, '', problems);
  checkServerRules(obj, problems);
  return problems;
}

/** validationReport names every object that fails validation and why; empty when all pass. */
export function validationReport(objects: K8sObject[]): string {
  return objects.flatMap((o) => validateObject(o)
    .map((p) => `${o.kind}/${o.metadata?.name}: ${p}`)).join('\n');
}
