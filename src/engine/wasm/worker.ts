// worker.ts — the thread that runs one guest module instance at a time. While serving
// a sandbox it blocks on the shared control words (channel.ts), runs what the main
// thread asks, and pulls bulk arguments (config, snapshots) from its port
// synchronously. It creates each instance's memory itself, with a maximum sized from
// the sandbox's configuration (module-memory.ts), when the guest boots or a snapshot is
// restored into it. Op.Reset (Op.ResetBoot) drops the instance so the pool can reuse
// the thread for another sandbox; idle in the pool, it waits from its event loop
// instead.
// Everything read from linear memory is hostile and bounds-checked.
import { openSync, readSync, readlinkSync, writeSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads';
import {
  AIRLOCK_CTRL_OFF_HEAP_ADDR,
  AIRLOCK_CTRL_OFF_HEAP_SIZE,
  AIRLOCK_CTRL_OFF_INPUT_ADDR,
  AIRLOCK_CTRL_OFF_INPUT_SIZE,
  AIRLOCK_CTRL_OFF_OUTPUT_ADDR,
  AIRLOCK_CTRL_OFF_OUTPUT_SIZE,
  AIRLOCK_CTRL_OFF_REQUEST_LEN,
  AIRLOCK_CTRL_OFF_RESPONSE_LEN,
  AIRLOCK_CTRL_OFF_STACK_TOP,
  AIRLOCK_CONTROL_SIZE,
  AIRLOCK_EXIT_HOST_CALL,
  AIRLOCK_MSG_HOST_RETURN,
  AIRLOCK_STATUS_HOST_ERROR,
  AIRLOCK_STATUS_OK,
} from '../abi.generated.js';
import { encodeMessage } from '../protocol.js';
import { loopSleepStep, sleepInWorker } from './loop-sleep.js';
import {
  CancelReason,
  INIT_OK,
  Op,
  Outcome,
  Slot,
  State,
  atomicsWaitAsync,
  copyWebapiSource,
  Spinner,
  type BootConfig,
  type GuestLayout,
  type MemoryImage,
  type MemoryRegion,
  type RestoreRequest,
  type WaitAsync,
  type WorkerInit,
} from './channel.js';
import { WASM_PAGE_BYTES, maximumPages, type GuestSizes } from './module-memory.js';

/** Spin at most this long for the main thread's next move before sleeping in
 *  Atomics.wait: long enough to bridge a main thread that is still warming up. */
const SPIN_MS = 0.5;
const spinner = new Spinner(SPIN_MS);
/** Check the CPU clock on every this-many interrupt polls (a poll comes every ~10k
 *  QuickJS operations; a clock read costs ~1.6 us). */
const CPU_CHECK_EVERY = 4;

const init = workerData as WorkerInit;
lowerOwnPriority(init.niceness);

/** Lowers this thread's priority (only this thread's: Linux keeps a nice value per
 *  thread, and setpriority takes a thread id) by `niceness` below the one it inherited
 *  from the main thread. Where /proc/thread-self or the call is unavailable the thread
 *  keeps its priority: this is scheduling, not a limit anything relies on. */
function lowerOwnPriority(niceness: number): void {
  try {
    // /proc/thread-self links to "<pid>/task/<tid>".
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    if (Number.isInteger(tid) && tid > 0) setPriority(tid, Math.min(19, getPriority(tid) + niceness));
  } catch {
    // Not Linux, or no /proc: nothing to do.
  }
}
const ctl = new Int32Array(init.control);
const port = init.port;
const activity = new Int32Array(init.activity);

/** Thrown through the module to unwind it when the guest must not continue. */
class GuestAbort extends Error {}

type Layout = GuestLayout;

interface Exports {
  __stack_pointer: WebAssembly.Global;
  _initialize?: () => void;
  airlock_init: (input: number, output: number, heap: number, stack: number, consoleLimit: number) => number;
  airlock_boot: () => void;
  airlock_layout_base: () => number;
  airlock_handle: () => void;
  airlock_after: () => void;
  airlock_control: () => number;
  airlock_stack_high: () => number;
}

// Everything below that belongs to one sandbox (the instance, views of its memory, the
// data area, the layout, CPU accounting) is replaced by Op.Reset; nothing else in this
// thread holds a reference to it.
const NO_DATA = new Uint8Array(0);
let data: Uint8Array<ArrayBufferLike> = NO_DATA;
/** Bytes at the start of the data area that have carried anything since boot. */
let dataUsed = 0;
let layout: Layout | undefined;
/** The sizes the current guest was booted (or restored) with. */
let bootSizes: GuestSizes | undefined;
/** The sandbox's latest memory image (taken or restored), kept so rolling back to it
 *  again, the usual pattern, needs no message. */
let held: { id: number; image: MemoryImage; sizes: GuestSizes } | undefined;
/** The id of the image guest memory holds exactly, with no guest code run since it was
 *  restored or taken (0: none). Only guest code writes guest memory (the memory is this
 *  thread's own, not shared, and the host writes it only to hand a request over, which
 *  the guest then runs on), so restoring that image again has nothing to copy: the
 *  usual restore after a restore costs a hand-over, not ~200 KB of copying and checks.
 *  Cleared before anything runs guest code or replaces the instance (guestRuns). */
let pristineId = 0;

/** Before guest code runs, or the instance changes: memory may no longer be an image's. */
function guestRuns(): void {
  pristineId = 0;
}

// --- guest CPU time -------------------------------------------------------------
// The thread's own schedstat: the first number is nanoseconds spent on a CPU. The fd
// is opened from this thread, so it names this thread for its whole life; Node closes
// it when the worker exits (also when terminated), so nobody else may.
const schedstatFd = openSchedstat();
const schedstatBuf = Buffer.alloc(64);

function openSchedstat(): number {
  try {
    return openSync('/proc/thread-self/schedstat', 'r');
  } catch {
    return -1;
  }
}

function threadCpuNs(): number {
  if (schedstatFd < 0) return -1;
  const n = readSync(schedstatFd, schedstatBuf, 0, schedstatBuf.length, 0);
  let v = 0;
  for (let i = 0; i < n; i++) {
    const c = schedstatBuf[i];
    if (c < 48 || c > 57) break;
    v = v * 10 + (c - 48);
  }
  return v;
}

let cpuStartNs = 0;
/** CPU spent waiting for host calls in this exchange; not the guest's. */
let cpuExcludedNs = 0;
let cpuLimitNs = 0;
let pollsUntilCpuCheck = CPU_CHECK_EVERY;

function guestCpuNs(): number {
  return threadCpuNs() - cpuStartNs - cpuExcludedNs;
}

// --- the module instance --------------------------------------------------------
const WASI_ERRNO_BADF = 8;
const WASI_ERRNO_NOSYS = 52;

/** The current instance's exports and memory; set by instantiate() when the guest
 *  boots or a snapshot is restored into the thread, cleared by a reset. */
let exportsOf!: Exports;
let guestMemory: WebAssembly.Memory | undefined;
/** Bytes the current memory can never grow past. */
let memoryLimit = 0;

// Views of linear memory, rebuilt only when its buffer changes (a grow detaches the
// old one), so the per-call path allocates no view objects.
let memBuffer: ArrayBuffer | undefined;
let memBytes: Buffer = Buffer.alloc(0);
let memView = new DataView(new ArrayBuffer(0));

function dropViews(): void {
  memBuffer = undefined;
  memBytes = Buffer.alloc(0);
  memView = new DataView(new ArrayBuffer(0));
}

function refreshViews(): void {
  if (!guestMemory) throw new Error('no guest instance');
  const buffer = guestMemory.buffer;
  if (buffer === memBuffer) return;
  memBuffer = buffer;
  memBytes = Buffer.from(buffer);
  memView = new DataView(buffer);
}

function memoryView(): DataView {
  refreshViews();
  return memView;
}

function memoryBytes(): Buffer {
  refreshViews();
  return memBytes;
}

/** Trivial WASI imports: the guest makes no system calls at run time, but libc links
 *  some. Writes are discarded (console output travels in the output buffer). */
function wasiImports(module: WebAssembly.Module): Record<string, (...args: number[]) => number> {
  const out: Record<string, (...args: number[]) => number> = {};
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module !== 'wasi_snapshot_preview1' || imp.kind !== 'function') continue;
    switch (imp.name) {
      case 'fd_write':
        out[imp.name] = (_fd: number, iovs: number, iovsLen: number, nwrittenPtr: number) => {
          // Report every byte written so libc does not retry; offsets are checked by DataView.
          const view = memoryView();
          let total = 0;
          for (let i = 0; i < iovsLen; i++) total += view.getUint32(iovs + i * 8 + 4, true);
          view.setUint32(nwrittenPtr, total >>> 0, true);
          return 0;
        };
        break;
      case 'clock_time_get':
        out[imp.name] = ((clockId: number, _precision: bigint, resultPtr: number) => {
          const ns = clockId === 0 ? Date.now() * 1e6 : performance.now() * 1e6;
          memoryView().setBigUint64(resultPtr, BigInt(Math.floor(ns)), true);
          return 0;
        }) as unknown as (...args: number[]) => number;
        break;
      case 'proc_exit':
        out[imp.name] = (code: number) => {
          throw new GuestAbort(`the guest exited with code ${code}`);
        };
        break;
      case 'fd_close':
      case 'fd_seek':
      case 'fd_fdstat_get':
        out[imp.name] = () => WASI_ERRNO_BADF;
        break;
      default:
        out[imp.name] = () => WASI_ERRNO_NOSYS;
    }
  }
  return out;
}

