// builder.ts — SandboxBuilder: collects sizes, tier, console, host-function and guest
// runtime options and host capabilities, validates them as they are set, and builds a
// booted ProtoJSSandbox, or a SandboxRestorer that starts sandboxes from a snapshot.
import { DEFAULT_ASYNC_HOST_CALL_LIMIT, SandboxCore, type ConsoleHandler, type HostFunction } from './core.js';
import { resolveFetchPolicy, type FetchPolicy } from './fetch/policy.js';
import { ConsumedError, InvalidArgumentError } from './errors.js';
import { engineFactory, type BackendChoice } from './engine/select.js';
import { HostFunctionModule } from './host-function-module.js';
import { SandboxRestorer, type HostFunctionFilter } from './restorer.js';
import { ProtoJSSandbox, Snapshot } from './sandbox.js';
import { templateSupport } from './snapshot/tiers.js';
import { requireFunction, requireSize, sizeLimits } from './validate.js';
import { hardenedProfile, randomSeed, type HardenedOptions } from './guest-options.js';
import type { GuestRuntimeOptions } from './engine/protocol.js';

export { sizeLimits } from './validate.js';

/**
 * The entry point: configure sizes, tier and console, then build() a sandbox. Each build()
 * boots one sandbox (a KVM micro-VM, or a WebAssembly instance in a worker thread) and
 * resolves with its ProtoJSSandbox; the builder is spent once build() succeeds.
 */
export class SandboxBuilder {
  #heapSize: number = sizeLimits.heap.default;
  #scratchSize: number = sizeLimits.scratch.default;
  #inputBufferSize: number = sizeLimits.inputBuffer.default;
  #outputBufferSize: number = sizeLimits.outputBuffer.default;
  #consoleLimit: number = sizeLimits.consoleLimit.default;
  #backend: BackendChoice = 'auto';
  #console: ConsoleHandler | undefined;
  #strictOptions = false;
  #hostFunctions = new Map<string, ReadonlyMap<string, HostFunction>>();
  #hostFunctionFilter: HostFunctionFilter = 'all';
  #guestOptions: GuestRuntimeOptions = {};
  #asyncHostCallLimit = DEFAULT_ASYNC_HOST_CALL_LIMIT;
  #compileCache = true;
  #fetchPolicy: FetchPolicy | undefined;
  // Like the mirrored API, build() consumes the builder: a second build() or a setter
  // afterwards is ERR_CONSUMED. A build that fails hands the builder back.
  #consumed = false;

  #open(): void {
    if (this.#consumed) throw new ConsumedError('this SandboxBuilder was already consumed by build(); create a new one');
  }

  /** Guest heap size in bytes (default 64 MiB). */
  setHeapSize(bytes: number): this {
    this.#open();
    this.#heapSize = requireSize(bytes, 'heap size', sizeLimits.heap.min, sizeLimits.heap.max);
    return this;
  }

  /** Guest scratch size in bytes, which holds the guest stack (default 1 MiB). */
  setScratchSize(bytes: number): this {
    this.#open();
    this.#scratchSize = requireSize(bytes, 'scratch size', sizeLimits.scratch.min, sizeLimits.scratch.max);
    return this;
  }

  /** Host-to-guest buffer in bytes: bounds the size of one event (default 1 MiB). */
  setInputBufferSize(bytes: number): this {
    this.#open();
    this.#inputBufferSize = requireSize(bytes, 'input buffer size', sizeLimits.inputBuffer.min, sizeLimits.inputBuffer.max);
    return this;
  }

  /** Guest-to-host buffer in bytes: bounds one result plus its console output (default 1 MiB). */
  setOutputBufferSize(bytes: number): this {
    this.#open();
    this.#outputBufferSize = requireSize(bytes, 'output buffer size', sizeLimits.outputBuffer.min, sizeLimits.outputBuffer.max);
    return this;
  }

  /** Tier: 'kvm' (micro-VM), 'wasm' (WebAssembly worker) or 'auto' (default: KVM when usable). */
  setBackend(backend: BackendChoice): this {
    this.#open();
    if (backend !== 'kvm' && backend !== 'wasm' && backend !== 'auto') {
      throw new InvalidArgumentError(`backend must be 'kvm', 'wasm' or 'auto' (got ${JSON.stringify(backend)})`);
    }
    this.#backend = backend;
    return this;
  }

  /**
   * Receives the guest's console output instead of the host's stdout/stderr.
   * `level` is 'log' | 'info' | 'warn' | 'error' | 'debug'.
   */
  setConsoleHandler(handler: ConsoleHandler): this {
    this.#open();
    this.#console = requireFunction<ConsoleHandler>(handler, 'console handler');
    return this;
  }

