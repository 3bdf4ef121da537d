// manifests/: the committed plain YAML is exactly the chart's default rendering, kustomize
// builds it into the same objects, and every object validates.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { installKubectl } from '../../scripts/install-kubectl.ts';
import { parseManifests, render, validationReport, type K8sObject } from './k8s.ts';
import { MANIFESTS, committedManifests, renderManifests } from './manifests.ts';

const run = promisify(execFile);
const REGENERATE = 'regenerate them with: node test/deploy/manifests.ts --write';

const key = (o: K8sObject) => `${o.kind}/${o.metadata.namespace ?? ''}/${o.metadata.name}`;
const sorted = (objects: K8sObject[]) =>
  [...objects].sort((a, b) => key(a).localeCompare(key(b)));

describe('plain manifests', () => {
  let expected: Map<string, string>;
  let committed: K8sObject[];

  before(async () => {
    expected = await renderManifests();
    committed = [];
    for (const name of await committedManifests()) {
      if (name === 'kustomization.yaml') continue;
      committed.push(...parseManifests(await readFile(join(MANIFESTS, name), 'utf8')));
    }
  });

  it('are the chart rendered with its default values, file for file', async () => {
    assert.deepEqual(await committedManifests(), [...expected.keys()].sort(),
      `manifests/ holds other files than the chart renders; ${REGENERATE}`);
    for (const [name, text] of expected) {
      const actual = await readFile(join(MANIFESTS, name), 'utf8');
      assert.equal(actual, text, `manifests/${name} differs from the chart; ${REGENERATE}`);
    }
  });

  it('say how they were generated', async () => {
    for (const name of expected.keys()) {
      const text = await readFile(join(MANIFESTS, name), 'utf8');
      assert.match(text, /^# Generated from the Helm chart helm\/arvados-gateway-sidecar/);
      assert.match(text, /helm template arvados helm\/arvados-gateway-sidecar --namespace arvados/);
    }
  });

  it('hold the default install without helm test hooks or secrets', async () => {
    const chart = (await render()).filter((o) => !o.metadata.annotations?.['helm.sh/hook']);
    assert.deepEqual(sorted(committed), sorted(chart));
    assert.ok(committed.some((o) => o.kind === 'Deployment'));
    assert.ok(!committed.some((o) => o.metadata.annotations?.['helm.sh/hook']));
    assert.ok(!committed.some((o) => o.kind === 'Secret'));
    assert.ok(committed.every((o) => o.metadata.namespace === 'arvados'));
  });

  it('validate against the Kubernetes schemas', () => {
    assert.equal(validationReport(committed), '');
  });

  it('build with kustomize into the same objects', async () => {
    const { kubectl } = await installKubectl();
    const { stdout } = await run(kubectl, ['kustomize', MANIFESTS],
      { maxBuffer: 16 * 1024 * 1024, timeout: 60_000 });
    assert.deepEqual(sorted(parseManifests(stdout)), sorted(committed));
  });
});