const webapiSource = new Uint8Array(init.webapi);

/** The webapi_read import (copyWebapiSource into the current instance's memory). */
function webapiRead(offset: number, dst: number, len: number): number {
  return copyWebapiSource(webapiSource, memoryBytes(), offset, dst, len);
}

// The imports hold no state of their own: they reach the current instance through the
// module-level bindings, so every instance of this thread shares them.
const imports: WebAssembly.Imports = {
  airlock: {
    host_exit: hostExit,
    wall_ms: () => performance.timeOrigin + performance.now(),
    monotonic_ms: () => performance.now(),
    interrupt_requested: interruptRequested,
    abort: (ptr: number, len: number) => {
      throw new GuestAbort(`guest abort: ${readGuestText(ptr, len)}`);
    },
    webapi_read: webapiRead,
  },
  wasi_snapshot_preview1: wasiImports(init.module),
};

/** A fresh instance of the shared compiled module, with a fresh memory whose maximum
 *  holds exactly what a guest of `sizes` may use: the host's cap, out of the guest's reach. */
function instantiate(sizes: GuestSizes): void {
  const maximum = maximumPages(init.memory, sizes);
  const memory = new WebAssembly.Memory({ initial: init.memory.staticPages, maximum });
  const fresh = new WebAssembly.Instance(init.module, { ...imports, env: { memory } }).exports as unknown as Exports;
  guestRuns();
  exportsOf = fresh;
  guestMemory = memory;
  memoryLimit = maximum * WASM_PAGE_BYTES;
  dropViews();
  fresh._initialize?.();
}

