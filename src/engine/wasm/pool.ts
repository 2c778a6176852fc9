// pool.ts — process-wide resources of the WebAssembly tier: the guest module, compiled
// once and shared by every worker, and a small pool of pre-started idle workers (each
// already holding an instantiated module) so creating a sandbox pays no thread start.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { wasmModulePath } from '../paths.js';
import { CONTROL_SLOTS, INIT_OK, Op, Outcome, Slot, State, type BootConfig, type WorkerInit } from './channel.js';

/** The sizes a guest is booted with (EngineConfig's fields). */
export interface GuestSizes {
  heapSize: number;
  stackSize: number;
  inputSize: number;
  outputSize: number;
  consoleLimit: number;
}

/** Atomics.waitAsync (ES2024; in Node since 16), typed here for the ES2022 lib. */
type WaitAsync = (
  typed: Int32Array,
  index: number,
  value: number,
) => { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
const atomicsWaitAsync = (Atomics as unknown as { waitAsync?: WaitAsync }).waitAsync;

function sizesKey(c: GuestSizes): string {
  return `${c.heapSize}/${c.stackSize}/${c.inputSize}/${c.outputSize}/${c.consoleLimit}`;
}

/** How long a waiting main thread spins before sleeping in waitAsync. A trivial call
 *  finishes inside it; a wake-up through the event loop costs more. */
const MAIN_SPIN_MS = 0.1;

/** Idle workers kept ready. Each is a thread with a V8 isolate (a few MiB). */
const POOL_SIZE = 2;
const REPLENISH_DELAY_MS = 25;

/** Shadow-stack bytes the module is linked with (guest/platform/wasm/build.mk). */
export const LINKED_STACK_BYTES = 8 * 1024 * 1024;
/**
 * The worker thread's native stack. Wasm frames of a QuickJS recursion live on this
 * stack beside the guest's shadow stack, so it must outlast the largest shadow stack
 * (QuickJS's own limit, a catchable error, must fire first). Measured: one JS call
 * level takes ~2x more native than shadow stack; 4x the linked stack leaves margin.
 * Thread stacks are reserved, not committed, so unused depth costs no RAM.
 */
const WORKER_STACK_MB = (4 * LINKED_STACK_BYTES) / (1024 * 1024);

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

let compiled: Promise<WebAssembly.Module> | undefined;

/** The guest module, compiled on first use and shared by all workers. */
export function guestModule(): Promise<WebAssembly.Module> {
  compiled ??= WebAssembly.compile(readFileSync(wasmModulePath)).catch((e: unknown) => {
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

/** One started worker with its instantiated module, owned by at most one engine. */
export class GuestWorker {
  readonly control: Int32Array;
  readonly port: MessagePort;
  /** Set once the thread is gone; the reason is kept for error messages. */
  exitReason: string | undefined;
  /** The data area shared with the worker; sized by the config at boot or restore. */
  data: SharedArrayBuffer | undefined;
  dataBytes: Uint8Array<ArrayBufferLike> = new Uint8Array(0);
  /** Set when booted by the pool ahead of use: the sizes and the guest's first output. */
  preBooted: { key: string; output: Buffer; initCode: number } | undefined;
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
  static start(module: WebAssembly.Module, keepAlive: boolean): Promise<GuestWorker> {
    const control = new SharedArrayBuffer(CONTROL_SLOTS * 4);
    const { port1, port2 } = new MessageChannel();
    const script = workerScript();
    const init: WorkerInit = { module, control, port: port2 };
    const thread = new Worker(script.source, {
      eval: script.eval,
      workerData: init,
      transferList: [port2],
      resourceLimits: { stackSizeMb: WORKER_STACK_MB },
      stdout: false,
      stderr: false,
    });
    if (!keepAlive) thread.unref();
    port1.unref();
    const worker = new GuestWorker(thread, control, port1);
    return new Promise((resolve, reject) => {
      const onExit = () => reject(new Error(worker.exitReason ?? 'the worker exited during start-up'));
      worker.exitListeners.add(onExit);
      thread.once('message', () => {
        thread.unref();
        worker.exitListeners.delete(onExit);
        resolve(worker);
      });
    });
  }

  /** Gives the worker a data area for `sizes` (once); returns it to post with the op. */
  attachData(sizes: GuestSizes): SharedArrayBuffer {
    // The data area carries a request, an output, or an error text between threads.
    this.data = new SharedArrayBuffer(Math.max(sizes.inputSize, sizes.outputSize, 4096));
    this.dataBytes = new Uint8Array(this.data);
    return this.data;
  }

  signal(state: State): void {
    Atomics.store(this.control, Slot.State, state);
    Atomics.notify(this.control, Slot.State);
  }

  /** Resolves once State is no longer `value` or the thread is gone. */
  async waitWhile(value: State): Promise<number> {
    const ctl = this.control;
    let s = Atomics.load(ctl, Slot.State);
    if (s === value) {
      const until = performance.now() + MAIN_SPIN_MS;
      while ((s = Atomics.load(ctl, Slot.State)) === value && performance.now() < until);
    }
    if (s !== value) return s;
    // Sleeping: keep the process alive until the worker answers.
    this.thread.ref();
    try {
      while (s === value && this.exitReason === undefined) {
        const r = (atomicsWaitAsync as WaitAsync)(ctl, Slot.State, value);
        if (r.async) await r.value;
        s = Atomics.load(ctl, Slot.State);
      }
    } finally {
      this.thread.unref();
    }
    return s;
  }

  /** Runs one operation to completion. Resolves with Outcome (Done) or rejects with
   *  the exit reason when the thread went away. */
  async runOp(op: Op, argument?: unknown): Promise<Outcome> {
    if (argument !== undefined) this.port.postMessage(argument);
    this.control[Slot.Op] = op;
    this.control[Slot.Cancel] = 0;
    this.signal(State.Request);
    const s = await this.waitWhile(State.Request);
    if (s !== State.Done) throw new Error(this.exitReason ?? 'the worker stopped answering');
    this.signal(State.Idle);
    return this.control[Slot.Outcome] as Outcome;
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
  async boot(sizes: GuestSizes): Promise<{ outcome: Outcome; initCode: number; output: Buffer }> {
    const config: BootConfig = { data: this.attachData(sizes), ...pickSizes(sizes) };
    const outcome = await this.runOp(Op.Boot, config);
    return { outcome, initCode: this.control[Slot.InitCode], output: this.dataCopy() };
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
    // Wake any main-thread waiter so it notices the exit.
    Atomics.notify(this.control, Slot.State);
    for (const fn of [...this.exitListeners]) fn();
    this.exitListeners.clear();
  }

  terminate(): Promise<void> {
    if (this.exitReason !== undefined) return Promise.resolve();
    return this.thread.terminate().then(() => undefined);
  }
}

function pickSizes(c: GuestSizes): GuestSizes {
  return { heapSize: c.heapSize, stackSize: c.stackSize, inputSize: c.inputSize, outputSize: c.outputSize, consoleLimit: c.consoleLimit };
}

const idle: GuestWorker[] = [];
let starting = 0;
/** The sizes of the most recent sandbox: idle workers are booted with them ahead of
 *  use, since most processes create many sandboxes of one configuration. */
let target: GuestSizes | undefined;

async function startIdle(): Promise<GuestWorker> {
  const w = await GuestWorker.start(await guestModule(), false);
  const sizes = target;
  if (sizes) {
    const r = await w.boot(sizes);
    if (r.outcome !== Outcome.Ok || r.initCode !== INIT_OK) {
      await w.terminate();
      throw new Error('pre-boot failed');
    }
    w.preBooted = { key: sizesKey(sizes), output: r.output, initCode: r.initCode };
  }
  return w;
}

function replenish(): void {
  while (idle.length + starting < POOL_SIZE) {
    starting++;
    startIdle().then(
      (w) => {
        starting--;
        if (w.exitReason === undefined) idle.push(w);
      },
      () => {
        // A failed start is retried by the next acquire, which reports the error.
        starting--;
      },
    );
  }
}

/**
 * A ready worker for a guest of `sizes`: an idle one already booted with them when
 * there is one (its `preBooted` is set), else an unbooted idle one, else a new one.
 */
export async function acquireWorker(sizes: GuestSizes): Promise<GuestWorker> {
  const key = sizesKey(sizes);
  if (!target || sizesKey(target) !== key) {
    target = pickSizes(sizes);
    // Workers booted for other sizes are of no use now; unbooted ones still are.
    for (const w of idle.splice(0)) {
      if (w.exitReason !== undefined) continue;
      if (w.preBooted && w.preBooted.key !== key) void w.terminate();
      else idle.push(w);
    }
  }
  let i = idle.findIndex((w) => w.exitReason === undefined && w.preBooted?.key === key);
  if (i < 0) i = idle.findIndex((w) => w.exitReason === undefined && !w.preBooted);
  let w: GuestWorker;
  if (i >= 0) w = idle.splice(i, 1)[0];
  else w = await GuestWorker.start(await guestModule(), true);
  // Replenish a little later: a new sandbox's first requests follow right away, and
  // on a small machine a starting thread would compete with them for the CPU.
  setTimeout(replenish, REPLENISH_DELAY_MS).unref();
  return w;
}

/** Starts the pool ahead of the first sandbox (optional; acquireWorker fills it too). */
export function prewarm(): void {
  replenish();
}
