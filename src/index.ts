// index.ts — the public API of the airlock package.
export { SandboxBuilder } from './builder.js';
export {
  ProtoJSSandbox,
  JSSandbox,
  LoadedJSSandbox,
  HostModule,
  Snapshot,
  InterruptHandle,
  type CallHandlerOptions,
  type CallStats,
} from './sandbox.js';
export type { ConsoleHandler, HostFunction } from './core.js';
export type { FetchPolicy } from './fetch/policy.js';
export type { Backend, TerminatedBy } from './engine/engine.js';
export type { BackendChoice } from './engine/select.js';
export {
  AirlockError,
  InvalidArgumentError,
  ConsumedError,
  PoisonedError,
  CancelledError,
  GuestAbortError,
  GuestExceptionError,
  CompileError,
  TooLargeError,
  OutOfMemoryError,
  StackOverflowError,
  BusyError,
  UnavailableError,
  InternalError,
  type ErrorCode,
} from './errors.js';
