// sandbox.ts — the public sandbox classes, mirroring @hyperlight/js-host-api:
// ProtoJSSandbox (host functions) -> JSSandbox (handlers, modules) -> LoadedJSSandbox
// (calls, snapshots, kill). Each is a view over one SandboxCore; consuming a view
// (loadRuntime, getLoadedSandbox, unload) hands the core to the next one.
import { ConsumedError, InvalidArgumentError } from './errors.js';
import type { Backend, EngineSnapshot } from './engine/engine.js';
import type { CallStats, HostFunction, SandboxCore } from './core.js';
import {
  checkOptionKeys,
  optionalBoolean,
  optionalTimeout,
  type UnknownOptionPolicy,
  requireFunction,
  requireModulePart,
  requireName,
  requireString,
  serializeEvent,
} from './validate.js';

export type { CallStats } from './core.js';

/** Options of LoadedJSSandbox.callHandler(). */
export interface CallHandlerOptions {
  /** Cancel the call after this many milliseconds of wall-clock time. */
  wallClockTimeoutMs?: number;
  /** Cancel the call after this many milliseconds of guest CPU time. */
  cpuTimeoutMs?: number;
  /** `true`: a full garbage collection after the call; `false`: none. Unset (the
   *  default): a collection only when the guest's heap grew by a share of itself since
   *  the last one, so a large live heap is not collected after every call
   *  (docs/API.md, "Garbage collection"). */
  gc?: boolean;
}

/** Per-sandbox settings chosen on the builder that the views (not the engine) apply. @internal */
export interface ViewSettings {
  /** What callHandler does with an option key it does not know. */
  unknownOptions: UnknownOptionPolicy;
}

const defaultSettings: ViewSettings = { unknownOptions: 'warn' };

const callOptionKeys = ['wallClockTimeoutMs', 'cpuTimeoutMs', 'gc'] as const;

/**
 * Views with an operation in flight. A view only reachable through its own pending
 * promise must not be garbage-collected (its finalizer would dispose the sandbox mid-
 * call): each pending operation holds its view here until it settles.
 */
const busyViews = new Map<object, number>();

/**
 * Backstop for sandboxes that are dropped without dispose(): when every view of a core
 * has been garbage-collected, the core (its VM or worker, memory, fds) is released.
 */
const liveViews = new WeakMap<SandboxCore, number>();
const viewRegistry = new FinalizationRegistry<SandboxCore>((core) => {
  const n = (liveViews.get(core) ?? 1) - 1;
  liveViews.set(core, n);
  if (n <= 0) void core.dispose().catch(() => undefined);
});

function track(view: object, core: SandboxCore): void {
  liveViews.set(core, (liveViews.get(core) ?? 0) + 1);
  viewRegistry.register(view, core);
}

abstract class SandboxView {
  protected readonly core: SandboxCore;
  protected readonly settings: ViewSettings;
  private consumedBy: string | undefined;

  protected constructor(core: SandboxCore, settings: ViewSettings = defaultSettings) {
    this.core = core;
    this.settings = settings;
    track(this, core);
  }

  /** Keeps this view strongly reachable until `operation` settles. */
  protected async pinned<T>(operation: () => Promise<T>): Promise<T> {
    busyViews.set(this, (busyViews.get(this) ?? 0) + 1);
    try {
      return await operation();
    } finally {
      const n = (busyViews.get(this) ?? 1) - 1;
      if (n <= 0) busyViews.delete(this);
      else busyViews.set(this, n);
    }
  }

  /** The tier this sandbox runs on: 'kvm' (micro-VM) or 'wasm' (WebAssembly worker). */
  get backend(): Backend {
    return this.core.backend;
  }

  /** Releases the sandbox's VM or worker and all its memory. Idempotent. */
  dispose(): Promise<void> {
    return this.core.dispose();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }

  /**
   * Consumes this view for `by`, runs `step` pinned, and hands the view back when the
   * step fails (so the caller may fix its input and try again).
   */
  protected async consumeWith<T>(by: string, step: () => Promise<T>): Promise<T> {
    this.assertUsable();
    this.consumedBy = by;
    return this.pinned(async () => {
      try {
        return await step();
      } catch (e) {
        this.consumedBy = undefined;
        throw e;
      }
    });
  }

  protected assertUsable(): void {
    if (this.core.isDisposed) throw new ConsumedError(`this ${this.constructor.name} has been disposed`);
    if (this.consumedBy) {
      throw new ConsumedError(`this ${this.constructor.name} was already consumed by ${this.consumedBy}`);
    }
  }
}

