// select.ts — picks the tier for a new sandbox: 'kvm', 'wasm', or 'auto' (KVM when
// usable, else WebAssembly with a one-time notice saying why and how to fix it).
import { UnavailableError } from '../errors.js';
import type { Backend, EngineFactory } from './engine.js';
import { KvmEngine } from './kvm-engine.js';
import { kvmUnusableReasons } from './probe.js';

export type BackendChoice = Backend | 'auto';

let autoNoticeShown = false;

function kvmOrThrow(): void {
  const reasons = kvmUnusableReasons();
  if (reasons.length > 0) {
    throw new UnavailableError(`the KVM backend is unavailable:\n  - ${reasons.join('\n  - ')}`, reasons);
  }
}

export function engineFactory(choice: BackendChoice): EngineFactory {
  if (choice === 'kvm') {
    kvmOrThrow();
    return (config, onHostCall) => new KvmEngine(config, onHostCall);
  }
  throw new UnavailableError(`the '${choice}' backend is not available in this build`, [`backend '${choice}' not built`]);
}
