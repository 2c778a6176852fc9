// protocol.test.ts — the TypeScript side of the wire format: round trips, and hostile
// guest output (framing-shaped lies, mutated valid output, random bytes) that must only
// ever become a GuestAbortError or a decode that re-encodes to exactly the guest's bytes —
// never another exception, a hang or an out-of-range read.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { decodeOutput, encodeMessage, encodedSize, fieldText, splitOutput, type RawGuestOutput } from '../../src/engine/protocol.js';
import { GuestAbortError } from '../../src/errors.js';

function consoleMsg(level: string, text: string | Uint8Array): Buffer {
  return encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, [level, text]);
}

/** The bytes a decode stands for: the decoder accepts exactly one encoding of each output. */
function reencode({ console: lines, final }: RawGuestOutput): Buffer {
  return Buffer.concat([...lines.map((l) => consoleMsg(l.level, l.text)), encodeMessage(final.kind, final.status, final.fields)]);
}

/** Decodes hostile bytes: a GuestAbortError, or a decode whose encoding is the bytes (up to an ABORT's trailing bytes). */
function decodesCanonicallyOrAborts(bytes: Uint8Array): 'aborted' | 'decoded' {
  let decoded: RawGuestOutput;
  try {
    decoded = splitOutput(bytes);
  } catch (e) {
    expect(e).toBeInstanceOf(GuestAbortError);
    expect((e as GuestAbortError).code).toBe('ERR_GUEST_ABORT');
    return 'aborted';
  }
  const again = reencode(decoded);
  if (decoded.final.kind === abi.AIRLOCK_MSG_ABORT) {
    expect(Buffer.from(bytes.subarray(0, again.length)).equals(again)).toBe(true);
  } else {
    expect(Buffer.from(bytes).equals(again)).toBe(true);
  }
  expect(decoded.final.kind).not.toBe(abi.AIRLOCK_MSG_CONSOLE);
  return 'decoded';
}

// ---------------------------------------------------------------------------
// Arbitraries over the framing of guest/include/abi.h.

const U32_MAX = 0xffffffff;
const u32 = fc.integer({ min: 0, max: U32_MAX });
const KINDS = [
  abi.AIRLOCK_MSG_CONSOLE,
  abi.AIRLOCK_MSG_RESULT,
  abi.AIRLOCK_MSG_ABORT,
  abi.AIRLOCK_MSG_HOST_CALL,
  abi.AIRLOCK_MSG_READY,
];
const kind = fc.oneof(fc.constantFrom(...KINDS), u32);
const finalKind = kind.filter((k) => k !== abi.AIRLOCK_MSG_CONSOLE);
const fieldBytes = fc.uint8Array({ maxLength: 48 });
const level = fc.constantFrom('log', 'info', 'warn', 'error', 'debug');

/** A valid output: console entries, then one final message. */
const validOutput = fc.record({
  console: fc.array(fc.record({ level, text: fieldBytes }), { maxLength: 6 }),
  final: fc.record({ kind: finalKind, status: u32, fields: fc.array(fieldBytes, { maxLength: 6 }) }),
});

function encodeOutput(o: { console: { level: string; text: Uint8Array }[]; final: { kind: number; status: number; fields: Uint8Array[] } }): Buffer {
  return Buffer.concat([...o.console.map((c) => consoleMsg(c.level, c.text)), encodeMessage(o.final.kind, o.final.status, o.final.fields)]);
}

/** Words a lying guest would pick for a length or a count: edges, off-by-ones and noise. */
const lyingWord = (honest: number) =>
  fc.oneof(
    fc.constantFrom(0, 1, honest - 1, honest + 1, honest + 4, 0x7fffffff, 0x80000000, U32_MAX, U32_MAX - 3).map((v) => v >>> 0),
    u32,
  );

/**
 * One message whose header and field lengths may each lie: the honest value, an edge
 * near it, or noise. Bodies are honest bytes, so the lies are all in the framing.
 */
