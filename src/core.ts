// core.ts — SandboxCore owns one guest engine and everything the facade objects share:
// the request queue, host functions, console routing, poisoning and call statistics.
// ProtoJSSandbox, JSSandbox and LoadedJSSandbox are thin views over one core.
import { AsyncLocalStorage } from 'node:async_hooks';
import {
  AirlockError,
  BusyError,
  CancelledError,
  CompileError,
  ConsumedError,
  GuestAbortError,
  GuestExceptionError,
  InternalError,
  InvalidArgumentError,
  OutOfMemoryError,
  UnavailableError,
  PoisonedError,
  StackOverflowError,
  TooLargeError,
} from './errors.js';
import type {
  Backend,
  EngineConfig,
  EngineFactory,
  EngineSnapshot,
  EngineTemplate,
  ExchangeOptions,
  ExchangeResult,
  GuestEngine,
  HostCallHandler,
  TemplateSupport,
  TerminatedBy,
} from './engine/engine.js';
import * as abi from './engine/abi.generated.js';
import {
  consoleBeforeStop,
  encodeMessage,
  encodedSize,
  encodeRuntimeOptions,
  fieldText,
  hostEntropy,
  splitOutput,
  type FieldValue,
  type GuestRuntimeOptions,
  type Message,
} from './engine/protocol.js';
import { GuestConsole, type ConsoleHandler } from './console.js';
import { BinaryEncodingError, decodeBinary, encodeBinary } from './binary.js';
import { poisons } from './poison.js';
import { describeThrown } from './validate.js';
import { CompletionKind, LOOP_MODULE, LoopProtocolError, OperationLoop, type Outcome } from './hostcalls/event-loop.js';
import { FETCH_MODULE, GuestFetch, type FetchPolicy } from './fetch/guest-fetch.js';
import { compileCache } from './compile-cache.js';

/** One LOAD group: a user module, or a handler (namespace ''). */
export interface CompileUnit {
  tag: 'module' | 'handler';
  namespace: string;
  name: string;
  source: string;
}

/**
 * A host function the guest calls as `import { f } from 'host:<module>'`: receives the
 * guest's arguments (JSON values, spread), returns a JSON-serialisable value or a promise of
 * one; a throw or rejection becomes an error the guest can catch.
 */
export type HostFunction = (...args: any[]) => unknown;
export type { ConsoleHandler } from './console.js';

/** Statistics of the most recent callHandler(), as in @hyperlight/js-host-api. */
export interface CallStats {
  /** Wall-clock duration of the call in milliseconds. */
  wallClockMs: number;
  /** Guest CPU time in milliseconds, or null where the tier cannot measure it. */
  cpuTimeMs: number | null;
  /** The monitor or action that ended the call, or null when it ended normally. */
  terminatedBy: TerminatedBy | null;
}

/**
 * One host call in progress: its sandbox waits for it until `active` turns false. Async
 * work a callback starts (a timer, an emitter, a queue worker) inherits the chain of
 * the calls it came from, but a call that has been answered no longer blocks anyone.
 */
interface HostCallFrame {
  readonly core: SandboxCore;
  active: boolean;
}

/** The host calls whose callbacks the current async context runs inside. */
const hostCallChain = new AsyncLocalStorage<readonly HostCallFrame[]>();

/**
 * Host-call callbacks not yet settled (all sandboxes), and whether one began since an
 * operation last looked. While any AsyncLocalStorage is enabled, Node 20 runs a hook
 * on every promise, 1-2 us of main-thread CPU per call; so with no callback running
 * and none begun lately, the chain's storage is switched off (no frame is active, so
 * every chain would filter to nothing anyway) and the next host call's run() switches
 * it back on. A sandbox that calls the host on every call keeps it on: switching costs
 * more than the hook.
 */
let runningHostCalls = 0;
let hostCallBegan = false;

function enterHostCall(frame: HostCallFrame): void {
  runningHostCalls++;
  hostCallBegan = true;
  frame.active = true;
}

function leaveHostCall(frame: HostCallFrame): void {
  frame.active = false;
  runningHostCalls--;
}

function idleHostCallChain(): void {
  if (runningHostCalls > 0) return;
  if (!hostCallBegan) hostCallChain.disable();
  hostCallBegan = false;
}

let nextSandboxId = 1;

const NO_FRAMES: readonly HostCallFrame[] = [];
const NO_BUFFERS: readonly Uint8Array[] = [];

/** The host functions a guest runtime was loaded with, as snapshot requirements list them. */
export interface HostFunctionRequirement {
  /** The import specifier, `host:<name>`. */
  module: string;
  functions: string[];
}

/** Where a cloned core's runtime baseline (the state unload() returns to) comes from. */
interface TemplateOrigin {
  support: TemplateSupport;
  baseline: EngineTemplate;
  deterministic: boolean;
  /** What owns `baseline` (and releases it once unreachable): held so it stays alive. */
  owner: object;
}
/** Host-side capabilities and budgets of a sandbox that its engine never sees. */
export interface HostOptions {
  /** Async host calls (and fetches) one request may have in flight at once. */
  asyncHostCallLimit: number;
  /** The fetch capability; absent, fetch() in the guest is refused. */
  fetch?: FetchPolicy;
  /** false: LOAD never uses the process's compiled-code cache (SandboxBuilder.setCompileCache). */
  compileCache?: boolean;
}

