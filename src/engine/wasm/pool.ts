// pool.ts — process-wide resources of the WebAssembly tier: the guest module, compiled
// once and shared by every worker, and a small pool of idle workers (each holding a
// fresh instance, usually already booted) so creating a sandbox pays no thread start.
// A disposed sandbox's healthy worker is reset to a fresh instance and comes back here.
// Every wait on a worker here has a deadline; a worker that misses one is terminated.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { wasmModulePath } from '../paths.js';
import {
  ACTIVITY_SLOTS,
  CONTROL_SLOTS,
  INIT_OK,
  Op,
  Outcome,
  Slot,
  State,
  atomicsWaitAsync,
  type BootConfig,
  type MemoryImage,
  type RestoreRequest,
  type WaitAsync,
  type WorkerInit,
} from './channel.js';
import { MAX_SHADOW_STACK_BYTES, readModuleMemory, type GuestSizes, type ModuleMemory } from './module-memory.js';
import { addWakeWaiter, checkWakeWaiters, noteWakeSkipped, wakeFd } from './wake-socket.js';

function sizesKey(c: GuestSizes): string {
  return `${c.heapSize}/${c.stackSize}/${c.inputSize}/${c.outputSize}/${c.consoleLimit}`;
}

/** Threads started ahead of demand when the pool runs dry while other sandboxes are
 *  alive (demand is growing). Each is a thread with a V8 isolate (a few MiB); a start
 *  costs tens of ms of CPU on a small machine, so one sandbox at a time (created,
 *  disposed, created again) never starts more than the one thread it reuses. */
const PRESTART = 2;
/** Idle workers kept (counting those being reset); a released worker beyond this is
 *  terminated, so a burst of sandboxes does not leave a crowd of threads behind. */
const MAX_IDLE = 4;

/**
 * Deadlines of the operations that wait for a worker outside any call's own limits.
 * The worker may still be in the last call's post-call work (a garbage collection)
 * when one arrives, and a hostile guest can make that work endless; a worker that
 * misses a deadline is terminated and never counted as available again, so no later
 * build() or restore() can wait on it forever. One object, so a process (or a test)
 * can tune them; read when each wait starts.
 */
export const deadlines = {
  /** The pool's own operations (reset, pre-boot): milliseconds of work. */
  poolOpMs: 5_000,
  /** Those a sandbox awaits (boot, snapshot, restore): they may copy or collect a large
   *  heap first, and losing the worker there costs the guest. */
  sandboxOpMs: 30_000,
  /** How long anything waits for the previous call's post-call work before the guest
   *  is given up as hostile: a collection of a very large heap takes well under this.
   *  Applies to every operation and to the next call (wasm-engine.ts). */
  postCallMs: 5_000,
  /** From creating a worker thread to its first message: a start on a loaded machine
   *  can take hundreds of ms; one that never reports is not waited for. */
  startMs: 30_000,
};

/** Which workers run or spin (WorkerInit.activity), and the free slots in it. */
const activity = new SharedArrayBuffer(ACTIVITY_SLOTS * 4);
const freeActivitySlots = Array.from({ length: ACTIVITY_SLOTS }, (_, i) => ACTIVITY_SLOTS - 1 - i);
/** Workers that may run or spin at once: one core stays with the main thread. */
const MAX_ACTIVE = Math.max(1, availableParallelism() - 1);

/**
 * How much nicer than the main thread every worker thread is (Linux keeps a nice value
 * per thread). The main thread is
 * the hub of every sandbox's calls: each answer waits for it to wake, and on a machine
 * with fewer free cores than busy threads a worker sharing its CPU held it off for the
 * rest of a time slice (measured on 2 cores: 1, 2 and 8 sandboxes made 2-5x fewer calls
 * per second at 0 than at 5, and the main thread spent more CPU per call). At 5 a
 * waking main thread preempts a running worker at once; a worker still gets every
 * cycle nobody else wants, so a guest computing on an idle core runs as fast as before.
 * The cost: on a host saturated by other processes, guest code gets a smaller share.
 */