function dropInstance(): void {
  guestRuns();
  exportsOf = undefined as unknown as Exports;
  guestMemory = undefined;
  memoryLimit = 0;
  dropViews();
}

function readGuestText(ptr: number, len: number): string {
  const mem = memoryBytes();
  const start = Math.min(ptr >>> 0, mem.length);
  const end = Math.min(start + Math.min(len >>> 0, 4096), mem.length);
  return Buffer.from(mem.subarray(start, end)).toString('utf8');
}

function interruptRequested(): number {
  if (Atomics.load(ctl, Slot.Cancel) !== CancelReason.None) return 1;
  if (cpuLimitNs > 0 && schedstatFd >= 0 && --pollsUntilCpuCheck <= 0) {
    pollsUntilCpuCheck = CPU_CHECK_EVERY;
    if (guestCpuNs() > cpuLimitNs) {
      Atomics.compareExchange(ctl, Slot.Cancel, CancelReason.None, CancelReason.CpuTime);
      return 1;
    }
  }
  return 0;
}

// --- waiting --------------------------------------------------------------------
function setActive(on: boolean): void {
  if (init.activitySlot >= 0) Atomics.store(activity, init.activitySlot, on ? 1 : 0);
}

/** Whether this thread may spin: other serving workers (running or spinning) leave a
 *  core free. */
function coreFree(): boolean {
  if (init.activitySlot < 0) return false;
  let others = 0;
  for (let i = 0; i < activity.length; i++) if (i !== init.activitySlot) others += Atomics.load(activity, i);
  return others < init.maxActive;
}

/** Returns once State is `wanted` (the main thread's next move): spins, then sleeps. */
function waitFor(wanted: State): void {
  const start = performance.now();
  let s = Atomics.load(ctl, Slot.State);
  if (s === wanted) return;
  if (spinner.spinning && coreFree()) {
    s = spinner.spinUntil(ctl, wanted);
    if (s === wanted) return;
  }
  setActive(false);
  do {
    Atomics.wait(ctl, Slot.State, s);
    s = Atomics.load(ctl, Slot.State);
  } while (s !== wanted);
  setActive(true);
  spinner.waited(performance.now() - start);
}

