// json.test.ts — values of many shapes cross the boundary and come back unchanged, up to
// the exact size limits of the input and output buffers.
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const KiB = 1024;
const HEADER = 16; // message header (abi.h)
const FIELD = 4; // field length prefix (abi.h)
const ENTROPY = 32; // host entropy, the last field of every CALL (abi.h AIRLOCK_ENTROPY_SIZE)

describeEachBackend('JSON round trip', (h) => {
  let loaded: LoadedJSSandbox;
  beforeAll(async () => {
    loaded = await h.load(
      {
        echo: 'function handler(e) { return e; }',
        describe: `function handler(e) {
          return { type: typeof e, isArray: Array.isArray(e), json: JSON.stringify(e) };
        }`,
        make: 'function handler(n) { return "x".repeat(n); }',
      },
      { builder: h.builder().setInputBufferSize(64 * KiB).setOutputBufferSize(64 * KiB) },
    );
  });
  afterAll(() => loaded?.dispose());

  const shapes: [string, unknown][] = [
    ['null', null],
    ['true', true],
    ['false', false],
    ['zero', 0],
    ['negative', -42],
    ['fraction', 0.1 + 0.2],
    ['max safe integer', Number.MAX_SAFE_INTEGER],
    ['min safe integer', Number.MIN_SAFE_INTEGER],
    ['largest double', Number.MAX_VALUE],
    ['smallest subnormal', Number.MIN_VALUE],
    ['exponent', 6.02214076e23],
    ['empty string', ''],
    ['ascii', 'hello world'],
    ['escapes', 'quote " backslash \\ slash / tab \t newline \n nul \u0000 bell \u0007'],
    ['unicode', 'héllo wörld — 你好 — こんにちは — مرحبا — 🎉🚀 — \u{1F600}'],
    ['lone surrogate', 'a\uD800b'],
    ['empty object', {}],
    ['empty array', []],
    ['mixed array', [1, 'two', null, true, { three: 3 }, [4]]],
    ['object', { a: 1, b: 'two', c: [3], d: { e: null }, 'key with spaces': 1, 'ключ': 'значение' }],
    ['nested 200 deep', JSON.parse('['.repeat(200) + '0' + ']'.repeat(200))],
    ['wide array', Array.from({ length: 2000 }, (_, i) => i * 1.5)],
    ['many keys', Object.fromEntries(Array.from({ length: 500 }, (_, i) => [`k${i}`, i]))],
  ];

  for (const [label, value] of shapes) {
    it(`echoes ${label}`, async () => {
      expect(await loaded.callHandler('echo', value)).toEqual(value);
    });
  }

  it('sees the event as the same JSON value inside the guest', async () => {
    const event = { n: 1.5, s: 'ü', a: [1, { b: null }], t: true };
    expect(await loaded.callHandler('describe', event)).toEqual({ type: 'object', isArray: false, json: JSON.stringify(event) });
    expect(await loaded.callHandler('describe', [1])).toEqual({ type: 'object', isArray: true, json: '[1]' });
    expect(await loaded.callHandler('describe', 'str')).toEqual({ type: 'string', isArray: false, json: '"str"' });
  });

  it('follows JSON rules for values JSON cannot hold exactly', async () => {
    // -0, NaN and Infinity have no JSON form: they arrive as JSON.stringify makes them.
    expect(await loaded.callHandler('echo', { negZero: -0, nan: NaN, inf: Infinity })).toEqual({ negZero: 0, nan: null, inf: null });
    expect(await loaded.callHandler('echo', { d: new Date(0) })).toEqual({ d: '1970-01-01T00:00:00.000Z' });
    expect(await loaded.callHandler('echo', { f: () => 1, u: undefined, k: 1 })).toEqual({ k: 1 });
  });

  it('accepts an event that fills the input buffer exactly, and refuses one byte more', async () => {
    const name = 'echo';
    const room = 64 * KiB - HEADER - FIELD - name.length - FIELD - 2 - FIELD - ENTROPY; // 2 = the JSON quotes
    const fits = 'y'.repeat(room);
    expect(await loaded.callHandler(name, fits)).toBe(fits);
    await expect(loaded.callHandler(name, fits + 'y')).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    expect(await loaded.callHandler('echo', 'still usable')).toBe('still usable');
  });

  it('returns a result that fills the output buffer exactly, and refuses a larger one', async () => {
    const room = 64 * KiB - HEADER - FIELD - 2;
    expect(await loaded.callHandler('make', room)).toHaveLength(room);
    await expect(loaded.callHandler('make', room + 1)).rejects.toMatchObject({ code: 'ERR_TOO_LARGE' });
    expect(await loaded.callHandler('make', 3)).toBe('xxx');
  });
});
