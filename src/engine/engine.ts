// engine.ts — the one interface both tiers (KVM micro-VM, WebAssembly worker) implement.
// The facade speaks only to this; it never branches on the tier. An engine moves
// opaque message bytes (framed as guest/include/abi.h says) in and out of one guest
// and enforces limits; src/engine/protocol.ts gives the bytes their meaning.

/** A sandbox's tier: 'kvm' (a KVM micro-VM) or 'wasm' (WebAssembly in a worker thread). */
export type Backend = 'kvm' | 'wasm';

/** Which monitor or action ended a call early. */
export type TerminatedBy = 'wall-clock' | 'cpu-time' | 'kill';

export interface EngineConfig {
  /** Guest heap bytes (the guest allocator's arena). */
  heapSize: number;
  /** Guest stack bytes (the builder's scratch size). */
  stackSize: number;
  /** Bytes of the host->guest buffer: one request message must fit. */
  inputSize: number;
  /** Bytes of the guest->host buffer: console output plus one response must fit. */
  outputSize: number;
  /** Console bytes the guest keeps per request; the rest is counted and dropped. The
   *  host does not rely on the guest's count: src/console.ts enforces it again. */
  consoleLimit: number;
}

export interface ExchangeOptions {
  /** Cancel the request when it has run this long (ms, > 0). */
  wallClockTimeoutMs?: number;
  /** Cancel the request when the guest has used this much CPU (ms, > 0); time spent
   *  in host functions does not count. */
  cpuTimeoutMs?: number;
}

export interface ExchangeResult {
  /** The guest's output buffer: console messages then one final message. */
  output: Uint8Array;
  /** Wall-clock duration of the exchange in nanoseconds. */
  wallTimeNs: number;
  /** Guest CPU time in nanoseconds, or null where the tier cannot measure it. */
  cpuTimeNs: number | null;
}

/**
 * Called when the guest makes a host call: `output` is the guest's output buffer
 * (console messages then one HOST_CALL message). Resolves with the HOST_RETURN
 * message to place in the guest's input buffer. Runs on the Node main thread. A host
 * function that returns synchronously is answered at once (no promise); the handler
 * never throws.
 */
export type HostCallHandler = (output: Uint8Array) => Uint8Array | Promise<Uint8Array>;

/** Opaque engine-level snapshot; only the engine that made it can restore it. */
export interface EngineSnapshot {
  readonly backend: Backend;
}

export interface GuestEngine {
  readonly backend: Backend;
  /**
   * Starts the guest; resolves with its first output (READY or ABORT). Rejects with
   * ERR_INVALID_ARG when already booted, disposed, or (WebAssembly) the sizes do not
   * fit the address space; ERR_GUEST_ABORT when the guest faulted while booting;
   * ERR_BUSY when another operation runs; ERR_INTERNAL when the VM or worker could not
   * be created or failed.
   */
  boot(): Promise<Uint8Array>;
  /**
   * Sends one request message (at most inputSize bytes) and runs the guest until its
   * final response, serving host calls through the HostCallHandler meanwhile.
   * Rejects with AirlockError: ERR_CANCELLED (error.terminatedBy says why) when a
   * monitor fired or kill() was called; ERR_GUEST_ABORT when the guest died or broke
   * the protocol (and, on WebAssembly, for every later request until a restore);
   * ERR_POISONED (KVM) for every request after an abort, or a cancel that stopped the
   * guest mid-request, until a restore; ERR_INVALID_ARG when the request exceeds
   * inputSize, a timeout is not a positive number, or the guest is not booted or
   * disposed; ERR_BUSY when another operation runs; ERR_INTERNAL when the hypervisor
   * or worker failed. The rejection carries
   * `stats` ({ wallTimeNs, cpuTimeNs }) like a result would, and an ERR_CANCELLED or
   * ERR_GUEST_ABORT one `guestOutput`: what the guest had written to its output buffer
   * before the stop or abort (its console lines; hostile bytes), when it wrote anything
   * and its memory outlived it (not for a WebAssembly worker that was terminated). The guest's own failures
   * (exception, out of memory, stack overflow, too large) are RESULT statuses in the
   * output, not rejections: the facade decodes them.
   */
  exchange(request: Uint8Array, options?: ExchangeOptions): Promise<ExchangeResult>;
  /** Cancels the exchange in flight, if any (ERR_CANCELLED, terminatedBy 'kill').
   *  KVM throws ERR_INTERNAL if the vCPU thread cannot be signalled. */
  kill(): void;
  /**
   * Captures the guest's state between requests. Rejects with ERR_POISONED (KVM) after
   * an abort or a cancel that stopped the guest; ERR_GUEST_ABORT (WebAssembly) after an
   * abort, a guest terminated for ignoring a cancel, or one given up while stuck in
   * post-call work; ERR_INVALID_ARG when not booted or disposed; ERR_BUSY;
   * ERR_INTERNAL.
   */
  snapshot(): Promise<EngineSnapshot>;
  /**
   * Returns the guest to a snapshot taken by this engine; usable after an abort or
   * kill. Rejects with ERR_INVALID_ARG for a snapshot of another engine, when disposed
   * or (KVM) not booted, and (KVM) for CPU state that would enable system calls, which
   * also poisons; ERR_GUEST_ABORT (WebAssembly) when the guest faults while restored;
   * ERR_BUSY; ERR_INTERNAL.
   */
  restore(snapshot: EngineSnapshot): Promise<void>;
  /**
   * Freezes a snapshot taken by this engine into a template others can clone (see
   * EngineTemplate). Rejects like restore() for a foreign snapshot, and with
   * ERR_POISONED (KVM) / ERR_GUEST_ABORT (WebAssembly) when the snapshot is of a guest
   * that cannot run. The engine itself is unaffected.
   */
  template?(snapshot: EngineSnapshot): Promise<EngineTemplate>;
  /** Releases the guest and everything it holds; idempotent, never rejects. An
   *  operation in flight rejects (the facade reports it as ERR_CONSUMED). */
  dispose(): Promise<void>;
}

