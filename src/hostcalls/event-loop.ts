// event-loop.ts — the host half of the guest event loop for one operation: the async
// host calls it has in flight, their completions, and the guest's sleep (the reserved
// host call `airlock:loop` `wait` or `sleep`, answered when a timer is due or a call
// completes; a `sleep` alone is answered where the guest runs: by the vCPU thread on KVM,
// host/src/loop_wait.cc, by the worker on WebAssembly, src/engine/wasm/loop-sleep.ts).
// Every step the guest asks for is bounded here: the number of calls in flight, the
// size of each answer, the length of a sleep. A closed loop drops late answers.
import { GuestAbortError } from '../errors.js';
import { BINARY_KEY } from '../binary.js';
import { encodeMessage, encodedSize } from '../engine/protocol.js';
import * as abi from '../engine/abi.generated.js';

/** The reserved host module of the loop's protocol steps; hostModule() cannot name it (':' is refused). */
export const LOOP_MODULE = 'airlock:loop';
/** Node's own ceiling on a timer delay (2^31 - 1 ms); a longer sleep is cut to it. */
export const MAX_SLEEP_MS = 2_147_483_647;

/** How a completed async call reaches the guest (the kind field of a completion). */
export const enum CompletionKind {
  Value = 0,
  /** The guest rejects with a HostFunctionError carrying the message. */
  HostError = 1,
  /** The guest rejects with a TypeError carrying the message (fetch refusals). */
  TypeError = 2,
}

/** What an async host call settled with, before encoding; with binary data on, a value's
 *  placeholders number its own `buffers` from 0 (src/binary.ts). */
export type Outcome =
  | { kind: CompletionKind.Value; json: string | undefined; buffers?: readonly Uint8Array[] }
  | { kind: CompletionKind.HostError | CompletionKind.TypeError; message: string };

/** One completion waiting for the guest: its JSON entry and the binary fields it names. */
interface ReadyCompletion {
  entry: string;
  buffers: readonly Uint8Array[];
}

/** Thrown for a step the guest may not ask for: the sandbox is stopped and poisoned. */
export class LoopProtocolError extends GuestAbortError {}

export class OperationLoop {
  private nextId = 1;
  /** Calls started and not yet handed back, answered or not: a slot is freed only on
   *  delivery, so answers a guest never collects cannot pile up on the host. */
  private inFlight = 0;
  /** Encoded completions (`[id,kind,payload]`) not yet handed to the guest. */
  private readonly ready: ReadyCompletion[] = [];
  private wake: (() => void) | undefined;
  private closed = false;
  /** Aborted at close(): work that can stop early (fetch) does. */
  private readonly ended = new AbortController();
  private readonly openedAt = performance.now();
  /** Host time spent polling for sub-millisecond wake-ups (see sleep()). */
  private polledMs = 0;

  /**
   * @param maxInFlight async calls the guest may have outstanding at once
   * @param replyRoom bytes one wait answer may carry (the input buffer less framing)
   */
  constructor(
    private readonly maxInFlight: number,
    private readonly replyRoom: number,
  ) {}

  /**
   * Starts one async call: `run` is the host function already bound to its arguments;
   * `signal` aborts when the operation ends. Returns the call's id, or a refusal the
   * guest turns into a rejected promise.
   */
  start(run: (signal: AbortSignal) => Promise<Outcome>): { id: number } | { refused: string } {
    if (this.inFlight >= this.maxInFlight) {
      return { refused: `too many async host calls in flight: the limit is ${this.maxInFlight} per request (SandboxBuilder.setAsyncHostCallLimit())` };
    }
    const id = this.nextId++;
    this.inFlight++;
    void run(this.ended.signal).then(
      (outcome) => this.complete(id, outcome),
      (e: unknown) => this.complete(id, { kind: CompletionKind.HostError, message: String((e as Error)?.message ?? e) }),
    );
    return { id };
  }

  /**
   * A `wait` step, `[delay]`, or a `sleep` step, `[delay]` or `[delay, at]`: a sleep
   * names a timer (the guest has no call in flight) and the instant on the guest's clock
   * it is due, which both tiers use to serve it where the guest runs unless console
   * lines came with it (host/src/loop_wait.cc, src/engine/wasm/loop-sleep.ts); here it
   * is a wait like any other.
   */
  waitStep(step: 'wait' | 'sleep', args: unknown[]): Promise<Buffer> {
    const sleep = step === 'sleep';
    if (!(args.length === 1 || (sleep && args.length === 2))) {
      throw new LoopProtocolError(`event loop ${step} takes ${sleep ? 'one or two arguments' : 'one argument'}`);
    }
    if (args.length === 2 && !isNonNegative(args[1])) {
      throw new LoopProtocolError(`event loop sleep with an invalid instant: ${String(args[1]).slice(0, 40)}`);
    }
    return this.wait(args[0], sleep);
  }

  /**
   * The guest sleeps until `delayMs` has passed (or, for -1 outside a `timerOnly`
   * sleep, with no timer pending) or a call completes, and gets every completion that
   * fits one answer.
   */
  async wait(delayMs: unknown, timerOnly = false): Promise<Buffer> {
    if (typeof delayMs !== 'number' || !((delayMs === -1 && !timerOnly) || isNonNegative(delayMs))) {
      throw new LoopProtocolError(`event loop ${timerOnly ? 'sleep' : 'wait'} with an invalid delay: ${String(delayMs).slice(0, 40)}`);
    }
    if (delayMs === -1 && this.inFlight === 0) {
      throw new LoopProtocolError('event loop wait with no timer and no async host call in flight (it would never end)');
    }
    if (this.wake) throw new LoopProtocolError('event loop wait while another wait is pending');
    if (this.ready.length === 0 && delayMs !== 0) {
      await new Promise<void>((resolve) => {
        let cancelTimer: (() => void) | undefined;
        this.wake = () => {
          this.wake = undefined;
          cancelTimer?.();
          resolve();
        };
        if (delayMs >= 0) cancelTimer = this.sleep(Math.min(delayMs, MAX_SLEEP_MS), this.wake);
      });
    }
    return this.takeReady();
  }

