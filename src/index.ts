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
  type SnapshotKind,
  type SnapshotRequirements,
} from './sandbox.js';
export { HostFunctionModule } from './host-function-module.js';
export { SandboxRestorer, type HostFunctionFilter } from './restorer.js';
export { SandboxStatus, SnapshotRequirementStatus } from './snapshot/status.js';
export type { ConsoleHandler, HostFunction } from './core.js';
export * from './pool/index.js';
export type { HardenedOptions } from './guest-options.js';
export type { SourceOptions } from './typescript.js';
export type { FetchPolicy } from './fetch/policy.js';
export { compileCache, type CompileCache, type CompileCacheStats } from './compile-cache.js';
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
  OverloadedError,
  type OverloadReason,
  UnavailableError,
  InternalError,
  type ErrorCode,
} from './errors.js';
