// The V8 tuning the sidecar was measured with. Most of it must be given on node's command
// line: V8 reads those flags while it sets up the heap, before any of the sidecar's code runs,
// so they can be neither set from here nor passed in NODE_OPTIONS. Every way of starting the
// sidecar that this repository ships (the Dockerfile, npm start, main.ts's #! line, the
// benchmarks) passes them; test/deploy/dockerfile.test.ts holds those to this list.
import { setFlagsFromString } from 'node:v8';

/**
 * NODE_FLAGS are node's command-line flags for the sidecar.
 *
 * --initial-heap-size: every socket read and TLS record that Node cannot read in place is a
 * short-lived buffer outside the JavaScript heap. Young-generation collections free them
 * cheaply, but V8 also runs a full mark-compact of the whole heap whenever such memory grows
 * past the heap's limit, and a small heap's limit is small: at a few hundred MB/s that was a
 * full collection every few hundred milliseconds. Starting with a limit of 128 MiB leaves
 * those buffers to the young-generation collections: through a tunnel, client→gateway, 56
 * full collections became 0 and 2.3 CPU s/GB became 1.9 (npm run bench with --trace-gc). It
 * is a limit, not an allocation: the peak RSS stayed at about 300 MiB.
 *
 * --min-semi-space-size=16: V8 shrinks the young generation when allocation slows down (an
 * idle spell, a client reading a log slowly) and grows it again only when many objects survive
 * a collection, which small round trips never make. After such a spell, round trips through a
 * tunnel ran a 0.3 ms scavenge every ~30 ms (1,370–1,400 in a bench run of the slow reader and
 * eleven turns of round trips, against 84–106 with this flag), one trip in about 200, and that
 * showed in p99: 0.88× and 0.92× Go's without the flag, 0.75× and 0.77× with it, p99.9 about
 * 700–850 µs against 400–500. The young generation's pages are touched only as it fills, so
 * a sidecar that allocates little does not pay for them in RSS.
 */
export const NODE_FLAGS: readonly string[] = [
  '--initial-heap-size=128', '--min-semi-space-size=16',
];

/** missingNodeFlags lists the flags of NODE_FLAGS that node was not started with. */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return NODE_FLAGS.filter((flag) => !execArgv.includes(flag));
}

/**
 * setRuntimeFlags sets the V8 flags that take effect when set at run time, so that every way
 * of starting the sidecar gets them.
 *
 * --external-memory-accounted-in-global-limit: buffers Node allocates outside the JavaScript
 * heap make V8 run a full collection each time about 64 MB of them have been allocated since
 * the last one, however small the heap. With this flag V8 counts them in the heap's overall
 * growth limit instead, so those collections are rarer. Measured with npm run bench: 2.6 → 2.0
 * CPU s per GB through a tunnel (client→gateway), the slow-reader RSS line within budget.
 */
export function setRuntimeFlags(): void {
  setFlagsFromString('--external-memory-accounted-in-global-limit');
}
