// memory-budget.ts — the process-wide cap on guest memory that pooled sandboxes may
// commit. Each pooled sandbox reserves the most its guest can ever commit (heap, stack
// and buffers) before it is created, so guests filling their heaps together can reach
// the cap but never the process's OOM killer.
import { totalmem } from 'node:os';
import { InvalidArgumentError } from '../errors.js';

/** Default: three quarters of the machine's RAM. */
let limit = Math.floor(totalmem() * 0.75);
let reserved = 0;

/** Sets the process-wide cap in bytes; sandboxes already over it stay until released. */
export function setGuestMemoryLimit(bytes: number): void {
  if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new InvalidArgumentError(`the guest memory limit must be a positive integer of bytes (got ${String(bytes)})`);
  }
  limit = bytes;
}

/** The cap and how much of it pooled sandboxes hold. */
export function guestMemoryUsage(): { limit: number; reserved: number } {
  return { limit, reserved };
}

/** Reserves `bytes` if they fit under the cap. */
export function tryReserve(bytes: number): boolean {
  if (reserved + bytes > limit) return false;
  reserved += bytes;
  return true;
}

export function release(bytes: number): void {
  reserved = Math.max(0, reserved - bytes);
}
