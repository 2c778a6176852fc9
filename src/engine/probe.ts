// probe.ts — decides once per process whether the KVM tier can run here, and why not.
// Each reason names its fix, because users see them in ERR_UNAVAILABLE and in the
// one-time notice when 'auto' falls back to WebAssembly.
import { existsSync } from 'node:fs';
import { UnavailableError } from '../errors.js';
import type { Backend } from './engine.js';
import { loadAddon } from './native.js';
import { kvmImagePath } from './paths.js';

let cached: string[] | undefined;

export function kvmUnusableReasons(): string[] {
  if (cached) return cached;
  const reasons: string[] = [];
  if (process.env.AIRLOCK_DISABLE_KVM === '1') {
    // An operator's switch: 'auto' then always picks WebAssembly (and tests use it to
    // exercise the fallback on machines that do have KVM).
    reasons.push('KVM is disabled by AIRLOCK_DISABLE_KVM=1 (unset it to use KVM)');
  } else if (process.platform !== 'linux' || process.arch !== 'x64') {
    reasons.push(`KVM micro-VMs need Linux on x86_64 (this is ${process.platform}/${process.arch}); use setBackend('wasm')`);
  } else {
    const { addon, error } = loadAddon();
    if (!addon) {
      reasons.push(error as string);
    } else {
      const probe = addon.probe();
      if (!probe.usable) reasons.push(...probe.reasons);
    }
    if (!existsSync(kvmImagePath)) {
      reasons.push(`the guest image is not built (${kvmImagePath} is missing; run \`npm run setup\`)`);
    }
  }
  cached = reasons;
  return reasons;
}

/** ERR_UNAVAILABLE for `backend`, listing each reason (each names its fix). */
export function unavailableError(backend: Backend, reasons: string[]): UnavailableError {
  const name = backend === 'kvm' ? 'KVM' : 'WebAssembly';
  return new UnavailableError(`the ${name} backend is unavailable:\n  - ${reasons.join('\n  - ')}`, reasons);
}
