// select.ts — picks the tier for a new sandbox: 'kvm', 'wasm', or 'auto' (KVM when
// usable, else WebAssembly with a one-time notice saying why KVM was not used and how
// to fix it). The facade never branches on the tier past this point.
import type { Backend, EngineFactory } from './engine.js';
import { KvmEngine } from './kvm-engine.js';
import { kvmUnusableReasons, unavailableError } from './probe.js';
import { WasmEngine, wasmAvailable } from './wasm/index.js';

/** SandboxBuilder.setBackend(): a tier, or 'auto' (default) for KVM when usable, else WebAssembly. */
export type BackendChoice = Backend | 'auto';

let autoNoticeShown = false;

function resolve(choice: BackendChoice): Backend {
  if (choice !== 'auto') return choice;
  const reasons = kvmUnusableReasons();
  if (reasons.length === 0) return 'kvm';
  if (!autoNoticeShown) {
    autoNoticeShown = true;
    process.emitWarning(
      `KVM is unusable, so sandboxes run on the WebAssembly tier:\n  - ${reasons.join('\n  - ')}\n` +
        "Fix the above for hardware isolation, or call setBackend('wasm') to choose WebAssembly explicitly.",
      { code: 'AIRLOCK_KVM_UNAVAILABLE' },
    );
  }
  return 'wasm';
}

/** The engine factory for `choice`, or ERR_UNAVAILABLE naming each reason and its fix. */
export function engineFactory(choice: BackendChoice): EngineFactory {
  const backend = resolve(choice);
  if (backend === 'kvm') {
    const reasons = kvmUnusableReasons();
    if (reasons.length > 0) throw unavailableError('kvm', reasons);
    return (config, onHostCall) => new KvmEngine(config, onHostCall);
  }
  const wasm = wasmAvailable();
  if (!wasm.usable) throw unavailableError('wasm', wasm.reasons);
  return (config, onHostCall) => new WasmEngine(config, onHostCall);
}