const framedMessage = fc
  .record({ kind, status: fc.oneof(fc.constant(0), u32), fields: fc.array(fieldBytes, { maxLength: 5 }) })
  .chain(({ kind: k, status, fields }) => {
    const body = fields.reduce((n, f) => n + abi.AIRLOCK_FIELD_HEADER_SIZE + f.length, 0);
    const honestOr = (v: number) => fc.oneof({ weight: 3, arbitrary: fc.constant(v) }, { weight: 1, arbitrary: lyingWord(v) });
    return fc.record({
      kind: fc.constant(k),
      status: fc.constant(status),
      length: honestOr(body),
      count: honestOr(fields.length),
      fields: fc.tuple(...fields.map((f) => fc.record({ length: honestOr(f.length), bytes: fc.constant(f) }))),
    });
  })
  .map((m) => {
    const parts: Buffer[] = [];
    const header = Buffer.alloc(abi.AIRLOCK_MSG_HEADER_SIZE);
    header.writeUInt32LE(m.kind, 0);
    header.writeUInt32LE(m.status, 4);
    header.writeUInt32LE(m.length, 8);
    header.writeUInt32LE(m.count, 12);
    parts.push(header);
    for (const f of m.fields) {
      const len = Buffer.alloc(abi.AIRLOCK_FIELD_HEADER_SIZE);
      len.writeUInt32LE(f.length, 0);
      parts.push(len, Buffer.from(f.bytes));
    }
    return Buffer.concat(parts);
  });