function signal(state: State): void {
  Atomics.store(ctl, Slot.State, state);
  Atomics.notify(ctl, Slot.State);
  wakeMain();
}

const WAKE_BYTE = new Uint8Array([1]);

/** Wakes a main thread that waits for this answer on the wake socket (wake-socket.ts).
 *  The fd is the main thread's (Slot.WakeFd), never the guest's to choose. */
function wakeMain(): void {
  const fdPlusOne = Atomics.load(ctl, Slot.WakeFd);
  if (fdPlusOne <= 0) return;
  try {
    writeSync(fdPlusOne - 1, WAKE_BYTE);
  } catch {
    // EAGAIN: unread bytes fill the socket, and they wake the main thread anyway.
    // Anything else: the main thread's socket broke, and it waits on State instead.
  }
}

// --- guest output and input -----------------------------------------------------
/** Copies the guest's output buffer (response_len bytes) into the data area. */
function publishOutput(l: Layout): void {
  const view = memoryView();
  // Hostile: response_len is guest-written; the buffer bounds are the host's layout.
  const len = view.getUint32(l.control + AIRLOCK_CTRL_OFF_RESPONSE_LEN, true);
  if (len > l.outputSize) throw new GuestAbort(`malformed guest output: response_len ${len} exceeds the ${l.outputSize}-byte output buffer`);
  if (len > data.length) throw new GuestAbort(`guest output of ${len} bytes does not fit the channel`);
  data.set(memoryBytes().subarray(l.outputAddr, l.outputAddr + len));
  if (len > dataUsed) dataUsed = len;
  ctl[Slot.Length] = len;
}

/** Copies Length bytes of the data area into the guest's input buffer. */
function deliverInput(l: Layout): void {
  const len = ctl[Slot.Length];
  if (len < 0 || len > l.inputSize || len > data.length) {
    throw new Error(`request of ${len} bytes exceeds the ${l.inputSize}-byte input buffer`);
  }
  if (len > dataUsed) dataUsed = len;
  memoryBytes().set(data.subarray(0, len), l.inputAddr);
  const view = memoryView();
  view.setUint32(l.control + AIRLOCK_CTRL_OFF_REQUEST_LEN, len, true);
  // The last output was read: whatever the guest publishes from here is this turn's.
  view.setUint32(l.control + AIRLOCK_CTRL_OFF_RESPONSE_LEN, 0, true);
}

/** The answers of a timer sleep served here: no completions (the guest sleeps only with
 *  no async call in flight), or the main thread's answer to a cancelled call. */
const SLEPT = encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_OK, ['[]']);
const SLEEP_CANCELLED = encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_HOST_ERROR, ['the call was cancelled']);

function hostExit(kind: number): void {
  const l = layout;
  if (!l) throw new GuestAbort('host exit before the runtime was initialised');
  if (kind !== AIRLOCK_EXIT_HOST_CALL) throw new GuestAbort(`guest exited with unknown kind ${kind}`);
  publishOutput(l);
  const measuring = cpuLimitNs > 0;
  const pausedAt = measuring ? threadCpuNs() : 0;
  // A timer sleep is served on this thread (loop-sleep.ts) unless its answer would not
  // fit the input buffer; like any host call's wait, it is not guest CPU time.
  const sleep = l.inputSize >= SLEEP_CANCELLED.byteLength ? loopSleepStep(data, ctl[Slot.Length]) : undefined;
  if (sleep) {
    const slept = sleepInWorker(ctl, sleep, coreFree(), (on) => setActive(!on));
    if (measuring) cpuExcludedNs += threadCpuNs() - pausedAt;
    writeInput(l, slept ? SLEPT : SLEEP_CANCELLED);
    return;
  }
  signal(State.HostCall);
  waitFor(State.HostReply);
  if (measuring) cpuExcludedNs += threadCpuNs() - pausedAt;
  deliverInput(l);
}

/** Writes a reply of this thread's own into the guest's input buffer. Invariant: it
 *  fits (the caller checked it against inputSize). */
function writeInput(l: Layout, reply: Uint8Array): void {
  memoryBytes().set(reply, l.inputAddr);
  const view = memoryView();
  view.setUint32(l.control + AIRLOCK_CTRL_OFF_REQUEST_LEN, reply.byteLength, true);
  view.setUint32(l.control + AIRLOCK_CTRL_OFF_RESPONSE_LEN, 0, true);
}

// --- layout ---------------------------------------------------------------------
/** Bytes a wasm32 memory can address. */
const WASM32_SPACE = 2 ** 32;

