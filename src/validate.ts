// validate.ts — argument checks shared by the public entry points. Every failure is an
// InvalidArgumentError naming the argument and what it must be.
import { InvalidArgumentError } from './errors.js';

export function requireName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.length === 0) {
    throw new InvalidArgumentError(`${what} must be a non-empty string (got ${describe(value)})`);
  }
  return value;
}

/** A name that becomes part of an import specifier `<namespace>:<name>`. */
export function requireModulePart(value: unknown, what: string): string {
  const name = requireName(value, what);
  if (name.includes(':')) throw new InvalidArgumentError(`${what} must not contain ':' (got '${name}')`);
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

/** An optional timeout: undefined, or a finite number of milliseconds > 0. */
export function optionalTimeout(value: unknown, what: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new InvalidArgumentError(`${what} must be a finite number of milliseconds greater than 0 (got ${describe(value)})`);
  }
  return value;
}

export function optionalBoolean(value: unknown, what: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new InvalidArgumentError(`${what} must be a boolean (got ${describe(value)})`);
  return value;
}

/** JSON text of an event, or undefined for `undefined`; anything else non-serialisable is refused. */
export function serializeEvent(event: unknown): string | undefined {
  if (event === undefined) return undefined;
  let json: string | undefined;
  try {
    json = JSON.stringify(event);
  } catch (e) {
    throw new InvalidArgumentError(`event is not JSON-serialisable: ${(e as Error).message}`);
  }
  if (json === undefined) throw new InvalidArgumentError(`event is not JSON-serialisable (got ${describe(event)})`);
  return json;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return value.length === 0 ? 'an empty string' : `'${value.slice(0, 40)}'`;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return `${typeof value} ${String(value)}`;
  return typeof value;
}
