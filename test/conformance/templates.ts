// templates.ts — the gate for suites that start sandboxes from snapshots (issue #12):
// they run on every tier that implements the engine template contract. Until the KVM
// tier's GuestEngine.template lands, its suites are skipped with the reason printed
// (the merge that brings src/engine/kvm-template.ts removes this gate).
import { describe, it } from 'vitest';
import { KvmEngine } from '../../src/engine/kvm-engine.js';
import { describeEachBackend, type BackendHarness } from './backends.js';

export function kvmTemplatesMissing(): boolean {
  return typeof (KvmEngine.prototype as { template?: unknown }).template !== 'function';
}

export function describeEachTemplateBackend(name: string, fn: (h: BackendHarness) => void): void {
  describeEachBackend(name, (h) => {
    if (h.backend === 'kvm' && kvmTemplatesMissing()) {
      describe.skip('the KVM tier has no GuestEngine.template in this build', () => it('waits for src/engine/kvm-template.ts', () => undefined));
      return;
    }
    fn(h);
  });
}
