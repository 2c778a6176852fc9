// guest-options.ts — validates the builder's guest runtime settings (hardened profile,
// deterministic Math.random) into what LOAD_RUNTIME carries.
import { InvalidArgumentError } from './errors.js';
import type { GuestRuntimeOptions } from './engine/protocol.js';

/** Options of SandboxBuilder.setHardened(). */
export interface HardenedOptions {
  /** Granularity of performance.now() and Date.now() in milliseconds (default 1; 0.001 to 60000). */
  timeResolutionMs?: number;
  /** Date.now() and new Date() always give this instant (ms since the epoch, or a Date). */
  fixedTime?: number | Date;
}

const MIN_RESOLUTION_MS = 0.001;
const MAX_RESOLUTION_MS = 60_000;

export function hardenedProfile(options: HardenedOptions): NonNullable<GuestRuntimeOptions['hardened']> {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`hardened options must be an object (got ${typeof options})`);
  const resolution = options.timeResolutionMs ?? 1;
  if (typeof resolution !== 'number' || !Number.isFinite(resolution) || resolution < MIN_RESOLUTION_MS || resolution > MAX_RESOLUTION_MS) {
    throw new InvalidArgumentError(`timeResolutionMs must be a number from ${MIN_RESOLUTION_MS} to ${MAX_RESOLUTION_MS} (got ${String(resolution)})`);
  }
  let fixedTimeMs: number | undefined;
  if (options.fixedTime !== undefined) {
    fixedTimeMs = options.fixedTime instanceof Date ? options.fixedTime.getTime() : options.fixedTime;
    if (typeof fixedTimeMs !== 'number' || !Number.isSafeInteger(fixedTimeMs)) {
      throw new InvalidArgumentError(`fixedTime must be a Date or an integer number of milliseconds (got ${String(options.fixedTime)})`);
    }
  }
  return { timeResolutionUs: Math.round(resolution * 1000), fixedTimeMs };
}

export function randomSeed(seed: number | bigint): bigint {
  if (typeof seed === 'bigint') {
    if (seed < 0n || seed >= 1n << 64n) throw new InvalidArgumentError('the random seed must fit 64 unsigned bits');
    return seed;
  }
  if (typeof seed !== 'number' || !Number.isSafeInteger(seed) || seed < 0) {
    throw new InvalidArgumentError(`the random seed must be a non-negative safe integer or a bigint (got ${String(seed)})`);
  }
  return BigInt(seed);
}