  /** Console bytes kept per call (default 64 KiB); the rest is dropped with a note. */
  setConsoleLimit(bytes: number): this {
    this.#open();
    this.#consoleLimit = requireSize(bytes, 'console limit', sizeLimits.consoleLimit.min, sizeLimits.consoleLimit.max);
    return this;
  }

  /**
   * Whether this builder's sandboxes take handler and module bytecode from the process's
   * compiled-code cache (default true; `compileCache.configure({ maxBytes: 0 })` turns it
   * off for the whole process). Results are the same either way; false makes every LOAD
   * compile its source inside the sandbox, with no compiler sandbox involved.
   */
  setCompileCache(enabled: boolean): this {
    this.#open();
    if (typeof enabled !== 'boolean') throw new InvalidArgumentError(`compile cache setting must be a boolean (got ${typeof enabled})`);
    this.#compileCache = enabled;
    return this;
  }

  /**
   * Rejects option keys that callHandler() does not know with ERR_INVALID_ARG, instead
   * of the default: ignoring them, as the mirrored API does, with a one-time warning.
   */
  setStrictOptions(strict = true): this {
    this.#open();
    if (typeof strict !== 'boolean') throw new InvalidArgumentError(`strict must be a boolean (got ${typeof strict})`);
    this.#strictOptions = strict;
    return this;
  }

  /**
   * Host functions for every sandbox this builder makes: `factory` returns fresh
   * HostFunctionModules (so per-sandbox callback state is never shared), which this
   * builder consumes; a module already given to another builder is ERR_CONSUMED, the
   * same module twice or two modules of one name ERR_INVALID_ARG (and then none is
   * consumed).
   */
  setHostFunctionModules(factory: () => Iterable<HostFunctionModule>): this {
    this.#open();
    requireFunction<() => Iterable<HostFunctionModule>>(factory, 'host function module factory');
    const produced: unknown = factory();
    if (produced === null || typeof produced !== 'object' || typeof (produced as Iterable<unknown>)[Symbol.iterator] !== 'function') {
      throw new InvalidArgumentError('the host function module factory must return an array of HostFunctionModule');
    }
    const modules = [...(produced as Iterable<unknown>)];
    const names = new Set<string>();
    for (const m of modules) {
      if (!HostFunctionModule.is(m)) throw new InvalidArgumentError('the host function module factory returned something that is not a HostFunctionModule');
      if (names.has(m.name)) throw new InvalidArgumentError(`host module '${m.name}' appears twice in the factory's result`);
      names.add(m.name);
    }
    for (const m of modules as HostFunctionModule[]) {
      if (HostFunctionModule.isConsumed(m)) throw new ConsumedError(`host module '${m.name}' was already given to another SandboxBuilder; return fresh modules from the factory`);
    }
    const taken = new Map<string, ReadonlyMap<string, HostFunction>>();
    for (const m of modules as HostFunctionModule[]) taken.set(m.name, HostFunctionModule.consume(m, 'a SandboxBuilder'));
    this.#hostFunctions = taken;
    return this;
  }

  /**
   * Which of the setHostFunctionModules() functions a sandbox restored from a snapshot
   * registers: 'all' (default) or only those the snapshot requires ('snapshotRequirements').
   */
  setHostFunctionFilter(filter: 'all' | 'snapshotRequirements'): this {
    this.#open();
    if (filter !== 'all' && filter !== 'snapshotRequirements') {
      throw new InvalidArgumentError(`host function filter must be 'all' or 'snapshotRequirements' (got ${JSON.stringify(filter)})`);
    }
    this.#hostFunctionFilter = filter;
    return this;
  }

  /**
   * The hardened profile for untrusted code (an Airlock addition): eval and Function are
   * disabled, every intrinsic is frozen, performance.now and Date.now are coarse
   * (`timeResolutionMs`, default 1), and with `fixedTime` Date.now() and new Date() always
   * give that instant. See docs/API.md.
   */
  setHardened(options: HardenedOptions = {}): this {
    this.#open();
    this.#guestOptions = { ...this.#guestOptions, hardened: hardenedProfile(options) };
    return this;
  }

  /**
   * Math.random replays the sequence of `seed` (an Airlock addition, for deterministic
   * replay): it is never reseeded, so a restored sandbox repeats it. crypto.getRandomValues
   * and crypto.randomUUID stay random.
   */
  setDeterministicRandom(seed: number | bigint): this {
    this.#open();
    this.#guestOptions = { ...this.#guestOptions, randomSeed: randomSeed(seed) };
    return this;
  }


