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
 */
export const NODE_FLAGS: readonly string[] = ['--initial-heap-size=128'];

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