/** Registers functions of one host module (`import * as m from "host:<name>"`). */
export class HostModule {
  readonly #proto: ProtoJSSandbox;
  readonly name: string;

  /** @internal */
  constructor(proto: ProtoJSSandbox, name: string) {
    this.#proto = proto;
    this.name = name;
  }

  /** Registers `callback` as `<module>.<name>`; arguments are spread, the result is JSON-serialised. */
  register(name: string, callback: HostFunction): this {
    this.#proto.register(this.name, name, callback);
    return this;
  }
}

/** A booted sandbox waiting for its JavaScript runtime; host functions are registered here. */
export class ProtoJSSandbox extends SandboxView {
  /** @internal */
  constructor(core: SandboxCore, settings?: ViewSettings) {
    super(core, settings);
  }

  /** A builder for the functions of host module `name`. */
  hostModule(name: string): HostModule {
    this.assertRegistrationOpen();
    return new HostModule(this, requireModulePart(name, 'host module name'));
  }

  /** Registers one host function: shorthand for hostModule(module).register(name, callback). */
  register(moduleName: string, functionName: string, callback: HostFunction): void {
    this.assertRegistrationOpen();
    const module = requireModulePart(moduleName, 'host module name');
    const fn = requireName(functionName, 'host function name');
    requireFunction<HostFunction>(callback, 'host function callback');
    let fns = this.core.hostFunctions.get(module);
    if (!fns) {
      fns = new Map();
      this.core.hostFunctions.set(module, fns);
    }
    fns.set(fn, callback);
  }

  /** Loads the JavaScript runtime with every registered host function. */
  async loadRuntime(): Promise<JSSandbox> {
    return this.consumeWith('loadRuntime()', async () => {
      await this.core.loadRuntime();
      return new JSSandbox(this.core, this.settings);
    });
  }

  private assertRegistrationOpen(): void {
    try {
      this.assertUsable();
    } catch (e) {
      if (e instanceof ConsumedError && !this.core.isDisposed) {
        throw new ConsumedError('host functions must be registered before loadRuntime()');
      }
      throw e;
    }
  }
}

interface ModuleEntry {
  namespace: string;
  name: string;
  source: string;
}

/** A sandbox with its runtime loaded: add handlers and modules, then getLoadedSandbox(). */
export class JSSandbox extends SandboxView {
  readonly #handlers = new Map<string, string>();
  readonly #modules = new Map<string, ModuleEntry>();

  /** @internal */
  constructor(core: SandboxCore, settings?: ViewSettings) {
    super(core, settings);
  }

  /** Adds (or replaces) the handler for routing key `name`. */
  addHandler(name: string, code: string): void {
    this.assertUsable();
    this.#handlers.set(requireName(name, 'handler name'), requireString(code, 'handler code'));
  }

  /** Removes the handler for routing key `name`, if any. */
  removeHandler(name: string): void {
    this.assertUsable();
    this.#handlers.delete(requireName(name, 'handler name'));
  }

  /** Removes every handler added so far. */
  clearHandlers(): void {
    this.assertUsable();
    this.#handlers.clear();
  }

  /** Adds (or replaces) module `<namespace>:<name>`; the namespace 'host' is reserved. */
  addModule(name: string, source: string, namespace = 'user'): void {
    this.assertUsable();
    const key = moduleKey(name, namespace);
    this.#modules.set(key, { namespace, name, source: requireString(source, 'module source') });
  }

  /** Removes module `<namespace>:<name>`, if any. */
  removeModule(name: string, namespace = 'user'): void {
    this.assertUsable();
    this.#modules.delete(moduleKey(name, namespace));
  }

  /** Removes every module added so far. */
  clearModules(): void {
    this.assertUsable();
    this.#modules.clear();
  }

  /** Whether the sandbox is poisoned (a call was killed, timed out or aborted) until restored or unloaded. */
  get poisoned(): boolean {
    return this.core.poisoned;
  }

