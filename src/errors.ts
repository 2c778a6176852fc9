// errors.ts — Airlock's error taxonomy: every error the API throws is an AirlockError
// subclass with a stable `code`. Codes are part of the public contract; messages are not.

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
  | 'ERR_UNAVAILABLE'
  | 'ERR_INTERNAL';

/** Timing of a request, attached to errors so CallStats exist even when a call fails. */
export interface ErrorStats {
  wallTimeNs: number;
  cpuTimeNs: number | null;
}

export class AirlockError extends Error {
  readonly code: ErrorCode;
  /** Set by engines on rejected exchanges. */
  stats?: ErrorStats;
  /** @internal Set by engines on a cancelled exchange: what the guest had written to its
   *  output buffer before it stopped (its console lines), hostile bytes that
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
  readonly guestName: string;
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

/** The requested backend cannot run here; the message lists each reason and its fix. */
export class UnavailableError extends AirlockError {
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
