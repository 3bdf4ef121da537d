#!/usr/bin/env -S node --initial-heap-size=128 --min-semi-space-size=16
// Command line entry: `serve` (the default) runs the sidecar; `demo` runs it end to end with a
// simulated Arvados and crunch-run; `ssh-proxy` is an OpenSSH ProxyCommand through a sidecar.
import { loadSettings } from './settings.ts';
import { createLogger } from './log.ts';
import { missingNodeFlags, setRuntimeFlags } from './node-flags.ts';
import { Sidecar } from './sidecar.ts';

async function serve(): Promise<void> {
  setRuntimeFlags();
  let settings;
  try {
    settings = loadSettings();
  } catch (err) {
    process.stderr.write(`arvados-gateway-sidecar: bad settings: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const log = createLogger(settings.logLevel);
  const missing = missingNodeFlags();
  if (missing.length > 0) {
    log.warn({ missing }, 'node was started without the sidecar\'s flags (src/node-flags.ts): ' +
      'bulk transfers will spend more CPU time collecting garbage');
  }
  const sidecar = new Sidecar({ settings, log });
  try {
    await sidecar.start();
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'cannot start');
    process.stderr.write(`arvados-gateway-sidecar: cannot start: ${(err as Error).message}\n`);
    process.exit(1);
  }

  let signals = 0;
  const onSignal = async (signal: string) => {
    signals++;
    if (signals > 1) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    sidecar.drain();
    const clean = await sidecar.waitForRequests(settings.drainGraceSeconds * 1000);
    log.info({ signal, clean }, 'stopping');
    await sidecar.stop();
    process.exit(0);
  };
  process.on('SIGTERM', () => void onSignal('SIGTERM'));
  process.on('SIGINT', () => void onSignal('SIGINT'));
}

async function main(argv: string[]): Promise<void> {
  const command = argv[0] ?? 'serve';
  switch (command) {
    case 'serve':
      return serve();
    case 'demo': {
      const { runDemo } = await import('./demo/run.ts');
      process.exitCode = await runDemo(argv.slice(1));
      return;
    }
    case 'ssh-proxy': {
      const { sshProxy } = await import('./cli/ssh-proxy.ts');
      process.exitCode = await sshProxy(argv.slice(1));
      return;
    }
    case 'tunnel-probe': {
      const { tunnelProbe } = await import('./cli/tunnel-probe.ts');
      process.exitCode = await tunnelProbe(argv.slice(1));
      return;
    }
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write('usage: arvados-gateway-sidecar [serve | demo | ' +
        'ssh-proxy --url URL UUID | tunnel-probe --url URL --uuid UUID]\n');
      return;
    default:
      process.stderr.write(`arvados-gateway-sidecar: unknown command ${JSON.stringify(command)}\n`);
      process.exitCode = 2;
  }
}

await main(process.argv.slice(2));
