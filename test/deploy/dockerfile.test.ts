// The Dockerfile, through scripts/docker-build-check.sh (there is no Docker engine here): the
// real one passes the rules and the emulated build and run; variants that break a rule, or an
// image whose process does not come up, are refused with a message naming the problem.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { NODE_FLAGS } from '../../src/node-flags.ts';
import { ROOT } from './k8s.ts';

const runFile = promisify(execFile);
const SCRIPT = join(ROOT, 'scripts', 'docker-build-check.sh');
const ARGV = ['node', ...NODE_FLAGS, 'src/main.ts'];
const CMD_LINE = `CMD [${ARGV.map((a) => JSON.stringify(a)).join(', ')}]`;

interface Outcome {
  code: number;
  output: string;
}

async function check(args: string[], dockerfile?: string): Promise<Outcome> {
  try {
    const { stdout, stderr } = await runFile('bash', [SCRIPT, ...args], {
      cwd: ROOT, timeout: 120_000, maxBuffer: 4 * 1024 * 1024,
      env: { ...process.env, ...(dockerfile ? { DOCKERFILE: dockerfile } : {}) },
    });
    return { code: 0, output: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, output: (e.stdout ?? '') + (e.stderr ?? '') };
  }
}

describe('Dockerfile', () => {
  let original: string;
  let ignore: string;
  let scratch: string;

  before(async () => {
    original = await readFile(join(ROOT, 'Dockerfile'), 'utf8');
    ignore = await readFile(join(ROOT, '.dockerignore'), 'utf8');
    scratch = await mkdtemp(join(tmpdir(), 'dockerfile-test-'));
  });

  after(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  // Writes a Dockerfile (and .dockerignore) variant into a directory of its own.
  async function variant(name: string, dockerfile: string, dockerignore = ignore) {
    const dir = join(scratch, name);
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, 'Dockerfile'), dockerfile);
    await writeFile(join(dir, '.dockerignore'), dockerignore);
    return dir;
  }

  const edit = (from: string | RegExp, to: string) => {
    const edited = original.replace(from, to);
    assert.notEqual(edited, original, `the Dockerfile has ${from}`);
    return edited;
  };

  it('builds, runs as a non-root user on a read-only root, is ready, and stops on SIGTERM',
    async () => {
      const { code, output } = await check([]);
      assert.equal(code, 0, output);
      assert.ok(output.includes(`FROM node:24, USER 10001:10001, CMD ${ARGV.join(' ')}`), output);
      assert.match(output, /emulated build: \/app holds node_modules package\.json src /);
      assert.match(output, /ok: GET \/healthz 200/);
      assert.match(output, /ok: GET \/readyz 200/);
      assert.match(output, /ok: SIGTERM: exit status 0/);
      assert.match(output, /\nPASS|: PASS\n/);
      // This machine runs the tests as root with setpriv and unshare, so nothing is skipped.
      if (process.getuid?.() === 0) {
        assert.match(output, /runs as uid 10001:10001 \(setpriv\), read-only root/);
      }
    });

  const refusals: [string, () => string, RegExp, (() => string)?][] = [
    ['a base image other than node:24', () => edit(/FROM node:24-bookworm-slim\n/,
      'FROM node:22-bookworm-slim\n'), /every stage must be FROM node:24/],
    ['a named user', () => edit('USER 10001:10001', 'USER node'), /use a numeric uid/],
    ['the root user', () => edit('USER 10001:10001', 'USER 0'), /USER 0 is root/],
    ['no user', () => edit('USER 10001:10001\n', ''), /no USER: it would run as root/],
    ['a shell-form CMD', () => edit(CMD_LINE, 'CMD node src/main.ts'),
      /use the exec form/],
    ['a shell wrapper', () => edit(CMD_LINE,
      'CMD ["sh", "-c", "node src/main.ts"]'), /no wrapper, node must be PID 1/],
    ['a missing EXPOSE', () => edit('EXPOSE 8443 9090', 'EXPOSE 8443'), /EXPOSE lacks 9090/],
    ['no NODE_ENV', () => edit('ENV NODE_ENV=production\n', ''), /NODE_ENV=production/],
    ['a .dockerignore that lets test/ in', () => original, /does not exclude test/,
      () => ignore.replace(/^test\n/m, '')],
  ];
  for (const [what, dockerfile, message, dockerignore] of refusals) {
    it(`refuses ${what}`, async () => {
      const dir = await variant(what.replace(/\W+/g, '-'), dockerfile(), dockerignore?.());
      const { code, output } = await check(['--static'], join(dir, 'Dockerfile'));
      assert.equal(code, 1, output);
      assert.match(output, /FAIL: /);
      assert.match(output, message);
    });
  }

  it('node gets the sidecar\'s flags wherever this repository starts it', async () => {
    assert.ok(original.includes(CMD_LINE), `the Dockerfile lacks ${CMD_LINE}`);
    const pkg = JSON.parse(await readFile(join(ROOT, 'package.json'), 'utf8'));
    // exec, so that the signals npm passes on reach node itself rather than a shell.
    assert.equal(pkg.scripts.start, `exec ${ARGV.join(' ')}`);
    const main = await readFile(join(ROOT, 'src', 'main.ts'), 'utf8');
    assert.equal(main.split('\n')[0], `#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
    assert.ok((await stat(join(ROOT, 'src', 'main.ts'))).mode & 0o100, 'src/main.ts is executable');
  });

  it('passes the rules alone with the real Dockerfile', async () => {
    const { code, output } = await check(['--static']);
    assert.equal(code, 0, output);
    assert.match(output, /PASS \(static\)/);
  });

  it('fails when the image\'s process does not come up', async () => {
    const dir = await variant('bad-command', edit(CMD_LINE,
      'CMD ["node", "src/main.ts", "no-such-command"]'));
    for (const f of ['package.json', 'package-lock.json', 'src']) {
      await cp(join(ROOT, f), join(dir, f), { recursive: true });
    }
    const { code, output } = await check([], join(dir, 'Dockerfile'));
    assert.equal(code, 1, output);
    assert.match(output, /FAIL: the process exited before \/healthz answered/);
    assert.match(output, /unknown command "no-such-command"/);
  });
});
