// kvm-engine.ts — the KVM tier: one micro-VM per sandbox, run by the host addon on its
// own vCPU thread. This file only adapts the addon to the GuestEngine interface.
import { readFileSync } from 'node:fs';
import {
  AirlockError,
  CancelledError,
  GuestAbortError,
  InternalError,
  InvalidArgumentError,
  BusyError,
  PoisonedError,
} from '../errors.js';
import type {
  EngineConfig,
  EngineSnapshot,
  ExchangeOptions,
  EngineTemplate,
  ExchangeResult,
  GuestEngine,
  HostCallHandler,
  TerminatedBy,
} from './engine.js';
import { loadAddon, type NativeAddon, type NativeSendResult, type NativeVm } from './native.js';
import { kvmImagePath } from './paths.js';
import { kvmUnusableReasons, unavailableError } from './probe.js';

let image: Buffer | undefined;

function guestImage(): Buffer {
  // Read once per process: every VM copies it into its own guest memory.
  image ??= readFileSync(kvmImagePath);
  return image;
}

class KvmSnapshot implements EngineSnapshot {
  readonly backend = 'kvm' as const;
  constructor(
    readonly owner: KvmEngine,
    readonly native: object,
  ) {}
}

/** Turns an addon rejection into the taxonomy, keeping its timing. */
function rejectFromNative(e: unknown): never {
  throw fromNative(e);
}

function fromNative(e: unknown): AirlockError {
  if (e instanceof AirlockError) return e;
  const err = e as { code?: string; message?: string; terminatedBy?: string; wallTimeNs?: number; cpuTimeNs?: number; output?: unknown };
  const message = err?.message ?? String(e);
  let out: AirlockError;
  switch (err?.code) {
    case 'ERR_CANCELLED':
      out = new CancelledError((err.terminatedBy as TerminatedBy) ?? 'kill');
      if (err.output instanceof Uint8Array) out.guestOutput = err.output;
      break;
    case 'ERR_GUEST_ABORT':
      out = new GuestAbortError(message);
      if (err.output instanceof Uint8Array) out.guestOutput = err.output;
      break;
    case 'ERR_INVALID_ARG':
      out = new InvalidArgumentError(message);
      break;
    case 'ERR_BUSY':
      out = new BusyError(message);
      break;
    case 'ERR_POISONED':
      out = new PoisonedError(message);
      break;
    default:
      out = new InternalError(message, { cause: e });
  }
  if (typeof err?.wallTimeNs === 'number') {
    out.stats = { wallTimeNs: err.wallTimeNs, cpuTimeNs: typeof err.cpuTimeNs === 'number' ? err.cpuTimeNs : null };
  }
  return out;
}

export class KvmEngine implements GuestEngine {
  readonly backend = 'kvm' as const;
  private readonly vm: NativeVm;
  private disposed = false;
  private readonly config: EngineConfig;
  /** A clone's start from its template (the Boot op that maps it); undefined otherwise. */
  private adopting: Promise<void> | undefined;

  /** `from`: a native template handle (kvm-template.ts) to clone instead of booting. */
  constructor(config: EngineConfig, onHostCall: HostCallHandler, from?: object) {
    this.config = { ...config };
    const reasons = kvmUnusableReasons();
    if (reasons.length > 0) {
      throw unavailableError('kvm', reasons);
    }
    const addon = loadAddon().addon as NativeAddon;
    this.vm = KvmEngine.createVm(addon, from ?? guestImage(), config, (output: Buffer, callId: number) => {
      const reply = onHostCall(output);
      // A synchronous host function's reply goes back in the same turn of the event loop.
      if (!(reply instanceof Promise)) return this.answerHostCall(reply, callId);
      reply.then(
        (r) => this.answerHostCall(r, callId),
        // The handler encodes callback failures itself; reaching here means the
        // exchange is already being torn down, so there is nobody left to answer.
        () => undefined,
      );
    });
  }

