// wasm-engine.ts — the WebAssembly tier: one guest module instance per sandbox, run in
// its own worker thread (a spinning guest never blocks the event loop). Calls cross
// on shared memory (channel.ts): the main thread never spins; it waits with
// Atomics.waitAsync, whose wake-up is an event-loop task. This file owns the main-thread side: exchanges, host calls,
// monitors, kill, snapshots and the worker's lifetime (a healthy worker goes back to
// the pool on dispose, pool.ts resets it for the next sandbox).
import {
  AirlockError,
  BusyError,
  CancelledError,
  GuestAbortError,
  InternalError,
  InvalidArgumentError,
  UnavailableError,
} from '../../errors.js';
import { AIRLOCK_MSG_HOST_RETURN, AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_STATUS_HOST_ERROR } from '../abi.generated.js';
import type {
  EngineConfig,
  EngineSnapshot,
  EngineTemplate,
  ExchangeOptions,
  ExchangeResult,
  GuestEngine,
  HostCallHandler,
  TerminatedBy,
} from '../engine.js';
import { encodeMessage } from '../protocol.js';
import { threadCpuClockUnavailableReason } from '../thread-cpu-clock.js';
import {
  CancelReason,
  atomicsWaitAsync,
  type WaitAsync,
  INIT_BAD_CONFIG,
  INIT_OK,
  Op,
  Outcome,
  Slot,
  State,
} from './channel.js';
import {
  acquireWorker,
  deadlines,
  releaseWorker,
  wasmAvailable,
  type BootResult,
  type GuestWorker,
  type Image,
} from './pool.js';
import { WasmTemplate } from './template.js';
import { addWakeWaiter, startWakeSocket, wakeFd, type WakeWaiter } from './wake-socket.js';

/** After a cancel, how long the guest gets to stop by itself (it polls the cancel
 *  word every ~10k QuickJS operations) before its worker is terminated. */
const CANCEL_GRACE_MS = 100;

const MAX_U32 = 0xffff_ffff;

const REASONS: Record<number, TerminatedBy> = {
  [CancelReason.Kill]: 'kill',
  [CancelReason.WallClock]: 'wall-clock',
  [CancelReason.CpuTime]: 'cpu-time',
};

class WasmSnapshot implements EngineSnapshot {
  readonly backend = 'wasm' as const;
  constructor(
    readonly owner: WasmEngine,
    readonly image: Image,
  ) {}
}

/** Bookkeeping of the exchange in flight. Allocates nothing a call does not use: most
 *  calls have no timer and no host call, and this is on every call's path. */
class Flight {
  timers: NodeJS.Timeout[] | undefined;
  private done = false;
  private cancelledPromise: Promise<void> | undefined;
  private resolveCancelled: (() => void) | undefined;

  constructor(
    readonly engine: WasmEngine,
    readonly worker: GuestWorker,
  ) {}

  /** Resolves when a monitor or kill() cancels the exchange. */
  cancelled(): Promise<void> {
    if (!this.cancelledPromise) {
      if (Atomics.load(this.worker.control, Slot.Cancel) !== CancelReason.None) this.cancelledPromise = Promise.resolve();
      else this.cancelledPromise = new Promise<void>((r) => (this.resolveCancelled = r));
    }
    return this.cancelledPromise;
  }

  cancel(reason: CancelReason): void {
    const w = this.worker;
    if (this.done || Atomics.compareExchange(w.control, Slot.Cancel, CancelReason.None, reason) !== CancelReason.None) return;
    // A guest asleep in a timer waits on this word in its worker (loop-sleep.ts).
    Atomics.notify(w.control, Slot.Cancel);
    this.resolveCancelled?.();
    // A guest that does not reach its next interrupt poll in time loses its worker.
    this.addTimer(
      setTimeout(() => {
        if (!this.done) this.engine.terminateUnresponsive(w);
      }, CANCEL_GRACE_MS),
    );
  }

  addTimer(t: NodeJS.Timeout): void {
    (this.timers ??= []).push(t);
  }

  end(): void {
    this.done = true;
    if (this.timers) for (const t of this.timers) clearTimeout(t);
  }
}

/** The kind field of an encoded message (its first u32); -1 when too short. */
function messageKind(message: Uint8Array): number {
  return message.byteLength >= 4 ? (message[0] | (message[1] << 8) | (message[2] << 16) | (message[3] << 24)) >>> 0 : -1;
}

