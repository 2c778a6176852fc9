// restorer.ts — SandboxRestorer, what SandboxBuilder.buildFromSnapshot() gives: it
// checks that the builder supplies every host function the snapshot requires, then
// starts the sandbox as a clone of the snapshot's template (copy-on-write on KVM, a
// copy on WebAssembly) at the stage the caller asks for.
import { SandboxCore, type HostFunction, type HostOptions } from './core.js';
import type { ConsoleHandler } from './console.js';
import { ConsumedError, InvalidArgumentError } from './errors.js';
import { JSSandbox, LoadedJSSandbox, type ViewSettings } from './sandbox.js';
import type { SnapshotContent } from './snapshot/content.js';
import { templateSupport } from './snapshot/tiers.js';

/** Which of the builder's host functions a restored sandbox registers. */
export type HostFunctionFilter = 'all' | 'snapshotRequirements';

/** What the builder hands its restorer. @internal */
export interface RestoreSettings {
  hostFunctions: ReadonlyMap<string, ReadonlyMap<string, HostFunction>>;
  filter: HostFunctionFilter;
  console: ConsoleHandler | undefined;
  view: ViewSettings;
  /** Host-side capabilities the builder grants (async host calls, fetch). */
  hostOptions: HostOptions;
}

/**
 * Starts one sandbox from a snapshot (SandboxBuilder.buildFromSnapshot() gives it): a
 * clone of the snapshot's template (copy-on-write on KVM, a copy on WebAssembly) on the
 * snapshot's tier and with its sizes. One restore per restorer; a second is ERR_CONSUMED.
 * A host function the snapshot requires but the builder's modules lack fails the restore
 * with ERR_INVALID_ARG before any guest code runs (and the restorer stays usable).
 */
export class SandboxRestorer {
  readonly #content: SnapshotContent;
  readonly #settings: RestoreSettings;
  #consumedBy: string | undefined;

  /** @internal */
  constructor(content: SnapshotContent, settings: RestoreSettings) {
    this.#content = content;
    this.#settings = settings;
  }

  /** The snapshot's kind: which stage restoreLoadedSandbox() / restoreJsSandbox() start from. */
  get kind(): SnapshotContent['kind'] {
    return this.#content.kind;
  }

  /**
   * A JSSandbox with the runtime loaded and, for a 'jsSandbox' snapshot, its staged
   * handlers and modules (compiled by getLoadedSandbox()). For a 'loadedJsSandbox'
   * snapshot it is the runtime that snapshot's sandbox was loaded with, as unload() gives.
   */
  async restoreJsSandbox(): Promise<JSSandbox> {
    const core = await this.#start('restoreJsSandbox()', 'baseline');
    try {
      return new JSSandbox(core, this.#settings.view, this.#content.staged);
    } catch (e) {
      await core.dispose();
      throw e;
    }
  }

  /**
   * A LoadedJSSandbox in the snapshot's state: for a 'loadedJsSandbox' snapshot, the
   * guest exactly as captured (globals included); for a 'jsSandbox' snapshot, its staged
   * handlers compiled (ERR_COMPILE if they do not).
   */
  async restoreLoadedSandbox(): Promise<LoadedJSSandbox> {
    if (this.#content.kind === 'jsSandbox') {
      const js = await this.restoreJsSandbox();
      try {
        return await js.getLoadedSandbox();
      } catch (e) {
        await js.dispose();
        throw e;
      }
    }
    const core = await this.#start('restoreLoadedSandbox()', 'state');
    return new LoadedJSSandbox(core, this.#settings.view);
  }

  async #start(by: string, which: 'state' | 'baseline'): Promise<SandboxCore> {
    if (this.#consumedBy) throw new ConsumedError(`this SandboxRestorer was already consumed by ${this.#consumedBy}`);
    const registered = this.#hostFunctionsFor();
    this.#consumedBy = by;
    try {
      const content = this.#content;
      const support = templateSupport(content.backend);
      const baseline = await content.baselineTemplate();
      const template = which === 'state' ? await content.stateTemplate() : baseline;
      const core = SandboxCore.fromTemplate(template, support, {
        baseline,
        hostFunctions: content.requirements.hostFunctions,
        runtimeOptions: content.runtimeOptions,
        console: this.#settings.console,
        hostOptions: this.#settings.hostOptions,
        owner: content,
      });
      for (const [module, fns] of registered) core.hostFunctions.set(module, new Map(fns));
      return core;
    } catch (e) {
      this.#consumedBy = undefined;
      throw e;
    }
  }

  /** The callbacks to register, after checking each requirement is met: a missing one
   *  fails here, before any guest code runs. */
  #hostFunctionsFor(): Map<string, Map<string, HostFunction>> {
    const given = this.#settings.hostFunctions;
    const out = new Map<string, Map<string, HostFunction>>();
    for (const req of this.#content.requirements.hostFunctions) {
      const name = req.module.replace(/^host:/, '');
      const fns = given.get(name);
      if (!fns) {
        throw new InvalidArgumentError(
          `the snapshot requires host module '${req.module}' (functions ${req.functions.join(', ')}); give it to setHostFunctionModules()`,
        );
      }
      const missing = req.functions.filter((f) => !fns.has(f));
      if (missing.length > 0) {
        throw new InvalidArgumentError(`the snapshot requires host function${missing.length > 1 ? 's' : ''} ${missing.map((f) => `'${req.module}'.${f}`).join(', ')}; register ${missing.length > 1 ? 'them' : 'it'} on its HostFunctionModule`);
      }
      const chosen = new Map<string, HostFunction>();
      for (const f of this.#settings.filter === 'all' ? fns.keys() : req.functions) chosen.set(f, fns.get(f)!);
      out.set(name, chosen);
    }
    if (this.#settings.filter === 'all') {
      for (const [name, fns] of given) if (!out.has(name)) out.set(name, new Map(fns));
    }
    return out;
  }
}