const WORKER_NICENESS = 5;

/**
 * The worker thread's native stack. Wasm frames of a QuickJS recursion live on this
 * stack beside the guest's shadow stack, so it must outlast the largest shadow stack
 * (QuickJS's own limit, a catchable error, must fire first). Measured: one JS call
 * level takes ~2x more native than shadow stack; 4x the largest one leaves margin.
 * Thread stacks are reserved, not committed, so unused depth costs no RAM.
 */
const WORKER_STACK_MB = (4 * MAX_SHADOW_STACK_BYTES) / (1024 * 1024);

/** Reasons the tier cannot run here (empty: usable). */
export function wasmAvailable(): { usable: boolean; reasons: string[] } {
  const reasons: string[] = [];
  if (typeof WebAssembly !== 'object' || typeof WebAssembly.Module !== 'function') {
    reasons.push('this JavaScript runtime has no WebAssembly support');
  }
  if (typeof SharedArrayBuffer !== 'function' || typeof Atomics !== 'object' || typeof atomicsWaitAsync !== 'function') {
    reasons.push('SharedArrayBuffer and Atomics.waitAsync are required (Node.js >= 16)');
  }
  if (!existsSync(wasmModulePath)) {
    reasons.push(`the guest module is not built (${wasmModulePath} is missing; run \`npm run setup\`)`);
  }
  return { usable: reasons.length === 0, reasons };
}

/** The compiled guest module and what its memory needs. */
export interface GuestModule {
  module: WebAssembly.Module;
  memory: ModuleMemory;
  /** The Web API prelude the module carries in its custom section "airlock.webapi",
   *  copied once into memory every worker shares (the guest reads it on first use of a
   *  group; it is not in linear memory, whose static data every restore copies). */
  webapi: SharedArrayBuffer;
}

let compiled: Promise<GuestModule> | undefined;
const WEBAPI_SECTION = 'airlock.webapi';

/** The guest module, compiled on first use and shared by all workers. */
export function guestModule(): Promise<GuestModule> {
  compiled ??= (async () => {
    const bytes = readFileSync(wasmModulePath);
    const memory = readModuleMemory(bytes);
    const module = await WebAssembly.compile(bytes);
    const sections = WebAssembly.Module.customSections(module, WEBAPI_SECTION);
    if (sections.length !== 1) throw new Error(`the guest module ${wasmModulePath} has ${sections.length} "${WEBAPI_SECTION}" sections, not one (run \`npm run setup\`)`);
    const webapi = new SharedArrayBuffer(sections[0].byteLength);
    new Uint8Array(webapi).set(new Uint8Array(sections[0]));
    return { module, memory, webapi };
  })().catch((e: unknown) => {
    compiled = undefined;
    throw e;
  });
  return compiled;
}

/** How to start the worker script: the compiled .js beside this file in the package;
 *  from a checkout, the compiled copy in dist/ when it is current (set-up builds it,
 *  and it starts in a few ms), else the .ts source through tsx's require hook (~40 ms). */
function workerScript(): { source: string; eval: boolean } {
  const js = join(__dirname, 'worker.js');
  if (existsSync(js)) return { source: js, eval: false };
  const built = join(__dirname, '..', '..', '..', 'dist', 'engine', 'wasm', 'worker.js');
  if (existsSync(built)) {
    const builtAt = statSync(built).mtimeMs;
    const sources = readdirSync(__dirname).filter((f) => f.endsWith('.ts'));
    if (sources.every((f) => statSync(join(__dirname, f)).mtimeMs <= builtAt)) return { source: built, eval: false };
  }
  const req = createRequire(__filename);
  const hook = req.resolve('tsx/cjs');
  const ts = join(__dirname, 'worker.ts');
  return { source: `require(${JSON.stringify(hook)}); require(${JSON.stringify(ts)});`, eval: true };
}

