// run.ts — `airlock run`: one handler file, one event, one call in a fresh sandbox;
// prints the result (with --json: result, CallStats, tier and console as one object).
import { readFileSync } from 'node:fs';
import type { CallStats, CallHandlerOptions } from '../sandbox.js';
import type { ConsoleLevel } from '../engine/protocol.js';
import {
  UsageError,
  describeError,
  exitCodeFor,
  exitCodes,
  openSandbox,
  readJavaScriptFile,
  type SandboxOptions,
} from './options.js';

export interface RunOptions extends SandboxOptions {
  event?: string;
  eventFile?: string;
  wallMs?: number;
  cpuMs?: number;
  json?: boolean;
}

/** The routing key the handler file is registered under. */
const ROUTE = 'main';

/** What `--json` prints: one object on stdout, on success and on failure alike. */
export interface RunReport {
  ok: boolean;
  backend: 'kvm' | 'wasm' | null;
  result?: unknown;
  error?: { code: string; name: string; message: string };
  stats: CallStats | null;
  console: { level: ConsoleLevel; message: string }[];
}

function parseEvent(options: RunOptions): unknown {
  if (options.event !== undefined && options.eventFile !== undefined) {
    throw new UsageError('give --event or --event-file, not both');
  }
  let text: string;
  let from: string;
  if (options.eventFile !== undefined) {
    from = options.eventFile;
    try {
      text = readFileSync(options.eventFile, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read the event file ${options.eventFile}: ${(e as Error).message}`);
    }
  } else if (options.event !== undefined) {
    from = '--event';
    text = options.event;
  } else {
    return {};
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`${from} is not JSON: ${(e as Error).message}`);
  }
}

/** Runs the command; resolves to the process exit code. */
export async function runCommand(file: string, options: RunOptions): Promise<number> {
  const report: RunReport = { ok: false, backend: null, stats: null, console: [] };
  // With --json the guest's console is part of the one JSON object, so stdout stays
  // parseable; without it the console goes where the library sends it by default.
  const consoleHandler = options.json ? (level: ConsoleLevel, message: string) => void report.console.push({ level, message }) : undefined;
  let dispose: (() => Promise<void>) | undefined;
  try {
    const source = readJavaScriptFile(file, 'handler');
    const event = parseEvent(options);
    const sandbox = await openSandbox(options, consoleHandler);
    dispose = () => sandbox.dispose();
    report.backend = sandbox.backend;
    sandbox.addHandler(ROUTE, source);
    const loaded = await sandbox.getLoadedSandbox();
    dispose = () => loaded.dispose();
    const callOptions: CallHandlerOptions = {};
    if (options.wallMs !== undefined) callOptions.wallClockTimeoutMs = options.wallMs;
    if (options.cpuMs !== undefined) callOptions.cpuTimeoutMs = options.cpuMs;
    try {
      report.result = await loaded.callHandler(ROUTE, event, callOptions);
      report.ok = true;
    } finally {
      report.stats = loaded.lastCallStats;
    }
  } catch (e) {
    report.error = describeError(e);
  } finally {
    await dispose?.();
  }

  if (options.json) {
    process.stdout.write(JSON.stringify(report) + '\n');
  } else if (report.ok) {
    // undefined is what a handler that returns nothing gives; JSON has no word for it.
    process.stdout.write((report.result === undefined ? 'undefined' : JSON.stringify(report.result, null, 2)) + '\n');
  }
  if (report.error) {
    process.stderr.write(`airlock: ${report.error.code}: ${report.error.name}: ${report.error.message}\n`);
    return exitCodeFor(report.error.code);
  }
  return exitCodes.ok;
}
