// Builds the Go programs that interop tests and benchmarks run: every main package directly
// under interop/go/ and bench/go/ becomes .cache/go-bin/<dirname>. Go builds in GOPATH mode
// against Debian's packaged sources (no module downloads are possible here). A binary newer than
// every .go file in its directory is kept. Each binary is written under a temporary name and
// renamed into place, so parallel test processes may call this at the same time.
//
// Usage: node scripts/build-go.ts [name...]   (no names: build everything found)
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** GO_BIN_DIR is where built Go binaries go. */
export const GO_BIN_DIR = join(ROOT, '.cache', 'go-bin');

/** GO_SOURCE_ROOTS are the directories whose subdirectories may hold Go main packages. */
export const GO_SOURCE_ROOTS = [join(ROOT, 'interop', 'go'), join(ROOT, 'bench', 'go')];

/** GO_DEBIAN_PACKAGES are the Debian packages that provide Go and the sources we build with. */
export const GO_DEBIAN_PACKAGES = [
  'golang-go',
  'golang-github-hashicorp-yamux-dev',
  'golang-golang-x-crypto-dev',
  'golang-golang-x-net-dev',
];

/** GOPATH is where Debian installs Go library sources. */
export const GOPATH = '/usr/share/gocode';

/** GoBuildError reports a Go toolchain that is missing or a build that failed. */
export class GoBuildError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GoBuildError';
  }
}

/** GoProgram is one Go main package found in the tree. */
export interface GoProgram {
  name: string;
  dir: string;
  binary: string;
}

/** BuildResult tells what happened to one program. */
export interface BuildResult extends GoProgram {
  built: boolean;
}

/** findGoPrograms lists the main packages under GO_SOURCE_ROOTS. */
export async function findGoPrograms(): Promise<GoProgram[]> {
  const programs: GoProgram[] = [];
  for (const root of GO_SOURCE_ROOTS) {
    const entries = await readdir(root, { withFileTypes: true }).catch(() => []);
    for (const entry of entries) {
      if (!entry.isDirectory()) continue;
      const dir = join(root, entry.name);
      if (await isMainPackage(dir)) {
        programs.push({ name: entry.name, dir, binary: join(GO_BIN_DIR, entry.name) });
      }
    }
  }
  return programs.sort((a, b) => a.name.localeCompare(b.name));
}

/** buildGo builds the named programs (all when names is empty) and reports each one. */
export async function buildGo(names: string[] = []): Promise<BuildResult[]> {
  const all = await findGoPrograms();
  const wanted = names.length === 0 ? all : all.filter((p) => names.includes(p.name));
  const missing = names.filter((n) => !all.some((p) => p.name === n));
  if (missing.length > 0) {
    throw new GoBuildError(
      `no Go main package named ${missing.join(', ')} under interop/go or bench/go`,
    );
  }
  const results: BuildResult[] = [];
  let checkedGo = false;
  for (const program of wanted) {
    if (await upToDate(program)) {
      results.push({ ...program, built: false });
      continue;
    }
    if (!checkedGo) {
      await checkGo();
      checkedGo = true;
    }
    await compile(program);
    results.push({ ...program, built: true });
  }
  return results;
}

async function isMainPackage(dir: string): Promise<boolean> {
  for (const file of await goFiles(dir)) {
    if (file.endsWith('_test.go')) continue;
    const text = await readFile(join(dir, file), 'utf8');
    if (/^package\s+main\b/m.test(text)) return true;
  }
  return false;
}

async function goFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.endsWith('.go'));
}

async function upToDate(program: GoProgram): Promise<boolean> {
  const built = await stat(program.binary).catch(() => null);
  if (built === null) return false;
  for (const file of await goFiles(program.dir)) {
    if ((await stat(join(program.dir, file))).mtimeMs >= built.mtimeMs) return false;
  }
  return true;
}

function goEnv(): NodeJS.ProcessEnv {
  return { ...process.env, GO111MODULE: 'off', GOPATH, GOFLAGS: '' };
}

function checkGo(): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    execFile('go', ['version'], { env: goEnv() }, (err) => {
      if (err === null) {
        resolvePromise();
        return;
      }
      reject(new GoBuildError(
        `the Go toolchain is missing (${(err as NodeJS.ErrnoException).code ?? err.message}); ` +
        `install the Debian packages: apt-get install -y ${GO_DEBIAN_PACKAGES.join(' ')}`,
      ));
    });
  });
}

async function compile(program: GoProgram): Promise<void> {
  await mkdir(GO_BIN_DIR, { recursive: true });
  const tmp = join(GO_BIN_DIR, `.${program.name}.${process.pid}.${Date.now()}.tmp`);
  await new Promise<void>((resolvePromise, reject) => {
    execFile(
      'go', ['build', '-o', tmp, '.'],
      { cwd: program.dir, env: goEnv(), maxBuffer: 16 * 1024 * 1024 },
      (err, _stdout, stderr) => {
        if (err === null) {
          resolvePromise();
          return;
        }
        reject(new GoBuildError(
          `go build of ${program.dir} failed: ${stderr.trim() || err.message}\n` +
          `(the build needs the Debian packages ${GO_DEBIAN_PACKAGES.join(' ')})`,
        ));
      },
    );
  }).catch(async (err: unknown) => {
    await rm(tmp, { force: true });
    throw err;
  });
  await rename(tmp, program.binary);
}

if (import.meta.main) {
  try {
    for (const r of await buildGo(process.argv.slice(2))) {
      console.log(`${r.built ? 'built' : 'up to date'}: ${r.binary}`);
    }
  } catch (err) {
    console.error(err instanceof Error ? err.message : err);
    process.exitCode = 1;
  }
}