/** A memory image with the id a worker keeps it under (ids are never reused). */
export interface Image {
  id: number;
  image: MemoryImage;
}
let nextImageId = 1;
/** An id for an image made outside a worker (an imported template's). */
export function newImageId(): number {
  return nextImageId++;
}

/** What booting a guest gives: how the operation ended, airlock_init's code, the
 *  guest's first output. */
export interface BootResult {
  outcome: Outcome;
  initCode: number;
  output: Buffer;
}

/** One started worker with its instantiated module, owned by at most one engine. */
export class GuestWorker {
  readonly control: Int32Array;
  readonly port: MessagePort;
  /** Set once the thread is gone; the reason is kept for error messages. */
  exitReason: string | undefined;
  /** Set when the worker must not serve another sandbox: it is being terminated, or
   *  its own code failed (its state is then unknown). */
  private spoiled = false;
  /** Set when the worker was terminated for its guest's misbehaviour (post-call work
   *  past its deadline), not its own: the guest aborted. */
  guestAtFault = false;
  /** The data area shared with the worker; sized by the config at boot or restore. */
  data: SharedArrayBuffer | undefined;
  dataBytes: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
  /** Set when booted by the pool ahead of use: the sizes and the guest's first output. */
  preBooted: { key: string; output: Buffer; initCode: number } | undefined;
  /** The memory image the worker keeps (Slot.ImageId); 0: none. */
  private heldImage = 0;
  private readonly exitListeners = new Set<() => void>();

  private constructor(
    readonly thread: Worker,
    control: SharedArrayBuffer,
    port: MessagePort,
  ) {
    this.control = new Int32Array(control);
    this.port = port;
    thread.on('error', (e) => this.gone(`the worker failed: ${e.message}`));
    thread.on('exit', (code) => this.gone(`the worker exited (code ${code})`));
  }

  /** `keepAlive`: hold the process open until the worker is ready (someone awaits it). */
  static start(guest: GuestModule, keepAlive: boolean): Promise<GuestWorker> {
    const control = new SharedArrayBuffer(CONTROL_SLOTS * 4);
    const { port1, port2 } = new MessageChannel();
    const script = workerScript();
    const activitySlot = freeActivitySlots.pop() ?? -1;
    const init: WorkerInit = { module: guest.module, memory: guest.memory, webapi: guest.webapi, control, port: port2, activity, activitySlot, maxActive: MAX_ACTIVE, niceness: WORKER_NICENESS };
    const thread = new Worker(script.source, {
      eval: script.eval,
      // The compiled script needs none of the host process's options; inheriting a
      // loader (tsx, a test runner's) would make every thread start 4x slower.
      ...(script.eval ? {} : { execArgv: [] }),
      workerData: init,
      transferList: [port2],
      resourceLimits: { stackSizeMb: WORKER_STACK_MB },
      stdout: false,
      stderr: false,
    });
    if (!keepAlive) thread.unref();
    port1.unref();
    const worker = new GuestWorker(thread, control, port1);
    if (activitySlot >= 0) {
      // A thread that is gone can no longer clear its slot: do it for it.
      worker.onExit(() => {
        Atomics.store(new Int32Array(activity), activitySlot, 0);
        freeActivitySlots.push(activitySlot);
      });
    }
    return new Promise((resolve, reject) => {
      const startMs = deadlines.startMs;
      const timer = setTimeout(() => worker.expire(`the worker did not start within ${startMs} ms`), startMs);
      if (!keepAlive) timer.unref();
      const onExit = () => {
        clearTimeout(timer);
        reject(new Error(worker.exitReason ?? 'the worker exited during start-up'));
      };
      worker.exitListeners.add(onExit);
      thread.once('message', () => {
        clearTimeout(timer);
        thread.unref();
        worker.exitListeners.delete(onExit);
        resolve(worker);
      });
    });
  }

