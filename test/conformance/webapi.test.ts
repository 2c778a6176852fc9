// webapi.test.ts — the guest's Web API globals on both tiers, checked against Node's own
// implementations: each case is one expression, evaluated in Node and in the guest, and the
// two JSON results must be equal.
import { describe, expect, it } from 'vitest';
import { describeEachBackend } from './backends.js';

// Each expression yields JSON-able data; thrown errors are compared by name.
const SHARED_CASES: Record<string, string> = {
  encodeAscii: `Array.from(new TextEncoder().encode('hello'))`,
  encodeUnicode: `Array.from(new TextEncoder().encode('h\\u00e9\\u20ac\\u{1F600}'))`,
  encodeLoneSurrogate: `Array.from(new TextEncoder().encode('a\\ud800b\\udc00'))`,
  encodeInto: `(() => { const d = new Uint8Array(5); const r = new TextEncoder().encodeInto('h\\u00e9\\u20ac', d); return [r.read, r.written, Array.from(d)]; })()`,
  decodeValid: `new TextDecoder().decode(new Uint8Array([104, 195, 169, 226, 130, 172, 240, 159, 152, 128]))`,
  decodeInvalid: `new TextDecoder().decode(new Uint8Array([0x61, 0xff, 0xc3, 0x28, 0xe2, 0x82, 0x61, 0xf0, 0x9f, 0x98]))`,
  decodeOverlongAndSurrogate: `new TextDecoder().decode(new Uint8Array([0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xf4, 0x90, 0x80, 0x80]))`,
  decodeBom: `[new TextDecoder().decode(new Uint8Array([0xef, 0xbb, 0xbf, 0x61])).length, new TextDecoder('utf-8', { ignoreBOM: true }).decode(new Uint8Array([0xef, 0xbb, 0xbf, 0x61])).length]`,
  decodeFatal: `(() => { try { new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array([0xff])); return 'no error'; } catch (e) { return e.name; } })()`,
  decodeStream: `(() => { const d = new TextDecoder(); return d.decode(new Uint8Array([0xe2, 0x82]), { stream: true }) + '|' + d.decode(new Uint8Array([0xac, 0x61])); })()`,
  decoderProps: `(() => { const d = new TextDecoder('UTF8', { fatal: true }); return [d.encoding, d.fatal, d.ignoreBOM]; })()`,
  decoderBadLabel: `(() => { try { new TextDecoder('latin2-nope'); return 'no error'; } catch (e) { return e.name; } })()`,
  btoa: `[btoa(''), btoa('f'), btoa('fo'), btoa('foo'), btoa('\\u00ff\\u00fe')]`,
  atob: `[atob('Zm9v'), atob(' Zm 9v\\n'), atob('Zg=='), atob('Zg'), atob('Zm8=')]`,
  atobInvalid: `['Zm9', 'Zm9v=', '@@@@', 'Zg==='].map((s) => { try { atob(s); return 'ok'; } catch (e) { return e.name; } })`,
  btoaInvalid: `(() => { try { btoa('\\u20ac'); return 'ok'; } catch (e) { return [e.name, e.code]; } })()`,
  urlParts: `(() => { const u = new URL('https://user:pw@Example.COM:8443/a/../b/c d?x=1&y=%20#frag'); return [u.href, u.origin, u.protocol, u.username, u.password, u.host, u.hostname, u.port, u.pathname, u.search, u.hash]; })()`,
  urlRelative: `[new URL('../x?q', 'http://h/a/b/c').href, new URL('//other/p', 'https://h/').href]`,
  urlIdna: `new URL('http://m\\u00fcnchen.de/').hostname`,
  urlInvalid: `(() => { try { new URL('not a url'); return 'ok'; } catch (e) { return e.name; } })()`,
  urlCanParse: `[URL.canParse('http://a'), URL.canParse('nope')]`,
  urlSetters: `(() => { const u = new URL('http://a/'); u.pathname = '/p q'; u.searchParams.set('k', 'v w'); u.hash = 'h'; return u.href; })()`,
  searchParams: `(() => { const p = new URLSearchParams('a=1&b=2&a=3'); p.append('c', '&='); p.sort(); return [p.toString(), p.getAll('a'), p.has('b'), [...p.keys()]]; })()`,
  searchParamsFromObject: `new URLSearchParams({ x: '1', y: 'two words' }).toString()`,
  structuredClone: `(() => { const d = new Date(5); const o = { d, m: new Map([[1, { s: new Set([2]) }]]), r: /x/gi, a: new Uint8Array([1, 2]), big: 10n }; o.self = o; const c = structuredClone(o); return [c !== o, c.self === c, c.d.getTime(), c.d !== d, [...c.m.get(1).s], c.r.source + c.r.flags, Array.from(c.a), String(c.big)]; })()`,
  structuredCloneError: `(() => { try { structuredClone({ f() {} }); return 'ok'; } catch (e) { return [e.name, e.code]; } })()`,
  abortController: `(() => { const c = new AbortController(); const seen = []; c.signal.addEventListener('abort', (e) => seen.push(e.type)); c.signal.onabort = () => seen.push('onabort'); c.abort('why'); c.abort('again'); return [c.signal.aborted, c.signal.reason, seen]; })()`,
  abortDefaultReason: `(() => { const c = new AbortController(); c.abort(); return [c.signal.reason.name, c.signal.reason.code]; })()`,
  abortStatic: `(() => { const s = AbortSignal.abort(7); let thrown; try { s.throwIfAborted(); } catch (e) { thrown = e; } return [s.aborted, s.reason, thrown]; })()`,
  abortAny: `(() => { const a = new AbortController(); const b = new AbortController(); const any = AbortSignal.any([a.signal, b.signal]); b.abort('b'); return [any.aborted, any.reason]; })()`,
  eventTarget: `(() => { const t = new EventTarget(); const got = []; const f = (e) => got.push(e.type); t.addEventListener('x', f); t.addEventListener('x', f); t.dispatchEvent(new Event('x')); t.removeEventListener('x', f); t.dispatchEvent(new Event('x')); return got; })()`,
  domException: `(() => { const e = new DOMException('m', 'NotFoundError'); return [e.name, e.message, e.code, e instanceof Error]; })()`,
  randomUUID: `/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID())`,
  getRandomValues: `(() => { const a = new Uint32Array(8); const r = crypto.getRandomValues(a); return [r === a, a.some((x) => x !== 0)]; })()`,
  getRandomValuesFloat: `(() => { try { crypto.getRandomValues(new Float64Array(1)); return 'ok'; } catch (e) { return e.name; } })()`,
  getRandomValuesTooLarge: `(() => { try { crypto.getRandomValues(new Uint8Array(65537)); return 'ok'; } catch (e) { return e.name; } })()`,
  mathRandom: `Array.from({ length: 100 }, Math.random).every((x) => x >= 0 && x < 1)`,
  globalsAreHidden: `['TextEncoder', 'URL', 'atob', 'structuredClone', 'AbortController'].map((n) => Object.getOwnPropertyDescriptor(globalThis, n)?.enumerable ?? 'absent')`,
};

