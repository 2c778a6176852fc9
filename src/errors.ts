// errors.ts — Airlock's error taxonomy: every error the API throws is an AirlockError
// subclass with a stable `code`. Codes are part of the public contract; messages are not.

/** The stable code of every AirlockError; docs/ERRORS.md says when each is raised and what to do. */
export type ErrorCode =
  | 'ERR_INVALID_ARG'
  | 'ERR_CONSUMED'
  | 'ERR_POISONED'
  | 'ERR_CANCELLED'
  | 'ERR_GUEST_ABORT'
  | 'ERR_GUEST_EXCEPTION'
  | 'ERR_COMPILE'
  | 'ERR_TOO_LARGE'
  | 'ERR_OUT_OF_MEMORY'
  | 'ERR_STACK_OVERFLOW'
  | 'ERR_BUSY'
  | 'ERR_OVERLOADED'
  | 'ERR_UNAVAILABLE'
  | 'ERR_INTERNAL';

/** Timing of a request, attached to errors so CallStats exist even when a call fails. */
export interface ErrorStats {
  /** Wall-clock time of the request, in nanoseconds. */
  wallTimeNs: number;
  /** Guest CPU time of the request in nanoseconds, or null where it was not measured. */
  cpuTimeNs: number | null;
}

/**
 * The base of every error Airlock throws or rejects with. Test `code` (stable) or use
 * `instanceof` with a subclass; both work from ES modules and CommonJS, which share one
 * instance of the package. Messages are for people and may change.
 */
export class AirlockError extends Error {
  /** The stable error code, e.g. 'ERR_CANCELLED'. */
  readonly code: ErrorCode;
  /** Set by engines on rejected exchanges. */
  stats?: ErrorStats;
  /** @internal Set by engines on a cancelled or aborted exchange: what the guest had
   *  written to its output buffer before it stopped (its console lines), hostile bytes that
   *  src/core.ts decodes with consoleBeforeStop() and consumes. */
  guestOutput?: Uint8Array;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A bad argument from the caller: wrong type, empty name, zero size, oversize payload. */
export class InvalidArgumentError extends AirlockError {
  constructor(message: string) {
    super('ERR_INVALID_ARG', message);
  }
}

/** An object used after it was consumed (e.g. loadRuntime() twice). */
export class ConsumedError extends AirlockError {
  constructor(message: string) {
    super('ERR_CONSUMED', message);
  }
}

/** The sandbox is poisoned; restore a snapshot or unload first. */
export class PoisonedError extends AirlockError {
  constructor(message: string) {
    super('ERR_POISONED', message);
  }
}

/** A request was cancelled by a monitor or kill(). */
export class CancelledError extends AirlockError {
  /** What cancelled the call: its wallClockTimeoutMs, its cpuTimeoutMs, or InterruptHandle.kill(). */
  readonly terminatedBy: 'wall-clock' | 'cpu-time' | 'kill';
  constructor(terminatedBy: 'wall-clock' | 'cpu-time' | 'kill', message?: string) {
    super('ERR_CANCELLED', message ?? `execution cancelled by ${terminatedBy}`);
    this.terminatedBy = terminatedBy;
  }
}

/** The guest died or broke the protocol (CPU fault, malformed output, explicit abort). */
export class GuestAbortError extends AirlockError {
  constructor(message: string) {
    super('ERR_GUEST_ABORT', message);
  }
}

/**
 * Guest JavaScript threw. `guestName`, `message` and `guestStack` are the guest's own;
 * `name` and `stack` mirror them so the error reads like the original.
 */
export class GuestExceptionError extends AirlockError {
  /** The guest error's `name` (e.g. 'TypeError'), or '' when the guest threw a non-Error. */
  readonly guestName: string;
  /** The guest's own stack trace (guest file names and lines). */
  readonly guestStack: string;
  constructor(guestName: string, message: string, guestStack: string) {
    super('ERR_GUEST_EXCEPTION', message);
    this.guestName = guestName;
    this.guestStack = guestStack;
    this.name = guestName || 'Error';
    this.stack = `${this.name}: ${message}\n${guestStack}`.trimEnd();
  }
}

/** A handler or module failed to compile or load (syntax error, missing import, no handler). */
export class CompileError extends AirlockError {
  constructor(message: string) {
    super('ERR_COMPILE', message);
  }
}

/** A value did not fit the buffer it must cross (result larger than the output buffer). */
export class TooLargeError extends AirlockError {
  constructor(message: string) {
    super('ERR_TOO_LARGE', message);
  }
}

/** The guest heap was exhausted. */
export class OutOfMemoryError extends AirlockError {
  constructor(message: string) {
    super('ERR_OUT_OF_MEMORY', message);
  }
}

/** The guest's JavaScript stack was exhausted. */
export class StackOverflowError extends AirlockError {
  constructor(message: string) {
    super('ERR_STACK_OVERFLOW', message);
  }
}

/** The sandbox cannot take this call now (e.g. a host function calling into its own sandbox). */
export class BusyError extends AirlockError {
  constructor(message: string) {
    super('ERR_BUSY', message);
  }
}

/** Why a SandboxPool turned a call away. */
export type OverloadReason = 'queue-full' | 'queue-timeout' | 'memory' | 'tenants';

/**
 * A SandboxPool turned a call away instead of queueing it without bound: the tenant's
 * queue was full, the call waited longer than the queue allows, or one sandbox needs
 * more than the whole process-wide guest memory cap. Nothing ran; retry later.
 */
export class OverloadedError extends AirlockError {
  /**
   * Which limit turned the call away: 'queue-full' (maxQueuePerTenant calls already
   * waiting), 'queue-timeout' (no sandbox within queueTimeoutMs) or 'memory' (one sandbox
   * needs more than setGuestMemoryLimit() allows, so waiting cannot help) or 'tenants'
   * (maxTenants tenants all hold sandboxes or calls, so a new one has no room).
   */
  readonly reason: OverloadReason;
  constructor(reason: OverloadReason, message: string) {
    super('ERR_OVERLOADED', message);
    this.reason = reason;
  }
}

/**
 * The requested backend cannot run here, or a requested limit cannot be enforced on this
 * platform (cpuTimeoutMs without a thread CPU clock); `reasons` lists each reason and its fix.
 */
export class UnavailableError extends AirlockError {
  /** Each reason the backend or limit is unavailable, each naming its fix. */
  readonly reasons: string[];
  constructor(message: string, reasons: string[]) {
    super('ERR_UNAVAILABLE', message);
    this.reasons = reasons;
  }
}

/** Something inside Airlock failed unexpectedly. */
export class InternalError extends AirlockError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_INTERNAL', message, options);
  }
}