  /** Gives the worker a data area for `sizes`; returns it to post with the op. The
   *  area of an earlier sandbox of the same sizes is reused: the worker clears what it
   *  carried when it resets, and a fresh one costs an allocation V8 counts against
   *  the thread's garbage collection. */
  attachData(sizes: GuestSizes): SharedArrayBuffer {
    // The data area carries a request, an output, or an error text between threads.
    const size = Math.max(sizes.inputSize, sizes.outputSize, 4096);
    if (this.data?.byteLength !== size) {
      this.data = new SharedArrayBuffer(size);
      this.dataBytes = new Uint8Array(this.data);
    }
    return this.data;
  }

  /** Whether the worker may be reset and serve another sandbox. */
  get reusable(): boolean {
    return this.exitReason === undefined && !this.spoiled;
  }

  /** Marks the worker as not reusable (its thread failed in a way not the guest's). */
  spoil(): void {
    this.spoiled = true;
  }

  /** Hands the turn to the worker. Its answer names no wake socket until the main
   *  thread arms one as it starts to wait (armWake). */
  signal(state: State): void {
    Atomics.store(this.control, Slot.WakeFd, 0);
    Atomics.store(this.control, Slot.State, state);
    Atomics.notify(this.control, Slot.State);
  }

  /**
   * Asks the worker to write a byte to the wake socket when it next leaves State
   * `value`; false when there is no socket (wait on State instead), or when the worker
   * already left it or went away (nothing to wait for). Set only now, not with the
   * request, so an answer that comes before the main thread waits writes no byte that
   * would wake the event loop for nothing. The store and the read of State after it
   * are both sequentially consistent, as are the worker's store of State and its read
   * of WakeFd after it: either the worker sees the fd and writes, or this sees it moved on.
   */
  armWake(value: State, op = false): boolean {
    const fd = wakeFd();
    if (fd === 0) return false;
    Atomics.store(this.control, Slot.WakeFd, fd);
    if (this.exitReason === undefined && Atomics.load(this.control, Slot.State) === value) return true;
    noteWakeSkipped(op);
    return false;
  }

  /** Takes the worker's answer: the worker waits for the next Request, not for this. */
  idle(): void {
    Atomics.store(this.control, Slot.State, State.Idle);
  }

  /** Resolves once State is no longer `value` or the thread is gone. `keepAlive`: hold
   *  the process open meanwhile (someone awaits the answer; the pool's own work does
   *  not). `deadlineMs`: past it `onDeadline` runs, by default terminating the worker
   *  (expire), which ends the wait; `onDeadline` returns how many ms more to wait
   *  before that, or nothing when it dealt with the deadline itself. `op`: an
   *  operation's wait, not a call's turn (counted apart, wake-socket.ts).
   *  The main thread never spins here: the answer arrives as a task of the event loop
   *  (the wake socket's read callback, or Atomics.waitAsync's), so timers and I/O run
   *  between the turns of back-to-back calls and host-call storms (issue #10). */
  async waitWhile(
    value: State,
    keepAlive = true,
    deadlineMs = Infinity,
    onDeadline?: () => number | void,
    op = false,
  ): Promise<number> {
    const ctl = this.control;
    let s = Atomics.load(ctl, Slot.State);
    if (s !== value) return s;
    // Keep the process alive until the worker answers (a waitAsync holds no handle).
    if (keepAlive) this.thread.ref();
    let timer: NodeJS.Timeout | undefined;
    const arm = (ms: number, fire: () => void) => {
      timer = setTimeout(fire, ms);
      if (!keepAlive) timer.unref();
    };
    if (deadlineMs !== Infinity) {
      arm(deadlineMs, () => {
        const more = onDeadline ? onDeadline() : 0;
        if (more === undefined) return;
        arm(more, () => this.expire(`the worker did not answer within ${deadlineMs + more} ms and was terminated`));
      });
    }
    try {
      while (s === value && this.exitReason === undefined) {
        await this.stateMayChange(value, op);
        s = Atomics.load(ctl, Slot.State);
      }
    } finally {
      clearTimeout(timer);
      if (keepAlive) this.thread.unref();
    }
    return s;
  }

