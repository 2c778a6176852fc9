// builder.ts — SandboxBuilder: collects sizes, tier and console options, validates
// them as they are set, and builds a booted ProtoJSSandbox.
import { DEFAULT_ASYNC_HOST_CALL_LIMIT, SandboxCore, type ConsoleHandler } from './core.js';
import { resolveFetchPolicy, type FetchPolicy } from './fetch/policy.js';
import { ConsumedError, InvalidArgumentError } from './errors.js';
import { engineFactory, type BackendChoice } from './engine/select.js';
import { ProtoJSSandbox } from './sandbox.js';
import { requireFunction, requireSize } from './validate.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Defaults and limits of the builder's sizes, in bytes. */
export const sizeLimits = {
  heap: { default: 64 * MiB, min: 2 * MiB, max: 16 * GiB },
  scratch: { default: 1 * MiB, min: 64 * KiB, max: 1 * GiB },
  inputBuffer: { default: 1 * MiB, min: 1 * KiB, max: 256 * MiB },
  outputBuffer: { default: 1 * MiB, min: 1 * KiB, max: 256 * MiB },
  consoleLimit: { default: 64 * KiB, min: 1, max: 256 * MiB },
} as const;

export class SandboxBuilder {
  #heapSize: number = sizeLimits.heap.default;
  #scratchSize: number = sizeLimits.scratch.default;
  #inputBufferSize: number = sizeLimits.inputBuffer.default;
  #outputBufferSize: number = sizeLimits.outputBuffer.default;
  #consoleLimit: number = sizeLimits.consoleLimit.default;
  #backend: BackendChoice = 'auto';
  #console: ConsoleHandler | undefined;
  #strictOptions = false;
  #asyncHostCallLimit = DEFAULT_ASYNC_HOST_CALL_LIMIT;
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
      { asyncHostCallLimit: this.#asyncHostCallLimit, fetch: this.#fetchPolicy },
    );
    return new ProtoJSSandbox(core, { unknownOptions: this.#strictOptions ? 'reject' : 'warn' });
  }
}
