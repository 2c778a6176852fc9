// options.ts — what the CLI's commands share: parsing of option values, reading handler
// and module files, building a sandbox from the options, and the exit codes.
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { InvalidArgumentError as ParserArgumentError } from 'commander';
import { SandboxBuilder } from '../builder.js';
import type { ConsoleHandler } from '../core.js';
import type { BackendChoice } from '../engine/select.js';
import { AirlockError } from '../errors.js';
import type { JSSandbox, ProtoJSSandbox } from '../sandbox.js';

/** Exit codes of every command: stable, so scripts can branch on them. */
export const exitCodes = {
  ok: 0,
  /** The sandbox or the handler failed; stderr (or --json) carries the error's code. */
  callFailed: 1,
  /** The command line or an input file was unusable (ERR_USAGE, ERR_INVALID_ARG); nothing ran. */
  usage: 2,
} as const;

/** The exit code for a failure with error code `code`. */
export function exitCodeFor(code: string): number {
  return code === 'ERR_USAGE' || code === 'ERR_INVALID_ARG' ? exitCodes.usage : exitCodes.callFailed;
}

/** A problem with the command line or its files, reported with exit code 2. */
export class UsageError extends Error {}

const MiB = 1024 * 1024;

/** The options the commands that build a sandbox share. */
export interface SandboxOptions {
  backend: BackendChoice;
  heap?: number;
  module: ModuleSpec[];
}

export interface ModuleSpec {
  namespace: string;
  name: string;
  file: string;
}

export function parseBackend(value: string): BackendChoice {
  if (value === 'kvm' || value === 'wasm' || value === 'auto') return value;
  throw new ParserArgumentError("must be 'kvm', 'wasm' or 'auto'");
}

/** A whole number of milliseconds or MiB; the library checks the range, the parser only the form. */
export function parsePositiveInteger(value: string): number {
  if (!/^[1-9][0-9]*$/.test(value)) throw new ParserArgumentError('must be a positive whole number');
  return Number(value);
}

/** `name=file` or `namespace:name=file` (the namespace defaults to 'user'), repeatable. */
export function collectModule(value: string, previous: ModuleSpec[] = []): ModuleSpec[] {
  const eq = value.indexOf('=');
  if (eq <= 0 || eq === value.length - 1) throw new ParserArgumentError('must be name=file or namespace:name=file');
  const key = value.slice(0, eq);
  const colon = key.indexOf(':');
  const spec: ModuleSpec =
    colon < 0
      ? { namespace: 'user', name: key, file: value.slice(eq + 1) }
      : { namespace: key.slice(0, colon), name: key.slice(colon + 1), file: value.slice(eq + 1) };
  return [...previous, spec];
}

const TYPESCRIPT_EXTENSIONS = new Set(['.ts', '.mts', '.cts', '.tsx']);

/**
 * The JavaScript source of a handler or module file. TypeScript is refused, not
 * guessed at: the guest runs JavaScript only (issue #13), and Node 20 has no built-in
 * type stripping to lean on.
 */
export function readJavaScriptFile(file: string, what: string): string {
  if (TYPESCRIPT_EXTENSIONS.has(extname(file).toLowerCase())) {
    throw new UsageError(
      `${what} ${file} is TypeScript, which Airlock does not run yet: compile it to JavaScript first ` +
        '(for example `npx tsc --target es2022 --module es2022 ' + file + '`) and pass the .js file',
    );
  }
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${what} ${file}: ${(e as Error).message}`);
  }
}

/** A booted sandbox with the runtime loaded and the --module files added. */
export async function openSandbox(options: SandboxOptions, consoleHandler?: ConsoleHandler): Promise<JSSandbox> {
  // Read every file before booting, so a typo costs no VM.
  const modules = options.module.map((m) => ({ ...m, source: readJavaScriptFile(m.file, 'module') }));
  const builder = new SandboxBuilder().setBackend(options.backend);
  if (options.heap !== undefined) builder.setHeapSize(options.heap * MiB);
  if (consoleHandler) builder.setConsoleHandler(consoleHandler);
  const proto: ProtoJSSandbox = await builder.build();
  try {
    const sandbox = await proto.loadRuntime();
    for (const m of modules) sandbox.addModule(m.name, m.source, m.namespace);
    return sandbox;
  } catch (e) {
    await proto.dispose();
    throw e;
  }
}

/** The stable fields of an error, for --json and for the one line on stderr. */
export function describeError(e: unknown): { code: string; name: string; message: string } {
  if (e instanceof AirlockError) return { code: e.code, name: e.name, message: e.message };
  if (e instanceof UsageError) return { code: 'ERR_USAGE', name: 'UsageError', message: e.message };
  const err = e instanceof Error ? e : new Error(String(e));
  return { code: 'ERR_INTERNAL', name: err.name, message: err.message };
}