  /** Resolves once State may have left `value` or the thread went away: on the wake
   *  socket's byte when there is one (one context switch of the main thread per wake),
   *  else through Atomics.waitAsync (two). */
  private stateMayChange(value: State, op: boolean): Promise<unknown> {
    const ctl = this.control;
    if (wakeFd() !== 0) {
      if (!this.armWake(value, op)) return Promise.resolve();
      return new Promise<void>((resolve) => {
        addWakeWaiter({
          op,
          answered: () => this.exitReason !== undefined || Atomics.load(ctl, Slot.State) !== value,
          wake: resolve,
          // The pair broke: the caller looks at State again, then waits on it alone.
          lost: () => {
            Atomics.store(ctl, Slot.WakeFd, 0);
            resolve();
          },
        });
      });
    }
    const r = (atomicsWaitAsync as WaitAsync)(ctl, Slot.State, value);
    return r.async ? r.value : Promise.resolve();
  }

  /** Runs one operation to completion within `deadlineMs`. Resolves with Outcome (Done)
   *  or rejects with the exit reason when the thread went away or missed the deadline. */
  async runOp(op: Op, argument: unknown, keepAlive: boolean, deadlineMs: number): Promise<Outcome> {
    if (argument !== undefined) this.port.postMessage(argument);
    this.control[Slot.Op] = op;
    this.control[Slot.Cancel] = 0;
    this.signal(State.Request);
    // A worker still in the previous guest's post-call work after deadlines.postCallMs
    // is given up at once; one busy with this operation gets the rest of the deadline.
    const first = Math.min(deadlineMs, deadlines.postCallMs);
    const s = await this.waitWhile(State.Request, keepAlive, first, () => (this.expireIfInPostCall() ? undefined : deadlineMs - first), true);
    if (s !== State.Done) throw new Error(this.exitReason ?? 'the worker stopped answering');
    this.idle();
    return this.control[Slot.Outcome] as Outcome;
  }

  /** Gives up on a worker that did not answer in time: from now on it counts as gone
   *  (never reused, never waited for), and its thread is terminated. */
  expire(reason: string): void {
    if (this.exitReason !== undefined) return;
    this.spoiled = true;
    this.gone(reason);
    void this.thread.terminate();
  }

  /** For a request waiting deadlines.postCallMs: when the worker is still in the
   *  previous exchange's post-call work, gives it up (the guest's fault) and says so. */
  expireIfInPostCall(): boolean {
    const ctl = this.control;
    if (Atomics.load(ctl, Slot.PostCall) !== 1 || Atomics.load(ctl, Slot.State) !== State.Request) return false;
    this.guestAtFault = true;
    this.expire(`the guest's work after its previous call ran past ${deadlines.postCallMs} ms; its worker was terminated`);
    return true;
  }

  /** Takes a memory image of the guest. Resolves with the outcome and, when Ok, the image. */
  async snapshot(keepAlive: boolean): Promise<{ outcome: Outcome; image?: Image }> {
    const id = nextImageId++;
    this.control[Slot.ImageId] = id;
    this.heldImage = 0;
    const outcome = await this.runOp(Op.Snapshot, undefined, keepAlive, deadlines.sandboxOpMs);
    if (outcome !== Outcome.Ok) return { outcome };
    const msg = receiveMessageOnPort(this.port);
    if (!msg) throw new Error('the worker sent no snapshot');
    this.heldImage = id;
    return { outcome, image: { id, image: msg.message as MemoryImage } };
  }

  /** Before an Op.ExchangeSnapshot: the id its image will have. */
  prepareImage(): number {
    const id = nextImageId++;
    this.control[Slot.ImageId] = id;
    this.heldImage = 0;
    return id;
  }