/** Reads the layout the guest wrote at init and checks it against the sizes the host
 *  asked for, the memory that exists (the buffers) and the memory's maximum (the heap,
 *  which memory covers only as far as the guest has used it). Called once per guest,
 *  right after airlock_init, before any guest JavaScript has run. */
function readLayout(inputSize: number, outputSize: number): Layout {
  const control = exportsOf.airlock_control() >>> 0;
  const memSize = memoryBytes().length;
  if (control + AIRLOCK_CONTROL_SIZE > memSize) throw new GuestAbort('control block outside memory');
  const view = memoryView();
  const u64 = (off: number): number => {
    const v = view.getBigUint64(control + off, true);
    if (v > WASM32_SPACE) throw new GuestAbort(`control block field at ${off} is outside the address space`);
    return Number(v);
  };
  const l: Layout = {
    control,
    inputAddr: u64(AIRLOCK_CTRL_OFF_INPUT_ADDR),
    inputSize: u64(AIRLOCK_CTRL_OFF_INPUT_SIZE),
    outputAddr: u64(AIRLOCK_CTRL_OFF_OUTPUT_ADDR),
    outputSize: u64(AIRLOCK_CTRL_OFF_OUTPUT_SIZE),
    heapAddr: u64(AIRLOCK_CTRL_OFF_HEAP_ADDR),
    heapSize: u64(AIRLOCK_CTRL_OFF_HEAP_SIZE),
    stackLow: 0,
    stackTop: u64(AIRLOCK_CTRL_OFF_STACK_TOP),
    staticLow: exportsOf.airlock_stack_high() >>> 0,
    staticHigh: exportsOf.airlock_layout_base() >>> 0,
  };
  // The stack is the linked one below the static data, or lies between the static
  // data and the input buffer.
  if (l.stackTop !== l.staticLow) l.stackLow = l.staticHigh;
  if (l.staticLow > l.staticHigh || l.stackLow > l.stackTop || l.stackTop > l.inputAddr || l.stackTop % 16 !== 0) {
    throw new GuestAbort('guest stack or static data lies outside its place');
  }
  const fits = (addr: number, size: number) => addr + size <= memSize;
  if (l.inputSize !== inputSize || l.outputSize !== outputSize) throw new GuestAbort('guest buffer sizes differ from the configuration');
  if (!fits(l.inputAddr, l.inputSize) || !fits(l.outputAddr, l.outputSize) || l.heapAddr + l.heapSize > memoryLimit) {
    throw new GuestAbort('guest layout lies outside memory');
  }
  if (l.inputAddr + l.inputSize > l.outputAddr || l.outputAddr + l.outputSize > l.heapAddr || l.staticHigh > l.inputAddr) {
    throw new GuestAbort('guest layout regions overlap');
  }
  return l;
}

// --- zero detection ---------------------------------------------------------------
// Snapshots and restores size their work by what memory holds, found with native
// compares against a zero page (tens of GB/s), not by the guest's claims.
const ZERO_PAGE = Buffer.alloc(WASM_PAGE_BYTES);
const ZERO_BLOCK = 4096;

function isZero(mem: Buffer, start: number, end: number): boolean {
  return mem.compare(ZERO_PAGE, 0, end - start, start, end) === 0;
}

/** The end of the last 4 KiB block of [start, end) holding a non-zero byte; `start`
 *  when every byte is zero. Blocks are counted from `start`. */
function contentEnd(mem: Buffer, start: number, end: number): number {
  let hi = end;
  while (hi > start) {
    const lo = Math.max(start, hi - WASM_PAGE_BYTES);
    if (!isZero(mem, lo, hi)) {
      let q = hi;
      while (q > lo) {
        const b = start + Math.floor((q - 1 - start) / ZERO_BLOCK) * ZERO_BLOCK;
        if (!isZero(mem, Math.max(b, lo), q)) return q;
        q = Math.max(b, lo);
      }
    }
    hi = lo;
  }
  return start;
}

/** Makes [start, end) zero, writing only the pages that are not: a page of memory the
 *  guest never touched stays untouched (and costs no RAM). */
function clearToZero(mem: Buffer, start: number, end: number): void {
  for (let lo = start; lo < end; lo += WASM_PAGE_BYTES) {
    const hi = Math.min(end, lo + WASM_PAGE_BYTES);
    if (!isZero(mem, lo, hi)) mem.fill(0, lo, hi);
  }
}

