// index-lock.ts — saves to one snapshot directory update its index.json one at a time:
// a read-modify-write of the index by two saves at once (in this process or another)
// would otherwise drop one of their tags. In-process saves queue per directory; across
// processes an `index.json.lock` file created with O_EXCL holds the directory, and a lock
// left by a process that died is taken over.
import { constants as fsConstants } from 'node:fs';
import { open, readFile, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { BusyError } from '../errors.js';

/** How long a save waits for another process's lock before it gives up with ERR_BUSY. */
const WAIT_MS = 30_000;
/** A lock this old is stale whoever holds it: an index update takes milliseconds. */
const STALE_MS = 60_000;

const queues = new Map<string, Promise<void>>();

/** Runs `update` while this process, and no other, updates `dir`'s index. */
export async function withIndexLock<T>(dir: string, update: () => Promise<T>): Promise<T> {
  const key = resolve(dir);
  const before = queues.get(key) ?? Promise.resolve();
  let done!: () => void;
  const finished = new Promise<void>((r) => (done = r));
  const mine = before.then(() => finished);
  queues.set(key, mine);
  await before;
  try {
    const release = await acquire(join(key, 'index.json.lock'));
    try {
      return await update();
    } finally {
      await release();
    }
  } finally {
    done();
    if (queues.get(key) === mine) queues.delete(key);
  }
}

async function acquire(path: string): Promise<() => Promise<void>> {
  const owner = `${process.pid}\n${hostname()}\n`;
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    try {
      const fh = await open(path, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o600);
      try {
        await fh.write(owner);
      } finally {
        await fh.close();
      }
      return () => rm(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (await isStale(path)) {
      await rm(path, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new BusyError(`another process has held the snapshot index lock ${path} for over ${WAIT_MS / 1000} s; remove the file if no save is running`);
    }
    await new Promise((r) => setTimeout(r, 5 + Math.random() * 20));
  }
}

/** A lock whose holder on this host is gone, or that is older than any save. */
async function isStale(path: string): Promise<boolean> {
  const [text, info] = await Promise.all([readFile(path, 'utf8').catch(() => undefined), stat(path).catch(() => undefined)]);
  if (text === undefined || info === undefined) return false; // just released: try again
  if (Date.now() - info.mtimeMs > STALE_MS) return true;
  const [pid, host] = text.split('\n');
  if (host !== hostname() || !/^[1-9][0-9]*$/.test(pid ?? '')) return false; // being written, or another host's
  try {
    process.kill(Number(pid), 0);
    return false;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ESRCH';
  }
}