export const DEFAULT_ASYNC_HOST_CALL_LIMIT = 64;

export class SandboxCore {
  readonly id = nextSandboxId++;
  readonly config: EngineConfig;
  readonly backend: Backend;
  private engine: GuestEngine;
  /** Guest console lines of the operation in progress; its budget renews per operation. */
  private readonly console: GuestConsole;
  readonly hostFunctions = new Map<string, Map<string, HostFunction>>();

  private callerChain: readonly HostCallFrame[] = NO_FRAMES;
  private protocolFault: AirlockError | undefined;
  private disposed = false;
  private poisonReason: string | undefined;
  /** The guest right after loadRuntime(): unload() returns here, even from a poisoned state. */
  private runtimeBaseline: EngineSnapshot | undefined;
  /** Set on cores cloned from a template: how to start over at the baseline. */
  private readonly origin: TemplateOrigin | undefined;
  /** The host functions the guest runtime knows, fixed by loadRuntime(). */
  private runtimeHostFunctions: HostFunctionRequirement[] = [];

  lastCallStats: CallStats | null = null;
  private readonly hostOptions: HostOptions;
  /** The event loop of the operation in progress, made at its first loop step. */
  private operationLoop: OperationLoop | undefined;
  private readonly fetcher: GuestFetch | undefined;

  /** Sent with LOAD_RUNTIME (hardened profile, deterministic Math.random, binary data);
   *  a clone inherits its snapshot's, which its guest state already carries. */
  private runtimeOptions: GuestRuntimeOptions = {};

  private constructor(
    config: EngineConfig,
    makeEngine: (onHostCall: HostCallHandler) => GuestEngine,
    consoleHandler: ConsoleHandler | undefined,
    hostOptions: HostOptions,
    origin?: TemplateOrigin,
  ) {
    this.config = config;
    this.hostOptions = hostOptions;
    this.fetcher = hostOptions.fetch ? new GuestFetch(hostOptions.fetch) : undefined;
    this.console = new GuestConsole(this.id, config.consoleLimit, consoleHandler);
    this.engine = makeEngine(this.onHostCall);
    this.backend = this.engine.backend;
    this.origin = origin;
  }

  private readonly onHostCall: HostCallHandler = (output) => this.serveHostCall(output);

  static async create(
    config: EngineConfig,
    factory: EngineFactory,
    consoleHandler?: ConsoleHandler,
    runtimeOptions: GuestRuntimeOptions = {},
    hostOptions: HostOptions = { asyncHostCallLimit: DEFAULT_ASYNC_HOST_CALL_LIMIT },
  ): Promise<SandboxCore> {
    const core = new SandboxCore(config, (h) => factory(config, h), consoleHandler, hostOptions);
    core.runtimeOptions = runtimeOptions;
    try {
      const ready = core.readFinal(await core.engine.boot());
      if (ready.kind !== abi.AIRLOCK_MSG_READY) {
        throw new GuestAbortError(`guest did not start: ${fieldText(ready, 0) ?? `message kind ${ready.kind}`}`);
      }
    } catch (e) {
      await core.dispose();
      throw e;
    } finally {
      core.console.end();
    }
    return core;
  }

  /**
   * A core whose guest starts in `template`'s state (no boot). `baseline`: the state
   * unload() returns to (the runtime right after loadRuntime()); `hostFunctions`: what
   * that runtime was loaded with. The caller registers the callbacks before any call.
   */
  static fromTemplate(
    template: EngineTemplate,
    support: TemplateSupport,
    options: {
      baseline: EngineTemplate;
      hostFunctions: HostFunctionRequirement[];
      /** The snapshot's guest runtime options (its guest state was loaded with them). */
      runtimeOptions: GuestRuntimeOptions;
      console?: ConsoleHandler;
      /** The restoring builder's host-side capabilities (async host calls, fetch). */
      hostOptions?: HostOptions;
      owner: object;
    },
  ): SandboxCore {
    // A fixed Math.random seed continues the snapshot's sequence in every clone;
    // otherwise each request's fresh entropy reseeds it (crypto is always fresh).
    const deterministic = options.runtimeOptions.randomSeed !== undefined;
    const origin: TemplateOrigin = { support, baseline: options.baseline, deterministic, owner: options.owner };
    const core = new SandboxCore(
      template.config,
      (h) => support.clone(template, h, { deterministic }),
      options.console,
      options.hostOptions ?? { asyncHostCallLimit: DEFAULT_ASYNC_HOST_CALL_LIMIT },
      origin,
    );
    core.runtimeOptions = { ...options.runtimeOptions };
    core.runtimeHostFunctions = options.hostFunctions.map((r) => ({ module: r.module, functions: [...r.functions] }));
    return core;
  }