/** Edits a hostile guest can make to a valid output. */
const mutation = fc.oneof(
  fc.record({ op: fc.constant('word' as const), at: fc.nat(), value: lyingWord(0) }),
  fc.record({ op: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ op: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ op: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
);
type Mutation = typeof mutation extends fc.Arbitrary<infer M> ? M : never;

function mutate(bytes: Buffer, edits: Mutation[]): Buffer {
  let out = Buffer.from(bytes);
  for (const e of edits) {
    if (out.length === 0) break;
    const at = e.at % out.length;
    switch (e.op) {
      case 'word': {
        // Header and length words sit on 4-byte boundaries of the honest encoding.
        const word = at - (at % 4);
        if (word + 4 <= out.length) out.writeUInt32LE(e.value, word);
        break;
      }
      case 'flip':
        out[at] ^= 1 << e.bit;
        break;
      case 'truncate':
        out = out.subarray(0, at);
        break;
      case 'insert':
        out = Buffer.concat([out.subarray(0, at), e.bytes, out.subarray(at)]);
        break;
    }
  }
  return out;
}

// Each property runs in well under a second; the bounds keep it so on a loaded machine.
const RUNS = { numRuns: 2000 };

describe('message framing', () => {
  it('round-trips text and byte fields, and sizes them exactly', () => {
    const fields = ['handler', 'ünïcödé 🎉', new Uint8Array([0, 1, 255]), ''];
    const msg = encodeMessage(abi.AIRLOCK_MSG_RESULT, abi.AIRLOCK_STATUS_OK, fields);
    expect(msg.length).toBe(encodedSize(fields));
    const { console: lines, final } = decodeOutput(msg);
    expect(lines).toEqual([]);
    expect(final.kind).toBe(abi.AIRLOCK_MSG_RESULT);
    expect(fieldText(final, 0)).toBe('handler');
    expect(fieldText(final, 1)).toBe('ünïcödé 🎉');
    expect([...final.fields[2]]).toEqual([0, 1, 255]);
    expect(fieldText(final, 3)).toBe('');
    expect(fieldText(final, 4)).toBeUndefined();
  });

  it('splits console messages from the final message', () => {
    const out = Buffer.concat([consoleMsg('log', 'a'), consoleMsg('warn', 'b'), encodeMessage(abi.AIRLOCK_MSG_RESULT, 0, ['1'])]);
    const { console: lines, final } = decodeOutput(out);
    expect(lines).toEqual([{ level: 'log', text: 'a' }, { level: 'warn', text: 'b' }]);
    expect(fieldText(final, 0)).toBe('1');
  });

  it('refuses output without a final message, bytes after it, unknown console levels and console statuses', () => {
    expect(() => decodeOutput(Buffer.alloc(0))).toThrow(GuestAbortError);
    expect(() => decodeOutput(consoleMsg('log', 'only console'))).toThrow(GuestAbortError);
    const result = encodeMessage(abi.AIRLOCK_MSG_RESULT, 0, []);
    expect(() => decodeOutput(Buffer.concat([result, Buffer.from([1])]))).toThrow(GuestAbortError);
    expect(() => decodeOutput(Buffer.concat([consoleMsg('shout', 'x'), result]))).toThrow(GuestAbortError);
    expect(() => decodeOutput(Buffer.concat([encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 1, ['log', 'x']), result]))).toThrow(GuestAbortError);
  });

  it('refuses lengths and counts that lie', () => {
    const msg = encodeMessage(abi.AIRLOCK_MSG_RESULT, 0, ['abc', 'def']);
    const longBody = Buffer.from(msg);
    longBody.writeUInt32LE(0xffffffff, 8);
    const manyFields = Buffer.from(msg);
    manyFields.writeUInt32LE(0x7fffffff, 12);
    const longField = Buffer.from(msg);
    longField.writeUInt32LE(1000, 16);
    const fewFields = Buffer.from(msg);
    fewFields.writeUInt32LE(1, 12);
    for (const bad of [longBody, manyFields, longField, fewFields, msg.subarray(0, msg.length - 1), msg.subarray(0, 10)]) {
      expect(() => decodeOutput(bad)).toThrow(GuestAbortError);
    }
  });
});

describe('message framing properties', () => {
  it('encodes to encodedSize bytes and decodes back to the same console entries and final message', () => {
    fc.assert(
      fc.property(validOutput, (o) => {
        const bytes = encodeOutput(o);
        for (const c of o.console) expect(encodedSize([c.level, c.text])).toBe(consoleMsg(c.level, c.text).length);
        const { console: lines, final } = splitOutput(bytes);
        expect(lines.map((l) => ({ level: l.level, text: new Uint8Array(l.text) }))).toEqual(o.console);
        expect({ kind: final.kind, status: final.status, fields: final.fields.map((f) => new Uint8Array(f)) }).toEqual(o.final);
        expect(decodeOutput(bytes).console.map((l) => l.text)).toEqual(o.console.map((c) => Buffer.from(c.text).toString('utf8')));
      }),
      RUNS,
    );
  });

  it('turns messages with lying lengths and counts into GuestAbortError or an exact decode', () => {
    let aborted = 0;
    fc.assert(
      fc.property(fc.array(framedMessage, { minLength: 1, maxLength: 4 }), (messages) => {
        if (decodesCanonicallyOrAborts(Buffer.concat(messages)) === 'aborted') aborted++;
      }),
      RUNS,
    );
    // The generator must reach the decoder's refusals, not only its happy path.
    expect(aborted).toBeGreaterThan(RUNS.numRuns / 10);
  });

  it('turns mutated valid output into GuestAbortError or an exact decode', () => {
    let aborted = 0;
    fc.assert(
      fc.property(validOutput, fc.array(mutation, { minLength: 1, maxLength: 4 }), (o, edits) => {
        if (decodesCanonicallyOrAborts(mutate(encodeOutput(o), edits)) === 'aborted') aborted++;
      }),
      RUNS,
    );
    expect(aborted).toBeGreaterThan(RUNS.numRuns / 10);
  });

  it('turns random bytes into GuestAbortError or an exact decode', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 128 }), (bytes) => {
        decodesCanonicallyOrAborts(bytes);
      }),
      RUNS,
    );
  });

  it('reads a message only inside the bytes it is given, wherever they sit in memory', () => {
    fc.assert(
      fc.property(validOutput, fc.uint8Array({ maxLength: 16 }), fc.uint8Array({ maxLength: 16 }), (o, before, after) => {
        const bytes = encodeOutput(o);
        // The output as a view into a larger buffer: neighbouring bytes must never be read.
        const backing = Buffer.concat([before, bytes, after]);
        const view = new Uint8Array(backing.buffer, backing.byteOffset + before.length, bytes.length);
        expect(reencode(splitOutput(view)).equals(bytes)).toBe(true);
        for (let cut = 0; cut < bytes.length; cut++) {
          expect(() => splitOutput(view.subarray(0, cut))).toThrow(GuestAbortError);
        }
      }),
      { numRuns: 300 },
    );
  });
});