// --- operations -----------------------------------------------------------------
function receive<T>(): T {
  const msg = receiveMessageOnPort(port);
  if (!msg) throw new Error('operation arguments missing from the port');
  return msg.message as T;
}

function boot(config = receive<BootConfig>()): void {
  data = new Uint8Array(config.data);
  instantiate(config);
  bootSizes = { heapSize: config.heapSize, stackSize: config.stackSize, inputSize: config.inputSize, outputSize: config.outputSize, consoleLimit: config.consoleLimit };
  const code = exportsOf.airlock_init(config.inputSize, config.outputSize, config.heapSize, config.stackSize, config.consoleLimit);
  ctl[Slot.InitCode] = code;
  if (code !== INIT_OK) {
    ctl[Slot.Length] = 0;
    return;
  }
  // The runtime boots on the stack the layout chose: QuickJS measures its stack limit
  // from there, and every later call starts there.
  const l = readLayout(config.inputSize, config.outputSize);
  exportsOf.__stack_pointer.value = l.stackTop;
  exportsOf.airlock_boot();
  layout = l;
  publishOutput(layout);
}

function exchange(): void {
  const l = layout;
  if (!l) throw new Error('exchange before boot');
  guestRuns(); // the request goes into guest memory, and the guest runs on it
  deliverInput(l);
  cpuExcludedNs = 0;
  cpuLimitNs = ctl[Slot.CpuLimitUs] * 1000;
  pollsUntilCpuCheck = CPU_CHECK_EVERY;
  // The thread CPU clock (schedstat) advances at scheduler ticks, so it is read only
  // when a CPU monitor is armed: enough for a limit, too coarse to report for short calls.
  const measuring = cpuLimitNs > 0 && schedstatFd >= 0;
  cpuStartNs = measuring ? threadCpuNs() : 0;
  try {
    exportsOf.airlock_handle();
  } catch (e) {
    // The guest trapped or aborted mid-request: its memory is intact, and the console
    // lines it wrote before are in its output buffer, for fail() to pass on.
    stoppedOutput = readStoppedOutput(l);
    throw e;
  } finally {
    ctl[Slot.CpuUsedUs] = measuring ? Math.max(0, Math.round(guestCpuNs() / 1000)) : -1;
  }
  publishOutput(l);
}

/** What the guest of the exchange that just failed had published in its output buffer
 *  (response_len bytes), still hostile: src/core.ts delivers the console lines at its
 *  start (consoleBeforeStop). Nothing for a response_len past the output buffer. */
function readStoppedOutput(l: Layout): Uint8Array | undefined {
  // Hostile: response_len is guest-written; the buffer bounds are the host's layout.
  const len = memoryView().getUint32(l.control + AIRLOCK_CTRL_OFF_RESPONSE_LEN, true);
  if (len === 0 || len > l.outputSize) return undefined;
  return memoryBytes().subarray(l.outputAddr, l.outputAddr + len);
}

/** Set by a failed exchange, written after the error text by fail(). */
let stoppedOutput: Uint8Array | undefined;

function snapshot(): void {
  const l = layout;
  if (!l) throw new Error('snapshot before boot');
  const mem = memoryBytes();
  const memSize = mem.length;
  // Between requests the live state is: the used stack [sp, stackTop), data+bss and
  // anything libc allocated before init, and the heap with anything the guest grew
  // memory for past it, up to where its content ends. Buffers hold no state. Every
  // bound is the host's: the layout checked at boot, the memory's own size, and what
  // the memory holds (the stack pointer, which the guest writes, only chooses a point
  // inside its stack).
  const sp = Math.min(Math.max((exportsOf.__stack_pointer.value as number) >>> 0, l.stackLow), l.stackTop);
  const heapExtent = contentEnd(mem, l.heapAddr, memSize);
  const ranges: [number, number][] = [[sp, l.stackTop], [l.staticLow, l.staticHigh], [l.heapAddr, heapExtent]];
  let total = 0;
  for (const [start, end] of ranges) total += end - start;
  const bytes = new ArrayBuffer(total);
  const out = new Uint8Array(bytes);
  const regions: MemoryRegion[] = [];
  let offset = 0;
  for (const [start, end] of ranges) {
    out.set(mem.subarray(start, end), offset);
    regions.push({ addr: start, offset, length: end - start });
    offset += end - start;
  }
  const image: MemoryImage = { memorySize: memSize, stackPointer: sp, regions, bytes, heapExtent, layout: l };
  if (!bootSizes) throw new Error('snapshot before boot');
  held = { id: ctl[Slot.ImageId], image, sizes: bootSizes };
  pristineId = held.id;
  // The main thread gets its own copy, moved over rather than cloned (one copy, made
  // here): this thread keeps the original for the next restore.
  const sent: MemoryImage = { ...image, regions: regions.slice(), bytes: bytes.slice(0) };
  port.postMessage(sent, [sent.bytes]);
}