  /** The guest runtime options LOAD_RUNTIME carried (a snapshot records them). */
  get guestRuntimeOptions(): GuestRuntimeOptions {
    return { ...this.runtimeOptions };
  }

  get poisoned(): boolean {
    return this.poisonReason !== undefined;
  }

  /** The host functions the guest runtime was loaded with (empty before loadRuntime()). */
  get hostFunctionRequirements(): HostFunctionRequirement[] {
    return this.runtimeHostFunctions.map((r) => ({ module: r.module, functions: [...r.functions] }));
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  // ---------------------------------------------------------------------------
  // Operations. Each runs alone, in call order, so the guest sees one request at a time.

  /** Creates the JS context with the registered host modules. */
  loadRuntime(): Promise<void> {
    return this.serialize(async () => {
      const fields: FieldValue[] = [];
      for (const [module, fns] of this.hostFunctions) {
        for (const fn of fns.keys()) fields.push(module, fn);
      }
      fields.push(encodeRuntimeOptions(this.runtimeOptions), hostEntropy());
      const flags = abi.AIRLOCK_RUNTIME_FLAG_OPTIONS | abi.AIRLOCK_REQUEST_FLAG_ENTROPY;
      this.expectOk(await this.request(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, flags, fields)), 'loadRuntime');
      this.runtimeHostFunctions = [...this.hostFunctions].map(([module, fns]) => ({ module: `host:${module}`, functions: [...fns.keys()] }));
      this.runtimeBaseline = await this.engine.snapshot();
    });
  }

  /** Registers modules and compiles handlers in the guest. */
  load(modules: ReadonlyMap<string, { namespace: string; name: string; source: string }>, handlers: ReadonlyMap<string, string>): Promise<void> {
    return this.serialize(async () => {
      this.assertNotPoisoned();
      const units: CompileUnit[] = [];
      for (const m of modules.values()) units.push({ tag: 'module', namespace: m.namespace, name: m.name, source: m.source });
      for (const [name, source] of handlers) units.push({ tag: 'handler', namespace: '', name, source });
      // The only bytes ever sent as bytecode: the cache's, which came from a compiler
      // sandbox that ran no tenant code (src/compile-cache.ts).
      const bytecode = this.hostOptions.compileCache === false ? [] : await compileCache.bytecodeFor({ backend: this.backend, config: this.config, hardened: this.runtimeOptions.hardened !== undefined }, units);
      const withBytecode = bytecode.some((b) => b !== undefined);
      const fields: FieldValue[] = [];
      units.forEach((u, i) => {
        // With bytecode the guest never reads the source: it is not sent (half the LOAD).
        const b = bytecode[i];
        fields.push(u.tag, u.namespace, u.name, b ? '' : u.source);
        if (withBytecode) fields.push(b ?? new Uint8Array(0));
      });
      fields.push(hostEntropy());
      const flags = abi.AIRLOCK_REQUEST_FLAG_ENTROPY | (withBytecode ? abi.AIRLOCK_LOAD_FLAG_BYTECODE : 0);
      const reply = await this.request(encodeMessage(abi.AIRLOCK_MSG_LOAD, flags, fields));
      if (reply.status === abi.AIRLOCK_STATUS_COMPILE_ERROR) {
        // Modules that did evaluate may have run side effects: start the next attempt clean.
        await this.returnToBaseline();
        throw new CompileError(fieldText(reply, 0) ?? 'handler failed to compile');
      }
      this.expectOk(reply, 'getLoadedSandbox');
    });
  }

  /**
   * COMPILE: the bytecode of each unit, or undefined for one that does not compile. Only
   * src/compile-cache.ts calls this, on a compiler core that never loads tenant code.
   */
  compile(units: readonly CompileUnit[], options: ExchangeOptions): Promise<(Uint8Array | undefined)[]> {
    return this.serialize(async () => {
      this.assertNotPoisoned();
      const fields: FieldValue[] = [];
      for (const u of units) fields.push(u.tag, u.namespace, u.name, u.source);
      const reply = await this.request(encodeMessage(abi.AIRLOCK_MSG_COMPILE, 0, fields), options);
      this.expectOk(reply, 'compile');
      if (reply.fields.length !== units.length) {
        throw new GuestAbortError(`compile: guest answered ${reply.fields.length} fields for ${units.length} units`);
      }
      return reply.fields.map((f) => (f.length ? new Uint8Array(f) : undefined));
    });
  }

  /** Drops handlers and modules by returning the guest to its state after loadRuntime(). */
  unload(): Promise<void> {
    return this.serialize(async () => {
      if (!this.runtimeBaseline && !this.origin) throw new InternalError('unload() before the runtime was loaded');
      await this.returnToBaseline();
      this.poisonReason = undefined;
    });
  }

  /** Whether Uint8Arrays and ArrayBuffers cross as binary fields (SandboxBuilder.setBinaryData). */
  get binaryData(): boolean {
    return this.runtimeOptions.binary === true;
  }

