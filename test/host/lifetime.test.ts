// lifetime.test.ts — what happens to VMs nobody disposes: the GC finalizer stops
// them and closes their fds, an idle VM holds no thread (runners follow calls), and
// an idle VM never keeps Node alive.
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
    const { before, during, after, pool } = JSON.parse(r.stdout.trim().split('\n').pop()!);
    // 20 live VMs hold a VM fd and a vCPU fd each, but no thread: at most the
    // runner pool's threads come and go ...
    expect(during.kvmFds).toBeGreaterThanOrEqual(before.kvmFds + 40);
    expect(during.threads).toBeLessThanOrEqual(before.threads + pool.limit);
    expect(pool.limit).toBeLessThan(20);
    // ... and the finalizer gives the fds (and KVM's threads) back.
    expect(after.kvmFds).toBeLessThanOrEqual(before.kvmFds);
    expect(after.fds).toBeLessThanOrEqual(before.fds);
    expect(after.kvmThreads).toBeLessThanOrEqual(before.kvmThreads);
    expect(after.threads).toBeLessThanOrEqual(before.threads + pool.limit);
    // Nothing native of them is left either: no guest memory, and no sandbox object
    // but the one each waiting runner may still reference (the last it served).
    expect(during.sandboxes).toBeGreaterThanOrEqual(20);
    expect(during.guestMemories).toBe(before.guestMemories + 20);
    expect(after.guestMemories).toBe(0);
    expect(after.sandboxes).toBeLessThanOrEqual(after.runners);
  }, 60_000);

  it('lets the process exit while idle VMs are still alive', () => {
    const r = runChild('exit');
    expect(r.error).toBeUndefined(); // no timeout
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('"done":true');
  }, 60_000);
});
