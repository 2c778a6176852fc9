// loop-sleep.ts — the guest event loop's timer sleep served in the worker, the
// WebAssembly counterpart of host/src/loop_wait.cc: which guest outputs qualify (a
// lone, well-formed `airlock:loop` `sleep` step; every byte is guest-written) and the
// sleep itself, to a deadline this thread sets from its own clock, ended at once by any
// cancel reason. No main-thread round trip: each one is two cross-thread wake-ups,
// which on a loaded 2-core host made a 1 ms timer fire hundreds of µs late.
import { AIRLOCK_FIELD_HEADER_SIZE, AIRLOCK_MSG_HEADER_SIZE, AIRLOCK_MSG_HOST_CALL } from '../abi.generated.js';
import { MAX_SLEEP_MS } from '../../hostcalls/event-loop.js';
import { CancelReason, Slot } from './channel.js';

/** A sleep the guest asked for: `delayMs`, and the instant on its clock it meant
 *  (`atMs`), which can only shorten the sleep by the time the step took to get here. */
export interface LoopSleep {
  delayMs: number;
  atMs: number | undefined;
}

const MODULE = Buffer.from('airlock:loop');
const STEP = Buffer.from('sleep');
/** The longest number a guest's JSON.stringify writes is 24 characters. */
const MAX_NUMBER_CHARS = 32;
/** Digits, '.', exponent: no Infinity, NaN, hex or whitespace that Number() would take. */
const PLAIN_NUMBER = /^[0-9.eE+-]+$/;
/** The last stretch of a sleep is spun while a core is free: a futex wake-up from
 *  Atomics.wait comes 50-150 µs late here (the thread's timer slack included). */
export const SLEEP_SPIN_MS = 0.2;
/** Loads of the Cancel word between two clock reads while spinning. */
const LOADS_PER_CLOCK_READ = 64;

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A JSON number >= 0 in milliseconds, or undefined. */
function parseMs(text: string): number | undefined {
  if (text.length === 0 || text.length > MAX_NUMBER_CHARS || !PLAIN_NUMBER.test(text)) return undefined;
  const ms = Number(text);
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}

/** `[ms]` or `[ms,atMs]`. */
function parseArgs(args: Uint8Array): LoopSleep | undefined {
  if (args.byteLength < 3 || args.byteLength > 2 * MAX_NUMBER_CHARS + 3) return undefined;
  const text = Buffer.from(args.buffer, args.byteOffset, args.byteLength).toString('latin1');
  if (text[0] !== '[' || text[text.length - 1] !== ']') return undefined;
  const inner = text.slice(1, -1);
  const comma = inner.indexOf(',');
  const delayMs = parseMs(comma < 0 ? inner : inner.slice(0, comma));
  if (delayMs === undefined) return undefined;
  if (comma < 0) return { delayMs, atMs: undefined };
  const atMs = parseMs(inner.slice(comma + 1));
  return atMs === undefined ? undefined : { delayMs, atMs };
}

/**
 * The sleep of a guest output (`len` bytes of `out`) that is exactly one HOST_CALL
 * `airlock:loop` `sleep` with arguments `[ms]` or `[ms, atMs]`, plain non-negative JSON
 * numbers. Undefined for anything else, including console lines before the call (they
 * go to the main thread with it) and malformed steps (the main thread judges and
 * poisons them: src/hostcalls/event-loop.ts), as host/src/loop_wait.cc decides on KVM.
 */
export function loopSleepStep(out: Uint8Array, len: number): LoopSleep | undefined {
  if (len < AIRLOCK_MSG_HEADER_SIZE || len > out.byteLength) return undefined;
  const view = new DataView(out.buffer, out.byteOffset, len);
  if (view.getUint32(0, true) !== AIRLOCK_MSG_HOST_CALL || view.getUint32(12, true) !== 3) return undefined;
  if (view.getUint32(8, true) !== len - AIRLOCK_MSG_HEADER_SIZE) return undefined;
  let off = AIRLOCK_MSG_HEADER_SIZE;
  const field = (): Uint8Array | undefined => {
    if (len - off < AIRLOCK_FIELD_HEADER_SIZE) return undefined;
    const n = view.getUint32(off, true);
    off += AIRLOCK_FIELD_HEADER_SIZE;
    if (n > len - off) return undefined;
    const f = out.subarray(off, off + n);
    off += n;
    return f;
  };
  const module = field();
  const step = module && field();
  const args = step && field();
  if (!args || off !== len || !sameBytes(module!, MODULE) || !sameBytes(step!, STEP)) return undefined;
  return parseArgs(args);
}

/**
 * Sleeps this thread until the sleep's deadline or a cancel (Slot.Cancel, which the
 * main thread notifies), whichever comes first. The deadline is this thread's clock,
 * the guest's own (its performance.now import), plus the delay cut to Node's timer
 * ceiling; `atMs` only shortens it. `spin` says whether a core is free to spin the
 * last SLEEP_SPIN_MS on; `asleep` is told when the thread blocks and wakes. Returns
 * false when cancelled.
 */
export function sleepInWorker(ctl: Int32Array, sleep: LoopSleep, spin: boolean, asleep: (on: boolean) => void): boolean {
  const start = performance.now();
  let deadline = start + Math.min(sleep.delayMs, MAX_SLEEP_MS);
  if (sleep.atMs !== undefined && sleep.atMs < deadline) deadline = Math.max(sleep.atMs, start);
  const spinMs = spin ? SLEEP_SPIN_MS : 0;
  for (;;) {
    if (Atomics.load(ctl, Slot.Cancel) !== CancelReason.None) return false;
    const left = deadline - performance.now();
    if (left <= 0) return true;
    if (left > spinMs) {
      asleep(true);
      Atomics.wait(ctl, Slot.Cancel, CancelReason.None, left - spinMs);
      asleep(false);
      continue;
    }
    for (let i = 0; i < LOADS_PER_CLOCK_READ; i++) if (Atomics.load(ctl, Slot.Cancel) !== CancelReason.None) return false;
  }
}
