// binary.test.ts — the host's binary-data codec (src/binary.ts) against hostile guest output:
// every malformed placeholder is refused with BinaryEncodingError, never guessed at, and
// decoding copies bytes out of the (reused) guest buffer.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { BINARY_KEY, BinaryEncodingError, decodeBinary, encodeBinary } from '../../src/binary.js';

const bufs = [new Uint8Array([1, 2]), new Uint8Array([3])];

describe('binary codec', () => {
  it('round-trips nested bytes and leaves other values to JSON', () => {
    const value = { a: Buffer.from([1]), b: [new Uint8Array([2, 3]).subarray(1), { c: new Uint8Array([4]).buffer }], d: 'x', e: null };
    const { json, buffers } = encodeBinary(value);
    expect(buffers.map((b) => Array.from(b))).toEqual([[1], [3], [4]]);
    const back = decodeBinary(json!, buffers) as { a: Uint8Array; b: [Uint8Array, { c: ArrayBuffer }]; d: string };
    expect(Array.from(back.a)).toEqual([1]);
    expect(Array.from(back.b[0])).toEqual([3]);
    expect(back.b[1].c).toBeInstanceOf(ArrayBuffer);
    expect(back.d).toBe('x');
    expect(encodeBinary(undefined).json).toBeUndefined();
  });

  it('refuses malformed placeholders from the guest', () => {
    const forged = [
      { [BINARY_KEY]: 2, type: 'Uint8Array' }, // index past the fields
      { [BINARY_KEY]: -1, type: 'Uint8Array' },
      { [BINARY_KEY]: 0.5, type: 'Uint8Array' },
      { [BINARY_KEY]: '0', type: 'Uint8Array' },
      { [BINARY_KEY]: 0, type: 'Float64Array' },
      { [BINARY_KEY]: 0 }, // missing type
      { [BINARY_KEY]: 0, type: 'Uint8Array', extra: 1 },
      { [BINARY_KEY]: 1e300, type: 'ArrayBuffer' },
      { [BINARY_KEY]: null, type: 'ArrayBuffer' },
    ];
    for (const p of forged) expect(() => decodeBinary(JSON.stringify({ v: [p] }), bufs)).toThrow(BinaryEncodingError);
    expect(() => decodeBinary('{"a":', bufs)).toThrow(SyntaxError);
  });

  it('refuses a field named by two placeholders, so one field cannot be copied many times', () => {
    const p = { [BINARY_KEY]: 0, type: 'Uint8Array' };
    expect(() => decodeBinary(JSON.stringify([p, p]), bufs)).toThrow(BinaryEncodingError);
    expect(() => decodeBinary(JSON.stringify([p, { ...p, type: 'ArrayBuffer' }]), bufs)).toThrow(BinaryEncodingError);
    const both = decodeBinary(JSON.stringify([p, { [BINARY_KEY]: 1, type: 'Uint8Array' }]), bufs) as Uint8Array[];
    expect(both.map((b) => Array.from(b))).toEqual([[1, 2], [3]]);
  });

  it('copies bytes, so the guest buffer can be reused', () => {
    const field = new Uint8Array([7, 8]);
    const out = decodeBinary(`{"${BINARY_KEY}":0,"type":"Uint8Array"}`, [field]) as Uint8Array;
    field[0] = 0;
    expect(Array.from(out)).toEqual([7, 8]);
  });

  it('throws only its own errors on arbitrary guest text and fields', () => {
    const placeholder = fc.record({ [BINARY_KEY]: fc.oneof(fc.integer({ min: -2, max: 4 }), fc.double(), fc.string()), type: fc.constantFrom('Uint8Array', 'ArrayBuffer', 'x') }, { requiredKeys: [] });
    const value = fc.letrec((tie) => ({
      node: fc.oneof({ depthSize: 'small' }, fc.jsonValue(), placeholder, fc.array(tie('node'), { maxLength: 4 }), fc.dictionary(fc.string(), tie('node'), { maxKeys: 4 })),
    })).node;
    fc.assert(
      fc.property(fc.oneof(value.map((v) => JSON.stringify(v) ?? 'null'), fc.string()), fc.array(fc.uint8Array({ maxLength: 8 }), { maxLength: 3 }), (json, fields) => {
        try {
          decodeBinary(json, fields);
        } catch (e) {
          expect(e instanceof BinaryEncodingError || e instanceof SyntaxError).toBe(true);
        }
      }),
      { numRuns: 500 },
    );
  });
});