  /** The addon's Vm, with its refusals (bad image, sizes, signal) as AirlockErrors. */
  private static createVm(
    addon: NativeAddon,
    source: Buffer | object,
    config: EngineConfig,
    onHostCall: (output: Buffer, callId: number) => void,
  ): NativeVm {
    try {
      return new (addon.Vm as new (...args: unknown[]) => NativeVm)(source, config, onHostCall);
    } catch (e) {
      throw fromNative(e);
    }
  }

  /** The call id pairs an answer with its question: a late answer to a cancelled
   *  exchange's host call must never be taken for the next exchange's. */
  private answerHostCall(reply: Uint8Array, callId: number): void {
    if (this.disposed) return;
    try {
      this.vm.hostReturn(Buffer.from(reply.buffer, reply.byteOffset, reply.byteLength), callId);
    } catch {
      // The exchange was cancelled while the callback ran; its answer has no taker.
    }
  }

  /** A new engine already booted in `template`'s state (TemplateSupport.clone). */
  static fromTemplate(template: object, config: EngineConfig, onHostCall: HostCallHandler): KvmEngine {
    const engine = new KvmEngine(config, onHostCall, template);
    // The vCPU thread maps the template and sets the CPU state; no guest code runs.
    const adopting = engine.vm.boot().then(
      () => undefined,
      (e) => {
        throw fromNative(e);
      },
    );
    adopting.catch(() => undefined); // reported by the first operation that awaits it
    engine.adopting = adopting;
    return engine;
  }

  /** A clone's operations wait for its start, and fail with its error. */
  private async cloneStarted(): Promise<void> {
    if (this.adopting) await this.adopting;
  }

  /** Freezes `snapshot` into a template clones start from (kvm-template.ts). */
  async template(snapshot: EngineSnapshot): Promise<EngineTemplate> {
    if (!(snapshot instanceof KvmSnapshot) || snapshot.owner !== this) {
      throw new InvalidArgumentError('the snapshot was taken from another sandbox');
    }
    if (this.disposed) throw new InvalidArgumentError('the sandbox is disposed');
    const { makeKvmTemplate } = await import('./kvm-template.js');
    return makeKvmTemplate(snapshot.native, this.config);
  }

  async boot(): Promise<Uint8Array> {
    if (this.adopting) throw new InvalidArgumentError('the VM has already booted (it was cloned from a template)');
    try {
      return await this.vm.boot();
    } catch (e) {
      throw fromNative(e);
    }
  }

  exchange(request: Uint8Array, options?: ExchangeOptions): Promise<ExchangeResult> {
    // Not an async function: every promise turn is main-thread work each call pays
    // (main_thread_cpu_us_per_call), so a call is the addon's promise and one
    // continuation that codes its failures. The addon's result is an ExchangeResult.
    if (this.adopting) return this.adopting.then(() => this.send(request, options));
    return this.send(request, options);
  }

  private send(request: Uint8Array, options: ExchangeOptions | undefined): Promise<ExchangeResult> {
    let sent: Promise<NativeSendResult>;
    try {
      const buf = Buffer.isBuffer(request) ? request : Buffer.from(request.buffer, request.byteOffset, request.byteLength);
      sent = this.vm.send(buf, options);
    } catch (e) {
      return Promise.reject(fromNative(e));
    }
    return sent.then(undefined, rejectFromNative);
  }

  kill(): void {
    if (!this.disposed) this.vm.kill();
  }

  async snapshot(): Promise<EngineSnapshot> {
    await this.cloneStarted();
    try {
      return new KvmSnapshot(this, await this.vm.snapshot());
    } catch (e) {
      throw fromNative(e);
    }
  }

  async restore(snapshot: EngineSnapshot): Promise<void> {
    if (!(snapshot instanceof KvmSnapshot) || snapshot.owner !== this) {
      throw new InvalidArgumentError('the snapshot was taken from another sandbox');
    }
    await this.cloneStarted();
    try {
      await this.vm.restore(snapshot.native);
    } catch (e) {
      throw fromNative(e);
    }
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.vm.dispose();
  }
}

export { guestImage as kvmGuestImage };
