// kvm.ts — the one gate for tests that need /dev/kvm: without a usable KVM they are
// skipped with the reason printed, unless AIRLOCK_REQUIRE_KVM=1 (CI), where the same
// absence fails the run instead. KVM tests never disappear silently.
import { accessSync, constants, existsSync } from 'node:fs';
import { describe, it } from 'vitest';

/** Why KVM cannot be used here, or null when it can. Cheap: checks the device only. */
export function kvmUnusableReason(): string | null {
  if (process.platform !== 'linux') return `KVM needs Linux (this is ${process.platform})`;
  if (!existsSync('/dev/kvm')) return '/dev/kvm does not exist (no KVM on this machine)';
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return 'no read/write permission on /dev/kvm (add the user to the kvm group)';
  }
  return null;
}

export const kvmRequired = process.env.AIRLOCK_REQUIRE_KVM === '1';

let noticePrinted = false;

/** `describe` for suites that need KVM. */
export function describeKvm(name: string, fn: () => void): void {
  const reason = kvmUnusableReason();
  if (reason === null) {
    describe(name, fn);
    return;
  }
  if (kvmRequired) {
    describe(name, () => {
      it('requires a usable KVM (AIRLOCK_REQUIRE_KVM=1)', () => {
        throw new Error(`KVM tests are required but KVM is unusable: ${reason}`);
      });
    });
    return;
  }
  if (!noticePrinted) {
    noticePrinted = true;
    console.warn(`[airlock tests] skipping KVM suites: ${reason}`);
  }
  describe.skip(`${name} (skipped: ${reason})`, fn);
}
