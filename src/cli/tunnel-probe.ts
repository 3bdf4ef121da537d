// `tunnel-probe`: an operator's (and `helm test`'s) check that a sidecar takes tunnels. It opens
// a tunnel for a probe container UUID as crunch-run would, learns from X-Arvados-Internal-Url
// which sidecar holds it, and checks that sidecar's /debug/tunnels lists it.
import { readFileSync } from 'node:fs';
import { connectUrl } from '../http/connect.ts';
import { parseArgs } from 'node:util';
import { containerKey } from '../gateway/hmac.ts';
import { sendUpgrade } from '../gateway/upgrade-client.ts';
import { Session } from '../tunnel/yamux/index.ts';

const USAGE = 'usage: tunnel-probe --url URL --uuid CONTAINER_UUID ' +
  '[--admin-port 9090 | --admin-url URL] [--insecure]\n' +
  'The root token comes from ARVADOS_SYSTEM_ROOT_TOKEN_FILE or ARVADOS_SYSTEM_ROOT_TOKEN.\n';

/** tunnelProbe runs the probe with argv and returns the exit code. */
export async function tunnelProbe(argv: string[]): Promise<number> {
  const out = (msg: string) => process.stdout.write(`tunnel-probe: ${msg}\n`);
  let values;
  try {
    ({ values } = parseArgs({ args: argv, options: {
      url: { type: 'string' }, uuid: { type: 'string' }, 'admin-port': { type: 'string' },
      'admin-url': { type: 'string' }, insecure: { type: 'boolean', default: false },
    } }));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const tokenFile = process.env.ARVADOS_SYSTEM_ROOT_TOKEN_FILE;
  const token = (tokenFile ? readFileSync(tokenFile, 'utf8')
      : process.env.ARVADOS_SYSTEM_ROOT_TOKEN ?? '')
    .trim();
  if (!values.url || !values.uuid || token === '') {
    process.stderr.write(USAGE);
    return 2;
  }
  const url = new URL(values.url);
  const socket = await connectUrl(url, { rejectUnauthorized: !values.insecure, timeoutMs: 30_000 });
  const answer = await sendUpgrade(socket,
    `/arvados/v1/containers/${values.uuid}/gateway_tunnel`,
    { Host: url.host, Upgrade: 'tunnel' },
    new URLSearchParams({ auth_secret: containerKey(token, values.uuid) }), 15_000);
  if (answer.status !== 101) {
    out(`tunnel refused: ${answer.status} ${answer.reason}`);
    socket.destroy();
    return 1;
  }
  const holder = answer.head.headers['x-arvados-internal-url'] ?? '';
  out(`tunnel open; held by ${holder}`);
  if (answer.rest.length > 0) socket.unshift(answer.rest);
  const session = new Session(socket, { role: 'client' });
  const admin = values['admin-url'] ??
    `http://${new URL(holder).host.replace(/:\d+$/, '')}:${values['admin-port'] ?? '9090'}`;
  try {
    for (let attempt = 0; attempt < 20; attempt++) {
      const res = await fetch(new URL('/debug/tunnels', admin),
          { signal: AbortSignal.timeout(5000) });
      const tunnels = await res.json() as { container_uuid: string }[];
      if (tunnels.some((t) => t.container_uuid === values.uuid)) {
        out(`${admin}/debug/tunnels lists ${values.uuid}: ok`);
        return 0;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    out(`${admin}/debug/tunnels does not list ${values.uuid}`);
    return 1;
  } catch (err) {
    out(`cannot read ${admin}/debug/tunnels: ${(err as Error).message}`);
    return 1;
  } finally {
    session.close();
  }
}
