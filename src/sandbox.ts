// sandbox.ts — the public sandbox classes, mirroring @hyperlight/js-host-api:
// ProtoJSSandbox (host functions) -> JSSandbox (handlers, modules) -> LoadedJSSandbox
// (calls, snapshots, kill), plus Snapshot and SandboxRestorer (sandboxes started from a
// snapshot). Each sandbox class is a view over one SandboxCore; consuming a view
// (loadRuntime, getLoadedSandbox, unload) hands the core to the next one.
import { ConsumedError, InvalidArgumentError } from './errors.js';
import { stripTypes, type SourceOptions } from './typescript.js';
import type { Backend, EngineSnapshot } from './engine/engine.js';
import { SandboxCore, type CallStats, type HostFunction } from './core.js';
import { SnapshotContent, copyRequirements, type SnapshotKind, type SnapshotRequirements, type StagedSources } from './snapshot/content.js';
import { loadSnapshot, saveSnapshot } from './snapshot/store.js';
import { templateSupport } from './snapshot/tiers.js';
import {
  checkOptionKeys,
  optionalBoolean,
  optionalTimeout,
  type UnknownOptionPolicy,
  requireFunction,
  requireHostModuleName,
  requireModulePart,
  requireName,
  requireString,
  serializeEvent,
  serializeEventBinary,
} from './validate.js';

export type { CallStats } from './core.js';
export type { SnapshotKind, SnapshotRequirements } from './snapshot/content.js';

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
/** A call without options: one frozen object, not one per call. */
const DEFAULT_CALL_OPTIONS = Object.freeze({ gc: 'auto' as const });

/**
 * Views with an operation in flight. A view only reachable through its own pending
 * promise must not be garbage-collected (its finalizer would dispose the sandbox mid-
 * call): each pending operation holds its view here until it settles (a call is held
 * by its core instead: SandboxCore.call's holder).
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

/** What every sandbox stage has in common: its tier, and disposal of its VM or worker. */
abstract class SandboxView {
  /** @internal */
  protected readonly core: SandboxCore;
  /** @internal */
  protected readonly settings: ViewSettings;
  private consumedBy: string | undefined;

  /** @internal */
  protected constructor(core: SandboxCore, settings: ViewSettings = defaultSettings) {
    this.core = core;
    this.settings = settings;
    track(this, core);
  }

  /** Keeps this view strongly reachable until `operation` settles. @internal */
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

