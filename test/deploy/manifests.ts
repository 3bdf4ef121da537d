// Renders manifests/ from the chart's defaults: helm template's output split into one file per
// chart template, each with a header saying where it came from, plus a kustomization.yaml
// listing them. manifests.test.ts compares the committed files with this rendering.
//
// Usage: node test/deploy/manifests.ts --write   (rewrites manifests/ from the chart)
import { readdir, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_NAMESPACE, DEFAULT_RELEASE, ROOT, helm, parseManifests, templateArgs,
} from './k8s.ts';

/** MANIFESTS is the directory of the committed plain manifests. */
export const MANIFESTS = join(ROOT, 'manifests');

/** HELM_COMMAND is the command whose output the manifests are, as the headers quote it. */
export const HELM_COMMAND = `helm template ${DEFAULT_RELEASE} helm/arvados-gateway-sidecar ` +
  `--namespace ${DEFAULT_NAMESPACE} --skip-tests`;

const HEADER = [
  '# Generated from the Helm chart helm/arvados-gateway-sidecar with its default values:',
  `#   ${HELM_COMMAND}`,
  '# Do not edit: change the chart, then run node test/deploy/manifests.ts --write (Node 24).',
  '# test/deploy/manifests.test.ts fails when this file and the chart disagree.',
].join('\n');

// Notes for kustomize users: what the rendering fixed, and what to create before applying.
function kustomizationNotes(secretName: string, secretKey: string): string {
  return [
    '#',
    `# The objects are for namespace ${DEFAULT_NAMESPACE}, which is also spelt out in`,
    '# GATEWAY_CONFIGMAP, GATEWAY_PEERS_SERVICE and the RoleBinding: for another namespace,',
    '# render the chart with helm instead of setting a namespace here. Create the namespace and',
    '# the root token Secret first, e.g.',
    `#   kubectl -n ${DEFAULT_NAMESPACE} create secret generic ${secretName} \\`,
    `#     --from-file=${secretKey}=./system-root-token`,
  ].join('\n');
}

const SOURCE = /^# Source: [^/]+\/templates\/(.+)$/m;

/** renderManifests returns the files manifests/ should hold, by name, in apply order. */
export async function renderManifests(): Promise<Map<string, string>> {
  const args = [...templateArgs(), '--skip-tests'];
  const result = await helm(args);
  if (result.code !== 0) throw new Error(`helm template failed: ${result.stderr.trim()}`);
  const bySource = new Map<string, string[]>();
  for (const chunk of result.stdout.split(/^---\s*$/m)) {
    const source = SOURCE.exec(chunk);
    const body = chunk.replace(SOURCE, '').trim();
    if (!source || body === '') continue;
    const name = source[1].replace(/\//g, '-');
    bySource.set(name, [...(bySource.get(name) ?? []), body]);
  }
  const files = new Map<string, string>();
  for (const [name, docs] of bySource) {
    files.set(name, `${HEADER}\n---\n${docs.join('\n---\n')}\n`);
  }
  const deployment = parseManifests(result.stdout).find((o) => o.kind === 'Deployment') as
    { spec: { template: { spec: { volumes: { secret?: { secretName: string;
      items: { key: string }[] } }[] } } } } | undefined;
  const secret = deployment?.spec.template.spec.volumes.find((v) => v.secret)?.secret;
  if (!secret) throw new Error('the default render has no Deployment with a token Secret');
  const resources = [...files.keys()].map((f) => `  - ${f}`).join('\n');
  files.set('kustomization.yaml', `${HEADER}\n` +
    `${kustomizationNotes(secret.secretName, secret.items[0].key)}\n` +
    'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n' +
    `resources:\n${resources}\n`);
  return files;
}

/** committedManifests lists the YAML files now in manifests/. */
export async function committedManifests(): Promise<string[]> {
  return (await readdir(MANIFESTS)).filter((f) => /\.ya?ml$/.test(f)).sort();
}

async function write(): Promise<void> {
  const files = await renderManifests();
  for (const stale of await committedManifests()) {
    if (!files.has(stale)) await rm(join(MANIFESTS, stale));
  }
  for (const [name, text] of files) await writeFile(join(MANIFESTS, name), text);
  process.stdout.write(`wrote ${[...files.keys()].join(', ')} to ${MANIFESTS}\n`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (process.argv[2] !== '--write') {
    process.stderr.write('usage: node test/deploy/manifests.ts --write\n');
    process.exitCode = 2;
  } else {
    write().catch((err: unknown) => {
      process.stderr.write(`manifests: ${(err as Error).message}\n`);
      process.exitCode = 1;
    });
  }
}