  /** After an Op.ExchangeSnapshot ended (whatever the outcome): its image, if the
   *  worker took one. */
  takeImage(id: number): Image | undefined {
    const msg = receiveMessageOnPort(this.port);
    if (!msg) return undefined;
    this.heldImage = id;
    return { id, image: msg.message as MemoryImage };
  }

  /** Writes `image` into the guest's memory, posting it only if the worker does not
   *  hold it already. `data`: the data area to attach (a worker not yet booted). */
  async restore(image: Image, sizes: GuestSizes, data: SharedArrayBuffer | undefined, keepAlive: boolean): Promise<Outcome> {
    this.control[Slot.ImageId] = image.id;
    if (this.heldImage !== image.id || data) {
      // The worker keeps what it is sent, so it gets a copy of its own, moved over.
      const img = image.image;
      const bytes = img.bytes.slice(0);
      const request: RestoreRequest = { data, sizes: pickSizes(sizes), image: { ...img, bytes } };
      this.port.postMessage(request, [bytes]);
      // The worker reads Slot.ImageId as "held" only if it matches; make sure it cannot.
      this.heldImage = 0;
    }
    const outcome = await this.runOp(Op.Restore, undefined, keepAlive, deadlines.sandboxOpMs);
    // The worker took the image before writing it, so it holds it whatever the outcome.
    this.heldImage = image.id;
    return outcome;
  }

  /** Copy of the guest output the worker left after a failed exchange's error text
   *  (Slot.StoppedLength bytes after Length), or undefined when there is none. */
  stoppedOutput(): Buffer | undefined {
    // Shared memory: both words are clamped to the data area again.
    const start = Math.min(Math.max(this.control[Slot.Length], 0), this.dataBytes.length);
    const len = Math.min(Math.max(this.control[Slot.StoppedLength], 0), this.dataBytes.length - start);
    if (len === 0) return undefined;
    return Buffer.from(this.dataBytes.subarray(start, start + len));
  }

  /** Copy of the data area's first Length bytes. */
  dataCopy(): Buffer {
    // The worker bounded Length by the output buffer; clamp again: it is shared memory.
    const len = Math.min(Math.max(this.control[Slot.Length], 0), this.dataBytes.length);
    const out = Buffer.allocUnsafe(len);
    out.set(this.dataBytes.subarray(0, len));
    return out;
  }

  /** Boots the guest with `sizes`; resolves with the outcome, init code and output. */
  async boot(sizes: GuestSizes, keepAlive = true): Promise<BootResult> {
    const config: BootConfig = { data: this.attachData(sizes), ...pickSizes(sizes) };
    const outcome = await this.runOp(Op.Boot, config, keepAlive, keepAlive ? deadlines.sandboxOpMs : deadlines.poolOpMs);
    return { outcome, initCode: this.control[Slot.InitCode], output: this.dataCopy() };
  }

  /**
   * Replaces the guest with a fresh, unbooted instance, so the thread can serve another
   * sandbox: the worker drops the instance and its memory and clears the data area
   * (kept for the next sandbox); here the control words and any unread message go.
   * Rejects (and the caller must terminate the worker) if the worker could not do it.
   */
  async reset(keepAlive: boolean): Promise<void> {
    this.preBooted = undefined;
    this.heldImage = 0;
    while (receiveMessageOnPort(this.port));
    const outcome = await this.runOp(Op.Reset, undefined, keepAlive, deadlines.poolOpMs);
    if (outcome !== Outcome.Ok) throw new Error('the worker could not reset its guest');
    this.clearControl();
  }

  /** reset() and boot() in one operation (one hand-over instead of two). */
  async resetBoot(sizes: GuestSizes, keepAlive: boolean): Promise<BootResult> {
    this.preBooted = undefined;
    this.heldImage = 0;
    while (receiveMessageOnPort(this.port));
    const config: BootConfig = { data: this.attachData(sizes), ...pickSizes(sizes) };
    const outcome = await this.runOp(Op.ResetBoot, config, keepAlive, deadlines.poolOpMs);
    // Ok: both ran (initCode says whether the guest booted); anything else leaves the
    // thread in an unknown state.
    if (outcome !== Outcome.Ok) throw new Error('the worker could not reset its guest');
    const result = { outcome, initCode: this.control[Slot.InitCode], output: this.dataCopy() };
    this.clearControl();
    return result;
  }

