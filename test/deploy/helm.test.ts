// The Helm chart: it lints strictly, renders objects that validate, wires the sidecar the way
// its settings expect (ports, probes, token file, ConfigMap, peers, drain grace), grants no
// more than the one ConfigMap, and refuses values that could not work.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { parseClusterConfig } from '../../src/arvados/cluster-config.ts';
import { describeSettings, loadSettings, parseHostPort } from '../../src/settings.ts';
import {
  CHART, DEPLOY_TESTS, find, helm, render, templateArgs, validationReport, type K8sObject,
} from './k8s.ts';

const FULL = join(DEPLOY_TESTS, 'values-full.yaml');
const EXISTING = join(DEPLOY_TESTS, 'values-existing.yaml');

interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: { fieldRef?: { fieldPath: string } };
}

interface Container {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  ports?: { name: string; containerPort: number }[];
  env?: EnvVar[];
  volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
  livenessProbe?: { httpGet?: { path: string; port: string | number } };
  readinessProbe?: { httpGet?: { path: string; port: string | number } };
  lifecycle?: { preStop?: { sleep?: { seconds: number } } };
  securityContext?: Record<string, unknown>;
}

interface Volume {
  name: string;
  secret?: { secretName: string; items?: { key: string; path: string }[] };
  configMap?: { name: string; items?: { key: string; path: string }[] };
}

interface PodSpec {
  serviceAccountName?: string;
  terminationGracePeriodSeconds?: number;
  securityContext?: Record<string, unknown>;
  containers: Container[];
  volumes?: Volume[];
}

