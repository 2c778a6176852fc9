// channel.ts — the main-thread <-> worker protocol of the WebAssembly tier: the layout
// of the shared control words, whose turn each state means, operation and outcome
// codes, and how either side waits for its turn. Both sides import it, so the numbers
// exist once.
import type { GuestSizes, ModuleMemory } from './module-memory.js';

/** Atomics.waitAsync (ES2024; in Node since 16), typed here for the ES2022 lib;
 *  undefined where the runtime lacks it (pool.ts then reports the tier unusable). */
export type WaitAsync = (
  typed: Int32Array,
  index: number,
  value: number,
) => { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
export const atomicsWaitAsync = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;

/** Loads of the State word between two clock reads while spinning: a clock read
 *  allocates (performance.now) and costs twice a load, and a spin must not make garbage. */
const LOADS_PER_CLOCK_READ = 64;
/** A budget below this catches nothing: the spinner sleeps at once instead. */
const MIN_BUDGET_MS = 0.002;

/**
 * Spins while the State word keeps a value, for an adaptive time. With a core each,
 * spinning saves a sleep and a wake-up, which in a VM cost both sides tens of us (the
 * waker pays for the interrupt too), and while a process warms up the other thread
 * can take hundreds of us to answer. So, as in halt polling: a wait the spin did not
 * cover grows the budget when spinning a little longer would have covered it, and
 * shrinks it when it was too long to spin through.
 */
export class Spinner {
  private budgetMs: number;

  constructor(private readonly maxMs: number) {
    this.budgetMs = maxMs;
  }

  /** Spins while State is `value`, up to the current budget; returns the State last seen. */
  spinWhile(control: Int32Array, value: number): number {
    return this.spin(control, value, true);
  }

  /** Spins until State is `value`, up to the current budget; returns the State last seen. */
  spinUntil(control: Int32Array, value: number): number {
    return this.spin(control, value, false);
  }

  /** Whether a spin would run now (its budget is not spent down to nothing). */
  get spinning(): boolean {
    return this.budgetMs >= MIN_BUDGET_MS;
  }

  /** Adapts the budget after a wait the spin did not cover; `waitedMs` runs from the
   *  start of the wait (the spin included) to the change. */
  waited(waitedMs: number): void {
    if (waitedMs <= this.maxMs) this.budgetMs = Math.min(this.maxMs, Math.max(this.budgetMs * 2, waitedMs * 1.25));
    else this.budgetMs = this.budgetMs >= 2 * MIN_BUDGET_MS ? this.budgetMs / 2 : 0;
  }

  private spin(control: Int32Array, value: number, whileEqual: boolean): number {
    let s = Atomics.load(control, Slot.State);
    if (s === value !== whileEqual || this.budgetMs < MIN_BUDGET_MS) return s;
    const until = performance.now() + this.budgetMs;
    do {
      for (let i = 0; i < LOADS_PER_CLOCK_READ; i++) {
        s = Atomics.load(control, Slot.State);
        if (s === value !== whileEqual) return s;
      }
    } while (performance.now() < until);
    return s;
  }
}

/** Int32 slots of the control SharedArrayBuffer. */
export enum Slot {
  /** Whose turn it is (State). Changed with Atomics.store + Atomics.notify. */
  State = 0,
  /** The operation requested with State.Request (Op). */
  Op = 1,
  /** Why the request must stop (CancelReason); first writer wins (compareExchange). */
  Cancel = 2,
  /** Bytes in the data area (request, reply, output or error text). */
  Length = 3,
  /** Outcome of the finished operation (Outcome). */
  Outcome = 4,
  /** CPU limit of this exchange in microseconds; 0 = no CPU monitor. */
  CpuLimitUs = 5,
  /** Guest CPU time of the last exchange in microseconds; -1 = not measured. */
  CpuUsedUs = 6,
  /** airlock_init's return code after Op.Boot. */
  InitCode = 7,
  /** The memory image of Op.Snapshot (the id to keep the new one under) or Op.Restore
   *  (the one to restore). The worker keeps its latest image: restoring that one again
   *  needs no RestoreRequest on the port. */
  ImageId = 8,
  /** 1 while the worker runs the last exchange's post-call work (airlock_after), which
   *  it starts as it answers; the main thread bounds how long a request waits on it. */
  PostCall = 9,
  /** After an exchange ends Trap or Abort: how many bytes of what the guest had
   *  written to its output buffer (its console lines, hostile) follow the error text's
   *  Length bytes in the data area; 0 otherwise. */
  StoppedLength = 10,
  /** The wake socket's write end as fd + 1 (wake-socket.ts); 0: none. The main thread
   *  clears it with each turn it hands over and sets it as it starts to wait on that
   *  socket (GuestWorker.armWake), then reads State again. The worker writes one byte
   *  there after each Done or HostCall while it is set. */
  WakeFd = 11,
}
export const CONTROL_SLOTS = 12;

export enum State {
  /** Nothing in flight; the worker waits. Stored without a notify: the worker waits
   *  for Request (or HostReply), not for this. */
  Idle = 0,
  /** Main -> worker: run Slot.Op. */
  Request = 1,
  /** Worker -> main: the operation finished (Slot.Outcome). */
  Done = 2,
  /** Worker -> main: the data area holds the guest output with a HOST_CALL. */
  HostCall = 3,
  /** Main -> worker: the data area holds the HOST_RETURN message. */
  HostReply = 4,
}

export enum Op {
  /** Config arrives on the port; instantiate layout and boot the runtime. */
  Boot = 1,
  /** The data area holds one request message. */
  Exchange = 2,
  /** Post the live memory regions on the port. */
  Snapshot = 3,
  /** Write image Slot.ImageId into memory; unless the worker holds it, it arrives on
   *  the port (RestoreRequest). */
  Restore = 4,
  /** Drop the guest (instance, memory, data area, layout) and instantiate a fresh
   *  one, so the thread can serve another sandbox. */
  Reset = 5,
  /** Reset, then Boot the fresh instance with the config last posted on the port
   *  (anything posted before it is stale): a recycled worker in one hand-over. */
  ResetBoot = 6,
  /** Exchange, then (if it completed) Snapshot under Slot.ImageId before Done: for a
   *  request a snapshot is known to follow, one hand-over instead of two. */
  ExchangeSnapshot = 7,
}

export enum Outcome {
  Ok = 0,
  /** The module trapped (unreachable, out of bounds, V8 stack overflow). Data: message. */
  Trap = 1,
  /** The guest called abort or broke the protocol. Data: message. */
  Abort = 2,
  /** The worker itself failed. Data: message. */
  Internal = 3,
}

export enum CancelReason {
  None = 0,
  Kill = 1,
  WallClock = 2,
  CpuTime = 3,
}

/** airlock_init return codes (guest/platform/wasm/platform.c). */
export const INIT_OK = 0;
export const INIT_BAD_CONFIG = 1;
export const INIT_NO_MEMORY = 2;

/** Workers that can take part in spin accounting (see WorkerInit.activity). */
export const ACTIVITY_SLOTS = 64;

/** What the worker receives at start-up. */
export interface WorkerInit {
  module: WebAssembly.Module;
  /** What the module needs of the memory the worker creates for each instance. */
  memory: ModuleMemory;
  /** The Web API prelude's sources (pool.ts GuestModule.webapi), read by the guest
   *  through the webapi_read import. */
  webapi: SharedArrayBuffer;
  control: SharedArrayBuffer;
  port: import('node:worker_threads').MessagePort;
  /** Int32 per worker, shared by all workers: 1 while a worker serving a sandbox runs
   *  or spins, 0 while it sleeps or does the pool's background work. A worker spins
   *  only while fewer than `maxActive` others are active, so spinning threads never
   *  outnumber the cores (the main thread keeps one). */
  activity: SharedArrayBuffer;
  /** This worker's slot in `activity`; -1: none (it never spins). */
  activitySlot: number;
  maxActive: number;
  /** How far below the main thread's priority the worker puts its own thread at start-up
   *  (pool.ts, WORKER_NICENESS). */
  niceness: number;
}

/** Sent on the port before Op.Boot. */
export interface BootConfig extends GuestSizes {
  data: SharedArrayBuffer;
}

/**
 * Where a guest's regions lie in its linear memory. Read from the control block once,
 * at boot, while no guest code has run yet, and checked against the sizes and memory
 * the host gave it; from then on the host keeps its own copy (also in every snapshot)
 * and never reads these addresses from guest memory again.
 */
export interface GuestLayout {
  control: number;
  inputAddr: number;
  inputSize: number;
  outputAddr: number;
  outputSize: number;
  heapAddr: number;
  heapSize: number;
  /** The shadow stack [stackLow, stackTop): the linked one, or one laid out at init. */
  stackLow: number;
  stackTop: number;
  /** The module's data and bss (and anything libc allocated before init). */
  staticLow: number;
  staticHigh: number;
}

/** One copied range of linear memory: `length` bytes at `addr`, kept in the image's
 *  bytes at `offset`. */
export interface MemoryRegion {
  addr: number;
  offset: number;
  length: number;
}

/**
 * The state a snapshot carries: enough to rebuild the instance in a fresh worker.
 * The bytes are an ordinary (not shared) ArrayBuffer, moved between threads by
 * transfer: each thread's garbage collector then counts the bytes it holds, so dropped
 * images are collected even on a worker that is blocked between requests (a
 * SharedArrayBuffer is not counted there, and dropped ones piled up by the GiB).
 * Its size is what the host saw in memory, never a size the guest claims.
 */
export interface MemoryImage {
  /** Linear memory size in bytes when taken. */
  memorySize: number;
  /** __stack_pointer when taken, clamped into the stack. */
  stackPointer: number;
  regions: MemoryRegion[];
  bytes: ArrayBuffer;
  /** Where the copied heap ends: every byte of memory from here up was zero when the
   *  snapshot was taken, and is made zero again by a restore. */
  heapExtent: number;
  layout: GuestLayout;
}

/** Sent on the port before Op.Restore. */
export interface RestoreRequest {
  /** Present when the worker has not been booted (a fresh worker after termination). */
  data?: SharedArrayBuffer;
  /** The sandbox's sizes: a worker with no instance creates one for them. */
  sizes: GuestSizes;
  image: MemoryImage;
}

/**
 * The guest's webapi_read import: copies [offset, offset + len) of the Web API prelude
 * (`source`) to `mem` at `dst`, 0; or -1 with nothing copied. Every argument is the
 * guest's (i32s, read as unsigned): a range outside the prelude or outside memory is
 * refused, and the guest reports an error instead of evaluating the group.
 */
export function copyWebapiSource(source: Uint8Array, mem: Uint8Array, offset: number, dst: number, len: number): number {
  offset >>>= 0;
  dst >>>= 0;
  len >>>= 0;
  if (offset + len > source.length || dst + len > mem.length) return -1;
  mem.set(source.subarray(offset, offset + len), dst);
  return 0;
}
