// probe.ts — decides once per process whether the KVM tier can run here, and why not.
// Each reason names its fix, because users see them in ERR_UNAVAILABLE and in the
// one-time notice when 'auto' falls back to WebAssembly.
import { existsSync } from 'node:fs';
import { loadAddon } from './native.js';
import { kvmImagePath } from './paths.js';

let cached: string[] | undefined;

export function kvmUnusableReasons(): string[] {
  if (cached) return cached;
  const reasons: string[] = [];
  if (process.platform !== 'linux' || process.arch !== 'x64') {
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