interface Deployment extends K8sObject {
  spec: { replicas: number; selector: { matchLabels: Record<string, string> };
    template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
}

interface Service extends K8sObject {
  spec: { type?: string; clusterIP?: string; publishNotReadyAddresses?: boolean;
    selector: Record<string, string>;
    ports: { name: string; port: number; targetPort: string | number }[] };
}

interface TestPod extends K8sObject {
  spec: PodSpec;
}

interface Rule {
  apiGroups: string[];
  resources: string[];
  resourceNames?: string[];
  verbs: string[];
}

const deploymentOf = (objects: K8sObject[]) => find<Deployment>(objects, 'Deployment');
const podSpecOf = (objects: K8sObject[]) => deploymentOf(objects).spec.template.spec;
const gatewayOf = (objects: K8sObject[]) => {
  const gateway = podSpecOf(objects).containers.find((c) => c.name === 'gateway');
  assert.ok(gateway, 'the pod has a gateway container');
  return gateway;
};

function env(container: Container, name: string): string {
  const found = container.env?.find((e) => e.name === name);
  assert.ok(found, `${container.name} sets ${name}`);
  assert.equal(typeof found.value, 'string', `${name} is a literal string`);
  return found.value!;
}

// A named or numbered port of a container, as a number.
function containerPort(container: Container, port: string | number): number {
  if (typeof port === 'number') {
    assert.ok(container.ports?.some((p) => p.containerPort === port),
      `${container.name} declares port ${port}`);
    return port;
  }
  const found = container.ports?.find((p) => p.name === port);
  assert.ok(found, `${container.name} has a port named ${port}`);
  return found.containerPort;
}

function selects(selector: Record<string, string>, labels: Record<string, string> = {}): boolean {
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

// The settings the sidecar would load from this container's environment in a pod.
function settingsFrom(container: Container) {
  const values: Record<string, string> = {};
  const downward: Record<string, string> = {
    'metadata.name': 'pod-0', 'status.podIP': '10.1.2.3', 'metadata.namespace': 'arvados',
  };
  for (const e of container.env ?? []) {
    const field = e.valueFrom?.fieldRef?.fieldPath;
    values[e.name] = e.value ?? (field ? downward[field] : undefined) ?? '';
  }
  return { values, settings: loadSettings(values) };
}

// The mounted path of the token file, from the volume's item and the container's mount.
function tokenFilePath(spec: PodSpec, container: Container, secretName: string, key: string) {
  const volume = spec.volumes?.find((v) => v.secret?.secretName === secretName);
  assert.ok(volume, `a volume holds the Secret ${secretName}`);
  const item = volume.secret!.items?.find((i) => i.key === key);
  assert.ok(item, `the volume projects the key ${key}`);
  const mount = container.volumeMounts?.find((m) => m.name === volume.name);
  assert.ok(mount, `${container.name} mounts the Secret`);
  assert.equal(mount.readOnly, true);
  return `${mount.mountPath}/${item.path}`;
}

function assertRbac(objects: K8sObject[], configMap: string, serviceAccount: string) {
  const roles = objects.filter((o) => o.kind === 'Role' || o.kind === 'ClusterRole');
  assert.equal(roles.length, 1, 'one Role and no ClusterRole');
  const role = roles[0] as K8sObject & { rules: Rule[] };
  assert.equal(role.kind, 'Role');
  assert.deepEqual(role.rules, [{
    apiGroups: [''], resources: ['configmaps'], resourceNames: [configMap],
    verbs: ['get', 'list', 'watch'],
  }]);
  assert.ok(!objects.some((o) => o.kind === 'ClusterRoleBinding'));
  const binding = find<K8sObject & {
    roleRef: { kind: string; name: string; apiGroup: string };
    subjects: { kind: string; name: string; namespace: string }[];
  }>(objects, 'RoleBinding');
  assert.deepEqual(binding.roleRef,
    { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
  assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: serviceAccount,
    namespace: binding.metadata.namespace }]);
  assert.equal(podSpecOf(objects).serviceAccountName, serviceAccount);
}

function assertServices(objects: K8sObject[], name: string, port: number, sidecarPort: number) {
  const deployment = deploymentOf(objects);
  const podLabels = deployment.spec.template.metadata.labels;
  const gateway = gatewayOf(objects);
  assert.ok(selects(deployment.spec.selector.matchLabels, podLabels));

  const service = find<Service>(objects, 'Service', name);
  assert.equal(service.spec.type ?? 'ClusterIP', 'ClusterIP');
  assert.notEqual(service.spec.clusterIP, 'None');
  assert.ok(selects(service.spec.selector, podLabels), 'the Service selects the pods');
  assert.equal(service.spec.ports.length, 1, 'the Service carries the front door only');
  assert.equal(service.spec.ports[0].port, port);
  assert.equal(containerPort(gateway, service.spec.ports[0].targetPort), sidecarPort);

  const peersName = env(gateway, 'GATEWAY_PEERS_SERVICE').split('.')[0];
  const peers = find<Service>(objects, 'Service', peersName);
  assert.equal(peers.spec.clusterIP, 'None');
  assert.equal(peers.spec.publishNotReadyAddresses, false);
  assert.ok(selects(peers.spec.selector, podLabels), 'the peers Service selects the pods');
  assert.deepEqual(peers.spec.ports.map((p) => containerPort(gateway, p.targetPort)),
    [sidecarPort]);
  assert.deepEqual(peers.spec.ports.map((p) => p.port), [sidecarPort]);

  const testPod = objects.find((o) => o.kind === 'Pod');
  for (const s of [service, peers]) {
    assert.ok(!testPod || !selects(s.spec.selector, testPod.metadata.labels),
      `${s.metadata.name} does not select the test Pod`);
  }
}

function assertProbesAndPorts(objects: K8sObject[], front: number, admin: number) {
  const gateway = gatewayOf(objects);
  assert.deepEqual(gateway.ports?.map((p) => p.containerPort).sort(), [front, admin].sort());
  const { settings } = settingsFrom(gateway);
  assert.equal(parseHostPort(settings.listen)?.port, front);
  assert.equal(parseHostPort(settings.adminListen)?.port, admin);
  assert.equal(gateway.livenessProbe?.httpGet?.path, '/healthz');
  assert.equal(gateway.readinessProbe?.httpGet?.path, '/readyz');
  assert.equal(containerPort(gateway, gateway.livenessProbe!.httpGet!.port), admin);
  assert.equal(containerPort(gateway, gateway.readinessProbe!.httpGet!.port), admin);
}

function assertSecurityContexts(objects: K8sObject[]) {
  for (const spec of [podSpecOf(objects), ...objects.filter((o) => o.kind === 'Pod')
    .map((p) => (p as TestPod).spec)]) {
    assert.equal(spec.securityContext?.runAsNonRoot, true);
    assert.equal(spec.securityContext?.runAsUser, 10001);
    assert.deepEqual(spec.securityContext?.seccompProfile, { type: 'RuntimeDefault' });
  }
  const containers = [gatewayOf(objects), ...objects.filter((o) => o.kind === 'Pod')
    .flatMap((p) => (p as TestPod).spec.containers)];
  for (const c of containers) {
    const sc = c.securityContext ?? {};
    assert.equal(sc.runAsNonRoot, true, `${c.name} runAsNonRoot`);
    assert.equal(sc.runAsUser, 10001, `${c.name} runAsUser`);
    assert.equal(sc.readOnlyRootFilesystem, true, `${c.name} readOnlyRootFilesystem`);
    assert.equal(sc.allowPrivilegeEscalation, false, `${c.name} allowPrivilegeEscalation`);
    assert.deepEqual(sc.capabilities, { drop: ['ALL'] }, `${c.name} capabilities`);
    assert.deepEqual(sc.seccompProfile, { type: 'RuntimeDefault' }, `${c.name} seccomp`);
    assert.ok(c.volumeMounts?.some((m) => m.mountPath === '/tmp'), `${c.name} has a /tmp`);
  }
}

function assertDrain(objects: K8sObject[]) {
  const gateway = gatewayOf(objects);
  const grace = Number(env(gateway, 'GATEWAY_DRAIN_GRACE_SECONDS'));
  const preStop = gateway.lifecycle?.preStop?.sleep?.seconds ?? 0;
  const termination = podSpecOf(objects).terminationGracePeriodSeconds ?? 30;
  assert.ok(termination > grace + preStop,
    `terminationGracePeriodSeconds ${termination} > drain ${grace} + preStop ${preStop}`);
}

function assertLabels(objects: K8sObject[], release: string) {
  for (const o of objects) {
    const labels = o.metadata.labels ?? {};
    for (const key of ['app.kubernetes.io/name', 'app.kubernetes.io/instance',
      'app.kubernetes.io/version', 'app.kubernetes.io/managed-by']) {
      assert.ok(labels[key], `${o.kind}/${o.metadata.name} has ${key}`);
    }
    assert.equal(labels['app.kubernetes.io/instance'], release);
  }
}

function kinds(objects: K8sObject[]): string[] {
  return objects.map((o) => o.kind).sort();
}

describe('helm chart', () => {
  let appVersion: string;
  let defaults: K8sObject[];
  let full: K8sObject[];
  let existing: K8sObject[];

  before(async () => {
    appVersion = String((parseYaml(await readFile(join(CHART, 'Chart.yaml'), 'utf8')) as {
      appVersion: string }).appVersion);
    [defaults, full, existing] = await Promise.all([
      render(),
      render([FULL]),
      render([EXISTING]),
    ]);
  });

  it('lints strictly with the default and the non-default values', async () => {
    for (const files of [[], [FULL], [EXISTING]]) {
      const result = await helm(['lint', '--strict', CHART, ...files.flatMap((f) => ['-f', f])]);
      assert.equal(result.code, 0,
        `helm lint ${files.join(' ')}: ${result.stdout}${result.stderr}`);
      assert.match(result.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
    }
  });

  it('renders objects that validate against the Kubernetes schemas', () => {
    for (const [name, objects] of [['defaults', defaults], ['full', full],
      ['existing', existing]] as const) {
      assert.ok(objects.length > 0);
      assert.equal(validationReport(objects), '', `${name} values`);
    }
  });

  it('renders the default install, with the optional objects left out', () => {
    assert.deepEqual(kinds(defaults), ['ConfigMap', 'Deployment', 'Pod', 'Role', 'RoleBinding',
      'Service', 'Service', 'ServiceAccount']);
    const deployment = deploymentOf(defaults);
    assert.equal(deployment.spec.replicas, 2);
    assert.deepEqual(podSpecOf(defaults).containers.map((c) => c.name), ['controller', 'gateway']);
    assert.equal(gatewayOf(defaults).image,
      `ghcr.io/example/arvados-gateway-sidecar:${appVersion}`);
    assertLabels(defaults, 'arvados');
  });

  it('grants only get, list and watch on the one cluster config ConfigMap', () => {
    assertRbac(defaults, 'arvados-arvados-gateway-sidecar-config',
      'arvados-arvados-gateway-sidecar');
    assertRbac(full, 'gw-config', 'gw');
    assertRbac(existing, 'arvados-config', 'arvados-controller');
  });

  it('probes /healthz and /readyz on the admin port and declares both ports', () => {
    assertProbesAndPorts(defaults, 8443, 9090);
    assertProbesAndPorts(full, 7443, 7090);
  });

  it('runs the sidecar and the test Pod non-root, read-only, without privileges', () => {
    assertSecurityContexts(defaults);
    assertSecurityContexts(full);
  });

  it('points both Services at the sidecar port of the same pods', () => {
    assertServices(defaults, 'arvados-controller', 8443, 8443);
    assertServices(full, 'arvados-api', 443, 7443);
    assertServices(existing, 'arvados-controller', 8443, 8443);
  });

  it('mounts the root token Secret where ARVADOS_SYSTEM_ROOT_TOKEN_FILE points', () => {
    for (const [objects, secret, key] of [
      [defaults, 'arvados-arvados-gateway-sidecar-root-token', 'system-root-token'],
      [full, 'gw-root-token', 'token'],
      [existing, 'arvados-system-root-token', 'SystemRootToken'],
    ] as const) {
      const gateway = gatewayOf(objects);
      assert.equal(env(gateway, 'ARVADOS_SYSTEM_ROOT_TOKEN_FILE'),
        tokenFilePath(podSpecOf(objects), gateway, secret, key));
    }
    assert.ok(!defaults.some((o) => o.kind === 'Secret'), 'no Secret without rootToken');
    assert.ok(!existing.some((o) => o.kind === 'Secret'), 'no Secret with existingSecret');
    const created = find<K8sObject & { data: Record<string, string> }>(full, 'Secret',
      'gw-root-token');
    assert.equal(Buffer.from(created.data.token, 'base64').toString(),
      'not-a-real-token-only-for-the-chart-tests');
  });

  it('names the ConfigMap the sidecar watches and the controller mounts', () => {
    for (const [objects, ref, key] of [
      [defaults, 'arvados/arvados-arvados-gateway-sidecar-config', 'config.yml'],
      [full, 'arvados/gw-config', 'arvados.yml'],
      [existing, 'arvados/arvados-config', 'config.yml'],
    ] as const) {
      const gateway = gatewayOf(objects);
      assert.equal(env(gateway, 'GATEWAY_CONFIGMAP'), ref);
      assert.equal(env(gateway, 'GATEWAY_CONFIGMAP_KEY'), key);
      const controller = podSpecOf(objects).containers.find((c) => c.name === 'controller');
      if (!controller) continue;
      const volume = podSpecOf(objects).volumes?.find((v) => v.configMap);
      assert.equal(volume?.configMap?.name, ref.split('/')[1]);
      assert.deepEqual(volume?.configMap?.items, [{ key, path: 'config.yml' }]);
      assert.equal(controller.volumeMounts?.find((m) => m.name === volume?.name)?.mountPath,
        '/etc/arvados');
    }
    for (const [objects, name, key, id] of [
      [defaults, 'arvados-arvados-gateway-sidecar-config', 'config.yml', 'zzzzz'],
      [full, 'gw-config', 'arvados.yml', 'xyzzy'],
    ] as const) {
      const cm = find<K8sObject & { data: Record<string, string> }>(objects, 'ConfigMap', name);
      assert.deepEqual(Object.keys(cm.data), [key]);
      assert.equal(parseClusterConfig(cm.data[key]).clusterId, id,
        'the sidecar can parse the rendered cluster config');
    }
    assert.ok(!existing.some((o) => o.kind === 'ConfigMap'), 'no ConfigMap with existingConfigMap');
  });

  it('sets only real settings, and the sidecar accepts their values', () => {
    const known = new Set(describeSettings().map((s) => s.env));
    for (const objects of [defaults, full, existing]) {
      const gateway = gatewayOf(objects);
      for (const e of gateway.env ?? []) assert.ok(known.has(e.name), `${e.name} is a setting`);
      assert.deepEqual(gateway.env?.filter((e) => e.valueFrom).map((e) =>
        [e.name, e.valueFrom?.fieldRef?.fieldPath]), [
        ['POD_NAME', 'metadata.name'], ['POD_IP', 'status.podIP'],
        ['POD_NAMESPACE', 'metadata.namespace']]);
      settingsFrom(gateway);
    }
    const d = settingsFrom(gatewayOf(defaults)).settings;
    assert.equal(d.controllerUrl, 'http://127.0.0.1:8003');
    assert.equal(d.peersService, 'arvados-arvados-gateway-sidecar-peers.arvados.svc.cluster.local');
    assert.equal(d.logLevel, 'info');
    assert.equal(d.maxTunnels, 20000);
    assert.equal(d.maxSessions, 4096);
    const f = settingsFrom(gatewayOf(full)).settings;
    assert.equal(f.listen, '[::]:7443');
    assert.equal(f.controllerUrl, 'http://127.0.0.1:9003');
    assert.equal(f.peersService, 'gw-peers.arvados.svc.k8s.example.internal');
    assert.equal(f.clusterId, 'xyzzy');
    assert.equal(f.gatewayNetworks, '10.20.0.0/16');
    assert.equal(f.maxTunnels, 500);
    assert.equal(f.maxSessions, 50);
    assert.equal(f.headTimeoutMs, 10000);
    assert.equal(settingsFrom(gatewayOf(existing)).settings.controllerUrl,
      'http://arvados-controller-internal.arvados.svc:8003');
  });

  it('gives the sidecar longer than its drain grace to stop', () => {
    assertDrain(defaults);
    assertDrain(full);
    assert.equal(gatewayOf(full).lifecycle?.preStop?.sleep?.seconds, 5);
    assert.equal(gatewayOf(defaults).lifecycle, undefined);
  });

  it('runs the controller as configured, or not at all', () => {
    const controller = podSpecOf(full).containers.find((c) => c.name === 'controller');
    assert.equal(controller?.image, 'registry.example.com/arvados/controller:3.1.2');
    assert.deepEqual(controller?.command, ['arvados-server']);
    assert.deepEqual(controller?.args, ['controller']);
    assert.deepEqual(podSpecOf(existing).containers.map((c) => c.name), ['gateway']);
    assert.ok(!podSpecOf(existing).volumes?.some((v) => v.configMap));
  });

  it('renders the helm test Pod that runs tunnel-probe against the Service', () => {
    for (const [objects, url, uuid, adminPort] of [
      [defaults, 'http://arvados-controller:8443', 'zzzzz-dz642-helmtestprobe01', '9090'],
      [full, 'http://arvados-api:443', 'xyzzy-dz642-chartfulltest01', '7090'],
    ] as const) {
      const pod = find<TestPod>(objects, 'Pod');
      assert.equal(pod.metadata.annotations?.['helm.sh/hook'], 'test');
      const [probe] = pod.spec.containers;
      assert.equal(probe.image, gatewayOf(objects).image);
      assert.deepEqual([...(probe.command ?? []), ...(probe.args ?? [])], ['node', 'src/main.ts',
        'tunnel-probe', '--url', url, '--uuid', uuid, '--admin-port', adminPort]);
      const secret = podSpecOf(objects).volumes?.find((v) => v.secret)?.secret;
      assert.ok(secret);
      assert.equal(env(probe, 'ARVADOS_SYSTEM_ROOT_TOKEN_FILE'),
        tokenFilePath(pod.spec, probe, secret.secretName, secret.items![0].key));
    }
    assert.ok(!existing.some((o) => o.kind === 'Pod'), 'tests.enabled=false leaves it out');
  });

  it('renders the ServiceMonitor, PodDisruptionBudget and NetworkPolicy only when enabled', () => {
    for (const kind of ['ServiceMonitor', 'PodDisruptionBudget', 'NetworkPolicy']) {
      assert.ok(!defaults.some((o) => o.kind === kind), `no ${kind} by default`);
      assert.ok(!existing.some((o) => o.kind === kind), `no ${kind} in the existing install`);
      find(full, kind);
    }
    assert.equal(defaults.filter((o) => o.kind === 'Service').length, 2);
    assertLabels(full, 'arvados');
    const podLabels = deploymentOf(full).spec.template.metadata.labels;
    const gateway = gatewayOf(full);

    const monitor = find<K8sObject & { spec: { selector: { matchLabels: Record<string, string> };
      endpoints: { port: string; path: string; interval: string }[] } }>(full, 'ServiceMonitor');
    assert.equal(monitor.metadata.labels?.release, 'prometheus');
    const scraped = full.filter((o): o is Service => o.kind === 'Service' &&
      selects(monitor.spec.selector.matchLabels, o.metadata.labels));
    assert.equal(scraped.length, 1, 'the ServiceMonitor selects exactly one Service');
    assert.ok(selects(scraped[0].spec.selector, podLabels));
    const endpoint = monitor.spec.endpoints[0];
    assert.equal(endpoint.path, '/metrics');
    assert.equal(endpoint.interval, '15s');
    const port = scraped[0].spec.ports.find((p) => p.name === endpoint.port);
    assert.ok(port, 'the scraped Service has the endpoint port');
    assert.equal(containerPort(gateway, port.targetPort), 7090);

    const pdb = find<K8sObject & { spec: { minAvailable: number;
      selector: { matchLabels: Record<string, string> } } }>(full, 'PodDisruptionBudget');
    assert.equal(pdb.spec.minAvailable, 2);
    assert.ok(selects(pdb.spec.selector.matchLabels, podLabels));

    type Peer = { podSelector?: { matchLabels?: Record<string, string> };
      namespaceSelector?: { matchLabels?: Record<string, string> }; ipBlock?: { cidr: string } };
    const policy = find<K8sObject & { spec: {
      podSelector: { matchLabels: Record<string, string> }; policyTypes: string[];
      ingress: { ports: { port: string | number }[]; from?: Peer[] }[] } }>(full, 'NetworkPolicy');
    assert.ok(selects(policy.spec.podSelector.matchLabels, podLabels));
    assert.deepEqual(policy.spec.policyTypes, ['Ingress']);
    const ruleFor = (p: number) => policy.spec.ingress.filter((r) =>
      r.ports.some((x) => containerPort(gateway, x.port) === p));
    const [front] = ruleFor(7443);
    const [admin] = ruleFor(7090);
    assert.equal(ruleFor(7443).length, 1);
    assert.equal(ruleFor(7090).length, 1);
    assert.ok(front.from?.some((f) => f.ipBlock?.cidr === '10.20.0.0/16'));
    assert.ok(front.from?.some((f) => !f.namespaceSelector &&
      selects(f.podSelector?.matchLabels ?? {}, podLabels)), 'peers may reach each other');
    const testPodLabels = find(full, 'Pod').metadata.labels;
    assert.ok(front.from?.some((f) => !f.namespaceSelector &&
      selects(f.podSelector?.matchLabels ?? {}, testPodLabels)), 'the test Pod may open a tunnel');
    assert.ok(admin.from?.some((f) =>
      f.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name'] === 'observability' &&
      f.podSelector?.matchLabels?.['app.kubernetes.io/name'] === 'prometheus'));
    assert.ok(admin.from?.some((f) => !f.namespaceSelector && !f.ipBlock &&
      selects(f.podSelector?.matchLabels ?? {}, testPodLabels)),
    'the test Pod may read /debug/tunnels');
    assert.ok(!admin.from?.some((f) => !f.namespaceSelector && !f.ipBlock &&
      selects(f.podSelector?.matchLabels ?? {}, { 'app.kubernetes.io/name': 'other' })),
    'other pods of the namespace may not');
    assert.ok(policy.spec.ingress.every((r) => r.from !== undefined), 'no rule admits anyone');
  });

  it('leaves the front door open to every source when no peers are listed', async () => {
    const objects = await render([], ['networkPolicy.enabled=true']);
    assert.equal(validationReport(objects), '');
    const gateway = gatewayOf(objects);
    const policy = find<K8sObject & { spec: { ingress: { ports: { port: string | number }[];
      from?: { namespaceSelector?: { matchLabels?: Record<string, string> } }[] }[] } }>(
      objects, 'NetworkPolicy');
    const front = policy.spec.ingress.filter((r) =>
      r.ports.some((p) => containerPort(gateway, p.port) === 8443));
    assert.equal(front.length, 1);
    assert.equal(front[0].from, undefined, 'no from: every source');
    const admin = policy.spec.ingress.filter((r) =>
      r.ports.some((p) => containerPort(gateway, p.port) === 9090));
    assert.equal(admin.length, 1);
    assert.ok(admin[0].from?.some((f) =>
      f.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name'] === 'monitoring'));
  });

  it('shows the port-forward recipes in NOTES and never the token', async () => {
    const result = await helm(['install', 'arvados', CHART, '--namespace', 'arvados',
      '--dry-run=client', '-f', FULL]);
    assert.equal(result.code, 0, result.stderr);
    const notes = result.stdout.slice(result.stdout.indexOf('NOTES:'));
    assert.ok(notes.length > 10, 'NOTES are shown');
    assert.ok(!notes.includes('not-a-real-token-only-for-the-chart-tests'));
    assert.ok(!notes.includes(Buffer.from('not-a-real-token-only-for-the-chart-tests')
      .toString('base64')));
    assert.match(notes, /kubectl -n arvados port-forward pod\/\$POD 7090/);
    assert.match(notes, /curl -s http:\/\/127\.0\.0\.1:7090\/debug\/tunnels/);
    assert.match(notes, /curl -s http:\/\/127\.0\.0\.1:7090\/metrics/);
    assert.match(notes, /kubectl -n arvados port-forward svc\/arvados-api 7443:443/);
    assert.match(notes, new RegExp("ssh -o ProxyCommand='arvados-gateway-sidecar ssh-proxy " +
      "--url http://127\\.0\\.0\\.1:7443 %h' \\\\\\n\\s+root@<container uuid>"));
    assert.match(notes, /ARVADOS_API_TOKEN/);
    const plain = await helm(['install', 'arvados', CHART, '--namespace', 'arvados',
      '--dry-run=client']);
    assert.match(plain.stdout, /create secret generic arvados-arvados-gateway-sidecar-root-token/);
  });

  describe('refuses values that could not work', () => {
    // Schema errors fail both helm lint and helm template; the chart's own checks (fail in a
    // template) fail helm template and install, while helm lint only logs them.
    const refused = async (sets: string[], pattern: RegExp, byLint = true) => {
      const template = await helm(templateArgs([], sets));
      assert.notEqual(template.code, 0, `helm template --set ${sets.join(' ')} must fail`);
      assert.match(template.stderr, pattern);
      if (!byLint) return;
      const lint = await helm(['lint', '--strict', CHART, ...sets.flatMap((s) => ['--set', s])]);
      assert.notEqual(lint.code, 0, `helm lint --set ${sets.join(' ')} must fail`);
      assert.match(lint.stdout + lint.stderr, pattern);
    };

    it('an unknown top-level key', async () => {
      await refused(['replicas=3'], /replicas/);
    });

    it('an unknown key inside a section', async () => {
      await refused(['sidecar.drainGrace=10'], /drainGrace/);
    });

    it('a value of the wrong type', async () => {
      await refused(['replicaCount=two'], /replicaCount/);
    });

    it('a termination grace period no longer than the drain grace', async () => {
      await refused(['terminationGracePeriodSeconds=30'], /terminationGracePeriodSeconds/, false);
      await refused(['sidecar.preStopSleepSeconds=15'], /terminationGracePeriodSeconds/, false);
    });

    it('both a token and an existing Secret', async () => {
      await refused(['rootToken=abc', 'existingSecret=s'], /rootToken or existingSecret/, false);
    });

    it('a disruption budget that would block every eviction', async () => {
      await refused(['podDisruptionBudget.enabled=true', 'podDisruptionBudget.minAvailable=2'],
        /minAvailable must be below replicaCount/, false);
    });

    it('an admin rule that would name no source', async () => {
      await refused(['networkPolicy.enabled=true', 'networkPolicy.admin.namespaceSelector=null'],
        /networkPolicy.admin needs a namespaceSelector or a podSelector/, false);
    });
  });
});