  /**
   * Runs one handler. `gc`: true a full collection after the call, false none, 'auto' one
   * if the guest's heap grew enough since the last (guest/runtime/runtime.c, post-call GC
   * policy). `holder`: kept strongly reachable until the call settles (the view whose
   * finalizer would otherwise dispose the sandbox mid-call).
   *
   * Not an async function: every promise turn is main-thread work each call pays, so a
   * call is one continuation on the engine's promise, which decodes the output, records
   * the stats and ends the operation (docs/ARCHITECTURE.md, "The main thread's share").
   */
  call(
    name: string,
    eventJson: string | undefined,
    options: ExchangeOptions & { gc: boolean | 'auto' },
    eventBuffers: readonly Uint8Array[] = NO_BUFFERS,
    holder?: object,
  ): Promise<unknown> {
    return this.serialize(() => this.startCall(name, eventJson, options, eventBuffers, holder), true);
  }

  /** The handler name, start time and holder of the call in flight (calls run one at a
   *  time): fields, so the call's continuations are functions made once per sandbox. */
  private callName = '';
  private callStarted = 0;
  private callHolder: object | undefined;

  private startCall(
    name: string,
    eventJson: string | undefined,
    options: ExchangeOptions & { gc: boolean | 'auto' },
    eventBuffers: readonly Uint8Array[],
    holder: object | undefined,
  ): Promise<unknown> {
    this.callName = name;
    this.callStarted = performance.now();
    this.callHolder = holder;
    let message: Buffer;
    try {
      this.assertNotPoisoned();
      const fields: FieldValue[] = eventJson === undefined ? [name, hostEntropy()] : [name, eventJson, ...eventBuffers, hostEntropy()];
      const size = encodedSize(fields);
      if (size > this.config.inputSize) {
        throw new InvalidArgumentError(
          `event is too large: the request needs ${size} bytes but the input buffer holds ${this.config.inputSize} (raise it with setInputBufferSize())`,
        );
      }
      const gcFlag = options.gc === 'auto' ? abi.AIRLOCK_CALL_FLAG_GC_AUTO : options.gc ? abi.AIRLOCK_CALL_FLAG_GC : 0;
      message = encodeMessage(abi.AIRLOCK_MSG_CALL, gcFlag | abi.AIRLOCK_REQUEST_FLAG_ENTROPY, fields, size);
    } catch (e) {
      // Refused before the guest saw it: no stats of a call that never ran.
      this.endOperation();
      return Promise.reject(e);
    }
    this.protocolFault = undefined;
    return this.engine.exchange(message, options).then(this.callAnswered, this.callRejected);
  }

  /** The engine's answer to the call in flight: its result, or the coded error. */
  private readonly callAnswered = (r: ExchangeResult): unknown => {
    let message: Message;
    try {
      message = this.exchangeAnswer(r);
    } catch (e) {
      return this.callRejected(e);
    }
    try {
      this.lastCallStats = { wallClockMs: r.wallTimeNs / 1e6, cpuTimeMs: r.cpuTimeNs === null ? null : r.cpuTimeNs / 1e6, terminatedBy: null };
      return this.callResult(this.callName, message);
    } catch (e) {
      this.recordFailedCall(e);
      throw e;
    } finally {
      this.endOperation();
    }
  };

  /** The call in flight failed in the engine or in reading its answer. */
  private readonly callRejected = (e: unknown): never => {
    try {
      const err = this.exchangeFailure(e);
      this.recordFailedCall(err);
      throw err;
    } finally {
      this.endOperation();
    }
  };

  private recordFailedCall(e: unknown): void {
    const terminatedBy = e instanceof CancelledError ? e.terminatedBy : null;
    const stats = e instanceof AirlockError ? e.stats : undefined;
    this.lastCallStats = {
      wallClockMs: stats ? stats.wallTimeNs / 1e6 : performance.now() - this.callStarted,
      cpuTimeMs: stats && stats.cpuTimeNs !== null ? stats.cpuTimeNs / 1e6 : null,
      terminatedBy,
    };
  }

  snapshot(): Promise<EngineSnapshot> {
    return this.serialize(async () => {
      this.assertNotPoisoned();
      return this.whileAlive(() => this.engine.snapshot());
    });
  }

  restore(snapshot: EngineSnapshot): Promise<void> {
    return this.serialize(async () => {
      await this.whileAlive(() => this.engine.restore(snapshot));
      this.poisonReason = undefined;
    });
  }

  /**
   * Freezes `state` (a snapshot of this core's engine) into a template clones start
   * from. ERR_UNAVAILABLE when the tier cannot make templates.
   */
  template(state: EngineSnapshot): Promise<EngineTemplate> {
    return this.serialize(() => this.whileAlive(() => this.makeTemplate(state)));
  }

  /**
   * The runtime baseline (the guest right after loadRuntime()) as a template: a new one
   * the caller owns, or (a clone) the one it was given, with the object that owns it.
   */
  runtimeTemplate(): Promise<{ template: EngineTemplate; owner?: object }> {
    return this.serialize(async () => {
      if (this.origin) return { template: this.origin.baseline, owner: this.origin.owner };
      const base = this.runtimeBaseline;
      if (!base) throw new InternalError('the runtime is not loaded');
      return { template: await this.whileAlive(() => this.makeTemplate(base)) };
    });
  }

