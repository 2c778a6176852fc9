// backends.ts — the one factory through which every conformance test runs on every tier.
// A suite written with describeEachBackend() runs once for 'kvm' and once for 'wasm'
// with identical expectations; where a tier differs, the test says so by name.
import { describe } from 'vitest';
import { SandboxBuilder, type LoadedJSSandbox } from '../../src/index.js';
import type { Backend } from '../../src/engine/engine.js';
import { describeKvm } from '../support/kvm.js';

export const BACKENDS: readonly Backend[] = ['kvm', 'wasm'];

export interface BackendHarness {
  backend: Backend;
  /** A builder already set to this backend. */
  builder(): SandboxBuilder;
  /** Builds, loads the runtime, adds `handlers` (and `modules`) and returns the loaded sandbox. */
  load(handlers: Record<string, string>, options?: { builder?: SandboxBuilder; modules?: [string, string, string?][] }): Promise<LoadedJSSandbox>;
}

export function harness(backend: Backend): BackendHarness {
  const builder = () => new SandboxBuilder().setBackend(backend);
  return {
    backend,
    builder,
    async load(handlers, options) {
      const proto = await (options?.builder ?? builder()).build();
      const js = await proto.loadRuntime();
      for (const [name, source, ns] of options?.modules ?? []) js.addModule(name, source, ns);
      for (const [name, code] of Object.entries(handlers)) js.addHandler(name, code);
      return js.getLoadedSandbox();
    },
  };
}

export function describeEachBackend(name: string, fn: (h: BackendHarness) => void): void {
  for (const backend of BACKENDS) {
    const suite = `${name} [${backend}]`;
    if (backend === 'kvm') describeKvm(suite, () => fn(harness(backend)));
    else describe(suite, () => fn(harness(backend)));
  }
}
