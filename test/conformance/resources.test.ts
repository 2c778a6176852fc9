// resources.test.ts — sandboxes give back what they take: file descriptors, VMs, workers.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeEachBackend } from './backends.js';

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

describeEachBackend('resources', (h) => {
  it('creates and disposes 200 sandboxes without growing open file descriptors', async () => {
    // Warm up once so lazily opened process-wide handles (the addon, a compiled module,
    // worker pools) are counted in the baseline rather than as growth.
    const warm = await h.load({ h: 'function handler(e) { return e + 1; }' });
    expect(await warm.callHandler('h', 1)).toBe(2);
    await warm.dispose();
    const before = openFds();
    for (let i = 0; i < 200; i++) {
      const proto = await h.builder().build();
      if (i % 20 === 0) {
        // Every twentieth goes all the way to a call, so the full path is released too.
        const js = await proto.loadRuntime();
        js.addHandler('h', 'function handler(e) { return e * 2; }');
        const loaded = await js.getLoadedSandbox();
        expect(await loaded.callHandler('h', i)).toBe(i * 2);
      }
      await proto.dispose();
    }
    const after = openFds();
    expect(after - before).toBeLessThanOrEqual(2);
  });

  it('reserves large I/O buffers instead of committing them at build()', () => {
    const child = join(__dirname, 'fixtures', 'buffer-rss-child.ts');
    const r = spawnSync(process.execPath, ['--import', 'tsx', child, h.backend], {
      encoding: 'utf8',
      timeout: 60_000,
      cwd: join(__dirname, '..', '..'),
    });
    expect(r.status, r.stderr).toBe(0);
    const { addedMiB, echoed } = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(echoed).toEqual({ ok: true });
    // 2 x (64 + 64) MiB of buffers; committing them would add >= 256 MiB.
    expect(addedMiB).toBeLessThan(64);
  }, 60_000);
});
