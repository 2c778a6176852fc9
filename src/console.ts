// console.ts — GuestConsole owns where one sandbox's guest console lines go and how many
// reach it: the host's own per-operation byte budget (the guest's count is only a first
// line, since a hostile guest can skip it), the one "bytes dropped" line, and the
// escaping that keeps default-routed guest text to one attributed line.
import type { ConsoleLevel, RawConsoleEntry } from './engine/protocol.js';

/**
 * Receives the guest's console output (SandboxBuilder.setConsoleHandler): `level` is the
 * console method ('log', 'info', 'warn', 'error' or 'debug'), `message` its formatted text.
 */
export type ConsoleHandler = (level: ConsoleLevel, message: string) => void;

/**
 * The guest runtime's own notice (guest/runtime/console.c), written as the last console
 * entry before a final message. The digit bound keeps the figure an exact double.
 */
const GUEST_DROP_NOTICE = /^\[airlock\] (\d{1,15}) bytes of console output dropped$/;

/** What a line costs beyond its text: its line end, so a flood of empty lines is bounded too. */
const LINE_COST = 1;

// C0 (newline, carriage return, ESC of terminal sequences included), DEL, C1 (a lone
// CSI 0x9b or NEL 0x85 acts like ESC [ or a newline on some terminals) and the Unicode
// line and paragraph separators that some log viewers split on.
const CONTROL = /[\x00-\x1f\x7f-\x9f\u2028\u2029]/g;
const NAMED_ESCAPES: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/** `text` with every control character written as a visible escape, so it is one line. */
export function escapeControlCharacters(text: string): string {
  return text.replace(CONTROL, (c) => {
    const named = NAMED_ESCAPES[c];
    if (named) return named;
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`;
  });
}

export class GuestConsole {
  private readonly prefix: string;
  private readonly limit: number;
  private readonly handler: ConsoleHandler | undefined;
  /** Budget used by the operation in progress: text bytes plus LINE_COST per line. */
  private spent = 0;
  /** Bytes dropped during the operation in progress, counted like `spent`, plus what the guest says it dropped. */
  private dropped = 0;

  constructor(sandboxId: number, limit: number, handler: ConsoleHandler | undefined) {
    this.prefix = `[airlock:${sandboxId}] `;
    this.limit = limit;
    this.handler = handler;
  }

  /**
   * Passes on the entries that fit the operation's budget and counts the rest.
   * `beforeFinal` says the entries preceded a final message, where the guest puts its
   * notice of what it dropped: that notice is folded into the one line end() writes.
   */
  write(entries: readonly RawConsoleEntry[], beforeFinal: boolean): void {
    let count = entries.length;
    if (beforeFinal && count > 0) {
      const last = entries[count - 1];
      const notice = last.level === 'warn' && last.text.length <= 80 ? GUEST_DROP_NOTICE.exec(last.text.toString('latin1')) : null;
      if (notice) {
        this.dropped += Number(notice[1]);
        count--;
      }
    }
    for (let i = 0; i < count; i++) {
      const { level, text } = entries[i];
      const cost = text.length + LINE_COST;
      // Invariant: spent <= limit, so the difference is the allowance left.
      if (cost > this.limit - this.spent) {
        this.dropped += cost;
        continue;
      }
      this.spent += cost;
      this.deliver(level, text.toString('utf8'), true);
    }
  }

  /** Ends the operation: writes the line saying how much was dropped, if anything was, and renews the budget. */
  end(): void {
    const dropped = this.dropped;
    this.spent = 0;
    this.dropped = 0;
    if (dropped > 0) this.deliver('warn', `[airlock] ${dropped} bytes of console output dropped`, false);
  }

  private deliver(level: ConsoleLevel, message: string, fromGuest: boolean): void {
    if (this.handler) {
      try {
        this.handler(level, message);
      } catch {
        // A failing console sink must not fail the guest's call.
      }
      return;
    }
    const stream = level === 'warn' || level === 'error' ? process.stderr : process.stdout;
    stream.write(`${this.prefix}${fromGuest ? escapeControlCharacters(message) : message}\n`);
  }
}
