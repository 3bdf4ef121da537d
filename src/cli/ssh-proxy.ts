// `ssh-proxy`: an OpenSSH ProxyCommand that reaches a container's SSH server through a sidecar,
// the counterpart of `arvados-client connect-ssh` for a sidecar reached by port-forward:
//   ssh -o ProxyCommand='arvados-gateway-sidecar ssh-proxy --url http://127.0.0.1:8443 %h' \
//     root@zzzzz-dz642-0123456789abcde
// The token comes from ARVADOS_API_TOKEN, never from the command line (which `ps` shows).
import type { Duplex } from 'node:stream';
import { errorsIn } from '../errors.ts';
import { connectUrl } from '../http/connect.ts';
import { parseArgs } from 'node:util';
import { sendUpgrade, readSomeBody } from '../gateway/upgrade-client.ts';

const USAGE = 'usage: ssh-proxy --url URL [--login-username U] [--detach-keys K] ' +
  '[--insecure] CONTAINER_UUID\n';

/** sshProxy runs the proxy with argv and returns the exit code. */
export async function sshProxy(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: 'string' },
        'login-username': { type: 'string', default: '' },
        'detach-keys': { type: 'string', default: '' },
        insecure: { type: 'boolean', default: false },
      },
    });
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  const target = positionals[0]?.replace(/^.*@/, '');
  if (!values.url || !target) {
    process.stderr.write(USAGE);
    return 2;
  }
  const token = process.env.ARVADOS_API_TOKEN ?? '';
  if (token === '') {
    process.stderr.write('ssh-proxy: ARVADOS_API_TOKEN is not set\n');
    return 2;
  }
  const url = new URL(values.url);
  let socket: Duplex;
  try {
    socket = await connectUrl(url, { rejectUnauthorized: !values.insecure, timeoutMs: 30_000 });
  } catch (err) {
    process.stderr.write(`ssh-proxy: cannot connect to ${url.host}: ${(err as Error).message}\n`);
    return 1;
  }
  const form = new URLSearchParams({
    detach_keys: values['detach-keys'],
    login_username: values['login-username'],
    no_forward: 'false',
  });
  let answer;
  try {
    answer = await sendUpgrade(socket, `/arvados/v1/containers/${target}/ssh`, {
      Host: url.host, Authorization: `Bearer ${token}`, Upgrade: 'ssh',
    }, form, 60_000);
  } catch (err) {
    process.stderr.write(`ssh-proxy: ${(err as Error).message}\n`);
    return 1;
  }
  if (answer.status !== 101) {
    const body = await readSomeBody(socket, answer, 4096, 2000);
    process.stderr.write(`ssh-proxy: ${answer.status} ${answer.reason}: ${messageOf(body)}\n`);
    socket.destroy();
    return 1;
  }
  if (answer.rest.length > 0) process.stdout.write(answer.rest);
  return new Promise((resolve) => {
    socket.pipe(process.stdout);
    process.stdin.pipe(socket);
    socket.on('error', () => resolve(1));
    socket.on('close', () => resolve(0));
  });
}


function messageOf(body: Buffer): string {
  const text = body.toString('utf8');
  return errorsIn(text) ?? text.trim();
}