function nodeValue(expression: string): unknown {
  return JSON.parse(JSON.stringify(new Function(`return (${expression});`)()) ?? 'null');
}

describeEachBackend('Web APIs', (h) => {
  it('give the same results as Node on shared cases', async () => {
    const handlers: Record<string, string> = {};
    for (const [name, expr] of Object.entries(SHARED_CASES)) handlers[name] = `function handler() { return (${expr}); }`;
    const sandbox = await h.load(handlers);
    try {
      for (const [name, expr] of Object.entries(SHARED_CASES)) {
        const guest = await sandbox.callHandler(name, {});
        expect({ name, value: guest ?? null }).toEqual({ name, value: nodeValue(expr) });
      }
    } finally {
      await sandbox.dispose();
    }
  });

  it('lets a handler replace a Web API global before its first use', async () => {
    const sandbox = await h.load({ shim: `globalThis.URL = 'mine'; function handler() { return [URL, typeof TextEncoder]; }` });
    try {
      expect(await sandbox.callHandler('shim', {})).toEqual(['mine', 'function']);
    } finally {
      await sandbox.dispose();
    }
  });

  it('installs the globals in a context unloaded and loaded again', async () => {
    const sandbox = await h.load({ u: `function handler() { return new URL('http://x/y').pathname; }` });
    try {
      expect(await sandbox.callHandler('u', {})).toBe('/y');
      const js = await sandbox.unload();
      js.addHandler('u', `function handler() { return new URLSearchParams('a=1').get('a'); }`);
      const again = await js.getLoadedSandbox();
      expect(await again.callHandler('u', {})).toBe('1');
      await again.dispose();
    } catch (e) {
      await sandbox.dispose();
      throw e;
    }
  });
});

describe('Web API cases', () => {
  it('hold in Node itself (the reference)', () => {
    for (const expr of Object.values(SHARED_CASES)) expect(() => nodeValue(expr)).not.toThrow();
  });
});