function checkSize(name: string, value: number): void {
  if (!Number.isInteger(value) || value <= 0 || value > MAX_U32) {
    throw new InvalidArgumentError(`${name} must be an integer between 1 and ${MAX_U32} (got ${value})`);
  }
}

export class WasmEngine implements GuestEngine, WakeWaiter {
  readonly backend = 'wasm' as const;
  private worker: GuestWorker | undefined;
  private booted = false;
  /** Why the guest's state is gone (trap, abort, terminated worker); restore revives it. */
  private lostReason: string | undefined;
  private busy = false;
  private disposed = false;
  private flight: Flight | undefined;
  /** A snapshot the worker took right after the last exchange (LOAD_RUNTIME, which the
   *  core follows with one for its baseline); valid until the guest changes. */
  private eagerImage: Image | undefined;

  constructor(
    private readonly config: EngineConfig,
    private readonly onHostCall: HostCallHandler,
  ) {
    const { usable, reasons } = wasmAvailable();
    if (!usable) {
      throw new UnavailableError(`the WebAssembly backend is unavailable:\n  - ${reasons.join('\n  - ')}`, reasons);
    }
    checkSize('heapSize', config.heapSize);
    checkSize('stackSize', config.stackSize);
    checkSize('inputSize', config.inputSize);
    checkSize('outputSize', config.outputSize);
    if (!Number.isInteger(config.consoleLimit) || config.consoleLimit < 0 || config.consoleLimit > MAX_U32) {
      throw new InvalidArgumentError(`consoleLimit must be an integer between 0 and ${MAX_U32} (got ${config.consoleLimit})`);
    }
    void startWakeSocket();
  }

  // --- plumbing -----------------------------------------------------------------
  private enter(what: string): void {
    if (this.disposed) throw new InvalidArgumentError(`cannot ${what}: the sandbox was disposed`);
    if (this.busy) throw new BusyError(`cannot ${what}: the sandbox is busy with another request`);
    this.busy = true;
  }

  private dataText(w: GuestWorker): string {
    const len = Math.min(Math.max(w.control[Slot.Length], 0), w.dataBytes.length);
    return Buffer.from(w.dataBytes.subarray(0, len)).toString('utf8');
  }

