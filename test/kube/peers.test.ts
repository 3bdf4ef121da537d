import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { isIP } from 'node:net';
import { describe, it } from 'node:test';
import {
  PeerResolver,
  dnsResolver,
  ownInternalUrl,
  type ResolveFn,
} from '../../src/kube/peers.ts';

const SERVICE = 'arvados-controller-peers.arv.svc.cluster.local';

// A DNS stand-in: a table of names to addresses, a call log, and a switchable failure.
function fakeDns(table: Record<string, string[]>) {
  const calls: string[] = [];
  let failWith: Error | undefined;
  const resolve: ResolveFn = async (name) => {
    calls.push(name);
    if (failWith) throw failWith;
    return table[name] ?? [];
  };
  return {
    table,
    calls,
    resolve,
    fail(err: Error | undefined) {
      failWith = err;
    },
  };
}

function clock(start = 1_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => { t += ms; } };
}

describe('PeerResolver', () => {
  it('resolves the service to its members and checks IP URLs against them', async () => {
    const dns = fakeDns({ [SERVICE]: ['10.0.0.2', '10.0.0.1', 'fd00::0:1'] });
    const c = clock();
    const peers = new PeerResolver({ serviceName: SERVICE, resolve: dns.resolve, now: c.now });
    assert.deepEqual(peers.members(), []);
    assert.equal(await peers.isPeer(new URL('http://10.0.0.1:9000/')), true);
    assert.deepEqual(peers.members(), ['10.0.0.1', '10.0.0.2', 'fd00::1']);
    assert.equal(peers.isPeerUrl(new URL('https://10.0.0.2:9000/arvados/v1')), true);
    assert.equal(peers.isPeerUrl(new URL('http://[fd00:0::1]:9000/')), true);
    assert.equal(peers.isPeerUrl(new URL('http://10.0.0.3:9000/')), false);
    assert.equal(peers.isPeerUrl(new URL('http://127.0.0.1:9000/')), false);
    assert.equal(peers.isPeerUrl(new URL('ftp://10.0.0.1/')), false);
  });

  it('re-resolves only after the TTL and follows membership changes', async () => {
    const dns = fakeDns({ [SERVICE]: ['10.0.0.1'] });
    const c = clock();
    const peers = new PeerResolver({
      serviceName: SERVICE, resolve: dns.resolve, now: c.now, ttlMs: 5000,
    });
    await peers.ensureFresh();
    dns.table[SERVICE] = ['10.0.0.9'];
    c.advance(4999);
    assert.equal(await peers.isPeer(new URL('http://10.0.0.9/')), false);
    assert.equal(dns.calls.length, 1);
    c.advance(1);
    assert.equal(await peers.isPeer(new URL('http://10.0.0.9/')), true);
    assert.equal(await peers.isPeer(new URL('http://10.0.0.1/')), false);
    assert.equal(dns.calls.length, 2);
  });

  it('keeps the last members when DNS fails, and empties them when the name has none', async () => {
    const dns = fakeDns({ [SERVICE]: ['10.0.0.1'] });
    const c = clock();
    const peers = new PeerResolver({ serviceName: SERVICE, resolve: dns.resolve, now: c.now });
    await peers.refresh();
    dns.fail(Object.assign(new Error('queryA ETIMEOUT'), { code: 'ETIMEOUT' }));
    c.advance(10_000);
    assert.equal(await peers.isPeer(new URL('http://10.0.0.1/')), true);
    await assert.rejects(peers.refresh(), /ETIMEOUT/);
    assert.deepEqual(peers.members(), ['10.0.0.1']);
    dns.fail(undefined);
    dns.table[SERVICE] = [];
    await peers.refresh();
    assert.deepEqual(peers.members(), []);
    assert.equal(peers.isPeerUrl(new URL('http://10.0.0.1/')), false);
  });

  it('shares one resolution between concurrent callers', async () => {
    const dns = fakeDns({ [SERVICE]: ['10.0.0.1'] });
    const peers = new PeerResolver({ serviceName: SERVICE, resolve: dns.resolve });
    const results = await Promise.all([peers.refresh(), peers.refresh(), peers.ensureFresh()]);
    assert.deepEqual(results[0], ['10.0.0.1']);
    assert.equal(dns.calls.length, 1);
  });

  it('accepts per-pod names under the service only when they resolve into the set', async () => {
    const dns = fakeDns({
      [SERVICE]: ['10.0.0.1', '10.0.0.2'],
      [`ctrl-0.${SERVICE}`]: ['10.0.0.1'],
      'ctrl-1.arvados-controller-peers.arv.svc': ['10.0.0.2'],
      [`stale.${SERVICE}`]: ['10.0.0.7'],
      [`mixed.${SERVICE}`]: ['10.0.0.1', '10.0.0.7'],
      'evil.example.com': ['10.0.0.1'],
      'a.b.arvados-controller-peers.arv.svc.cluster.local': ['10.0.0.1'],
      'x.arvados-controller-peers': ['10.0.0.1'],
    });
    const peers = new PeerResolver({ serviceName: SERVICE, resolve: dns.resolve });
    assert.equal(await peers.isPeer(new URL(`https://ctrl-0.${SERVICE}:8443/`)), true);
    assert.equal(await peers.isPeer(new URL(`https://CTRL-0.${SERVICE.toUpperCase()}.:8443/`)),
      true);
    assert.equal(
      await peers.isPeer(new URL('https://ctrl-1.arvados-controller-peers.arv.svc:8443/')), true);
    assert.equal(await peers.isPeer(new URL(`https://stale.${SERVICE}/`)), false);
    assert.equal(await peers.isPeer(new URL(`https://mixed.${SERVICE}/`)), false);
    assert.equal(await peers.isPeer(new URL(`https://unknown.${SERVICE}/`)), false);
    // Names outside the service are refused without being looked up at all.
    assert.equal(await peers.isPeer(new URL('https://evil.example.com/')), false);
    assert.equal(
      await peers.isPeer(new URL('https://a.b.arvados-controller-peers.arv.svc.cluster.local/')),
      false);
    assert.equal(await peers.isPeer(new URL('https://x.arvados-controller-peers/')), false);
    assert.equal(await peers.isPeer(new URL(`https://${SERVICE}/`)), false);
    assert.ok(!dns.calls.includes('evil.example.com'));
    assert.ok(!dns.calls.includes('x.arvados-controller-peers'));
    // What isPeer resolved is what the synchronous check then knows.
    assert.equal(peers.isPeerUrl(new URL(`https://ctrl-0.${SERVICE}/`)), true);
    assert.equal(peers.isPeerUrl(new URL(`https://never-resolved.${SERVICE}/`)), false);
  });

  it('refreshes a stale set in the background when asked synchronously', async () => {
    const dns = fakeDns({ [SERVICE]: ['10.0.0.1'] });
    const c = clock();
    const peers = new PeerResolver({ serviceName: SERVICE, resolve: dns.resolve, now: c.now });
    assert.equal(peers.isPeerUrl(new URL('http://10.0.0.1/')), false);
    assert.deepEqual(dns.calls, [SERVICE]);
    await peers.ensureFresh();
    assert.equal(peers.isPeerUrl(new URL('http://10.0.0.1/')), true);
    assert.equal(dns.calls.length, 1);
  });

  it('refuses a service that is not a DNS name', () => {
    assert.throws(() => new PeerResolver({ serviceName: '10.0.0.1' }), /must be a DNS name/);
    assert.throws(() => new PeerResolver({ serviceName: '' }), /must be a DNS name/);
  });
});

