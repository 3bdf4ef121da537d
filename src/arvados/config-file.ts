// Reads the cluster config (and the root token file) from disk and re-reads them when they
// change. Polling, not inotify: a mounted ConfigMap or Secret changes by swapping a symlink,
// which inotify on the file itself does not report.
import { readFileSync, statSync, watchFile, unwatchFile, type Stats } from 'node:fs';
import type { Logger } from '../log.ts';
import type { ClusterConfigStore } from './cluster-config.ts';

const POLL_MS = 1000;

/** watchConfigFile feeds the store from a file now and on every change; returns a stopper. */
export function watchConfigFile(
  path: string,
  store: ClusterConfigStore,
  log: Logger,
  onResult: (ok: boolean) => void = () => {},
): () => void {
  return watchPath(path, () => {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      store.sourceFailed(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`,
        `file ${path}`);
      onResult(false);
      return;
    }
    const err = store.update(text, `file ${path}`);
    onResult(err === undefined);
  });
}

// signature is what the watcher compares, as one string; empty when the file cannot be read.
function signature(path: string): string {
  try {
    const s = statSync(path);
    return `${s.mtimeMs}:${s.ino}:${s.size}`;
  } catch {
    return '';
  }
}

/** watchTokenFile keeps the store's root token in step with a mounted Secret file. */
export function watchTokenFile(path: string, store: ClusterConfigStore, log: Logger): () => void {
  return watchPath(path, () => {
    try {
      store.setRootTokenOverride(readFileSync(path, 'utf8'));
    } catch (err) {
      const reason = `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? err}`;
      if (store.rootTokenError !== reason) log.error({ path, err: reason }, 'root token file');
      store.rootTokenUnreadable(reason);
    }
  });
}

// watchPath calls load now and whenever the file changes; the result stops watching.
function watchPath(path: string, load: () => void): () => void {
  let loaded = signature(path);
  const reload = () => {
    loaded = signature(path);
    load();
  };
  load();
  const onChange = (now: Stats, before: Stats) => {
    if (now.mtimeMs !== before.mtimeMs || now.ino !== before.ino
        || now.size !== before.size) reload();
  };
  watchFile(path, { interval: POLL_MS }, onChange);
  // The watcher takes its first look a moment after the read above, and an edit made in between
  // is never reported as a change: look once more after its first polls.
  const recheck = setTimeout(() => {
    if (signature(path) !== loaded) reload();
  }, 2 * POLL_MS);
  recheck.unref();
  // Only this listener: other watchers of the same file in this process keep theirs.
  return () => {
    clearTimeout(recheck);
    unwatchFile(path, onChange);
  };
}
