// protocol.test.ts — the TypeScript side of the wire format: round trips, and hostile
// guest output (random bytes, truncations, lying lengths) that must only ever become a
// GuestAbortError — never another exception, a hang or an out-of-range read.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { decodeOutput, encodeMessage, encodedSize, fieldText } from '../../src/engine/protocol.js';
import { GuestAbortError } from '../../src/errors.js';

function consoleMsg(level: string, text: string): Buffer {
  return encodeMessage(abi.AIRLOCK_MSG_CONSOLE, 0, [level, text]);
}

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

  it('refuses output without a final message, bytes after it, and unknown console levels', () => {
    expect(() => decodeOutput(Buffer.alloc(0))).toThrow(GuestAbortError);
    expect(() => decodeOutput(consoleMsg('log', 'only console'))).toThrow(GuestAbortError);
    const result = encodeMessage(abi.AIRLOCK_MSG_RESULT, 0, []);
    expect(() => decodeOutput(Buffer.concat([result, Buffer.from([1])]))).toThrow(GuestAbortError);
    expect(() => decodeOutput(Buffer.concat([consoleMsg('shout', 'x'), result]))).toThrow(GuestAbortError);
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

  it('turns random and mutated output into GuestAbortError or a valid decode, nothing else', () => {
    const valid = Buffer.concat([consoleMsg('info', 'hello'), encodeMessage(abi.AIRLOCK_MSG_RESULT, 1, ['TypeError', 'msg', 'stack'])]);
    let aborts = 0;
    for (let i = 0; i < 20_000; i++) {
      let bytes: Buffer;
      if (i % 2 === 0) {
        bytes = randomBytes(i % 97);
      } else {
        bytes = Buffer.from(valid);
        const flips = 1 + (i % 4);
        for (let f = 0; f < flips; f++) bytes[(i * 7919 + f * 104729) % bytes.length] ^= 1 << (f + (i % 5));
        if (i % 3 === 0) bytes = bytes.subarray(0, i % bytes.length);
      }
      try {
        const { final } = decodeOutput(bytes);
        expect(final.fields.length).toBeGreaterThanOrEqual(0);
      } catch (e) {
        expect(e).toBeInstanceOf(GuestAbortError);
        aborts++;
      }
    }
    expect(aborts).toBeGreaterThan(10_000);
  });
});