// A minimal DNS server on loopback: answers A and AAAA from a table, NXDOMAIN for unknown
// names, and SERVFAIL for names listed as broken.
async function startDns(table: Record<string, string[]>, broken: string[] = []) {
  const sock = createSocket('udp4');
  sock.on('message', (msg, rinfo) => {
    let off = 12;
    const labels: string[] = [];
    while (msg[off] !== 0) {
      labels.push(msg.subarray(off + 1, off + 1 + msg[off]).toString('ascii'));
      off += msg[off] + 1;
    }
    const qtype = msg.readUInt16BE(off + 1);
    const question = msg.subarray(12, off + 5);
    const name = labels.join('.').toLowerCase();
    const known = Object.hasOwn(table, name);
    const want = qtype === 1 ? 4 : qtype === 28 ? 6 : 0;
    const addrs = known ? table[name].filter((a) => isIP(a) === want) : [];
    const rcode = broken.includes(name) ? 2 : known ? 0 : 3;
    const header = Buffer.alloc(12);
    header.writeUInt16BE(msg.readUInt16BE(0), 0);
    header.writeUInt16BE(0x8180 | rcode, 2);
    header.writeUInt16BE(1, 4);
    header.writeUInt16BE(rcode === 0 ? addrs.length : 0, 6);
    const answers = rcode !== 0 ? [] : addrs.map((a) => {
      const rdata = want === 4 ? Buffer.from(a.split('.').map(Number)) : ipv6Bytes(a);
      const rr = Buffer.alloc(12);
      rr.writeUInt16BE(0xc00c, 0);
      rr.writeUInt16BE(qtype, 2);
      rr.writeUInt16BE(1, 4);
      rr.writeUInt32BE(5, 6);
      rr.writeUInt16BE(rdata.length, 10);
      return Buffer.concat([rr, rdata]);
    });
    sock.send(Buffer.concat([header, question, ...answers]), rinfo.port, rinfo.address);
  });
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', () => resolve()));
  return { server: `127.0.0.1:${sock.address().port}`, close: () => sock.close() };
}