  /**
   * Uint8Arrays (Buffers included) and ArrayBuffers in events, results and host-function
   * arguments and results cross the boundary as bytes, nested anywhere in the value (an
   * Airlock addition; off by default, since the mirrored API gives JSON.stringify semantics:
   * a Buffer arrives as { type: 'Buffer', data }). The guest sees Uint8Array or ArrayBuffer,
   * the host gets Uint8Array or ArrayBuffer. docs/PROTOCOL.md defines the encoding.
   */
  setBinaryData(enabled = true): this {
    this.#open();
    if (typeof enabled !== 'boolean') throw new InvalidArgumentError(`enabled must be a boolean (got ${typeof enabled})`);
    this.#guestOptions = { ...this.#guestOptions, binary: enabled };
    return this;
  }

  /**
   * Async host calls (`host:<m>?async` and fetch) one call may have in flight at once
   * (default 64, at most 10,000); one more rejects in the guest with a HostFunctionError.
   */
  setAsyncHostCallLimit(count: number): this {
    this.#open();
    if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 1 || count > 10_000) {
      throw new InvalidArgumentError(`async host call limit must be an integer from 1 to 10000 (got ${String(count)})`);
    }
    this.#asyncHostCallLimit = count;
    return this;
  }

  /**
   * Grants the guest fetch() under an allow-list (docs/API.md, "fetch"); without it the
   * guest's fetch() rejects with a TypeError.
   */
  setFetchPolicy(policy: FetchPolicy): this {
    this.#open();
    resolveFetchPolicy(policy); // refuses a bad policy now, not at the first fetch
    this.#fetchPolicy = structuredClone(policy);
    return this;
  }

  /**
   * A restorer for sandboxes in `snapshot`'s state, on the snapshot's tier and with its
   * sizes (the size setters do not apply). Consumes the builder. Host functions the
   * snapshot requires are checked when the restorer starts a sandbox.
   */
  async buildFromSnapshot(snapshot: Snapshot): Promise<SandboxRestorer> {
    this.#open();
    const content = Snapshot.contentOf(snapshot);
    if (this.#backend !== 'auto' && this.#backend !== content.backend) {
      throw new InvalidArgumentError(`the snapshot is of a ${content.backend} sandbox, but this builder is set to '${this.#backend}'`);
    }
    templateSupport(content.backend);
    // The guest runtime options live in the snapshot's guest state, loaded with it.
    if (Object.keys(this.#guestOptions).length > 0) {
      throw new InvalidArgumentError('setHardened(), setDeterministicRandom() and setBinaryData() do not apply to buildFromSnapshot(): a restored sandbox keeps the options its snapshot was loaded with');
    }
    this.#consumed = true;
    try {
      // Made now, so restores pay only for the clone.
      await content.baselineTemplate();
      await content.stateTemplate();
    } catch (e) {
      this.#consumed = false;
      throw e;
    }
    return new SandboxRestorer(content, {
      hostFunctions: this.#hostFunctions,
      filter: this.#hostFunctionFilter,
      console: this.#console,
      view: { unknownOptions: this.#strictOptions ? 'reject' : 'warn' },
      hostOptions: { asyncHostCallLimit: this.#asyncHostCallLimit, fetch: this.#fetchPolicy, compileCache: this.#compileCache },
    });
  }

  /** Boots a sandbox on the chosen tier. Consumes the builder once it succeeds. */
  async build(): Promise<ProtoJSSandbox> {
    this.#open();
    this.#consumed = true;
    try {
      return await this.#build();
    } catch (e) {
      this.#consumed = false;
      throw e;
    }
  }

  async #build(): Promise<ProtoJSSandbox> {
    const factory = engineFactory(this.#backend);
    const core = await SandboxCore.create(
      {
        heapSize: this.#heapSize,
        stackSize: this.#scratchSize,
        inputSize: this.#inputBufferSize,
        outputSize: this.#outputBufferSize,
        consoleLimit: this.#consoleLimit,
      },
      factory,
      this.#console,
      this.#guestOptions,
      { asyncHostCallLimit: this.#asyncHostCallLimit, fetch: this.#fetchPolicy, compileCache: this.#compileCache },
    );
    for (const [module, fns] of this.#hostFunctions) core.hostFunctions.set(module, new Map(fns));
    return new ProtoJSSandbox(core, { unknownOptions: this.#strictOptions ? 'reject' : 'warn' });
  }
}