  private makeTemplate(state: EngineSnapshot): Promise<EngineTemplate> {
    if (!this.engine.template) {
      const reason = `the ${this.backend} tier of this Airlock build cannot make templates`;
      return Promise.reject(new UnavailableError(`${reason}; use setBackend('wasm') for snapshots that build new sandboxes`, [reason]));
    }
    return this.engine.template(state);
  }

  /** The guest as loadRuntime() left it: restored in place, or (a clone) cloned anew. */
  private async returnToBaseline(): Promise<void> {
    if (this.runtimeBaseline) {
      await this.engine.restore(this.runtimeBaseline);
      return;
    }
    if (!this.origin) return;
    const { support, baseline, deterministic } = this.origin;
    const old = this.engine;
    this.engine = support.clone(baseline, this.onHostCall, { deterministic });
    await old.dispose();
    // The fresh clone is the baseline now: later unloads restore in place.
    this.runtimeBaseline = await this.whileAlive(() => this.engine.snapshot());
  }

  /** An engine operation that dispose() may cut short: that is ERR_CONSUMED, whatever the engine saw. */
  private async whileAlive<T>(op: () => Promise<T>): Promise<T> {
    try {
      return await op();
    } catch (e) {
      if (this.disposed) throw new ConsumedError('the sandbox was disposed while the operation ran');
      throw e;
    }
  }

  /** Cancels the request in flight (if any); safe from any callback or timer. */
  kill(): void {
    if (!this.disposed) this.engine.kill();
  }

  /**
   * Snapshots whose templates are made from this core on first use: dispose() makes
   * them first, so a snapshot stays usable after its sandbox is gone. Weak: a snapshot
   * nobody holds costs nothing.
   */
  private readonly dependents = new Set<WeakRef<{ materialize(): Promise<void> }>>();

  retainTemplatesOf(dependent: { materialize(): Promise<void> }): void {
    this.dependents.add(new WeakRef(dependent));
  }

  async dispose(): Promise<void> {
    if (this.disposed || this.disposing) return this.disposing;
    this.disposing = (async () => {
      // Only while idle: dispose() must stop a guest that runs (or hangs) at once.
      const pending = this.pendingOps === 0 ? [...this.dependents].map((d) => d.deref()).filter((d) => d !== undefined) : [];
      this.dependents.clear();
      await Promise.all(pending.map((d) => d.materialize()));
      this.disposed = true;
      await this.engine.dispose();
      await this.fetcher?.close();
    })();
    return this.disposing;
  }

  private disposing: Promise<void> | undefined;
  /** Operations queued or running. */
  private pendingOps = 0;

  // ---------------------------------------------------------------------------

  private assertNotPoisoned(): void {
    if (this.poisonReason !== undefined) {
      throw new PoisonedError(`the sandbox is poisoned (${this.poisonReason}); call restore() or unload() first`);
    }
  }

  /** An operation runs (or the next one is about to start: see endOperation). */
  private operating = false;
  /** Operations waiting for their turn, in call order. */
  private readonly backlog: (() => void)[] = [];

  /**
   * Queues `op` behind earlier operations; refuses calls that would wait on themselves.
   * With nothing running, `op` starts at once. `endsItself`: `op`'s own settling calls
   * endOperation() (a call does, saving a promise turn); otherwise it is ended here.
   */
  private serialize<T>(op: () => Promise<T>, endsItself = false): Promise<T> {
    if (this.disposed) return Promise.reject(new ConsumedError('the sandbox has been disposed'));
    // Only frames still waiting count: once a host call has been answered, work it
    // started may call into its sandbox like any other caller.
    const store = hostCallChain.getStore();
    const chain = store === undefined || store.length === 0 ? NO_FRAMES : store.filter((f) => f.active);
    idleHostCallChain();
    if (chain.length !== 0 && chain.some((f) => f.core === this)) {
      return Promise.reject(
        new BusyError('a host function cannot call into the sandbox that is waiting for it (it would deadlock)'),
      );
    }
    this.pendingOps++;
    if (!this.operating) return this.beginOperation(op, chain, endsItself);
    return new Promise<T>((resolve, reject) => {
      this.backlog.push(() => this.beginOperation(op, chain, endsItself).then(resolve, reject));
    });
  }

  private beginOperation<T>(op: () => Promise<T>, chain: readonly HostCallFrame[], endsItself: boolean): Promise<T> {
    this.operating = true;
    if (this.disposed) {
      this.endOperation();
      return Promise.reject(new ConsumedError('the sandbox has been disposed'));
    }
    this.callerChain = chain;
    let result: Promise<T>;
    try {
      result = op();
    } catch (e) {
      result = Promise.reject(e);
      if (endsItself) this.endOperation();
    }
    if (endsItself) return result;
    return result.then(
      (value) => {
        this.endOperation();
        return value;
      },
      (e: unknown) => {
        this.endOperation();
        throw e;
      },
    );
  }

