// globals.test.ts — a handler sees the same global names on every tier: the list below
// is the guest's documented global scope (docs/API.md, "Guest globals").
import { afterEach, expect, it } from 'vitest';
import { describeEachBackend } from './backends.js';

export const GUEST_GLOBALS = [
  'AggregateError', 'Array', 'ArrayBuffer', 'BigInt', 'BigInt64Array', 'BigUint64Array', 'Boolean', 'DataView', 'Date',
  'Error', 'EvalError', 'FinalizationRegistry', 'Float32Array', 'Float64Array', 'Function', 'Infinity', 'Int16Array',
  'Int32Array', 'Int8Array', 'InternalError', 'JSON', 'Map', 'Math', 'NaN', 'Number', 'Object', 'Promise', 'Proxy',
  'RangeError', 'ReferenceError', 'Reflect', 'RegExp', 'Set', 'String', 'Symbol', 'SyntaxError', 'TypeError',
  'URIError', 'Uint16Array', 'Uint32Array', 'Uint8Array', 'Uint8ClampedArray', 'WeakMap', 'WeakRef', 'WeakSet',
  'console', 'decodeURI', 'decodeURIComponent', 'encodeURI', 'encodeURIComponent', 'escape', 'eval', 'globalThis',
  'isFinite', 'isNaN', 'parseFloat', 'parseInt', 'performance', 'undefined', 'unescape',
  // Web APIs (guest/runtime/webapi.c).
  'AbortController', 'AbortSignal', 'DOMException', 'Event', 'EventTarget', 'TextDecoder', 'TextEncoder', 'URL',
  'URLSearchParams', 'atob', 'btoa', 'crypto', 'structuredClone',
  // The event loop (guest/runtime/eventloop.c).
  'clearInterval', 'clearTimeout', 'fetch', 'queueMicrotask', 'setInterval', 'setTimeout',
];

describeEachBackend('guest globals', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  it('are the documented set, with neither SharedArrayBuffer nor Atomics', async () => {
    const loaded = await h.load({ names: 'function handler() { return Object.getOwnPropertyNames(globalThis).sort(); }' });
    open.push(loaded);
    expect(await loaded.callHandler('names', null)).toEqual([...GUEST_GLOBALS].sort());
  });

  it('stay the same after unload() (a fresh context gets the same scope)', async () => {
    const loaded = await h.load({ t: 'function handler() { return [typeof SharedArrayBuffer, typeof Atomics]; }' });
    const js = await loaded.unload();
    js.addHandler('t', 'function handler() { return [typeof SharedArrayBuffer, typeof Atomics, typeof performance.now]; }');
    const again = await js.getLoadedSandbox();
    open.push(again);
    expect(await again.callHandler('t', null)).toEqual(['undefined', 'undefined', 'function']);
  });
});