  /** Runs one non-exchange operation to completion; throws on failure. */
  private async runOp<T>(w: GuestWorker, op: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await op();
    } catch {
      throw this.workerGone(w);
    }
    this.checkOutcome(w);
    return result;
  }

  private workerGone(w: GuestWorker): AirlockError {
    const reason = w.exitReason ?? 'the worker stopped answering';
    w.spoil();
    this.loseGuest(reason);
    if (w.guestAtFault) return new GuestAbortError(reason);
    return new InternalError(`the WebAssembly worker failed: ${reason}`);
  }

  private checkOutcome(w: GuestWorker): void {
    const outcome = w.control[Slot.Outcome] as Outcome;
    if (outcome === Outcome.Ok) return;
    const text = this.dataText(w);
    if (outcome === Outcome.Trap || outcome === Outcome.Abort) {
      this.loseGuest(text);
      const err = new GuestAbortError(text);
      const stopped = w.stoppedOutput();
      if (stopped) err.guestOutput = stopped;
      throw err;
    }
    this.loseGuest(text);
    // The worker's own code failed: its state is unknown, so it serves nobody else.
    w.spoil();
    throw new InternalError(`the WebAssembly worker failed: ${text}`);
  }

  private loseGuest(reason: string): void {
    this.lostReason ??= reason;
  }

  private liveWorker(what: string): GuestWorker {
    if (!this.booted || !this.worker) throw new InvalidArgumentError(`cannot ${what}: the guest was not booted`);
    if (this.lostReason !== undefined) {
      throw new GuestAbortError(`cannot ${what}: the guest is no longer running (${this.lostReason}); restore a snapshot`);
    }
    return this.worker;
  }

  // --- GuestEngine --------------------------------------------------------------
  async boot(): Promise<Uint8Array> {
    this.enter('boot');
    try {
      if (this.booted) throw new InvalidArgumentError('the guest is already booted');
      const w = await acquireWorker(this.config).catch((e: unknown) => {
        throw new InternalError(`cannot start a WebAssembly worker: ${(e as Error).message}`, { cause: e });
      });
      if (this.disposed) {
        releaseWorker(w);
        throw new InvalidArgumentError('cannot boot: the sandbox was disposed');
      }
      this.worker = w;
      let code: number;
      let output: Buffer;
      if (w.preBooted) {
        ({ initCode: code, output } = w.preBooted);
        w.preBooted = undefined;
      } else {
        let r: BootResult;
        try {
          r = await w.boot(this.config);
        } catch {
          throw this.workerGone(w);
        }
        this.checkOutcome(w);
        ({ initCode: code, output } = r);
      }
      if (code !== INIT_OK) {
        const why =
          code === INIT_BAD_CONFIG
            ? 'the guest refused the configuration'
            : 'the buffers and heap do not fit the 4 GiB WebAssembly address space';
        this.loseGuest(why);
        throw new InvalidArgumentError(why);
      }
      this.booted = true;
      return output;
    } finally {
      this.busy = false;
    }
  }

  /**
   * One request to the guest. Not an async function: the usual call (no host call)
   * settles in one reaction to the Atomics.waitAsync promise, with no async frames
   * between it and the caller; every other turn (host calls, a spurious wake-up, a
   * worker that went away) continues in serveExchange. Failures reject, never throw.
   */
  exchange(request: Uint8Array, options?: ExchangeOptions): Promise<ExchangeResult> {
    const started = performance.now();
    try {
      this.enter('call the guest');
    } catch (e) {
      return Promise.reject(this.withStats(e, undefined, started));
    }
    let w: GuestWorker | undefined;
    let flight: Flight;
    let eagerId: number;
    try {
      w = this.liveWorker('call the guest');
      if (request.byteLength > this.config.inputSize) {
        throw new InvalidArgumentError(`request of ${request.byteLength} bytes exceeds the ${this.config.inputSize}-byte input buffer`);
      }
      const wall = options?.wallClockTimeoutMs;
      const cpu = options?.cpuTimeoutMs;
      if (wall !== undefined && !(wall > 0)) throw new InvalidArgumentError('wallClockTimeoutMs must be > 0');
      if (cpu !== undefined && !(cpu > 0)) throw new InvalidArgumentError('cpuTimeoutMs must be > 0');
      // Without a thread CPU clock the worker could not enforce the limit: refuse, never ignore.
      const noCpuClock = cpu !== undefined ? threadCpuClockUnavailableReason() : null;
      if (noCpuClock !== null) throw new UnavailableError(`cpuTimeoutMs cannot be enforced on the WebAssembly tier here: ${noCpuClock}`, [noCpuClock]);

      const ctl = w.control;
      this.eagerImage = undefined;
      eagerId = messageKind(request) === AIRLOCK_MSG_LOAD_RUNTIME ? w.prepareImage() : 0;
      w.dataBytes.set(request);
      ctl[Slot.Length] = request.byteLength;
      ctl[Slot.Op] = eagerId ? Op.ExchangeSnapshot : Op.Exchange;
      ctl[Slot.CpuLimitUs] = cpu !== undefined ? Math.max(1, Math.min(Math.round(cpu * 1000), 0x7fff_ffff)) : 0;
      ctl[Slot.CpuUsedUs] = -1;
      Atomics.store(ctl, Slot.Cancel, CancelReason.None);
      flight = this.startFlight(w, wall, started);
    } catch (e) {
      this.busy = false;
      return Promise.reject(this.withStats(e, w, started));
    }
    this.exchangeStarted = started;
    this.exchangeEagerId = eagerId;
    // A worker still in the previous call's post-call work gets deadlines.postCallMs to
    // finish it. PostCall turns 1 only as an exchange ends, so once it reads 0 after this
    // request was signalled, that work is over. Usually the worker is still in it (a
    // waking main thread preempts a worker sharing its CPU, pool.ts WORKER_NICENESS), so
    // this costs no timer per call: watchPostCall re-arms one timer only when it fires.
    if (Atomics.load(w.control, Slot.PostCall) === 1) this.watchPostCall(started);
    w.signal(State.Request);
    if (w.exitReason === undefined) {
      // A waitAsync holds no handle, nor does the unref'd wake socket: keep the process
      // alive until the worker answers (a worker that exits ends the wait, pool.ts gone()).
      // With a socket that armWake does not arm, the worker answered already
      // (serveExchange below takes it).
      if (wakeFd() !== 0) {
        if (w.armWake(State.Request)) {
          w.thread.ref();
          addWakeWaiter(this);
          return new Promise<ExchangeResult>(this.holdSettlers);
        }
      } else {
        const r = (atomicsWaitAsync as WaitAsync)(w.control, Slot.State, State.Request);
        if (r.async) {
          w.thread.ref();
          return r.value.then(this.afterFirstWait, this.afterFirstWait);
        }
      }
    }
    return this.serveExchange(w, flight).then(this.finishExchange, this.failExchange);
  }

  /** The settlers of the promise a wake-socket exchange returned (one in flight). */
  private settleExchange: ((r: ExchangeResult | Promise<ExchangeResult>) => void) | undefined;
  private rejectExchange: ((e: unknown) => void) | undefined;
  private readonly holdSettlers = (resolve: (r: ExchangeResult | Promise<ExchangeResult>) => void, reject: (e: unknown) => void): void => {
    this.settleExchange = resolve;
    this.rejectExchange = reject;
  };

  /** WakeWaiter: the worker of the exchange in flight answered or went away. */
  answered(): boolean {
    const w = this.flight?.worker;
    return !w || w.exitReason !== undefined || Atomics.load(w.control, Slot.State) !== State.Request;
  }

  /** WakeWaiter: the exchange's first wait ended; settles its promise as afterFirstWait
   *  says (the answer, or the general path's continuation). */
  wake(): void {
    const resolve = this.settleExchange;
    const reject = this.rejectExchange;
    this.settleExchange = this.rejectExchange = undefined;
    if (!resolve || !reject) return;
    try {
      resolve(this.afterFirstWait());
    } catch (e) {
      reject(e);
    }
  }

  /** WakeWaiter: the wake socket broke before the answer; wait on State instead. */
  lost(): void {
    const w = this.flight?.worker;
    if (!w) return this.wake();
    Atomics.store(w.control, Slot.WakeFd, 0);
    const r = (atomicsWaitAsync as WaitAsync)(w.control, Slot.State, State.Request);
    if (r.async) void r.value.then(() => this.wake());
    else this.wake();
  }

  /** When the exchange that found its worker in post-call work began waiting for it
   *  (performance.now()); -1: no exchange is waiting on post-call work. */
  private postCallSince = -1;
  private postCallTimer: NodeJS.Timeout | undefined;
  /** When postCallTimer fires (performance.now()). */
  private postCallTimerDue = 0;

  private watchPostCall(since: number): void {
    this.postCallSince = since;
    const due = since + deadlines.postCallMs;
    if (this.postCallTimer && this.postCallTimerDue <= due) return;
    clearTimeout(this.postCallTimer);
    this.armPostCallTimer(due - performance.now());
  }

  private armPostCallTimer(ms: number): void {
    this.postCallTimerDue = performance.now() + ms;
    // Unreferenced: the exchange's own wait keeps the process alive while it matters.
    this.postCallTimer = setTimeout(this.onPostCallTimer, Math.max(0, ms));
    this.postCallTimer.unref();
  }

  /** deadlines.postCallMs passed for the exchange that found its worker in post-call
   *  work: a worker still in it loses its guest (expireIfInPostCall); one running the
   *  request leaves it to the request's own limits. */
  private readonly onPostCallTimer = (): void => {
    this.postCallTimer = undefined;
    const since = this.postCallSince;
    if (since < 0 || !this.flight) return;
    // Node's timers can fire a little early: never give up before the limit has passed.
    const left = since + deadlines.postCallMs - performance.now();
    if (left > 0) return this.armPostCallTimer(left);
    this.postCallSince = -1;
    this.flight.worker.expireIfInPostCall();
  };

  /** The start of the exchange in flight (performance.now()) and the image id of its
   *  Op.ExchangeSnapshot (0: none): fields, so its continuations are closures made once. */
  private exchangeStarted = 0;
  private exchangeEagerId = 0;

  /** The first wait of an exchange ended: the worker answered (the usual call, settled
   *  here), or anything else, which serveExchange continues. */
  private readonly afterFirstWait = (): Promise<ExchangeResult> | ExchangeResult => {
    const flight = this.flight!;
    const w = flight.worker;
    w.thread.unref();
    const s = Atomics.load(w.control, Slot.State);
    if (s !== State.Done) return this.serveExchange(w, flight, s).then(this.finishExchange, this.failExchange);
    let output: Buffer;
    try {
      w.idle();
      this.checkOutcome(w);
      output = w.dataCopy();
    } catch (e) {
      return this.failExchange(e);
    }
    return this.finishExchange(output);
  };

  /** The exchange's final output arrived: its result, or the cancel that stopped it. */
  private readonly finishExchange = (output: Buffer): ExchangeResult => {
    const flight = this.flight!;
    const w = flight.worker;
    const ctl = w.control;
    try {
      const eagerId = this.exchangeEagerId;
      if (eagerId) this.eagerImage = w.takeImage(eagerId);
      const reason = Atomics.load(ctl, Slot.Cancel);
      if (reason !== CancelReason.None) {
        // The guest stopped at an interrupt check and answered: its console lines
        // written before the stop are in the output, for the core to deliver.
        const cancelled = new CancelledError(REASONS[reason] ?? 'kill');
        cancelled.guestOutput = output;
        throw cancelled;
      }
    } catch (e) {
      return this.failExchange(e);
    }
    const cpuUs = ctl[Slot.CpuUsedUs];
    const result = { output, wallTimeNs: Math.round((performance.now() - this.exchangeStarted) * 1e6), cpuTimeNs: cpuUs >= 0 ? cpuUs * 1000 : null };
    this.endExchange(flight);
    return result;
  };

  /** The exchange failed: ends it and throws the error with the call's stats. */
  private readonly failExchange = (e: unknown): never => {
    const flight = this.flight!;
    this.endExchange(flight);
    throw this.withStats(e, flight.worker, this.exchangeStarted);
  };

  private endExchange(flight: Flight): void {
    this.postCallSince = -1;
    flight.end();
    this.flight = undefined;
    this.busy = false;
  }

  private withStats(e: unknown, w: GuestWorker | undefined, started: number): AirlockError {
    const err = e instanceof AirlockError ? e : new InternalError(String((e as Error)?.message ?? e), { cause: e });
    const cpuUs = w ? w.control[Slot.CpuUsedUs] : -1;
    err.stats = { wallTimeNs: Math.round((performance.now() - started) * 1e6), cpuTimeNs: cpuUs >= 0 ? cpuUs * 1000 : null };
    return err;
  }

  private startFlight(w: GuestWorker, wallMs: number | undefined, started: number): Flight {
    const flight = new Flight(this, w);
    if (wallMs !== undefined) {
      const deadline = started + wallMs;
      const arm = (ms: number) => {
        flight.addTimer(
          setTimeout(() => {
            // Node's timers run off the event loop's cached clock and can fire a little
            // early: never cancel before the limit has really passed.
            const left = deadline - performance.now();
            if (left > 0) arm(left);
            else flight.cancel(CancelReason.WallClock);
          }, ms),
        );
      };
      arm(wallMs);
    }
    this.flight = flight;
    return flight;
  }

  /** The grace timer of a cancel ran out while the exchange still ran: the guest does
   *  not poll, so its worker goes. */
  terminateUnresponsive(w: GuestWorker): void {
    this.loseGuest(`the guest did not stop within ${CANCEL_GRACE_MS} ms of being cancelled and was terminated`);
    void w.terminate();
  }

  /** Runs the exchange's turns until the final output: serves host calls meanwhile.
   *  `seen`: the State a first wait already saw (exchange()'s fast path). */
  private async serveExchange(w: GuestWorker, flight: Flight, seen?: number): Promise<Buffer> {
    let waitingOn = State.Request;
    let s = seen;
    for (;;) {
      if (s === undefined || s === waitingOn) s = await w.waitWhile(waitingOn);
      if (s === State.Done) {
        w.idle();
        this.checkOutcome(w);
        return w.dataCopy();
      }
      if (s !== State.HostCall) {
        const reason = Atomics.load(w.control, Slot.Cancel);
        if (reason !== CancelReason.None) {
          this.loseGuest(w.exitReason ?? 'the worker was terminated');
          throw new CancelledError(REASONS[reason] ?? 'kill');
        }
        throw this.workerGone(w);
      }
      const reply = await this.answerHostCall(w, flight);
      w.dataBytes.set(reply);
      w.control[Slot.Length] = reply.byteLength;
      w.signal(State.HostReply);
      waitingOn = State.HostReply;
      s = undefined;
    }
  }

  private async answerHostCall(w: GuestWorker, flight: Flight): Promise<Uint8Array> {
    const cancelledReply = () => encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_HOST_ERROR, ['the call was cancelled']);
    if (Atomics.load(w.control, Slot.Cancel) !== CancelReason.None) return cancelledReply();
    const output = w.dataCopy();
    const reply = await Promise.race([
      Promise.resolve(this.onHostCall(output)).catch((e: unknown) =>
        encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_HOST_ERROR, [String((e as Error)?.message ?? e)]),
      ),
      flight.cancelled().then(() => undefined),
    ]);
    if (reply === undefined || Atomics.load(w.control, Slot.Cancel) !== CancelReason.None) return cancelledReply();
    if (reply.byteLength > this.config.inputSize) {
      return encodeMessage(AIRLOCK_MSG_HOST_RETURN, AIRLOCK_STATUS_HOST_ERROR, [
        `the host function's reply of ${reply.byteLength} bytes exceeds the ${this.config.inputSize}-byte input buffer`,
      ]);
    }
    return reply;
  }

  kill(): void {
    this.flight?.cancel(CancelReason.Kill);
  }

  async snapshot(): Promise<EngineSnapshot> {
    this.enter('take a snapshot');
    try {
      const w = this.liveWorker('take a snapshot');
      const eager = this.eagerImage;
      this.eagerImage = undefined;
      if (eager) return new WasmSnapshot(this, eager);
      const { image } = await this.runOp(w, () => w.snapshot(true));
      return new WasmSnapshot(this, image!);
    } finally {
      this.busy = false;
    }
  }

  async restore(snapshot: EngineSnapshot): Promise<void> {
    if (!(snapshot instanceof WasmSnapshot) || snapshot.owner !== this) {
      throw new InvalidArgumentError('the snapshot was taken from another sandbox');
    }
    return this.restoreImage(snapshot.image);
  }

  /** Freezes one of this engine's snapshots into a template (template.ts); the image is
   *  immutable once taken, so the template shares it. */
  async template(snapshot: EngineSnapshot): Promise<EngineTemplate> {
    if (!(snapshot instanceof WasmSnapshot) || snapshot.owner !== this) {
      throw new InvalidArgumentError('the snapshot was taken from another sandbox');
    }
    return new WasmTemplate(this.config, snapshot.image);
  }

  /** Starts this (unbooted) engine in a template's state: template.ts's clone(). */
  adoptTemplateImage(image: Image): Promise<void> {
    if (this.booted) return Promise.reject(new InvalidArgumentError('the guest is already booted'));
    return this.restoreImage(image);
  }

  private async restoreImage(image: Image): Promise<void> {
    this.enter('restore a snapshot');
    this.eagerImage = undefined;
    try {
      // A restore replaces the guest, so a worker that is gone (or goes, missing the
      // deadline while stuck in the previous guest's post-call work) is replaced once.
      for (let attempt = 1; ; attempt++) {
        const { w, data } = await this.restoreWorker();
        try {
          await this.runOp(w, () => w.restore(image, this.config, data, true));
          break;
        } catch (e) {
          if (attempt >= 2 || w.exitReason === undefined || this.disposed) throw e;
        }
      }
      this.lostReason = undefined;
      this.booted = true;
    } finally {
      this.busy = false;
    }
  }

  /** The worker to restore into: the sandbox's own while it lives, else a fresh one;
   *  `data`: the data area to send with the snapshot, for a worker not yet booted. */
  private async restoreWorker(): Promise<{ w: GuestWorker; data?: SharedArrayBuffer }> {
    const own = this.worker;
    if (own && own.exitReason === undefined) return { w: own };
    const w = await acquireWorker(this.config).catch((e: unknown) => {
      throw new InternalError(`cannot start a WebAssembly worker: ${(e as Error).message}`, { cause: e });
    });
    if (this.disposed) {
      releaseWorker(w);
      throw new InvalidArgumentError('cannot restore: the sandbox was disposed');
    }
    this.worker = w;
    // A pre-booted worker has this config's instance, layout and data area; an unbooted
    // one creates its instance from the snapshot and gets its data area with it.
    const data = w.preBooted ? undefined : w.attachData(this.config);
    w.preBooted = undefined;
    return { w, data };
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    const w = this.worker;
    this.worker = undefined;
    this.loseGuest('the sandbox was disposed');
    if (!w) return;
    if (this.busy) {
      // An operation still runs on the worker and would touch it after a reset:
      // cancel it and end the thread (the operation then fails as cancelled).
      this.flight?.cancel(CancelReason.Kill);
      await w.terminate();
      return;
    }
    releaseWorker(w);
  }
}