  /** Ends the running operation (before its caller sees the outcome) and hands the turn
   *  to the next, in a later microtask as a promise chain would. */
  private endOperation(): void {
    // Timers and async host calls live within one operation: late answers are dropped.
    this.operationLoop?.close();
    this.operationLoop = undefined;
    this.callerChain = NO_FRAMES;
    this.callHolder = undefined;
    // Every console line of the operation, host calls included, shared one budget.
    this.console.end();
    this.pendingOps--;
    const next = this.backlog.shift();
    if (next) queueMicrotask(next);
    else this.operating = false;
  }

  /** Sends a request of any size (chunked when it exceeds the input buffer). */
  private async request(message: Buffer, options?: ExchangeOptions): Promise<Message> {
    if (message.length > this.config.inputSize) {
      const room = this.config.inputSize - abi.AIRLOCK_MSG_HEADER_SIZE - abi.AIRLOCK_FIELD_HEADER_SIZE;
      if (room <= 0) throw new InvalidArgumentError('the input buffer is too small to carry any request');
      for (let off = 0; off < message.length; off += room) {
        const last = off + room >= message.length;
        const chunk = encodeMessage(abi.AIRLOCK_MSG_CHUNK, last ? abi.AIRLOCK_CHUNK_FLAG_LAST : 0, [message.subarray(off, off + room)]);
        const reply = (await this.exchange(chunk, last ? options : undefined)).message;
        if (last) return reply;
        this.expectOk(reply, 'chunked request');
      }
    }
    return (await this.exchange(message, options)).message;
  }

  /** One engine exchange; failures that poison are recorded here and nowhere else. */
  private async exchange(message: Buffer, options?: ExchangeOptions): Promise<{ message: Message; wallTimeNs: number; cpuTimeNs: number | null }> {
    this.protocolFault = undefined;
    try {
      const r = await this.engine.exchange(message, options);
      return { message: this.exchangeAnswer(r), wallTimeNs: r.wallTimeNs, cpuTimeNs: r.cpuTimeNs };
    } catch (e) {
      throw this.exchangeFailure(e);
    }
  }

  /** The final message of an exchange the engine completed (a protocol fault a host call
   *  found meanwhile is the exchange's error). */
  private exchangeAnswer(r: ExchangeResult): Message {
    // dispose() stops the engine only after a microtask; a host function that called it
    // has answered the guest by then, which may finish first. The call still ran when
    // dispose() was called: ERR_CONSUMED, as for one the dispose cut short.
    if (this.disposing) throw new ConsumedError('the sandbox was disposed while the request ran');
    const fault = this.protocolFault as AirlockError | undefined;
    if (fault) throw fault;
    return this.readFinal(r.output);
  }

  /** The error an exchange fails with, poisoning recorded. */
  private exchangeFailure(e: unknown): AirlockError {
    // dispose() stops the guest the way kill() does; say what really happened.
    if (this.disposed) return new ConsumedError('the sandbox was disposed while the request ran');
    let err = e instanceof AirlockError ? e : new InternalError(String((e as Error)?.message ?? e), { cause: e });
    // A stopped or aborted call's console lines are the ones that explain it: deliver
    // them, within the operation's console budget, before the rejection.
    if (err.guestOutput) {
      this.console.write(consoleBeforeStop(err.guestOutput), false);
      err.guestOutput = undefined;
    }
    // A malformed host call made us stop the guest; report that, not the stop.
    // (Set by serveHostCall while the exchange was pending, which TS cannot see.)
    const fault = this.protocolFault as AirlockError | undefined;
    if (fault && err instanceof CancelledError) {
      fault.stats = err.stats;
      err = fault;
    }
    if (poisons(err)) this.poisonReason = `${err.code}: ${err.message}`;
    return err;
  }

  /** Decodes an output buffer, emits its console lines and returns the final message. */
  private readFinal(output: Uint8Array): Message {
    const { console: lines, final } = splitOutput(output);
    this.console.write(lines, true);
    if (final.kind === abi.AIRLOCK_MSG_ABORT) {
      throw new GuestAbortError(`guest aborted: ${fieldText(final, 0) ?? 'no reason given'}`);
    }
    return final;
  }

  private expectOk(reply: Message, what: string): void {
    if (reply.kind !== abi.AIRLOCK_MSG_RESULT) {
      throw new GuestAbortError(`${what}: guest answered with message kind ${reply.kind}`);
    }
    if (reply.status !== abi.AIRLOCK_STATUS_OK) {
      throw this.statusError(reply);
    }
  }

  private callResult(name: string, reply: Message): unknown {
    if (reply.kind !== abi.AIRLOCK_MSG_RESULT) {
      const err = new GuestAbortError(`guest answered a call with message kind ${reply.kind}`);
      this.poisonReason = `${err.code}: ${err.message}`;
      throw err;
    }
    if (reply.status === abi.AIRLOCK_STATUS_OK) {
      const json = fieldText(reply, 0);
      if (json === undefined) return undefined;
      try {
        return this.binaryData ? decodeBinary(json, reply.fields.slice(1)) : JSON.parse(json);
      } catch (e) {
        const what = e instanceof BinaryEncodingError ? e.message : 'invalid JSON';
        const err = new GuestAbortError(`guest returned ${what} from handler '${name}'`);
        this.poisonReason = `${err.code}: ${err.message}`;
        throw err;
      }
    }
    if (reply.status === abi.AIRLOCK_STATUS_NO_HANDLER) {
      throw new InvalidArgumentError(fieldText(reply, 0) ?? `no handler named '${name}' is loaded`);
    }
    const err = this.statusError(reply);
    if (poisons(err)) this.poisonReason = `${err.code}: ${err.message}`;
    throw err;
  }

