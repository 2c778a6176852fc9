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
  PoisonedError,
  StackOverflowError,
  TooLargeError,
} from './errors.js';
import type { Backend, EngineConfig, EngineFactory, EngineSnapshot, ExchangeOptions, GuestEngine, TerminatedBy } from './engine/engine.js';
import * as abi from './engine/abi.generated.js';
import { consoleBeforeStop, encodeMessage, encodedSize, fieldText, splitOutput, type FieldValue, type Message } from './engine/protocol.js';
import { GuestConsole, type ConsoleHandler } from './console.js';
import { poisons } from './poison.js';
import { describeThrown } from './validate.js';

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

let nextSandboxId = 1;

export class SandboxCore {
  readonly id = nextSandboxId++;
  readonly config: EngineConfig;
  readonly backend: Backend;
  private readonly engine: GuestEngine;
  /** Guest console lines of the operation in progress; its budget renews per operation. */
  private readonly console: GuestConsole;
  readonly hostFunctions = new Map<string, Map<string, HostFunction>>();

  private queue: Promise<unknown> = Promise.resolve();
  private callerChain: readonly HostCallFrame[] = [];
  private protocolFault: AirlockError | undefined;
  private disposed = false;
  private poisonReason: string | undefined;
  /** The guest right after loadRuntime(): unload() returns here, even from a poisoned state. */
  private runtimeBaseline: EngineSnapshot | undefined;

  lastCallStats: CallStats | null = null;

  private constructor(config: EngineConfig, factory: EngineFactory, consoleHandler: ConsoleHandler | undefined) {
    this.config = config;
    this.console = new GuestConsole(this.id, config.consoleLimit, consoleHandler);
    this.engine = factory(config, (output) => this.serveHostCall(output));
    this.backend = this.engine.backend;
  }

  static async create(config: EngineConfig, factory: EngineFactory, consoleHandler?: ConsoleHandler): Promise<SandboxCore> {
    const core = new SandboxCore(config, factory, consoleHandler);
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

  get poisoned(): boolean {
    return this.poisonReason !== undefined;
  }

  get isDisposed(): boolean {
    return this.disposed;
  }

  // ---------------------------------------------------------------------------
  // Operations. Each runs alone, in call order, so the guest sees one request at a time.

  /** Creates the JS context with the registered host modules. */
  loadRuntime(): Promise<void> {
    return this.serialize(async () => {
      const fields: string[] = [];
      for (const [module, fns] of this.hostFunctions) {
        for (const fn of fns.keys()) fields.push(module, fn);
      }
      this.expectOk(await this.request(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, 0, fields)), 'loadRuntime');
      this.runtimeBaseline = await this.engine.snapshot();
    });
  }

  /** Registers modules and compiles handlers in the guest. */
  load(modules: ReadonlyMap<string, { namespace: string; name: string; source: string }>, handlers: ReadonlyMap<string, string>): Promise<void> {
    return this.serialize(async () => {
      this.assertNotPoisoned();
      const fields: string[] = [];
      for (const m of modules.values()) fields.push('module', m.namespace, m.name, m.source);
      for (const [name, source] of handlers) fields.push('handler', '', name, source);
      const reply = await this.request(encodeMessage(abi.AIRLOCK_MSG_LOAD, 0, fields));
      if (reply.status === abi.AIRLOCK_STATUS_COMPILE_ERROR) {
        // Modules that did evaluate may have run side effects: start the next attempt clean.
        if (this.runtimeBaseline) await this.engine.restore(this.runtimeBaseline);
        throw new CompileError(fieldText(reply, 0) ?? 'handler failed to compile');
      }
      this.expectOk(reply, 'getLoadedSandbox');
    });
  }

  /** Drops handlers and modules by returning the guest to its state after loadRuntime(). */
  unload(): Promise<void> {
    return this.serialize(async () => {
      if (!this.runtimeBaseline) throw new InternalError('unload() before the runtime was loaded');
      await this.engine.restore(this.runtimeBaseline);
      this.poisonReason = undefined;
    });
  }

