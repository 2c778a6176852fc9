// validate.ts — argument checks shared by the public entry points. Every failure is an
// InvalidArgumentError naming the argument and what it must be.
import { encodeBinary, type EncodedValue } from './binary.js';
import { InvalidArgumentError } from './errors.js';

/**
 * A routing key, module or function name. Names cross into the guest as UTF-8, where a
 * lone surrogate would become U+FFFD and collide with another name (running the wrong
 * handler), and a NUL would end the name early: both are refused here, at registration.
 */
export function requireName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(`${what} must be a non-empty string (got ${describe(value)})`);
  }
  if (!isWellFormed(value)) {
    throw new InvalidArgumentError(`${what} must be well-formed UTF-16 (it contains a lone surrogate): ${JSON.stringify(value.slice(0, 40))}`);
  }
  if (value.includes('\0')) throw new InvalidArgumentError(`${what} must not contain a NUL character: ${JSON.stringify(value.slice(0, 40))}`);
  return value;
}

// String.prototype.isWellFormed arrived in Node 20; the regular expression is the
// same test where it is missing.
function isWellFormed(s: string): boolean {
  const native = (s as { isWellFormed?: () => boolean }).isWellFormed;
  if (typeof native === 'function') return native.call(s);
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

/** A name that becomes part of an import specifier `<namespace>:<name>`. */
export function requireModulePart(value: unknown, what: string): string {
  const name = requireName(value, what);
  if (name.includes(':')) throw new InvalidArgumentError(`${what} must not contain ':' (got '${name}')`);
  return name;
}

/** A host module name: `host:<name>` imports it, and `host:<name>?async` its non-blocking form. */
export function requireHostModuleName(value: unknown): string {
  const name = requireModulePart(value, 'host module name');
  if (name.includes('?')) throw new InvalidArgumentError(`host module name must not contain '?', which marks the async form 'host:<name>?async' (got '${name}')`);
  return name;
}

export function requireString(value: unknown, what: string): string {
  if (typeof value !== 'string') throw new InvalidArgumentError(`${what} must be a string (got ${describe(value)})`);
  return value;
}

export function requireFunction<T extends Function>(value: unknown, what: string): T {
  if (typeof value !== 'function') throw new InvalidArgumentError(`${what} must be a function (got ${describe(value)})`);
  return value as T;
}

/** A byte count: a positive safe integer within [min, max]. */
export function requireSize(value: unknown, what: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new InvalidArgumentError(`${what} must be a positive integer number of bytes (got ${describe(value)})`);
  }
  if (value < min || value > max) {
    throw new InvalidArgumentError(`${what} must be between ${min} and ${max} bytes (got ${value})`);
  }
  return value;
}

/** The range the mirrored API accepts for wallClockTimeoutMs and cpuTimeoutMs, on every tier. */
export const timeoutLimitsMs = { min: 1, max: 3_600_000 } as const;

/** An optional timeout: undefined, or milliseconds within timeoutLimitsMs. */
export function optionalTimeout(value: unknown, what: string): number | undefined {
  if (value === undefined) return undefined;
  const { min, max } = timeoutLimitsMs;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new InvalidArgumentError(`${what} must be a number of milliseconds from ${min} to ${max} (got ${describe(value)})`);
  }
  return value;
}

/** Options objects: what to do with a key the API does not know. */
export type UnknownOptionPolicy = 'warn' | 'reject';

const warnedOptions = new Set<string>();

/**
 * Checks `options` for keys outside `known`. The mirrored API ignores unknown keys, so
 * by default a typo (`{ timeoutMs: 5 }`) keeps working as before but is reported once
 * per process as a warning naming the closest known option; strict sandboxes reject it.
 */