/**
 * A frozen guest state that new engines start from (issue #12). Made from a snapshot
 * of a booted engine by `GuestEngine.template()`; the template's memory is immutable
 * from then on. KVM: the memory lives in a sealed memfd that every clone maps
 * private (copy-on-write), so clones share untouched pages and the image; the engine
 * the snapshot came from keeps running on its own copy. WebAssembly: clones copy the
 * bytes. A template is used by many clones at once and by no running guest.
 */
export interface EngineTemplate {
  readonly backend: Backend;
  /** The sizes the guest was made with; a clone always uses exactly these. */
  readonly config: EngineConfig;
  /** Guest bytes held (KVM: the bytes in the sealed memfd, whose all-zero pages are
   *  holes that hold nothing; WebAssembly: the copied bytes). */
  readonly byteLength: number;
  /** Frees the template once the last clone made from it is gone; idempotent. Clones
   *  alive at that time keep working (they hold their own reference). */
  release(): void;
}

/**
 * A template as plain data, for persistent snapshots (src/ writes it to disk; the
 * file format, digests and metadata are src/'s business). Produced by the tier's
 * `exportTemplate`; `importTemplate` treats every field as hostile: it refuses
 * (ERR_INVALID_ARG, naming the field) a different backend, ABI version or guest image
 * digest, sizes the tier cannot use, memory ranges that overlap or fall outside the
 * guest layout, and CPU state the tier would refuse on restore (KVM: anything that
 * enables system calls or leaves ring 3).
 */
export interface SerializedTemplate {
  readonly backend: Backend;
  /** AIRLOCK_ABI_VERSION of the guest that produced it. */
  readonly abiVersion: number;
  /** Hex SHA-256 of the guest image (KVM .img / WebAssembly .wasm) it ran. */
  readonly imageSha256: string;
  readonly config: EngineConfig;
  /** Tier-specific CPU/instance state, opaque to src/ (KVM: registers, segments, FPU,
   *  MSRs as the addon encodes them; WebAssembly: the module's mutable globals). */
  readonly cpuState: Uint8Array;
  /** Guest memory contents as non-overlapping ranges in ascending offset order; bytes
   *  not covered are zero. Offsets are guest-physical (KVM) or linear-memory
   *  (WebAssembly) addresses. */
  readonly memory: ReadonlyArray<{ readonly offset: number; readonly bytes: Uint8Array }>;
}

/** What each tier module exports beside its engine class for templates. */
export interface TemplateSupport {
  /** A new engine that starts already booted in the template's state (boot() rejects
   *  with ERR_INVALID_ARG: already booted). Its first exchange sees the guest exactly
   *  as the snapshot left it, except the guest's random state, which the engine
   *  reseeds from host entropy unless `deterministic` is true (then Math.random
   *  continues the template's sequence; crypto entropy is always fresh). */
  clone(template: EngineTemplate, onHostCall: HostCallHandler, options?: { deterministic?: boolean }): GuestEngine;
  exportTemplate(template: EngineTemplate): SerializedTemplate;
  importTemplate(serialized: SerializedTemplate): EngineTemplate;
}

/** Creates an engine for one sandbox; the facade holds one per tier choice. Throws
 *  ERR_UNAVAILABLE when the tier cannot run here, ERR_INVALID_ARG when the sizes (or,
 *  on KVM, the guest image) are unusable, and (KVM) ERR_INTERNAL when the VM's host
 *  resources cannot be set up; always as AirlockErrors. */
export type EngineFactory = (config: EngineConfig, onHostCall: HostCallHandler) => GuestEngine;