  /** Maps a non-OK RESULT status to the error taxonomy. */
  private statusError(reply: Message): AirlockError {
    const text = fieldText(reply, 0) ?? '';
    switch (reply.status) {
      case abi.AIRLOCK_STATUS_EXCEPTION:
        return new GuestExceptionError(text, fieldText(reply, 1) ?? '', fieldText(reply, 2) ?? '');
      case abi.AIRLOCK_STATUS_NOT_SERIALIZABLE:
        return new GuestExceptionError('TypeError', text, '');
      case abi.AIRLOCK_STATUS_UNSETTLED:
        return new GuestExceptionError('Error', text || 'the handler returned a promise that never settled', '');
      case abi.AIRLOCK_STATUS_COMPILE_ERROR:
        return new CompileError(text);
      case abi.AIRLOCK_STATUS_TOO_LARGE:
        return new TooLargeError(`${text} (raise it with setOutputBufferSize(), or print less with console)`);
      case abi.AIRLOCK_STATUS_OUT_OF_MEMORY:
        return new OutOfMemoryError(text || 'the guest ran out of heap memory');
      case abi.AIRLOCK_STATUS_STACK_OVERFLOW:
        return new StackOverflowError(text || 'the guest ran out of stack');
      case abi.AIRLOCK_STATUS_INTERRUPTED:
        return new CancelledError('kill');
      case abi.AIRLOCK_STATUS_BAD_REQUEST:
        return new InternalError(`guest rejected a request: ${text}`);
      case abi.AIRLOCK_STATUS_NO_HANDLER:
        return new InvalidArgumentError(text);
      default:
        return new GuestAbortError(`guest answered with unknown status ${reply.status}`);
    }
  }

  // ---------------------------------------------------------------------------
  // Host calls: the guest is paused inside a HOST_CALL exit until we answer.

  /**
   * Answers every host call: whatever a callback throws or returns, the guest gets a
   * reply. A host function that returns synchronously is answered at once, without a
   * promise: each promise turn is main-thread work every host call pays, and the
   * AsyncLocalStorage hook runs on every promise while a host call is in flight.
   */
  private serveHostCall(output: Uint8Array): Uint8Array | Promise<Uint8Array> {
    try {
      const answer = this.answerHostCall(output);
      return answer instanceof Promise ? answer.catch(this.hostCallFailed) : answer;
    } catch (e) {
      return this.hostCallFailed(e);
    }
  }

  /** One function per sandbox, not a closure per host call. */
  private readonly hostCallFailed = (e: unknown): Uint8Array =>
    hostError(`the host could not answer the call: ${describeThrown(e)}`, this.config.inputSize);

  private answerHostCall(output: Uint8Array): Uint8Array | Promise<Uint8Array> {
    let module = '';
    let fn = '';
    let args: unknown[];
    try {
      const { console: lines, final } = splitOutput(output);
      this.console.write(lines, false);
      const binaryFields = this.binaryData ? Math.max(0, final.fields.length - 3) : 0;
      if (final.kind !== abi.AIRLOCK_MSG_HOST_CALL || final.fields.length !== 3 + binaryFields) {
        throw new GuestAbortError(`expected a host call, got message kind ${final.kind} with ${final.fields.length} fields`);
      }
      module = final.fields[0].toString('utf8');
      fn = final.fields[1].toString('utf8');
      const argsJson = final.fields[2].toString('utf8');
      const parsed: unknown = this.binaryData ? decodeBinary(argsJson, final.fields.slice(3)) : JSON.parse(argsJson);
      if (!Array.isArray(parsed)) throw new GuestAbortError('host call arguments are not a JSON array');
      args = parsed;
    } catch (e) {
      return this.breakProtocol(e instanceof AirlockError ? e : new GuestAbortError(`malformed host call: ${(e as Error).message}`));
    }
    if (module === LOOP_MODULE) {
      return this.serveLoopStep(fn, args).catch((e: unknown) => {
        if (e instanceof LoopProtocolError) return this.breakProtocol(e);
        throw e;
      });
    }

    const callback = this.hostFunctions.get(module)?.get(fn);
    if (!callback) return hostError(`host function '${module}.${fn}' is not registered`, this.config.inputSize);

    let result: unknown;
    const frame: HostCallFrame = { core: this, active: false };
    enterHostCall(frame);
    // A thenable is awaited as `await` would (any object with a `then` method). Looking
    // for `then` runs the result's getter, which may throw: inside the try, so the
    // frame is always left.
    let thenable: boolean;
    try {
      result = hostCallChain.run([...this.callerChain, frame], () => callback(...args));
      thenable = isThenable(result);
    } catch (e) {
      leaveHostCall(frame);
      return hostError(describeThrown(e), this.config.inputSize);
    }
    if (thenable) {
      return Promise.resolve(result).then(
        (value) => {
          leaveHostCall(frame);
          return this.hostReturn(module, fn, value);
        },
        (e: unknown) => {
          leaveHostCall(frame);
          return hostError(describeThrown(e), this.config.inputSize);
        },
      );
    }
    leaveHostCall(frame);
    return this.hostReturn(module, fn, result);
  }