  /** After a reset: State is Idle (runOp ended with it); the other words are the old
   *  sandbox's. */
  private clearControl(): void {
    for (let i = 0; i < CONTROL_SLOTS; i++) if (i !== Slot.State) Atomics.store(this.control, i, 0);
  }

  /** Calls `fn` when the thread is gone (at once if it already is). */
  onExit(fn: () => void): () => void {
    if (this.exitReason !== undefined) {
      fn();
      return () => undefined;
    }
    this.exitListeners.add(fn);
    return () => this.exitListeners.delete(fn);
  }

  private gone(reason: string): void {
    if (this.exitReason !== undefined) return;
    this.exitReason = reason;
    // Wake any main-thread waiter so it notices the exit (a gone worker writes no byte);
    // later, as a waitAsync's task would, not inside whatever code ended the thread.
    Atomics.notify(this.control, Slot.State);
    queueMicrotask(checkWakeWaiters);
    for (const fn of [...this.exitListeners]) fn();
    this.exitListeners.clear();
  }

  terminate(): Promise<void> {
    this.spoiled = true;
    if (this.exitReason !== undefined) return Promise.resolve();
    return this.thread.terminate().then(() => undefined);
  }
}

function pickSizes(c: GuestSizes): GuestSizes {
  return { heapSize: c.heapSize, stackSize: c.stackSize, inputSize: c.inputSize, outputSize: c.outputSize, consoleLimit: c.consoleLimit };
}

const idle: GuestWorker[] = [];
/** Workers being started, reset or pre-booted on their way into the pool. */
let preparing = 0;
/** Of those, the released workers being reset (at most MAX_IDLE, side by side). */
let recycling = 0;
/** Workers handed out by acquireWorker and not released (some may have exited since). */
const lent = new Set<GuestWorker>();
/** acquireWorker calls waiting for the next prepared worker, first come first served. */
const waiters: ((w: GuestWorker | undefined) => void)[] = [];
/** The sizes of the most recent sandbox: pool workers are booted with them ahead of
 *  use, since most processes create many sandboxes of one configuration. */
let target: GuestSizes | undefined;

/** Boots `w` with the target sizes, if any, so its next sandbox skips the boot. */
async function preBoot(w: GuestWorker): Promise<GuestWorker> {
  const sizes = target;
  if (sizes) {
    const r = await w.boot(sizes, false);
    if (r.outcome !== Outcome.Ok || r.initCode !== INIT_OK) throw new Error('pre-boot failed');
    w.preBooted = { key: sizesKey(sizes), output: r.output, initCode: r.initCode };
  }
  return w;
}

async function startIdle(): Promise<GuestWorker> {
  const w = await GuestWorker.start(await guestModule(), false);
  try {
    return await preBoot(w);
  } catch (e) {
    void w.terminate();
    throw e;
  }
}

async function recycle(w: GuestWorker): Promise<GuestWorker> {
  try {
    const sizes = target;
    if (!sizes) {
      await w.reset(false);
      return w;
    }
    const r = await w.resetBoot(sizes, false);
    if (r.initCode !== INIT_OK) throw new Error('pre-boot failed');
    w.preBooted = { key: sizesKey(sizes), output: r.output, initCode: r.initCode };
    return w;
  } catch (e) {
    void w.terminate();
    throw e;
  } finally {
    recycling--;
  }
}

/** Runs `prepare` in the background; its worker goes to the first waiter, else idle. */
function prepareInBackground(prepare: () => Promise<GuestWorker>): void {
  preparing++;
  prepare().then(
    (w) => {
      preparing--;
      offer(w);
    },
    () => {
      // The waiter counting on this worker starts over (and reports a persistent failure).
      preparing--;
      waiters.shift()?.(undefined);
    },
  );
}

