// host-function-module.ts — HostFunctionModule, the mirrored API's reusable set of host
// functions a builder takes through setHostFunctionModules(): built before any sandbox,
// given to exactly one builder (which consumes it), so callback state is never shared.
import type { HostFunction } from './core.js';
import { ConsumedError, InvalidArgumentError } from './errors.js';
import { requireFunction, requireModulePart, requireName } from './validate.js';

/**
 * A named set of host functions that guest code imports as `host:<name>`, for
 * SandboxBuilder.setHostFunctionModules() (build() and sandboxes restored from a snapshot,
 * as a SandboxPool makes them). Each module goes to one builder only, which consumes it:
 * register() afterwards, or giving it to a second builder, is ERR_CONSUMED, so callback
 * state is never shared between sandboxes. A module name that is empty or contains ':'
 * is ERR_INVALID_ARG.
 */
export class HostFunctionModule {
  /** The module's name: guest code imports it as `host:<name>`. */
  readonly name: string;
  readonly #functions = new Map<string, HostFunction>();
  #consumedBy: string | undefined;

  constructor(name: string) {
    this.name = requireModulePart(name, 'host module name');
  }

  /** Registers `callback` as `<module>.<functionName>` (the same name replaces it). */
  register(functionName: string, callback: HostFunction): this {
    this.#assertOpen();
    this.#functions.set(requireName(functionName, 'host function name'), requireFunction<HostFunction>(callback, 'host function callback'));
    return this;
  }

  #assertOpen(): void {
    if (this.#consumedBy) throw new ConsumedError(`host module '${this.name}' was already given to ${this.#consumedBy}`);
  }

  /** @internal Whether a builder has taken it. */
  static isConsumed(m: HostFunctionModule): boolean {
    return m.#consumedBy !== undefined;
  }

  /** @internal Brand check (instanceof can be faked through prototypes). */
  static is(value: unknown): value is HostFunctionModule {
    return typeof value === 'object' && value !== null && #functions in value;
  }

  /** @internal Takes the module for one builder: later registrations and builders get ERR_CONSUMED. */
  static consume(m: HostFunctionModule, by: string): ReadonlyMap<string, HostFunction> {
    m.#assertOpen();
    m.#consumedBy = by;
    return new Map(m.#functions);
  }
}
