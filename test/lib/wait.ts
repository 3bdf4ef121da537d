// Polling for a condition in tests: state changes that cross processes or timers (a config
// reload, a redial) have no event to await.

/** waitFor polls cond until it holds, or throws after timeoutMs naming what it waited for. */
export async function waitFor(
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what = 'a condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
