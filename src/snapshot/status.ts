// status.ts — the enumerations the mirrored API exports beside its restore API, as
// frozen string maps (their values are what Snapshot.kind and requirements hold).

/** The sandbox stage a snapshot holds: the values of Snapshot.kind. */
export const SandboxStatus = Object.freeze({
  JsSandbox: 'jsSandbox',
  LoadedJsSandbox: 'loadedJsSandbox',
} as const);
export type SandboxStatus = (typeof SandboxStatus)[keyof typeof SandboxStatus];

/** Whether a snapshot requirement is known: the values of requirements.moduleLoader. */
export const SnapshotRequirementStatus = Object.freeze({
  Unknown: 'unknown',
} as const);
export type SnapshotRequirementStatus = (typeof SnapshotRequirementStatus)[keyof typeof SnapshotRequirementStatus];
