// console-before-stop.test.ts — consoleBeforeStop(), which reads the console lines out of
// the output of a guest stopped anywhere: it never throws, returns only lines whose
// encoding is exactly the start of the bytes, ends at the first message that is not a
// well-formed console line, and returns nothing when the lines went out with a host call.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { consoleBeforeStop, encodeMessage, type RawConsoleEntry } from '../../src/engine/protocol.js';

const level = fc.constantFrom('log', 'info', 'warn', 'error', 'debug');
const line = fc.record({ level, text: fc.uint8Array({ maxLength: 64 }) });

function encodeLines(lines: readonly { level: string; text: Uint8Array }[]): Buffer {
  return Buffer.concat(lines.map((l) => encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, [l.level, l.text])));
}

/** Bytes after the lines: anything but a HOST_CALL header (which would rightly void
 *  them); 40 bytes cannot hold a console line and a HOST_CALL after it. */
const garbage = fc
  .uint8Array({ maxLength: 40 })
  .filter((t) => t.length < 4 || Buffer.from(t).readUInt32LE(0) !== abi.AIRLOCK_MSG_HOST_CALL);

function plain(entries: RawConsoleEntry[]): { level: string; text: string }[] {
  return entries.map((e) => ({ level: e.level, text: e.text.toString('hex') }));
}

describe('consoleBeforeStop', () => {
  it('never throws on any bytes, and what it returns is exactly the start of them', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
        const entries = consoleBeforeStop(bytes);
        const encoded = encodeLines(entries);
        expect(Buffer.compare(encoded, Buffer.from(bytes.subarray(0, encoded.length)))).toBe(0);
      }),
      { numRuns: 2000 },
    );
  });

  it('returns every whole line before a cut, a forged length or another message', () => {
    fc.assert(
      fc.property(fc.array(line, { maxLength: 8 }), garbage, (lines, tail) => {
        const prefix = encodeLines(lines);
        // A RESULT (an interrupted call's answer) or garbage after the lines ends them.
        const result = encodeMessage(abi.AIRLOCK_MSG_RESULT, abi.AIRLOCK_STATUS_INTERRUPTED, ['interrupted']);
        for (const after of [Buffer.alloc(0), result, Buffer.from(tail)]) {
          const got = consoleBeforeStop(Buffer.concat([prefix, after]));
          const want = plain(lines.map((l) => ({ level: l.level as RawConsoleEntry['level'], text: Buffer.from(l.text) })));
          expect(plain(got).slice(0, want.length)).toEqual(want);
          if (after !== tail) expect(got).toHaveLength(lines.length);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('returns nothing when the lines went out with a host call', () => {
    const lines = encodeLines([{ level: 'log', text: Buffer.from('delivered with the host call') }]);
    const hostCall = encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, ['m', 'f', '[]']);
    expect(consoleBeforeStop(Buffer.concat([lines, hostCall]))).toEqual([]);
  });

  it('ends at a console message with an unknown level, a status, or the wrong field count', () => {
    const good = encodeLines([{ level: 'info', text: Buffer.from('kept') }]);
    const bad = [
      encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['shout', 'x']),
      encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 7, ['log', 'x']),
      encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, ['log']),
    ];
    for (const b of bad) {
      const got = consoleBeforeStop(Buffer.concat([good, b, good]));
      expect(plain(got)).toEqual([{ level: 'info', text: Buffer.from('kept').toString('hex') }]);
    }
  });
});
