// repl.ts — `airlock repl`: node:repl whose eval sends each line to one sandbox.
//
// How state persists: every line goes to one handler that runs it through indirect eval
// (`(0, eval)(code)`), i.e. as a script in the guest's global scope. So `var` and
// function declarations and assignments (`x = 1`, `globalThis.y = 2`) outlive the line;
// `let`, `const` and `class` declarations are scoped to their line, as in any indirect
// eval. A promise a line evaluates to is awaited. A line that poisons the sandbox
// (a timeout, kill, or guest abort) rolls it back to the fresh runtime, losing its
// globals; `.clear` does the same on request. A line the guest finds unfinished (an open
// brace, bracket or template) continues on the next one, as in Node's own REPL.
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import repl, { type REPLServer } from 'node:repl';
import { PassThrough } from 'node:stream';
import { AirlockError, GuestExceptionError } from '../errors.js';
import type { LoadedJSSandbox, Snapshot } from '../sandbox.js';
import { describeError, exitCodeFor, exitCodes, openSandbox, type SandboxOptions } from './options.js';

export interface ReplOptions extends SandboxOptions {
  wallMs?: number;
  cpuMs?: number;
}

const ROUTE = 'repl';

/** Evaluates `event.code` globally and describes the value as text the host prints as is. */
const EVALUATOR = `
function describe(value) {
  if (value === undefined) return 'undefined';
  if (typeof value === 'function') return '[Function: ' + (value.name || 'anonymous') + ']';
  if (typeof value === 'bigint') return String(value) + 'n';
  if (typeof value === 'symbol') return String(value);
  try {
    const json = JSON.stringify(value, null, 2);
    return json === undefined ? String(value) : json;
  } catch (e) {
    return String(value);
  }
}
export default async function (event) {
  let value = (0, eval)(event.code);
  if (value !== null && typeof value === 'object' && typeof value.then === 'function') value = await value;
  return describe(value);
}
`;

/** Where history is kept between sessions (AIRLOCK_REPL_HISTORY overrides; '' turns it off). */
function historyPath(): string {
  return process.env.AIRLOCK_REPL_HISTORY ?? join(homedir(), '.airlock_repl_history');
}

/**
 * Whether the guest rejected `code` only because it ended early, so the REPL should
 * read another line instead of reporting it: QuickJS names the end of input as the
 * empty token (an open brace or bracket). An unterminated template continues too, but
 * not a quoted string, which a line end breaks for good (QuickJS says "unexpected end
 * of string" for both; an odd number of backticks tells them apart).
 */
function isIncomplete(e: unknown, code: string): boolean {
  if (!(e instanceof GuestExceptionError) || e.name !== 'SyntaxError') return false;
  if (/: ''$/.test(e.message)) return true;
  return e.message === 'unexpected end of string' && (code.split('`').length - 1) % 2 === 1;
}

function formatError(e: unknown): string {
  if (e instanceof GuestExceptionError) return `Uncaught ${e.name}: ${e.message}`;
  const { code, name, message } = describeError(e);
  return `${code}: ${name}: ${message}`;
}

/**
 * Feeds piped (non-terminal) input to the REPL one line at a time, each after the
 * previous one has been answered: node:repl would otherwise take every line at once,
 * running commands like `.clear` ahead of the evaluations before them and closing
 * while answers are still on their way.
 */
async function feedLineByLine(from: NodeJS.ReadableStream, to: PassThrough, server: REPLServer): Promise<void> {
  let answered: (() => void) | undefined;
  const displayPrompt = server.displayPrompt.bind(server);
  server.displayPrompt = (preserveCursor?: boolean) => {
    displayPrompt(preserveCursor);
    answered?.();
  };
  let closed = false;
  server.on('exit', () => {
    closed = true;
    answered?.();
  });
  for await (const line of createInterface({ input: from, crlfDelay: Infinity })) {
    if (closed) break;
    const next = new Promise<void>((resolve) => (answered = resolve));
    to.write(line + '\n');
    await next;
  }
  to.end();
}

/** Runs the REPL until its input ends; resolves to the process exit code. */
export async function replCommand(options: ReplOptions): Promise<number> {
  let loaded: LoadedJSSandbox;
  let fresh: Snapshot;
  try {
    const sandbox = await openSandbox(options);
    sandbox.addHandler(ROUTE, EVALUATOR);
    loaded = await sandbox.getLoadedSandbox();
    fresh = await loaded.snapshot();
  } catch (e) {
    const { code, name, message } = describeError(e);
    process.stderr.write(`airlock: ${code}: ${name}: ${message}\n`);
    return exitCodeFor(code);
  }
  const callOptions = { wallClockTimeoutMs: options.wallMs, cpuTimeoutMs: options.cpuMs };

  const terminal = process.stdin.isTTY === true;
  const input = terminal ? process.stdin : new PassThrough();
  let pending: Promise<unknown> = Promise.resolve();
  const server = repl.start({
    input,
    output: process.stdout,
    terminal,
    prompt: `airlock(${loaded.backend})> `,
    // The guest's answer is already text; inspecting it again would quote it.
    writer: (text: unknown) => String(text),
    eval: (code, _context, _file, callback) => {
      if (code.trim() === '') {
        callback(null, undefined);
        return;
      }
      pending = loaded.callHandler(ROUTE, { code }, callOptions).then(
        (text: string) => callback(null, text),
        async (e: unknown) => {
          if (isIncomplete(e, code)) {
            callback(new repl.Recoverable(e as Error), undefined);
            return;
          }
          let text = formatError(e);
          if (e instanceof AirlockError && loaded.poisoned) {
            await loaded.restore(fresh);
            text += '\n(the sandbox was poisoned and has been reset: globals are gone)';
          }
          callback(null, text);
        },
      );
    },
  });
  server.on('reset', () => {
    pending = loaded.restore(fresh).then(
      () => server.output.write('(sandbox reset)\n'),
      (e: unknown) => server.output.write(`${formatError(e)}\n`),
    );
  });
  const history = historyPath();
  if (!terminal) void feedLineByLine(process.stdin, input as PassThrough, server);
  else if (history !== '') {
    server.setupHistory(history, (err) => {
      if (err) process.stderr.write(`airlock: history disabled: ${err.message}\n`);
    });
  }
  await new Promise<void>((resolve) => server.on('exit', resolve));
  await pending;
  await loaded.dispose();
  return exitCodes.ok;
}
