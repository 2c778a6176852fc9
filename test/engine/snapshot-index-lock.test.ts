// snapshot-index-lock.test.ts — the snapshot directory's index lock (src/snapshot/index-lock.ts):
// read-modify-writes of one file by several processes at once lose nothing; a lock left
// by a dead process is taken over; a live holder is waited for.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { withIndexLock } from '../../src/snapshot/index-lock.js';

const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
});
async function scratch(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'airlock-index-lock-'));
  dirs.push(d);
  return d;
}

// Each child increments the counter file `n` times, each a slow read-modify-write under the lock.
const CHILD = `
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { withIndexLock } from ${JSON.stringify(join(__dirname, '..', '..', 'src', 'snapshot', 'index-lock.ts'))};
const [dir, n] = process.argv.slice(2);
for (let i = 0; i < Number(n); i++) {
  await withIndexLock(dir, async () => {
    const v = Number(await readFile(join(dir, 'count'), 'utf8'));
    await new Promise((r) => setTimeout(r, 1));
    await writeFile(join(dir, 'count'), String(v + 1));
  });
}
`;

describe('snapshot index lock', () => {
  it('serialises read-modify-writes within a process', async () => {
    const dir = await scratch();
    await writeFile(join(dir, 'count'), '0');
    await Promise.all(
      Array.from({ length: 20 }, () =>
        withIndexLock(dir, async () => {
          const v = Number(await readFile(join(dir, 'count'), 'utf8'));
          await new Promise((r) => setTimeout(r, 1));
          await writeFile(join(dir, 'count'), String(v + 1));
        }),
      ),
    );
    expect(await readFile(join(dir, 'count'), 'utf8')).toBe('20');
  });

  it('serialises read-modify-writes across processes', async () => {
    const dir = await scratch();
    await writeFile(join(dir, 'count'), '0');
    const script = join(dir, 'child.mts');
    await writeFile(script, CHILD);
    const tsx = join(__dirname, '..', '..', 'node_modules', '.bin', 'tsx');
    const children = Array.from({ length: 3 }, () => spawn(tsx, [script, dir, '15'], { stdio: ['ignore', 'ignore', 'pipe'] }));
    const codes = await Promise.all(
      children.map(
        (c) =>
          new Promise<{ code: number | null; err: string }>((resolve) => {
            let err = '';
            c.stderr!.on('data', (d) => (err += d));
            c.on('close', (code) => resolve({ code, err }));
          }),
      ),
    );
    expect(codes).toEqual(codes.map(() => ({ code: 0, err: '' })));
    expect(await readFile(join(dir, 'count'), 'utf8')).toBe('45');
  }, 60_000);

  it('takes over a lock left by a process that is gone', async () => {
    const dir = await scratch();
    const gone = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    await writeFile(join(dir, 'index.json.lock'), `${gone.stdout}\n${hostname()}\n`);
    expect(await withIndexLock(dir, async () => 'ran')).toBe('ran');
    await expect(readFile(join(dir, 'index.json.lock'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('waits while a live process holds the lock', async () => {
    const dir = await scratch();
    await writeFile(join(dir, 'index.json.lock'), `${process.pid}\n${hostname()}\n`);
    let ran = false;
    const update = withIndexLock(dir, async () => {
      ran = true;
    });
    await new Promise((r) => setTimeout(r, 100));
    expect(ran).toBe(false);
    await rm(join(dir, 'index.json.lock'));
    await update;
    expect(ran).toBe(true);
  });
});