export function checkOptionKeys(options: object, known: readonly string[], where: string, policy: UnknownOptionPolicy): void {
  for (const key of Object.keys(options)) {
    if (known.includes(key)) continue;
    const closest = closestName(key, known);
    const hint = closest ? ` (did you mean '${closest}'?)` : '';
    const message = `${where}: unknown option '${key.slice(0, 60)}'${hint}; known options: ${known.join(', ')}`;
    if (policy === 'reject') throw new InvalidArgumentError(message);
    const once = `${where}\0${key}`;
    if (warnedOptions.has(once)) continue;
    warnedOptions.add(once);
    process.emitWarning(`${message}. It is ignored; SandboxBuilder.setStrictOptions() makes this an error.`, {
      type: 'AirlockWarning',
      code: 'AIRLOCK_UNKNOWN_OPTION',
    });
  }
}

/** The known name nearest to `name` by edit distance (case-insensitive), if near enough. */
function closestName(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  const a = name.toLowerCase();
  for (const candidate of known) {
    const b = candidate.toLowerCase();
    const d = a.includes(b) || b.includes(a) ? Math.abs(a.length - b.length) / 2 : editDistance(a, b);
    if (d < bestDistance) {
      bestDistance = d;
      best = candidate;
    }
  }
  return bestDistance <= Math.max(2, Math.ceil(name.length / 2)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  if (a.length > 64 || b.length > 64) return Infinity;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = row;
  }
  return prev[b.length];
}

export function optionalBoolean(value: unknown, what: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new InvalidArgumentError(`${what} must be a boolean (got ${describe(value)})`);
  return value;
}

/**
 * An event with its Uint8Arrays and ArrayBuffers split off as binary fields (binary data on);
 * otherwise as serializeEvent(). Non-serialisable events are ERR_INVALID_ARG either way.
 */
export function serializeEventBinary(event: unknown): EncodedValue {
  if (event === undefined) return { json: undefined, buffers: [] };
  let encoded: EncodedValue;
  try {
    encoded = encodeBinary(event);
  } catch (e) {
    throw new InvalidArgumentError(`event is not serialisable: ${describeThrown(e)}`);
  }
  if (encoded.json === undefined) throw new InvalidArgumentError(`event is not serialisable (got ${describe(event)})`);
  return encoded;
}

/** JSON text of an event, or undefined for `undefined`; anything else non-serialisable is refused. */
export function serializeEvent(event: unknown): string | undefined {
  if (event === undefined) return undefined;
  let json: string | undefined;
  try {
    json = JSON.stringify(event);
  } catch (e) {
    throw new InvalidArgumentError(`event is not JSON-serialisable: ${describeThrown(e)}`);
  }
  if (json === undefined) throw new InvalidArgumentError(`event is not JSON-serialisable (got ${describe(event)})`);
  return json;
}

/**
 * A readable account of anything a user callback threw (`throw null`, an object whose
 * toString throws, a null-prototype object): never throws itself.
 */
export function describeThrown(e: unknown): string {
  try {
    if (e instanceof Error || (typeof e === 'object' && e !== null && typeof (e as { message?: unknown }).message === 'string')) {
      const err = e as { name?: unknown; message: string };
      const name = typeof err.name === 'string' && err.name !== 'Error' ? `${err.name}: ` : '';
      return name + err.message;
    }
    if (typeof e === 'string') return e;
    if (e === null || e === undefined || typeof e !== 'object') return `${String(e)} was thrown`;
    const json = JSON.stringify(e);
    if (typeof json === 'string') return `${json.slice(0, 200)} was thrown`;
  } catch {
    // fall through: the value resists every description
  }
  return 'a value that cannot be described was thrown';
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return value.length === 0 ? 'an empty string' : `'${value.slice(0, 40)}'`;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return `${typeof value} ${String(value)}`;
  return typeof value;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Defaults and limits of the builder's sizes, in bytes. */
export const sizeLimits = {
  heap: { default: 64 * MiB, min: 2 * MiB, max: 16 * GiB },
  scratch: { default: 1 * MiB, min: 64 * KiB, max: 1 * GiB },
  inputBuffer: { default: 1 * MiB, min: 1 * KiB, max: 256 * MiB },
  outputBuffer: { default: 1 * MiB, min: 1 * KiB, max: 256 * MiB },
  consoleLimit: { default: 64 * KiB, min: 1, max: 256 * MiB },
} as const;
