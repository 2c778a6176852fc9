// thread-cpu-clock.ts — whether a thread's own CPU time can be read on this platform:
// the WebAssembly tier's cpuTimeoutMs rests on it (its worker reads the same file), and a
// limit that cannot be enforced is refused with ERR_UNAVAILABLE rather than ignored.
import { closeSync, openSync } from 'node:fs';

/** Linux's per-thread scheduler statistics; the first field is CPU time in nanoseconds. */
export const threadCpuClockPath = '/proc/thread-self/schedstat';

let cached: string | null | undefined;

/** Why a thread's CPU time cannot be read here, or null when it can. Probed once. */
export function threadCpuClockUnavailableReason(): string | null {
  if (cached === undefined) {
    try {
      closeSync(openSync(threadCpuClockPath, 'r'));
      cached = null;
    } catch (e) {
      cached =
        process.platform === 'linux'
          ? `${threadCpuClockPath} cannot be read (${(e as NodeJS.ErrnoException).code ?? e}); mount /proc, or use wallClockTimeoutMs`
          : `thread CPU time is not readable on ${process.platform}; use wallClockTimeoutMs, or KVM on Linux`;
    }
  }
  return cached;
}