function restore(): void {
  afterFailure = undefined;
  const id = ctl[Slot.ImageId];
  if (held?.id !== id) {
    held = undefined;
    const req = receive<RestoreRequest>();
    if (req.data) data = new Uint8Array(req.data);
    held = { id, image: req.image, sizes: req.sizes };
  }
  const { image: img, sizes } = held;
  if (!guestMemory) instantiate(sizes);
  bootSizes = sizes;
  const memory = guestMemory!;
  const l = img.layout;
  if (pristineId === id) {
    // Nothing ran since memory held exactly this image: it still does.
    exportsOf.__stack_pointer.value = img.stackPointer;
    layout = l;
    return;
  }
  pristineId = 0; // a restore that fails midway leaves memory no image's
  // The image is the host's own, taken from a guest of these sizes; checked anyway,
  // since a failed check here costs nothing and a wrong write would corrupt the guest.
  if (img.memorySize > memoryLimit || img.memorySize % WASM_PAGE_BYTES !== 0 || l.heapAddr + l.heapSize > memoryLimit) {
    throw new Error('the snapshot does not fit this guest\'s memory');
  }
  const have = memory.buffer.byteLength;
  if (img.memorySize > have) memory.grow((img.memorySize - have) / WASM_PAGE_BYTES);
  const mem = memoryBytes();
  const src = new Uint8Array(img.bytes);
  // Only what the snapshot covers is written: the rest of memory is either not state
  // (buffers, free stack) or cleared below.
  for (const r of img.regions) {
    if (r.offset + r.length > src.length || r.addr + r.length > mem.length) throw new Error('snapshot region outside memory');
    mem.set(src.subarray(r.offset, r.offset + r.length), r.addr);
  }
  // Everything above the snapshot's heap content was zero when it was taken, and is
  // again (memory grown since included), whatever the guest wrote there meanwhile.
  clearToZero(mem, img.heapExtent, mem.length);
  exportsOf.__stack_pointer.value = img.stackPointer;
  layout = l;
  pristineId = id;
}

/** Forgets the sandbox this thread served and drops its instance, so the thread can
 *  serve the next: after this nothing of the old instance, its memory or its data area
 *  is reachable (the next boot or restore creates a fresh instance). */
function reset(): unknown {
  afterFailure = undefined;
  layout = undefined;
  bootSizes = undefined;
  // The pool hands this data area to the next sandbox: nothing it carried may remain.
  data.fill(0, 0, Math.min(dataUsed, data.length));
  dataUsed = 0;
  data = NO_DATA;
  held = undefined;
  dropInstance();
  cpuStartNs = 0;
  cpuExcludedNs = 0;
  cpuLimitNs = 0;
  pollsUntilCpuCheck = CPU_CHECK_EVERY;
  schedstatBuf.fill(0);
  // Arguments posted for operations that never ran (the old sandbox's) are dropped;
  // the last message is returned (Op.ResetBoot posts its config last).
  let last: { message: unknown } | undefined;
  for (let m = receiveMessageOnPort(port); m; m = receiveMessageOnPort(port)) last = m;
  return last?.message;
}

function resetBoot(): void {
  const config = reset();
  if (!config) throw new Error('boot config missing from the port');
  boot(config as BootConfig);
}

function describeError(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}

interface Failure {
  outcome: Outcome;
  message: string;
}

function classify(e: unknown): Failure {
  if (e instanceof GuestAbort) return { outcome: Outcome.Abort, message: e.message };
  if (e instanceof WebAssembly.RuntimeError || e instanceof RangeError) return { outcome: Outcome.Trap, message: `guest trapped: ${describeError(e)}` };
  return { outcome: Outcome.Internal, message: describeError(e) };
}

/** A failure of the post-call work (airlock_after), which runs after its exchange was
 *  reported done: the guest is then broken, so the next operation that needs it
 *  reports this instead of running. Restore and reset replace the broken state. */
let afterFailure: Failure | undefined;

/** The last exchange's deferred work (its GC), run once the main thread has the
 *  response, so the collection overlaps the main thread's handling of it. */
