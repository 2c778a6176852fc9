// tiers.ts — which tiers can make, clone, export and import templates (issue #12), so
// the facade finds a tier's TemplateSupport by name and never imports a tier itself.
import { UnavailableError } from '../errors.js';
import type { Backend, TemplateSupport } from '../engine/engine.js';
import * as wasmTemplates from '../engine/wasm/template.js';
import { kvmTemplateSupport } from '../engine/kvm-template.js';

const support: Partial<Record<Backend, TemplateSupport>> = {
  kvm: kvmTemplateSupport,
  wasm: wasmTemplates,
};

/** The template functions of `backend`, or ERR_UNAVAILABLE when it has none. */
export function templateSupport(backend: Backend): TemplateSupport {
  const s = support[backend];
  if (!s) {
    const reason = `the ${backend} tier of this Airlock build cannot clone or persist snapshots`;
    throw new UnavailableError(`${reason}; use setBackend('wasm') for sandboxes built from snapshots`, [reason]);
  }
  return s;
}

/** Whether `backend` supports templates in this build. */
export function hasTemplateSupport(backend: Backend): boolean {
  return support[backend] !== undefined;
}