function ipv6Bytes(a: string): Buffer {
  const [head, tail = ''] = a.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = a.includes('::') ? [...h, ...Array(8 - h.length - t.length).fill('0'), ...t] : h;
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  return out;
}

describe('dnsResolver', () => {
  it('queries A and AAAA and treats a missing family or name as no addresses', async (t) => {
    const dns = await startDns({
      'dual.peers.test': ['10.0.0.1', 'fd00::1', '10.0.0.2'],
      'v6only.peers.test': ['fd00::2'],
      'empty.peers.test': [],
    }, ['broken.peers.test']);
    t.after(() => dns.close());
    const resolve = dnsResolver([dns.server]);
    assert.deepEqual((await resolve('dual.peers.test')).sort(),
      ['10.0.0.1', '10.0.0.2', 'fd00::1']);
    assert.deepEqual(await resolve('v6only.peers.test'), ['fd00::2']);
    assert.deepEqual(await resolve('empty.peers.test'), []);
    assert.deepEqual(await resolve('nxdomain.peers.test'), []);
    await assert.rejects(resolve('broken.peers.test'), { code: 'ESERVFAIL' });
  });

  it('drives a PeerResolver end to end', async (t) => {
    const dns = await startDns({
      'peers.arv.svc': ['10.0.0.1'],
      'c-0.peers.arv.svc': ['10.0.0.1'],
    });
    t.after(() => dns.close());
    const peers = new PeerResolver({
      serviceName: 'peers.arv.svc',
      resolve: dnsResolver([dns.server]),
    });
    assert.equal(await peers.isPeer(new URL('http://c-0.peers.arv.svc:9000/')), true);
    assert.deepEqual(peers.members(), ['10.0.0.1']);
  });
});

describe('ownInternalUrl', () => {
  it('prefers the pod IP', () => {
    assert.equal(
      ownInternalUrl({
        podIp: '10.1.2.3', podName: 'ctrl-0', namespace: 'arv', service: 'peers',
        scheme: 'https', port: 8443,
      }),
      'https://10.1.2.3:8443/');
    assert.equal(ownInternalUrl({ podIp: 'fd00::0:5', scheme: 'http', port: 80 }),
      'http://[fd00::5]:80/');
  });

  it('falls back to the per-pod DNS name', () => {
    assert.equal(
      ownInternalUrl({
        podName: 'ctrl-0', namespace: 'arv', service: 'peers', scheme: 'https', port: 8443,
      }),
      'https://ctrl-0.peers.arv.svc:8443/');
    assert.equal(
      ownInternalUrl({ podName: 'ctrl-0', service: `${SERVICE}.`, scheme: 'http', port: 9000 }),
      `http://ctrl-0.${SERVICE}:9000/`);
  });

  it('says what is missing', () => {
    assert.throws(() => ownInternalUrl({ podName: 'ctrl-0', scheme: 'http', port: 9000 }),
      /set POD_IP, or POD_NAME with the peers service/);
    assert.throws(() => ownInternalUrl({ podIp: 'not-an-ip', scheme: 'http', port: 9000 }),
      /POD_IP is not an IP address/);
    assert.throws(() => ownInternalUrl({ podIp: '10.0.0.1', scheme: 'http', port: 0 }),
      /invalid port 0/);
  });
});
