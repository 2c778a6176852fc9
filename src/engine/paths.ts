// paths.ts — where the built artefacts live, relative to the package root. The same
// relative layout holds for src/engine (tsx, vitest) and dist/engine (the package).
import { join, resolve } from 'node:path';

export const packageRoot = resolve(__dirname, '..', '..');
export const addonPath = join(packageRoot, 'host', 'build', 'Release', 'airlock.node');
export const kvmImagePath = join(packageRoot, 'out', 'guest', 'kvm', 'airlock-guest.img');
export const wasmModulePath = join(packageRoot, 'out', 'guest', 'wasm', 'airlock-guest.wasm');
