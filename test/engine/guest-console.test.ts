// guest-console.test.ts — properties of the host's guest-console sink (src/console.ts)
// over any console entries a hostile guest can send: what reaches a handler or stdout
// never exceeds the budget of its operation, one marker line accounts for every dropped
// byte, and default-routed lines carry no control character of the guest's.
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { GuestConsole, escapeControlCharacters } from '../../src/console.js';
import type { ConsoleLevel, RawConsoleEntry } from '../../src/engine/protocol.js';

const CONTROL = /[\x00-\x1f\x7f-\x9f\u2028\u2029]/;
const MARKER = /^\[airlock\] (\d+) bytes of console output dropped$/;

const level = fc.constantFrom<ConsoleLevel>('log', 'info', 'warn', 'error', 'debug');
/** Guest text as UTF-8: any code points, controls and separators included. */
const utf8Text = fc.string({ unit: 'binary', maxLength: 60 }).map((s) => Buffer.from(s, 'utf8'));
/** Guest text as it may really come: also bytes that are not UTF-8. */
const anyText = fc.oneof(utf8Text, fc.uint8Array({ maxLength: 60 }).map((b) => Buffer.from(b)));
const entryOf = (text: fc.Arbitrary<Buffer>) => fc.record({ level, text });
/** The guest runtime's own drop notice, as it writes it last before a final message. */
const guestNotice = fc.integer({ min: 0, max: 1e12 }).map(
  (n): RawConsoleEntry => ({ level: 'warn', text: Buffer.from(`[airlock] ${n} bytes of console output dropped`) }),
);
/** One exchange's console: entries, perhaps the notice, and whether a final message followed. */
const exchangeOf = (text: fc.Arbitrary<Buffer>) =>
  fc.record({
    entries: fc.array(entryOf(text), { maxLength: 12 }),
    notice: fc.option(guestNotice, { nil: undefined }),
    beforeFinal: fc.boolean(),
  });
/** One operation (a call with its host calls): several exchanges. */
const operationOf = (text: fc.Arbitrary<Buffer>) => fc.array(exchangeOf(text), { minLength: 1, maxLength: 4 });

const cost = (e: RawConsoleEntry) => e.text.length + 1;

describe('guest console properties', () => {
  afterEach(() => vi.restoreAllMocks());

  it('keeps each operation within its budget, in order, and reports every dropped byte in one last line', () => {
    fc.assert(
      // UTF-8 text, so a delivered string names the one byte sequence it came from.
      fc.property(fc.integer({ min: 1, max: 600 }), fc.array(operationOf(utf8Text), { minLength: 1, maxLength: 3 }), (limit, operations) => {
        const got: [ConsoleLevel, string][] = [];
        const sink = new GuestConsole(7, limit, (l, m) => got.push([l, m]));
        for (const op of operations) {
          got.length = 0;
          let sent: RawConsoleEntry[] = [];
          let claimed = 0;
          for (const x of op) {
            const entries = x.notice ? [...x.entries, x.notice] : x.entries;
            sink.write(entries, x.beforeFinal);
            // Only a notice last before a final message is the guest's claim; elsewhere it is text.
            if (x.notice && x.beforeFinal) claimed += Number(MARKER.exec(x.notice.text.toString())![1]);
            sent = sent.concat(x.notice && x.beforeFinal ? x.entries : entries);
          }
          const hostLines = got.slice();
          sink.end();
          const added = got.slice(hostLines.length);
          expect(added.length).toBeLessThanOrEqual(1);
          const marker = added.length === 1 ? MARKER.exec(added[0][1]) : null;
          if (added.length === 1) expect(added[0][0]).toBe('warn');
          // What was delivered is the sent entries in order, some left out: match greedily.
          let spent = 0;
          let i = 0;
          for (const [l, m] of hostLines) {
            while (i < sent.length && !(sent[i].level === l && sent[i].text.toString('utf8') === m)) i++;
            expect(i).toBeLessThan(sent.length);
            spent += cost(sent[i]);
            i++;
          }
          expect(spent).toBeLessThanOrEqual(limit);
          const total = sent.reduce((n, e) => n + cost(e), 0);
          const dropped = total - spent + claimed;
          if (dropped === 0) {
            expect(marker).toBeNull();
          } else {
            expect(marker).not.toBeNull();
            expect(Number(marker![1])).toBe(dropped);
          }
          if (total <= limit) expect(hostLines).toHaveLength(sent.length);
        }
      }),
      { numRuns: 1500 },
    );
  });

  it('writes each default-routed entry as exactly one prefixed line without control characters', () => {
    const writes: { stream: 'out' | 'err'; line: string }[] = [];
    let written = 0;
    vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => (writes.push({ stream: 'out', line: String(c) }), true));
    vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (writes.push({ stream: 'err', line: String(c) }), true));
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 400 }), operationOf(anyText), (limit, op) => {
        writes.length = 0;
        const sink = new GuestConsole(42, limit, undefined);
        let sent = 0;
        for (const x of op) {
          sink.write(x.entries, x.beforeFinal);
          sent += x.entries.length;
        }
        sink.end();
        expect(writes.length).toBeLessThanOrEqual(sent + 1);
        written += writes.length;
        for (const { line } of writes) {
          expect(line.startsWith('[airlock:42] ')).toBe(true);
          expect(line.endsWith('\n')).toBe(true);
          expect(CONTROL.test(line.slice(0, -1))).toBe(false);
        }
      }),
      { numRuns: 1500 },
    );
    expect(written).toBeGreaterThan(1000);
  });

  it('routes warn and error to stderr and the other levels to stdout', () => {
    const seen: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => (seen.push(`out ${String(c)}`), true));
    vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (seen.push(`err ${String(c)}`), true));
    const sink = new GuestConsole(3, 1000, undefined);
    const levels: ConsoleLevel[] = ['log', 'info', 'warn', 'error', 'debug'];
    sink.write(levels.map((l) => ({ level: l, text: Buffer.from(l) })), true);
    sink.end();
    expect(seen).toEqual(['out [airlock:3] log\n', 'out [airlock:3] info\n', 'err [airlock:3] warn\n', 'err [airlock:3] error\n', 'out [airlock:3] debug\n']);
  });

  it('leaves text without control characters as it is and removes every control character otherwise', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 80 }), (s) => {
        const escaped = escapeControlCharacters(s);
        expect(CONTROL.test(escaped)).toBe(false);
        if (!CONTROL.test(s)) expect(escaped).toBe(s);
        // Every control character becomes one visible escape: text between them survives.
        expect(escaped.replace(/\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt])/g, '')).toBe(s.replace(new RegExp(CONTROL, 'g'), '').replace(/\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt])/g, ''));
      }),
      { numRuns: 3000 },
    );
    expect(escapeControlCharacters('a\nb\r\t\x1b[31m\x00\x7f\u0085\u009b\u2028\u2029')).toBe('a\\nb\\r\\t\\x1b[31m\\x00\\x7f\\x85\\x9b\\u2028\\u2029');
  });
});
