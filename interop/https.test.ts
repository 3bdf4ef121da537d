// The front door over HTTPS (GATEWAY_TLS_CERT/KEY): crunch-run's tunnel, OpenSSH through
// ssh-proxy, a log read and a passthrough request all work over TLS.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { LocalCluster } from '../src/demo/cluster.ts';
import { runSsh } from '../src/demo/run.ts';
import { startCrunchRun, type CrunchRun } from './lib/crunch-run.ts';
import { buildGo } from '../scripts/build-go.ts';

const cluster = new LocalCluster();
let crunchRun: CrunchRun | undefined;
after(async () => {
  await crunchRun?.stop();
  await cluster.stop();
});

test('tunnel, SSH, logs and passthrough over an HTTPS front door', async () => {
  await buildGo(['crunch-run']);
  await cluster.start();
  const key = join(cluster.dir, 'front.key');
  const cert = join(cluster.dir, 'front.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
    '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  const sidecar = await cluster.startSidecar({ tlsCert: cert, tlsKey: key });
  const front = `https://127.0.0.1:${sidecar.frontPort}`;
  assert.equal(sidecar.ownUrl, `${front}/`);

  const alice = cluster.api.addUser('zzzzz-tpzed-alice0000000001');
  const uuid = 'zzzzz-dz642-httpsfront00001';
  const ctr = cluster.api.addContainer(uuid, 'Running', [alice]);
  const logDir = join(cluster.dir, 'log');
  mkdirSync(logDir);
  writeFileSync(join(logDir, 'stderr.txt'), 'over tls\n');
  crunchRun = await startCrunchRun({ uuid, systemRootToken: cluster.rootToken, logDir,
    tunnelUrl: front, apiUrl: front, apiToken: ctr.runtime_token, insecure: true });
  await crunchRun.waitFor('gateway_address_set');
  assert.equal(ctr.gateway_address, `tunnel ${front}/`);

  const r = await runSsh(front, uuid, alice.token, 'echo tls');
  assert.equal(r.stdout, 'tls\n', r.stderr);

  const dispatcher = new Agent({ connect: { ca: readFileSync(cert) } });
  const cr = [...cluster.api.requests.values()].find((c) => c.container_uuid === uuid)!;
  const logPath = `/arvados/v1/container_requests/${cr.uuid}/log/${uuid}/stderr.txt`;
  const log = await request(`${front}${logPath}`,
    { headers: { authorization: `Bearer ${alice.token}` }, dispatcher });
  assert.equal(await log.body.text(), 'over tls\n');
  const me = await request(`${front}/arvados/v1/users/current`,
    { headers: { authorization: `Bearer ${alice.token}` }, dispatcher });
  assert.equal((await me.body.json() as { uuid: string }).uuid, alice.uuid);
  await dispatcher.close();
});
