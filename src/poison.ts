// poison.ts — the one place that decides which failures leave a sandbox poisoned.
// A poisoned sandbox rejects calls with ERR_POISONED until restore() or unload().
import type { AirlockError } from './errors.js';

/**
 * True when the guest may be left mid-execution or in an inconsistent state:
 * - ERR_CANCELLED: a monitor or kill() stopped the guest wherever it was;
 * - ERR_GUEST_ABORT: the guest crashed, faulted or broke the protocol;
 * - ERR_OUT_OF_MEMORY: allocation failed somewhere inside the engine, not only in user code;
 * - ERR_STACK_OVERFLOW: the guest stack ran out, possibly inside the engine;
 * - ERR_INTERNAL: the hypervisor or worker failed, so the guest state is unknown.
 * Guest exceptions, compile errors, oversize values and bad arguments do not poison:
 * the guest handled them and is exactly as usable as before.
 */
export function poisons(error: AirlockError): boolean {
  switch (error.code) {
    case 'ERR_CANCELLED':
    case 'ERR_GUEST_ABORT':
    case 'ERR_OUT_OF_MEMORY':
    case 'ERR_STACK_OVERFLOW':
    case 'ERR_INTERNAL':
      return true;
    default:
      return false;
  }
}