function runAfter(): void {
  try {
    guestRuns();
    exportsOf.airlock_after();
  } catch (e) {
    const f = classify(e);
    afterFailure = { outcome: f.outcome, message: `after the previous call: ${f.message}` };
  }
}

function run(op: Op): void {
  if (afterFailure && (op === Op.Exchange || op === Op.ExchangeSnapshot || op === Op.Snapshot)) {
    const f = afterFailure;
    fail(f.outcome, f.message);
    return;
  }
  switch (op) {
    case Op.Boot:
      return boot();
    case Op.Exchange:
      return exchange();
    case Op.ExchangeSnapshot:
      exchange();
      // The snapshot is of the state after the deferred work, as a separate one is.
      runAfter();
      try {
        if (!afterFailure) snapshot();
      } catch {
        // No image: the engine takes the snapshot the usual way, which reports this.
      }
      return;
    case Op.Snapshot:
      return snapshot();
    case Op.Restore:
      return restore();
    case Op.Reset:
      reset();
      return;
    case Op.ResetBoot:
      return resetBoot();
    default:
      throw new Error(`unknown operation ${op}`);
  }
}

function fail(outcome: Outcome, message: string): void {
  const bytes = Buffer.from(message.slice(0, 2000), 'utf8');
  const n = Math.min(bytes.length, data.length);
  data.set(bytes.subarray(0, n));
  ctl[Slot.Length] = n;
  ctl[Slot.Outcome] = outcome;
  // The failed exchange's console lines follow the text, cut to the data area's room
  // (the console budget keeps the first lines anyway; a cut message ends them).
  const stopped = outcome === Outcome.Trap || outcome === Outcome.Abort ? stoppedOutput : undefined;
  stoppedOutput = undefined;
  const m = stopped ? Math.min(stopped.length, data.length - n) : 0;
  if (stopped && m > 0) data.set(stopped.subarray(0, m), n);
  ctl[Slot.StoppedLength] = m;
  if (n + m > dataUsed) dataUsed = n + m;
}

/**
 * Whether the thread idles in the pool (from start or Op.Reset, through the pre-boot,
 * until its sandbox's first request) rather than serving a sandbox. An idle thread
 * waits from its event loop instead of blocking, so V8 can run its own tasks there:
 * above all the garbage collection that frees the dropped instance's memory. Left
 * pending, that collection lands in the next sandbox's requests (a blocked thread only
 * collects when it allocates), and the dropped memory keeps triggering scavenges.
 */
let parked = true;

/** Runs operations until the thread parks; blocks between them while serving. */
function serve(): void {
  for (;;) {
    const state = Atomics.load(ctl, Slot.State);
    if (state !== State.Request) {
      if (parked) return park();
      waitFor(State.Request);
      continue;
    }
    const op = ctl[Slot.Op] as Op;
    ctl[Slot.Outcome] = Outcome.Ok;
    ctl[Slot.StoppedLength] = 0;
    stoppedOutput = undefined;
    try {
      run(op);
    } catch (e) {
      const f = classify(e);
      fail(f.outcome, f.message);
    }
    // A reset returns the thread to the pool (whose pre-boot may follow); requests of
    // a sandbox want the low-latency blocking wait.
    if (op === Op.Reset || op === Op.ResetBoot) parked = true;
    else if ((op === Op.Exchange || op === Op.ExchangeSnapshot) && parked) {
      parked = false;
      setActive(true);
    }
    const ok = ctl[Slot.Outcome] === Outcome.Ok;
    const after = op === Op.Exchange && ok;
    if (after) Atomics.store(ctl, Slot.PostCall, 1);
    signal(State.Done);
    // After Done the main thread owns the control words and the data area; the guest
    // is still this thread's until the next request, which waits for this (within a
    // deadline: Slot.PostCall).
    if (after) {
      runAfter();
      Atomics.store(ctl, Slot.PostCall, 0);
    }
  }
}

/** Waits for the next request from the event loop (see `parked`). */
function park(): void {
  // A parked thread does the pool's background work, which must not keep a serving
  // thread from spinning.
  setActive(false);
  const state = Atomics.load(ctl, Slot.State);
  if (state === State.Request) return serve();
  const r = (atomicsWaitAsync as WaitAsync)(ctl, Slot.State, state);
  if (r.async) void r.value.then(park);
  else setImmediate(park);
}

// A parked thread has nothing else keeping its event loop alive.
setInterval(() => undefined, 1 << 30);
parentPort?.postMessage('ready');
serve();
