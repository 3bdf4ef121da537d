// `demo`: the whole path on one machine with real sockets and the real protocol. A simulated
// Arvados API and a test crunch-run (Go, with hashicorp/yamux and x/crypto/ssh) stand in for
// the cluster; the sidecar itself is the real one. OpenSSH's client runs a command in the
// "container" through the tunnel, the way `arvados-client shell` does.
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startCrunchRun } from '../../interop/lib/crunch-run.ts';
import { startKeepWeb } from '../../interop/lib/keep-web.ts';
import { LocalCluster, urlOf } from './cluster.ts';

const MAIN = fileURLToPath(new URL('../main.ts', import.meta.url));
const CTR = 'zzzzz-dz642-demo0container1';
const SAVED_LOG = 'zzzzz-4zz18-demo0savedlogs1';

/** runDemo runs the demo and returns the exit code. */
export async function runDemo(_argv: string[]): Promise<number> {
  const say = (msg: string) => process.stdout.write(`demo: ${msg}\n`);
  const cluster = await new LocalCluster().start();
  let crunchRun;
  let keepWeb;
  try {
    say(`simulated Arvados API at ${cluster.apiUrl}`);
    const keepRoot = join(cluster.dir, 'keep');
    mkdirSync(join(keepRoot, SAVED_LOG), { recursive: true });
    keepWeb = await startKeepWeb({ root: keepRoot, token: cluster.rootToken });
    cluster.writeConfig({ webdavInternalUrls: [`${keepWeb.url}/`] });
    say(`test keep-web (Go, x/net/webdav) at ${keepWeb.url}`);
    const sidecar = await cluster.startSidecar({ logLevel: 'warn' });
    const front = urlOf(sidecar);
    say(`sidecar front door at ${front}, admin at http://127.0.0.1:${sidecar.adminPort}`);

    const alice = cluster.api.addUser('zzzzz-tpzed-demouser0000001');
    const ctr = cluster.api.addContainer(CTR, 'Running', [alice]);
    const work = join(cluster.dir, 'container');
    mkdirSync(join(work, 'log'), { recursive: true });
    writeFileSync(join(work, 'log', 'stderr.txt'), 'starting the demo container\n');

    crunchRun = await startCrunchRun({
      uuid: CTR, systemRootToken: cluster.rootToken, tunnelUrl: front, apiUrl: front,
      apiToken: ctr.runtime_token, logDir: join(work, 'log'), workdir: work,
    });
    say(`crunch-run started (pid ${crunchRun.pid}), gateway listening on ` +
      `${crunchRun.gatewayAddress} (loopback only: reachable through the tunnel)`);
    const up = await crunchRun.waitFor('tunnel_up');
    say(`tunnel up; the sidecar told crunch-run its URL is ${String(up.internal_url)}`);
    await waitUntil(() => ctr.gateway_address.startsWith('tunnel '), 10_000);
    say(`container record now says gateway_address = ${JSON.stringify(ctr.gateway_address)}`);

    const command = 'echo hello from $(hostname) in $(pwd)';
    say(`running over SSH through the sidecar: ${command}`);
    const ssh = await runSsh(front, CTR, alice.token, command);
    for (const line of ssh.stdout.trim().split('\n')) say(`  container says: ${line}`);
    if (ssh.code !== 0) {
      say(`ssh failed with exit code ${ssh.code}: ${ssh.stderr.trim()}`);
      return 1;
    }
    say(`interactive_session_started is now ${ctr.interactive_session_started}`);
    const tunnels = await (await fetch(`http://127.0.0.1:${sidecar.adminPort}/debug/tunnels`))
      .json();
    say(`/debug/tunnels: ${JSON.stringify(tunnels)}`);

    const cr = [...cluster.api.requests.values()].find((r) => r.container_uuid === CTR)!;
    const logUrl = `${front}/arvados/v1/container_requests/${cr.uuid}/log`;
    const auth = { authorization: `Bearer ${alice.token}` };
    writeFileSync(join(work, 'log', 'stderr.txt'), 'line two, written while running\n',
      { flag: 'a' });
    const live = await fetch(`${logUrl}/${CTR}/stderr.txt`, { headers: auth });
    say(`live log through the tunnel: GET .../log/${CTR}/stderr.txt -> ${live.status}`);
    for (const line of (await live.text()).trim().split('\n')) say(`  ${line}`);

    say('the container finishes: crunch-run exits and its log is saved to a collection');
    await crunchRun.stop();
    crunchRun = undefined;
    const savedDir = join(keepRoot, SAVED_LOG, `log for container ${CTR}`);
    mkdirSync(savedDir, { recursive: true });
    writeFileSync(join(savedDir, 'stderr.txt'),
      'starting the demo container\nline two, written while running\nfinished\n');
    ctr.state = 'Complete';
    cr.log_uuid = SAVED_LOG;
    const saved = await fetch(`${logUrl}/${CTR}/stderr.txt`, { headers: auth });
    say(`saved log from keep-web: GET .../log/${CTR}/stderr.txt -> ${saved.status}`);
    for (const line of (await saved.text()).trim().split('\n')) say(`  ${line}`);
    if (!live.ok || !saved.ok) return 1;
    say('done: tunnel, SSH, live and saved logs all worked end to end');
    return 0;
  } catch (err) {
    say(`failed: ${(err as Error).message}`);
    return 1;
  } finally {
    await crunchRun?.stop();
    await keepWeb?.stop();
    await cluster.stop();
  }
}

/** runSsh runs OpenSSH's client with the sidecar's ssh-proxy as its ProxyCommand. */
export function runSsh(
  front: string,
  uuid: string,
  token: string,
  command: string,
  extraArgs: string[] = [],
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const insecure = front.startsWith('https:') ? ' --insecure' : '';
  const proxy = `${process.execPath} ${MAIN} ssh-proxy${insecure} --url ${front} %h`;
  const args = [
    '-F', '/dev/null', '-o', `ProxyCommand=${proxy}`, '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null', '-o', 'BatchMode=yes', '-o', 'LogLevel=ERROR',
    '-o', 'ConnectTimeout=20', ...extraArgs, `root@${uuid}`, command,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn('ssh', args, {
      env: { ...process.env, ARVADOS_API_TOKEN: token },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.once('error', (err) =>
        reject(new Error(`cannot run ssh (install openssh-client): ${err.message}`)));
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

async function waitUntil(cond: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}