  /** Runs one handler. */
  /** `gc`: true a full collection after the call, false none, 'auto' one if the guest's
   *  heap grew enough since the last (guest/runtime/runtime.c, post-call GC policy). */
  call(name: string, eventJson: string | undefined, options: ExchangeOptions & { gc: boolean | 'auto' }): Promise<unknown> {
    return this.serialize(async () => {
      this.assertNotPoisoned();
      const fields: FieldValue[] = eventJson === undefined ? [name] : [name, eventJson];
      const size = encodedSize(fields);
      if (size > this.config.inputSize) {
        throw new InvalidArgumentError(
          `event is too large: the request needs ${size} bytes but the input buffer holds ${this.config.inputSize} (raise it with setInputBufferSize())`,
        );
      }
      const flags = options.gc === 'auto' ? abi.AIRLOCK_CALL_FLAG_GC_AUTO : options.gc ? abi.AIRLOCK_CALL_FLAG_GC : 0;
      const started = performance.now();
      let terminatedBy: TerminatedBy | null = null;
      try {
        const { message, wallTimeNs, cpuTimeNs } = await this.exchange(encodeMessage(abi.AIRLOCK_MSG_CALL, flags, fields), options);
        this.lastCallStats = { wallClockMs: wallTimeNs / 1e6, cpuTimeMs: cpuTimeNs === null ? null : cpuTimeNs / 1e6, terminatedBy: null };
        return this.callResult(name, message);
      } catch (e) {
        if (e instanceof CancelledError) terminatedBy = e.terminatedBy;
        const stats = e instanceof AirlockError ? e.stats : undefined;
        this.lastCallStats = {
          wallClockMs: stats ? stats.wallTimeNs / 1e6 : performance.now() - started,
          cpuTimeMs: stats && stats.cpuTimeNs !== null ? stats.cpuTimeNs / 1e6 : null,
          terminatedBy,
        };
        throw e;
      }
    });
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

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.engine.dispose();
  }

  // ---------------------------------------------------------------------------

  private assertNotPoisoned(): void {
    if (this.poisonReason !== undefined) {
      throw new PoisonedError(`the sandbox is poisoned (${this.poisonReason}); call restore() or unload() first`);
    }
  }