  /**
   * Compiles the handlers (and, lazily, the modules they import) in the guest. Consumes
   * this JSSandbox: later edits throw ERR_CONSUMED (LoadedJSSandbox.unload() gives a
   * fresh one). A failed load (ERR_COMPILE) leaves it usable, to fix and try again.
   */
  async getLoadedSandbox(): Promise<LoadedJSSandbox> {
    return this.consumeWith('getLoadedSandbox()', async () => {
      await this.core.load(this.#modules, this.#handlers);
      return new LoadedJSSandbox(this.core, this.settings);
    });
  }
}

function moduleKey(name: string, namespace: string): string {
  const ns = requireModulePart(namespace, 'module namespace');
  if (ns === 'host') throw new InvalidArgumentError("the 'host' namespace is reserved for host functions");
  if (ns === 'handler') throw new InvalidArgumentError("the 'handler' namespace is reserved: handlers are the modules 'handler:<routing key>'");
  return `${ns}:${requireModulePart(name, 'module name')}`;
}

/** An opaque point-in-time copy of a sandbox's guest state. */
export class Snapshot {
  readonly #core: SandboxCore;
  readonly #state: EngineSnapshot;

  /** @internal */
  constructor(core: SandboxCore, state: EngineSnapshot) {
    this.#core = core;
    this.#state = state;
  }

  /** @internal */
  static unwrap(snapshot: unknown, core: SandboxCore): EngineSnapshot {
    // A brand check, not instanceof: an object that merely inherits from
    // Snapshot.prototype has no private fields to read.
    if (typeof snapshot !== 'object' || snapshot === null || !(#core in snapshot)) {
      throw new InvalidArgumentError('restore() needs a Snapshot taken by snapshot()');
    }
    if (snapshot.#core !== core) throw new InvalidArgumentError('the snapshot was taken from another sandbox');
    return snapshot.#state;
  }
}

/** Stops the handler running in a sandbox; kill() may be called from any callback or timer. */
export class InterruptHandle {
  readonly #core: SandboxCore;

  /** @internal */
  constructor(core: SandboxCore) {
    this.#core = core;
  }

  /** Cancels the call in flight (it rejects with ERR_CANCELLED); a no-op when none runs. */
  kill(): void {
    this.#core.kill();
  }
}

/** A sandbox with handlers loaded, ready to process events. */
export class LoadedJSSandbox extends SandboxView {
  readonly #interruptHandle: InterruptHandle;

  /** @internal */
  constructor(core: SandboxCore, settings?: ViewSettings) {
    super(core, settings);
    this.#interruptHandle = new InterruptHandle(core);
  }

  /**
   * Calls handler `handlerName` with `eventData` (any JSON-serialisable value). Options:
   * `wallClockTimeoutMs` and `cpuTimeoutMs` (1 to 3,600,000 ms) cancel the call with
   * ERR_CANCELLED; `gc: true` collects garbage after the call, `gc: false` skips it,
   * and without `gc` the guest collects when its heap has grown enough.
   */
  async callHandler(handlerName: string, eventData: unknown, options?: CallHandlerOptions): Promise<any> {
    this.assertUsable();
    const name = requireName(handlerName, 'handler name');
    if (options !== undefined && (options === null || typeof options !== 'object')) {
      throw new InvalidArgumentError('callHandler options must be an object');
    }
    if (options !== undefined) checkOptionKeys(options, callOptionKeys, 'callHandler()', this.settings.unknownOptions);
    const wallClockTimeoutMs = optionalTimeout(options?.wallClockTimeoutMs, 'wallClockTimeoutMs');
    const cpuTimeoutMs = optionalTimeout(options?.cpuTimeoutMs, 'cpuTimeoutMs');
    const gc = options?.gc === undefined ? 'auto' : optionalBoolean(options.gc, 'gc', true);
    const event = serializeEvent(eventData);
    return this.pinned(() => this.core.call(name, event, { wallClockTimeoutMs, cpuTimeoutMs, gc }));
  }

  /** Drops handlers and modules; returns a JSSandbox to load new ones. Also clears poisoning. */
  async unload(): Promise<JSSandbox> {
    return this.consumeWith('unload()', async () => {
      await this.core.unload();
      return new JSSandbox(this.core, this.settings);
    });
  }

  /** Captures the guest's state (handlers, modules, globals) to restore() later. */
  async snapshot(): Promise<Snapshot> {
    this.assertUsable();
    return this.pinned(async () => new Snapshot(this.core, await this.core.snapshot()));
  }

  /** Returns the guest to `snapshot` (taken from this sandbox) and clears poisoning. */
  async restore(snapshot: Snapshot): Promise<void> {
    this.assertUsable();
    const state = Snapshot.unwrap(snapshot, this.core);
    return this.pinned(() => this.core.restore(state));
  }

  get interruptHandle(): InterruptHandle {
    return this.#interruptHandle;
  }

  get poisoned(): boolean {
    return this.core.poisoned;
  }

  get lastCallStats(): CallStats | null {
    return this.core.lastCallStats;
  }
}
