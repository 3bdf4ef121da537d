// The container key and the two proofs that replace certificate verification toward
// crunch-run's self-signed gateway. A proof binds the key to the certificate the gateway showed,
// so an attacker in the middle (with another certificate) can neither reuse nor make one.
import { createHmac, timingSafeEqual } from 'node:crypto';

/** containerKey is hex(HMAC-SHA256(SystemRootToken, uuid)), also crunch-run's auth secret. */
export function containerKey(systemRootToken: string, containerUuid: string): string {
  return createHmac('sha256', systemRootToken).update(containerUuid).digest('hex');
}

/** requestAuth proves to the gateway that we know the key, bound to its certificate. */
export function requestAuth(ctrKey: string, certificateDer: Buffer): string {
  return createHmac('sha256', ctrKey).update(certificateDer).digest('hex');
}

/** respondAuth is what the gateway must answer to prove it knows the key too. */
export function respondAuth(ctrKey: string, reqAuth: string): string {
  return createHmac('sha256', ctrKey).update(reqAuth).digest('hex');
}

/** sameSecret compares two secrets in constant time (for equal lengths). */
export function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
