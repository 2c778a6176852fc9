// lifetime.test.ts — what happens to VMs nobody disposes: the GC finalizer joins
// their vCPU threads and closes their fds, and an idle VM never keeps Node alive.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';

const child = join(__dirname, 'fixtures', 'gc-child.ts');

function runChild(mode: string, extra: string[] = []) {
  return spawnSync(process.execPath, [...extra, '--import', 'tsx', child, mode], {
    encoding: 'utf8',
    timeout: 60_000,
    cwd: join(__dirname, '..', '..'),
  });
}

describeKvm('host addon: undisposed VMs', () => {
  it('reclaims VMs dropped without dispose() when they are garbage collected', () => {
    const r = runChild('gc', ['--expose-gc']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const { before, during, after } = JSON.parse(r.stdout.trim().split('\n').pop()!);
    // 20 live VMs hold a VM fd, a vCPU fd and a thread each ...
    expect(during.fds).toBeGreaterThanOrEqual(before.fds + 40);
    expect(during.threads).toBeGreaterThanOrEqual(before.threads + 20);
    // ... and the finalizer gives them all back.
    expect(after.fds).toBeLessThanOrEqual(before.fds);
    expect(after.threads).toBeLessThanOrEqual(before.threads);
  }, 60_000);

  it('lets the process exit while idle VMs are still alive', () => {
    const r = runChild('exit');
    expect(r.error).toBeUndefined(); // no timeout
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('"done":true');
  }, 60_000);
});
