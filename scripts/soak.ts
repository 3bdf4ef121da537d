// The long run of the fault and abuse suite: the same test files that `npm test` runs quickly
// (test/faults, interop/faults, and the yamux fuzzer), with much bigger counts, then a summary
// of what was done: transfers and bytes checked, fuzz inputs, faults injected, memory growth,
// recovery times. Everything runs on loopback, against processes the tests start themselves.
//
// Usage: node scripts/soak.ts [options]
//
//   --transfers N     concurrent sha256-checked transfers (SOAK_TRANSFERS; default 2000)
//   --fuzz N          yamux fuzz inputs (YAMUX_FUZZ_INPUTS; default 1000000)
//   --front-fuzz N    mutated requests at the front door (FRONT_FUZZ_INPUTS; default 20000)
//   --rounds N        repeats of each kill, cut and restart fault (SOAK_FAULT_ROUNDS; default 10)
//   --connections N   abusive connections in the memory test (MEMORY_CONNECTIONS; default 400)
//   --seed N          seed for the transfers and both fuzzers (SOAK_SEED, YAMUX_FUZZ_SEED,
//                     FRONT_FUZZ_SEED; defaults: each test's own)
//   --only LIST       comma-separated suites: transfers, faults, restart, hostile, memory,
//                     bounds, trust, config, yamux (default: all)
//   --concurrency N   test files run at once (default 1, so that timings and memory figures
//                     are not disturbed by each other)
//   --help            this text
//
// A variable already set in the environment is used when its option is not given. The exit
// code is the test runner's: 0 when every test passed. Expect about 10 minutes with the
// defaults on 2 cores; `--only` and smaller counts make a shorter run.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const SUITES: Record<string, string> = {
  transfers: 'interop/faults/transfers.test.ts',
  faults: 'interop/faults/faults.test.ts',
  restart: 'interop/faults/restart.test.ts',
  hostile: 'test/faults/hostile-input.test.ts',
  memory: 'test/faults/memory.test.ts',
  bounds: 'test/faults/bounds.test.ts',
  trust: 'test/faults/trust.test.ts',
  config: 'test/faults/config-race.test.ts',
  yamux: 'test/tunnel/yamux/fuzz.test.ts',
};

/** OPTIONS maps each count option to its variables and its soak default. */
const OPTIONS: Record<string, { vars: string[]; soak: string }> = {
  '--transfers': { vars: ['SOAK_TRANSFERS'], soak: '2000' },
  '--fuzz': { vars: ['YAMUX_FUZZ_INPUTS'], soak: '1000000' },
  '--front-fuzz': { vars: ['FRONT_FUZZ_INPUTS'], soak: '20000' },
  '--rounds': { vars: ['SOAK_FAULT_ROUNDS'], soak: '10' },
  '--connections': { vars: ['MEMORY_CONNECTIONS'], soak: '400' },
  '--seed': { vars: ['SOAK_SEED', 'YAMUX_FUZZ_SEED', 'FRONT_FUZZ_SEED'], soak: '' },
};

function usage(): string {
  const text = readFileSync(fileURLToPath(import.meta.url), 'utf8');
  return text.split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3))
    .join('\n').split('\nimport')[0] + '\n';
}

/** parseArgs turns the command line into the environment for the test runs. */
export function parseArgs(argv: string[], env: NodeJS.ProcessEnv): {
  env: Record<string, string>; files: string[]; concurrency: number; help: boolean;
} {
  const out: Record<string, string> = {};
  let only = Object.keys(SUITES);
  let concurrency = 1;
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const [name, inline] = arg.includes('=') ? arg.split(/=(.*)/s, 2) : [arg, undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${name} needs a value`);
      return v;
    };
    if (name === '--help' || name === '-h') {
      help = true;
    } else if (name === '--only') {
      only = value().split(',').map((s) => s.trim()).filter(Boolean);
      const unknown = only.filter((s) => !(s in SUITES));
      if (unknown.length > 0) throw new Error(`unknown suite ${unknown.join(', ')}`);
    } else if (name === '--concurrency') {
      concurrency = positive(name, value());
    } else if (name in OPTIONS) {
      const v = String(positive(name, value()));
      for (const variable of OPTIONS[name].vars) out[variable] = v;
    } else {
      throw new Error(`unknown option ${arg} (see --help)`);
    }
  }
  for (const { vars, soak } of Object.values(OPTIONS)) {
    for (const variable of vars) {
      if (out[variable] !== undefined) continue;
      const given = env[variable];
      if (given !== undefined && given !== '') out[variable] = given;
      else if (soak !== '') out[variable] = soak;
    }
  }
  return { env: out, files: only.map((s) => SUITES[s]), concurrency, help };
}

function positive(name: string, raw: string): number {
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${name} must be a positive integer`);
  return n;
}

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs(process.argv.slice(2), process.env);
  } catch (err) {
    process.stderr.write(`soak: ${(err as Error).message}\n`);
    return 2;
  }
  if (parsed.help) {
    process.stdout.write(usage());
    return 0;
  }
  const work = mkdtempSync(join(tmpdir(), 'soak-'));
  const reportFile = join(work, 'report.jsonl');
  const started = Date.now();
  process.stdout.write(`soak: ${parsed.files.length} suites, ` +
    `${Object.entries(parsed.env).map(([k, v]) => `${k}=${v}`).join(' ')}\n`);
  const build = await run(['scripts/build-go.ts'], {});
  if (build !== 0) return build;
  const code = await run(['--test', `--test-concurrency=${parsed.concurrency}`,
    '--test-timeout=3600000', ...parsed.files], { ...parsed.env, SOAK_REPORT: reportFile });
  const seconds = Math.round((Date.now() - started) / 1000);
  process.stdout.write(`\nsoak summary (${seconds} s, exit code ${code}):\n`);
  let lines: string[] = [];
  try {
    lines = readFileSync(reportFile, 'utf8').split('\n').filter(Boolean);
  } catch {
    process.stdout.write('  no figures were reported\n');
  }
  for (const line of lines) {
    const { suite, ...figures } = JSON.parse(line) as Record<string, unknown>;
    process.stdout.write(`  ${String(suite).padEnd(16)} ` +
      `${Object.entries(figures).map(([k, v]) => `${k}=${v}`).join(' ')}\n`);
  }
  const yamux = parsed.files.includes(SUITES.yamux);
  if (yamux) {
    process.stdout.write(`  ${'yamux-fuzz'.padEnd(16)} inputs=${parsed.env.YAMUX_FUZZ_INPUTS} ` +
      '(see the test line above for pass or fail)\n');
  }
  rmSync(work, { recursive: true, force: true });
  return code;
}

function run(args: string[], env: Record<string, string>): Promise<number> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, stdio: 'inherit',
      env: { ...process.env, ...env } });
    child.once('exit', (code, signal) => resolvePromise(code ?? (signal ? 1 : 0)));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.exitCode = await main();
}