  /** `await using sandbox = ...` disposes the sandbox when the scope ends (same as dispose()). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }

  /**
   * Consumes this view for `by`, runs `step` pinned, and hands the view back when the
   * step fails (so the caller may fix its input and try again). @internal
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

  /** Throws ERR_CONSUMED when this view was disposed or consumed. @internal */
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
  /** The module's name: the guest imports it as `host:<name>`. */
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
    return new HostModule(this, requireHostModuleName(name));
  }

  /** Registers one host function: shorthand for hostModule(module).register(name, callback). */
  register(moduleName: string, functionName: string, callback: HostFunction): void {
    this.assertRegistrationOpen();
    const module = requireHostModuleName(moduleName);
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

  /** @internal `staged`: handlers and modules to start with (a restored jsSandbox snapshot's). */
  constructor(core: SandboxCore, settings?: ViewSettings, staged?: StagedSources) {
    super(core, settings);
    // Checked like addHandler/addModule: a snapshot file may have been forged.
    for (const [name, source] of staged?.handlers ?? []) this.#handlers.set(requireName(name, 'handler name'), requireString(source, 'handler code'));
    for (const m of staged?.modules ?? []) {
      this.#modules.set(moduleKey(m.name, m.namespace), { namespace: m.namespace, name: m.name, source: requireString(m.source, 'module source') });
    }
  }

  /**
   * A 'jsSandbox' snapshot: the runtime as loadRuntime() left it, plus the handlers and
   * modules added so far (kept as sources; they compile when a restored JSSandbox is
   * loaded). For SandboxBuilder.buildFromSnapshot() and Snapshot.save().
   */
  async snapshot(): Promise<Snapshot> {
    this.assertUsable();
    const core = this.core;
    const content = new SnapshotContent({
      kind: 'jsSandbox',
      backend: core.backend,
      config: core.config,
      requirements: { hostFunctions: core.hostFunctionRequirements, moduleLoader: 'unknown' },
        runtimeOptions: core.guestRuntimeOptions,
      staged: { handlers: [...this.#handlers], modules: [...this.#modules.values()] },
      state: () => core.runtimeTemplate(),
    });
    core.retainTemplatesOf(content);
    return Snapshot.create(content);
  }

  /**
   * Adds (or replaces) the handler for routing key `name`. With `{ typescript: true }` the
   * code is TypeScript, stripped of its types here (ERR_COMPILE on a syntax error).
   */
  addHandler(name: string, code: string, options?: SourceOptions): void {
    this.assertUsable();
    const key = requireName(name, 'handler name');
    const text = requireString(code, 'handler code');
    this.#handlers.set(key, typescriptOption(options) ? stripTypes(text, `handler '${key}'`) : text);
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

  /**
   * Adds (or replaces) module `<namespace>:<name>`; the namespace 'host' is reserved.
   * With `{ typescript: true }` the source is TypeScript, stripped of its types here.
   */
  addModule(name: string, source: string, namespace = 'user', options?: SourceOptions): void {
    this.assertUsable();
    const key = moduleKey(name, namespace);
    const text = requireString(source, 'module source');
    this.#modules.set(key, { namespace, name, source: typescriptOption(options) ? stripTypes(text, `module '${key}'`) : text });
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

function typescriptOption(options: SourceOptions | undefined): boolean {
  if (options === undefined) return false;
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError(`source options must be an object (got ${typeof options})`);
  if (options.typescript !== undefined && typeof options.typescript !== 'boolean') {
    throw new InvalidArgumentError(`options.typescript must be a boolean (got ${typeof options.typescript})`);
  }
  return options.typescript === true;
}

function moduleKey(name: string, namespace: string): string {
  const ns = requireModulePart(namespace, 'module namespace');
  if (ns === 'host') throw new InvalidArgumentError("the 'host' namespace is reserved for host functions");
  if (ns === 'handler') throw new InvalidArgumentError("the 'handler' namespace is reserved: handlers are the modules 'handler:<routing key>'");
  return `${ns}:${requireModulePart(name, 'module name')}`;
}

/**
 * A point-in-time copy of a sandbox: restore() it into the sandbox it came from, start
 * new sandboxes from it (SandboxBuilder.buildFromSnapshot), or save() it to a directory.
 */
export class Snapshot {
  readonly #content: SnapshotContent;
  /** The sandbox it was taken from and its in-place restore state (LoadedJSSandbox.snapshot()). */
  readonly #core: SandboxCore | undefined;
  readonly #state: EngineSnapshot | undefined;

  /** @internal */
  private constructor(content: SnapshotContent, core?: SandboxCore, state?: EngineSnapshot) {
    this.#content = content;
    this.#core = core;
    this.#state = state;
  }

  /** @internal */
  static create(content: SnapshotContent, core?: SandboxCore, state?: EngineSnapshot): Snapshot {
    return new Snapshot(content, core, state);
  }

  /** Which sandbox stage it captures: 'jsSandbox' or 'loadedJsSandbox'. */
  get kind(): SnapshotKind {
    return this.#content.kind;
  }

  /** The host functions (and module loader) a sandbox restored from it needs. */
  get requirements(): SnapshotRequirements {
    return copyRequirements(this.#content.requirements);
  }

  /**
   * Writes the snapshot into the snapshot directory `dir` (created mode 0700 when
   * missing; files 0600) under `tag`, replacing an earlier snapshot of that tag.
   * Resolves with its content digest ('sha256:<hex>'), which Snapshot.load() also takes.
   */
  save(dir: string, tag: string): Promise<string> {
    return saveSnapshot(this.#content, dir, tag);
  }

  /**
   * Reads a snapshot saved with save(), by tag or 'sha256:' digest. The files are
   * treated as hostile: sizes are bounded before reading, every digest is verified,
   * the metadata is schema-checked, and a snapshot of another ABI, guest image or tier
   * is refused (ERR_INVALID_ARG). A missing or unreadable directory is ERR_INTERNAL.
   */
  static async load(dir: string, tagOrDigest: string): Promise<Snapshot> {
    return new Snapshot(await loadSnapshot(dir, tagOrDigest, true));
  }

  /**
   * load() without verifying the digest of the guest memory blob (the largest file):
   * faster for trusted storage. Everything else is still checked.
   */
  static async loadUnverified(dir: string, tagOrDigest: string): Promise<Snapshot> {
    return new Snapshot(await loadSnapshot(dir, tagOrDigest, false));
  }

  /** @internal */
  static contentOf(snapshot: unknown): SnapshotContent {
    if (typeof snapshot !== 'object' || snapshot === null || !(#content in snapshot)) {
      throw new InvalidArgumentError('buildFromSnapshot() needs a Snapshot (from snapshot() or Snapshot.load())');
    }
    return snapshot.#content;
  }

  /** @internal */
  static unwrap(snapshot: unknown, core: SandboxCore): EngineSnapshot {
    // A brand check, not instanceof: an object that merely inherits from
    // Snapshot.prototype has no private fields to read.
    if (typeof snapshot !== 'object' || snapshot === null || !(#content in snapshot)) {
      throw new InvalidArgumentError('restore() needs a Snapshot taken by snapshot()');
    }
    if (snapshot.#core !== core || !snapshot.#state) {
      throw new InvalidArgumentError(
        'the snapshot was taken from another sandbox (start a new sandbox from it with SandboxBuilder.buildFromSnapshot())',
      );
    }
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
   *
   * Resolves with the handler's return value (awaited when it is a promise) after a JSON
   * round trip; `T` only names that shape for the caller, nothing checks it at run time.
   * Rejects with an AirlockError: GuestExceptionError when the handler throws,
   * CancelledError on a timeout or kill() (the sandbox is then poisoned), PoisonedError
   * when an earlier call poisoned it, InvalidArgumentError for a bad name, event or option.
   */
  callHandler<T = any>(handlerName: string, eventData: unknown, options?: CallHandlerOptions): Promise<T> {
    // Not an async function (each promise turn is main-thread work every call pays):
    // a bad argument still rejects, never throws.
    let name: string;
    let json: string | undefined;
    let buffers: readonly Uint8Array[] | undefined;
    let callOptions: { wallClockTimeoutMs?: number; cpuTimeoutMs?: number; gc: boolean | 'auto' };
    try {
      this.assertUsable();
      name = requireName(handlerName, 'handler name');
      if (options === undefined) callOptions = DEFAULT_CALL_OPTIONS;
      else {
        if (options === null || typeof options !== 'object') throw new InvalidArgumentError('callHandler options must be an object');
        checkOptionKeys(options, callOptionKeys, 'callHandler()', this.settings.unknownOptions);
        callOptions = {
          wallClockTimeoutMs: optionalTimeout(options.wallClockTimeoutMs, 'wallClockTimeoutMs'),
          cpuTimeoutMs: optionalTimeout(options.cpuTimeoutMs, 'cpuTimeoutMs'),
          gc: options.gc === undefined ? 'auto' : optionalBoolean(options.gc, 'gc', true),
        };
      }
      if (this.core.binaryData) ({ json, buffers } = serializeEventBinary(eventData));
      else json = serializeEvent(eventData);
    } catch (e) {
      return Promise.reject(e);
    }
    // Unchecked cast: the result is whatever the guest produced; T is the caller's claim.
    // The core holds this view until the call settles (see busyViews).
    return this.core.call(name, json, callOptions, buffers, this) as Promise<T>;
  }

  /** Drops handlers and modules; returns a JSSandbox to load new ones. Also clears poisoning. */
  async unload(): Promise<JSSandbox> {
    return this.consumeWith('unload()', async () => {
      await this.core.unload();
      return new JSSandbox(this.core, this.settings);
    });
  }

  /**
   * Captures the guest's state (handlers, modules, globals): a 'loadedJsSandbox'
   * snapshot to restore() later, to start new sandboxes from, or to save().
   */
  async snapshot(): Promise<Snapshot> {
    this.assertUsable();
    const core = this.core;
    return this.pinned(async () => {
      const state = await core.snapshot();
      const content = new SnapshotContent({
        kind: 'loadedJsSandbox',
        backend: core.backend,
        config: core.config,
        requirements: { hostFunctions: core.hostFunctionRequirements, moduleLoader: 'unknown' },
        runtimeOptions: core.guestRuntimeOptions,
        state: async () => ({ template: await core.template(state) }),
        baseline: () => core.runtimeTemplate(),
      });
      core.retainTemplatesOf(content);
      return Snapshot.create(content, core, state);
    });
  }

  /** Returns the guest to `snapshot` (taken from this sandbox) and clears poisoning. */
  async restore(snapshot: Snapshot): Promise<void> {
    this.assertUsable();
    const state = Snapshot.unwrap(snapshot, this.core);
    return this.pinned(() => this.core.restore(state));
  }

  /** The handle that cancels this sandbox's call in flight, e.g. from a timer or another request. */
  get interruptHandle(): InterruptHandle {
    return this.#interruptHandle;
  }

  /** Whether the sandbox is poisoned (a call was killed, timed out or aborted) until restored or unloaded. */
  get poisoned(): boolean {
    return this.core.poisoned;
  }

  /** Wall-clock and CPU time of the most recent call (also set when it failed); null before the first call. */
  get lastCallStats(): CallStats | null {
    return this.core.lastCallStats;
  }
}