  /** The operation ended: answers that arrive later are dropped, a pending wait ends. */
  close(): void {
    this.closed = true;
    this.ready.length = 0;
    this.ended.abort();
    this.wake?.();
  }

  /**
   * Node's timers have millisecond resolution and fire up to a millisecond late, while
   * the guest's timers are finer. So the last millisecond of a sleep is polled on
   * setImmediate turns (host CPU, never the guest's) — within an allowance of 2 ms plus
   * 5% of the operation's time so far, so a guest with a 1 ms interval cannot keep the
   * main thread busy; past it, sleeps end on plain timers, rounded up.
   */
  private sleep(delayMs: number, done: () => void): () => void {
    const deadline = performance.now() + delayMs;
    const allowance = 2 + 0.05 * (performance.now() - this.openedAt) - this.polledMs;
    let immediate: NodeJS.Immediate | undefined;
    let pollingSince = 0;
    const poll = () => {
      immediate = undefined;
      const now = performance.now();
      if (!pollingSince) pollingSince = now;
      if (now < deadline) {
        immediate = setImmediate(poll);
        return;
      }
      this.polledMs += now - pollingSince;
      pollingSince = 0;
      done();
    };
    const polls = allowance >= Math.min(delayMs, 1);
    const timerMs = polls ? Math.floor(delayMs - 1) : Math.ceil(delayMs);
    const timer = timerMs > 0 ? setTimeout(polls ? poll : done, timerMs) : undefined;
    if (!timer) {
      if (polls) immediate = setImmediate(poll);
      else immediate = setImmediate(done);
    }
    return () => {
      if (timer) clearTimeout(timer);
      if (immediate) clearImmediate(immediate);
      if (pollingSince) this.polledMs += performance.now() - pollingSince;
    };
  }

  private complete(id: number, outcome: Outcome): void {
    if (this.closed) return;
    let entry = encodeCompletion(id, outcome);
    let buffers = outcome.kind === CompletionKind.Value ? (outcome.buffers ?? []) : [];
    if (completionBytes(entry) + fieldBytes(buffers) + 2 > this.replyRoom) {
      buffers = [];
      const size = outcome.kind === CompletionKind.Value ? Buffer.byteLength(outcome.json ?? '', 'utf8') + fieldBytes(outcome.buffers ?? []) : 0;
      entry = encodeCompletion(id, {
        kind: CompletionKind.HostError,
        message: `the async host call's result of ${size} bytes does not fit the ${this.replyRoom + framing()}-byte input buffer`,
      });
      // A message cut to fit still says what happened.
      if (completionBytes(entry) + 2 > this.replyRoom) entry = encodeCompletion(id, { kind: CompletionKind.HostError, message: 'result too large' });
    }
    this.ready.push({ entry, buffers });
    this.wake?.();
  }

  /**
   * As many completions as fit one HOST_RETURN, oldest first. Binary fields follow the
   * JSON in completion order, so each completion's placeholders are renumbered past the
   * fields of those before it.
   */
  private takeReady(): Buffer {
    let used = 2; // the brackets
    const entries: string[] = [];
    const fields: Uint8Array[] = [];
    while (entries.length < this.ready.length) {
      const { entry, buffers } = this.ready[entries.length];
      const numbered = renumberPlaceholders(entry, fields.length);
      const bytes = completionBytes(numbered) + (entries.length > 0 ? 1 : 0) + fieldBytes(buffers);
      if (used + bytes > this.replyRoom) break;
      used += bytes;
      entries.push(numbered);
      fields.push(...buffers);
    }
    this.ready.splice(0, entries.length);
    this.inFlight -= entries.length;
    return encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [`[${entries.join(',')}]`, ...fields]);
  }
}

function isNonNegative(ms: unknown): ms is number {
  return typeof ms === 'number' && ms >= 0 && ms <= Number.MAX_VALUE;
}

/** Bytes of a HOST_RETURN around its one field. */
function framing(): number {
  return encodedSize(['']);
}

function completionBytes(entry: string): number {
  return Buffer.byteLength(entry, 'utf8');
}

/** Bytes binary fields add to a message (each has its own length header). */
function fieldBytes(buffers: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of buffers) n += abi.AIRLOCK_FIELD_HEADER_SIZE + b.byteLength;
  return n;
}

// Only encodeBinary's placeholders can match: inside a JSON string every '"' is escaped,
// and an object key of the user's own named BINARY_KEY is refused when encoding.
const PLACEHOLDER = new RegExp(`\\{${JSON.stringify(BINARY_KEY).replace(/[.$]/g, '\\$&')}:([0-9]+),`, 'g');

function renumberPlaceholders(entry: string, offset: number): string {
  if (offset === 0) return entry;
  return entry.replace(PLACEHOLDER, (_m, index: string) => `{${JSON.stringify(BINARY_KEY)}:${Number(index) + offset},`);
}

function encodeCompletion(id: number, outcome: Outcome): string {
  if (outcome.kind === CompletionKind.Value) return outcome.json === undefined ? `[${id},0]` : `[${id},0,${outcome.json}]`;
  return `[${id},${outcome.kind},${JSON.stringify(outcome.message)}]`;
}
