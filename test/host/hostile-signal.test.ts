// hostile-signal.test.ts — the cancellation signal is configurable (setCancelSignal
// before the first VM, or AIRLOCK_KVM_SIGNAL), refused when it is not a free
// real-time signal, and kill works through whichever is chosen. Each case runs in its
// own process: the signal is chosen once per process.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';

function runChild(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(__dirname, 'fixtures', 'hostile-child.ts'), ...args], {
    encoding: 'utf8',
    timeout: 30_000,
    cwd: join(__dirname, '..', '..'),
    env: { ...process.env, ...env },
  });
  expect(r.error, r.stderr).toBeUndefined();
  return r;
}

describeKvm('host addon: the cancellation signal', () => {
  it('setCancelSignal(n) before the first VM installs the handler on n; later changes are refused', () => {
    const r = runChild(['signal-config', '50']);
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.code).toBe('ERR_CANCELLED');
    expect(out.installed).toContain(50);
    expect(out.errors).toEqual(['ERR_INVALID_ARG', 'ERR_INVALID_ARG']);
  });

  it('AIRLOCK_KVM_SIGNAL selects the signal', () => {
    const r = runChild(['signal-config'], { AIRLOCK_KVM_SIGNAL: '47' });
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.code).toBe('ERR_CANCELLED');
    expect(out.installed).toContain(47);
  });

  it('an AIRLOCK_KVM_SIGNAL that is not a real-time signal fails VM creation with a reason', () => {
    const r = runChild(['signal-config'], { AIRLOCK_KVM_SIGNAL: '9' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/AIRLOCK_KVM_SIGNAL=9 is not a real-time signal/);
  });
});
