// paths.ts — where the built artefacts live, relative to the package root. The same
// relative layout holds for src/engine (tsx, vitest) and dist/engine (the package).
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const packageRoot = resolve(__dirname, '..', '..');

/** The addon a clone builds with `npm run setup` (never shipped in the package). */
export const devAddonPath = join(packageRoot, 'host', 'build', 'Release', 'airlock.node');
/** The addon the published package ships, built by scripts/build-prebuilt.sh. */
export const prebuiltAddonPath = join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`, 'airlock.node');

// A clone's own build wins over a prebuilt one left in the tree, so a changed host source
// is what the tests load; an installed package has only the prebuilt one.
export const addonPath = existsSync(devAddonPath) ? devAddonPath : prebuiltAddonPath;
export const kvmImagePath = join(packageRoot, 'out', 'guest', 'kvm', 'airlock-guest.img');
export const wasmModulePath = join(packageRoot, 'out', 'guest', 'wasm', 'airlock-guest.wasm');