function offer(w: GuestWorker): void {
  if (!w.reusable) {
    waiters.shift()?.(undefined);
    return;
  }
  const waiter = waiters.shift();
  if (waiter) waiter(w);
  else if (idle.length < MAX_IDLE) idle.push(w);
  else void w.terminate();
}

/** Workers ready or on their way that nobody has claimed yet. */
function unclaimed(): number {
  return idle.length + preparing - waiters.length;
}

function replenish(): void {
  while (unclaimed() < PRESTART) prepareInBackground(startIdle);
}

/** Resolves with the next prepared worker, or undefined if its preparation failed. */
function nextPrepared(): Promise<GuestWorker | undefined> {
  // The pool's own work keeps no handle on the event loop; this timer holds the
  // process open while a caller waits for it.
  const hold = setInterval(() => undefined, 1 << 30);
  return new Promise((resolve) => {
    waiters.push((w) => {
      clearInterval(hold);
      resolve(w);
    });
  });
}

function takeIdle(key: string): GuestWorker | undefined {
  for (let i = idle.length - 1; i >= 0; i--) if (!idle[i].reusable) idle.splice(i, 1);
  // Booted with these sizes, else unbooted, else booted with others (reset on the spot).
  let i = idle.findIndex((w) => w.preBooted?.key === key);
  if (i < 0) i = idle.findIndex((w) => !w.preBooted);
  if (i < 0) i = idle.length - 1;
  return i >= 0 ? idle.splice(i, 1)[0] : undefined;
}

/**
 * A ready worker for a guest of `sizes`: one already booted with them (its `preBooted`
 * is set) when the pool has one, else an unbooted one. Waits for a worker the pool is
 * preparing rather than starting a thread of its own: a reset is far cheaper than a
 * thread start, and a start already under way finishes sooner than a new one.
 */
export async function acquireWorker(sizes: GuestSizes): Promise<GuestWorker> {
  const key = sizesKey(sizes);
  if (!target || sizesKey(target) !== key) target = pickSizes(sizes);
  for (const l of lent) if (l.exitReason !== undefined) lent.delete(l);
  let w = takeIdle(key);
  if (!w) {
    const dry = unclaimed() <= 0;
    if (dry) prepareInBackground(startIdle);
    w = await nextPrepared();
    // More sandboxes alive than workers: demand is growing, so refill the pool now
    // rather than at the next request (after this caller's worker, which needed the
    // CPU first).
    if (dry && lent.size > 0) replenish();
  }
  // A failed preparation is repeated here, where its error reaches the caller.
  if (!w || !w.reusable) w = await GuestWorker.start(await guestModule(), true);
  lent.add(w);
  if (w.preBooted && w.preBooted.key !== key) {
    try {
      await w.reset(true);
    } catch (e) {
      void w.terminate();
      throw e;
    }
  }
  return w;
}

/**
 * Takes back the worker of a disposed sandbox. A healthy one is reset to a fresh
 * instance (nothing of the old guest survives: instance, memory, data area and control
 * words are all new or cleared), pre-booted for the latest sizes, and pooled; one that
 * failed, is being terminated, or is not needed (the pool is full) is terminated.
 */
export function releaseWorker(w: GuestWorker): void {
  lent.delete(w);
  // Threads still starting do not count against the cap: a reset worker is ready far
  // sooner, and offer() drops a started one that finds the pool full.
  if (!w.reusable || (waiters.length === 0 && idle.length + recycling >= MAX_IDLE)) {
    void w.terminate();
    return;
  }
  recycling++;
  prepareInBackground(() => recycle(w));
}

/** Idle workers and workers being prepared (for tests). */
export function poolCounts(): { idle: number; preparing: number } {
  return { idle: idle.length, preparing };
}

/** Starts the pool ahead of the first sandbox (optional; acquireWorker fills it too). */
export function prewarm(): void {
  replenish();
}