  /** Queues `op` behind earlier operations; refuses calls that would wait on themselves. */
  private serialize<T>(op: () => Promise<T>): Promise<T> {
    if (this.disposed) return Promise.reject(new ConsumedError('the sandbox has been disposed'));
    // Only frames still waiting count: once a host call has been answered, work it
    // started may call into its sandbox like any other caller.
    const chain = (hostCallChain.getStore() ?? []).filter((f) => f.active);
    if (chain.some((f) => f.core === this)) {
      return Promise.reject(
        new BusyError('a host function cannot call into the sandbox that is waiting for it (it would deadlock)'),
      );
    }
    const run = async (): Promise<T> => {
      if (this.disposed) throw new ConsumedError('the sandbox has been disposed');
      this.callerChain = chain;
      try {
        return await op();
      } finally {
        this.callerChain = [];
        // Every console line of the operation, host calls included, shared one budget.
        this.console.end();
      }
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  /** Sends a request of any size (chunked when it exceeds the input buffer). */
  private async request(message: Buffer): Promise<Message> {
    if (message.length > this.config.inputSize) {
      const room = this.config.inputSize - abi.AIRLOCK_MSG_HEADER_SIZE - abi.AIRLOCK_FIELD_HEADER_SIZE;
      if (room <= 0) throw new InvalidArgumentError('the input buffer is too small to carry any request');
      for (let off = 0; off < message.length; off += room) {
        const last = off + room >= message.length;
        const chunk = encodeMessage(abi.AIRLOCK_MSG_CHUNK, last ? abi.AIRLOCK_CHUNK_FLAG_LAST : 0, [message.subarray(off, off + room)]);
        const reply = (await this.exchange(chunk)).message;
        if (last) return reply;
        this.expectOk(reply, 'chunked request');
      }
    }
    return (await this.exchange(message)).message;
  }

  /** One engine exchange; failures that poison are recorded here and nowhere else. */
  private async exchange(message: Buffer, options?: ExchangeOptions): Promise<{ message: Message; wallTimeNs: number; cpuTimeNs: number | null }> {
    this.protocolFault = undefined;
    try {
      const r = await this.engine.exchange(message, options);
      const fault = this.protocolFault as AirlockError | undefined;
      if (fault) throw fault;
      return { message: this.readFinal(r.output), wallTimeNs: r.wallTimeNs, cpuTimeNs: r.cpuTimeNs };
    } catch (e) {
      // dispose() stops the guest the way kill() does; say what really happened.
      if (this.disposed) throw new ConsumedError('the sandbox was disposed while the request ran');
      let err = e instanceof AirlockError ? e : new InternalError(String((e as Error)?.message ?? e), { cause: e });
      // A stopped call's console lines are the ones that explain it: deliver them, within
      // the operation's console budget, before the rejection.
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
      throw err;
    }
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
        return JSON.parse(json);
      } catch {
        const err = new GuestAbortError(`guest returned invalid JSON from handler '${name}'`);
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

  /** Answers every host call: whatever a callback throws or returns, the guest gets a reply. */
  private async serveHostCall(output: Uint8Array): Promise<Uint8Array> {
    try {
      return await this.answerHostCall(output);
    } catch (e) {
      return hostError(`the host could not answer the call: ${describeThrown(e)}`, this.config.inputSize);
    }
  }

  private async answerHostCall(output: Uint8Array): Promise<Uint8Array> {
    let module = '';
    let fn = '';
    let args: unknown[];
    try {
      const { console: lines, final } = splitOutput(output);
      this.console.write(lines, false);
      if (final.kind !== abi.AIRLOCK_MSG_HOST_CALL || final.fields.length !== 3) {
        throw new GuestAbortError(`expected a host call, got message kind ${final.kind} with ${final.fields.length} fields`);
      }
      module = final.fields[0].toString('utf8');
      fn = final.fields[1].toString('utf8');
      const parsed: unknown = JSON.parse(final.fields[2].toString('utf8'));
      if (!Array.isArray(parsed)) throw new GuestAbortError('host call arguments are not a JSON array');
      args = parsed;
    } catch (e) {
      // The guest broke the protocol: stop it and report an abort from the exchange.
      this.protocolFault = e instanceof AirlockError ? e : new GuestAbortError(`malformed host call: ${(e as Error).message}`);
      this.engine.kill();
      return hostError('malformed host call', this.config.inputSize);
    }

    const callback = this.hostFunctions.get(module)?.get(fn);
    if (!callback) return hostError(`host function '${module}.${fn}' is not registered`, this.config.inputSize);

    let result: unknown;
    const frame: HostCallFrame = { core: this, active: true };
    try {
      result = await hostCallChain.run([...this.callerChain, frame], () => callback(...args));
    } catch (e) {
      return hostError(describeThrown(e), this.config.inputSize);
    } finally {
      frame.active = false;
    }
    let json: string | undefined;
    try {
      json = JSON.stringify(result);
    } catch (e) {
      return hostError(`host function '${module}.${fn}' returned a value that is not JSON-serialisable: ${describeThrown(e)}`, this.config.inputSize);
    }
    const fields = json === undefined ? [] : [json];
    const size = encodedSize(fields);
    if (size > this.config.inputSize) {
      return hostError(
        `host function '${module}.${fn}' returned ${size} bytes, more than the ${this.config.inputSize}-byte input buffer`,
        this.config.inputSize,
      );
    }
    return encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, fields);
  }
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