  /** The HOST_RETURN of host function `module.fn`'s result (or why it cannot be sent). */
  private hostReturn(module: string, fn: string, result: unknown): Uint8Array {
    let json: string | undefined;
    let buffers: Uint8Array[] = [];
    try {
      if (this.binaryData) ({ json, buffers } = encodeBinary(result));
      else json = JSON.stringify(result);
    } catch (e) {
      return hostError(`host function '${module}.${fn}' returned a value that is not JSON-serialisable: ${describeThrown(e)}`, this.config.inputSize);
    }
    const fields: FieldValue[] = json === undefined ? [] : [json, ...buffers];
    const size = encodedSize(fields);
    if (size > this.config.inputSize) {
      return hostError(
        `host function '${module}.${fn}' returned ${size} bytes, more than the ${this.config.inputSize}-byte input buffer`,
        this.config.inputSize,
      );
    }
    return encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, fields);
  }

  /** The guest broke the protocol: stop it and report an abort from the exchange. */
  private breakProtocol(fault: AirlockError): Buffer {
    this.protocolFault = fault;
    this.engine.kill();
    return hostError('malformed host call', this.config.inputSize);
  }

  /** A step of the guest's event loop (guest/runtime/eventloop.c): start an async call, or sleep. */
  private async serveLoopStep(step: string, args: unknown[]): Promise<Uint8Array> {
    const loop = (this.operationLoop ??= new OperationLoop(
      this.hostOptions.asyncHostCallLimit,
      this.config.inputSize - encodedSize(['']),
    ));
    if (step === 'wait' || step === 'sleep') return loop.waitStep(step, args);
    if (step !== 'start') throw new LoopProtocolError(`unknown event loop step '${step.slice(0, 40)}'`);
    const [module, fn, callArgs] = args;
    if (args.length !== 3 || typeof module !== 'string' || typeof fn !== 'string' || !Array.isArray(callArgs)) {
      throw new LoopProtocolError('an async host call needs (module, function, arguments array)');
    }
    const run = this.asyncCall(module, fn, callArgs);
    if (typeof run === 'string') return hostError(run, this.config.inputSize);
    const started = loop.start(run);
    if ('refused' in started) return hostError(started.refused, this.config.inputSize);
    return encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [String(started.id)]);
  }

  /** The work of one async call, or why it cannot start. */
  private asyncCall(module: string, fn: string, args: unknown[]): ((signal: AbortSignal) => Promise<Outcome>) | string {
    if (module === FETCH_MODULE && fn === 'fetch') {
      const fetcher = this.fetcher;
      if (!fetcher) {
        return async () => ({
          kind: CompletionKind.TypeError,
          message: 'fetch is not enabled for this sandbox (the embedder grants it with SandboxBuilder.setFetchPolicy())',
        });
      }
      return (signal) => fetcher.fetch(args[0], signal);
    }
    const callback = this.hostFunctions.get(module)?.get(fn);
    if (!callback) return `host function '${module}.${fn}' is not registered`;
    const chain = this.callerChain;
    return async () => {
      let result: unknown;
      const frame: HostCallFrame = { core: this, active: false };
      enterHostCall(frame);
      try {
        result = await hostCallChain.run([...chain, frame], () => callback(...args));
      } catch (e) {
        return { kind: CompletionKind.HostError, message: describeThrown(e) };
      } finally {
        leaveHostCall(frame);
      }
      try {
        // As a blocking call's result: with binary data on, bytes cross as fields.
        if (!this.binaryData) return { kind: CompletionKind.Value, json: JSON.stringify(result) };
        const { json, buffers } = encodeBinary(result);
        return { kind: CompletionKind.Value, json, buffers };
      } catch (e) {
        return {
          kind: CompletionKind.HostError,
          message: `host function '${module}.${fn}' returned a value that is not JSON-serialisable: ${describeThrown(e)}`,
        };
      }
    };
  }
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (typeof value === 'object' || typeof value === 'function') && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

/** A HOST_RETURN carrying an error; the message is cut so it always fits the input buffer. */
function hostError(message: string, inputSize: number): Buffer {
  const room = Math.max(0, inputSize - abi.AIRLOCK_MSG_HEADER_SIZE - abi.AIRLOCK_FIELD_HEADER_SIZE);
  let text = message;
  if (Buffer.byteLength(text, 'utf8') > room) {
    text = Buffer.from(text, 'utf8').subarray(0, room).toString('utf8');
    while (Buffer.byteLength(text, 'utf8') > room) text = text.slice(0, -1);
  }
  return encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_HOST_ERROR, [text]);
}
