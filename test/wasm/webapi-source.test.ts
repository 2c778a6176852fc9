// webapi-source.test.ts — the WebAssembly guest's Web API sources live in its module's
// custom section "airlock.webapi", not in linear memory (whose static data every restore
// copies), and reach the guest through the webapi_read import when a group is first
// used; the import refuses any range outside the prelude or the guest's memory.
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { SandboxBuilder, type LoadedJSSandbox } from '../../src/index.js';
import { copyWebapiSource, type MemoryImage } from '../../src/engine/wasm/channel.js';
import { guestModule } from '../../src/engine/wasm/pool.js';

const sandboxes: LoadedJSSandbox[] = [];
afterEach(async () => {
  await Promise.all(sandboxes.splice(0).map((s) => s.dispose()));
});

async function load(handler: string): Promise<LoadedJSSandbox> {
  const js = await (await new SandboxBuilder().setBackend('wasm').build()).loadRuntime();
  js.addHandler('h', handler);
  const s = await js.getLoadedSandbox();
  sandboxes.push(s);
  return s;
}

/** The memory image of a snapshot the engine takes now (internal, as the worker sent it). */
async function imageOf(s: LoadedJSSandbox): Promise<MemoryImage> {
  const engine = (s as unknown as { core: { engine: { snapshot(): Promise<{ image: { image: MemoryImage } }> } } }).core.engine;
  return (await engine.snapshot()).image.image;
}

describe('the WebAssembly guest\'s Web API sources', () => {
  it('are not in linear memory, yet every group loads on first use, an international domain name included', async () => {
    const { webapi } = await guestModule();
    const prelude = Buffer.from(new Uint8Array(webapi));
    expect(prelude.length).toBeGreaterThan(100_000);

    const s = await load(`function handler() {
      const u = new URL('https://b\\u00fccher.example/a?x=1');
      return [u.hostname, new URLSearchParams('a=1&b=2').get('b'), new TextDecoder().decode(new TextEncoder().encode('ok')),
        atob(btoa('hi')), structuredClone({ n: 1 }).n, typeof new AbortController().signal, new DOMException('m', 'AbortError').name];
    }`);
    const image = await imageOf(s);
    const statics = image.regions.find((r) => r.addr === image.layout.staticLow && r.length > 0);
    expect(statics).toBeDefined();
    const data = Buffer.from(image.bytes, statics!.offset, statics!.length);
    // 64-byte windows spread over the whole prelude: none is in the module's static data.
    for (let at = 0; at + 64 <= prelude.length; at += Math.floor(prelude.length / 40)) {
      expect(data.indexOf(prelude.subarray(at, at + 64)), `prelude bytes at ${at}`).toBe(-1);
    }
    expect(statics!.length).toBeLessThan(prelude.length);

    expect(await s.callHandler('h', {})).toEqual(['xn--bcher-kva.example', '2', 'ok', 'hi', 1, 'object', 'AbortError']);
  });

  it('are copied only from inside the prelude to inside guest memory (webapi_read)', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 64 }),
        fc.nat(96),
        fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
        fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
        fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }),
        fc.boolean(),
        (source, memSize, rawOffset, rawDst, rawLen, small) => {
          // Half the cases draw arguments near the bounds, where an off-by-one would show.
          const offset = small ? Math.abs(rawOffset) % 80 : rawOffset;
          const dst = small ? Math.abs(rawDst) % 110 : rawDst;
          const len = small ? Math.abs(rawLen) % 80 : rawLen;
          const mem = new Uint8Array(memSize).fill(0xee);
          const before = Uint8Array.from(mem);
          const rc = copyWebapiSource(source, mem, offset, dst, len);
          const [o, d, n] = [offset >>> 0, dst >>> 0, len >>> 0];
          const fits = o + n <= source.length && d + n <= mem.length;
          expect(rc).toBe(fits ? 0 : -1);
          if (!fits) {
            expect(mem).toEqual(before);
            return;
          }
          expect(mem.subarray(d, d + n)).toEqual(source.subarray(o, o + n));
          expect(mem.subarray(0, d)).toEqual(before.subarray(0, d));
          expect(mem.subarray(d + n)).toEqual(before.subarray(d + n));
        },
      ),
      { numRuns: 2000 },
    );
  });
});
