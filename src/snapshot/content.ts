// content.ts — what a public Snapshot holds besides its in-place restore state: its
// kind, requirements, staged sources, and the engine templates new sandboxes clone
// from (made on first use, or imported from a file), which it owns and releases.
import type { Backend, EngineConfig, EngineTemplate } from '../engine/engine.js';
import type { HostFunctionRequirement } from '../core.js';
import type { GuestRuntimeOptions } from '../engine/protocol.js';

/** The sandbox stage a snapshot captures (the mirrored API's Snapshot.kind values). */
export type SnapshotKind = 'jsSandbox' | 'loadedJsSandbox';

/** What a sandbox restored from a snapshot needs from its host. */
export interface SnapshotRequirements {
  /** Host functions the guest runtime was loaded with; each must be registered again. */
  hostFunctions: HostFunctionRequirement[];
  /** Whether the module imports the guest will make are known; Airlock records no
   *  module loader, so this is always 'unknown' (as in the mirrored API). */
  moduleLoader: 'unknown';
}

/** Handlers and modules a JSSandbox had staged (added, not yet compiled) when snapshotted. */
export interface StagedSources {
  handlers: [name: string, source: string][];
  modules: { namespace: string; name: string; source: string }[];
}

/** A template made on demand, with the object that owns it when it is not ours. */
export type TemplateSource = () => Promise<{ template: EngineTemplate; owner?: object }>;

/** Releases the templates a content owned once it is unreachable. */
const releaser = new FinalizationRegistry<EngineTemplate[]>((owned) => {
  for (const t of owned) t.release();
});

export class SnapshotContent {
  readonly kind: SnapshotKind;
  readonly backend: Backend;
  readonly config: EngineConfig;
  readonly requirements: SnapshotRequirements;
  readonly staged: StagedSources | undefined;
  /** The guest runtime options its runtime was loaded with (a clone keeps them). */
  readonly runtimeOptions: GuestRuntimeOptions;
  /** Templates this content made or imported: released with it. */
  readonly #owned: EngineTemplate[] = [];
  /** Other contents whose templates this one uses: kept alive as long as it is. */
  readonly #keep: object[] = [];
  #state: Promise<EngineTemplate> | undefined;
  #baseline: Promise<EngineTemplate> | undefined;
  readonly #makeState: TemplateSource;
  readonly #makeBaseline: TemplateSource;

  constructor(init: {
    kind: SnapshotKind;
    backend: Backend;
    config: EngineConfig;
    requirements: SnapshotRequirements;
    staged?: StagedSources;
    runtimeOptions: GuestRuntimeOptions;
    state: TemplateSource;
    /** For a jsSandbox snapshot the state is the baseline; omit it. */
    baseline?: TemplateSource;
  }) {
    this.kind = init.kind;
    this.backend = init.backend;
    this.config = { ...init.config };
    this.requirements = copyRequirements(init.requirements);
    this.runtimeOptions = { ...init.runtimeOptions, hardened: init.runtimeOptions.hardened && { ...init.runtimeOptions.hardened } };
    this.staged = init.staged && {
      handlers: init.staged.handlers.map(([n, s]) => [n, s]),
      modules: init.staged.modules.map((m) => ({ ...m })),
    };
    this.#makeState = init.state;
    this.#makeBaseline = init.baseline ?? init.state;
    releaser.register(this, this.#owned);
  }

  /** The guest state the snapshot captured, as a template (made once). */
  stateTemplate(): Promise<EngineTemplate> {
    this.#state ??= this.#adopt(this.#makeState, () => (this.#state = undefined));
    if (this.#makeBaseline === this.#makeState) this.#baseline = this.#state;
    return this.#state;
  }

  /** The runtime right after loadRuntime(), which unload() returns to (made once). */
  baselineTemplate(): Promise<EngineTemplate> {
    if (this.#makeBaseline === this.#makeState) return this.stateTemplate();
    this.#baseline ??= this.#adopt(this.#makeBaseline, () => (this.#baseline = undefined));
    return this.#baseline;
  }

  /** Makes both templates now (the sandbox they come from is going away); failures
   *  surface when the snapshot is used. */
  async materialize(): Promise<void> {
    await Promise.all([this.stateTemplate(), this.baselineTemplate()].map((p) => p.catch(() => undefined)));
  }

  async #adopt(make: TemplateSource, forget: () => void): Promise<EngineTemplate> {
    try {
      const { template, owner } = await make();
      if (owner) this.#keep.push(owner);
      else this.#owned.push(template);
      return template;
    } catch (e) {
      forget();
      throw e;
    }
  }
}

export function copyRequirements(r: SnapshotRequirements): SnapshotRequirements {
  return { hostFunctions: r.hostFunctions.map((h) => ({ module: h.module, functions: [...h.functions] })), moduleLoader: r.moduleLoader };
}
