// memory.test.ts — the WebAssembly tier's memory under a hostile guest: the module
// imports a memory whose maximum the host sizes from the configuration, so a guest
// that rewrites its allocator's limits in linear memory still cannot grow past it; a
// snapshot holds what memory holds, not what the guest claims; and dropped snapshots
// are collected. Guest writes are made through a snapshot image: its bytes are exactly
// the guest's memory, so editing them and restoring is the guest writing its memory.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER,
  AIRLOCK_MSG_CALL,
  AIRLOCK_MSG_LOAD,
  AIRLOCK_MSG_LOAD_RUNTIME,
  AIRLOCK_STATUS_OK,
  AIRLOCK_STATUS_OUT_OF_MEMORY,
} from '../../src/engine/abi.generated.js';
import type { EngineConfig, EngineSnapshot } from '../../src/engine/engine.js';
import { decodeOutput, encodeMessage, fieldText } from '../../src/engine/protocol.js';
import { wasmModulePath } from '../../src/engine/paths.js';
import { Op, Outcome, Slot, type MemoryImage } from '../../src/engine/wasm/channel.js';
import { WasmEngine } from '../../src/engine/wasm/index.js';
import { WASM_PAGE_BYTES, maximumPages, readModuleMemory } from '../../src/engine/wasm/module-memory.js';
import { GuestWorker, deadlines } from '../../src/engine/wasm/pool.js';
import { HOSTILE_SIZES, hostileModule } from './hostile-module.js';
import { CONFIG, disposedAfterEach } from './support.js';

const engines = disposedAfterEach();
const MiB = 1 << 20;

async function load(handlers: Record<string, string>, config: EngineConfig = CONFIG): Promise<WasmEngine> {
  const engine = new WasmEngine(config, async () => new Uint8Array(0));
  engines.push(engine);
  await engine.boot();
  expect(decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD_RUNTIME, 0, []))).output).final.status).toBe(AIRLOCK_STATUS_OK);
  const fields = Object.entries(handlers).flatMap(([name, src]) => ['handler', '', name, src]);
  const loaded = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD, 0, fields))).output);
  expect(loaded.final.status, fieldText(loaded.final, 0)).toBe(AIRLOCK_STATUS_OK);
  return engine;
}

async function call(engine: WasmEngine, name: string, event: unknown): Promise<{ status: number; value: string | undefined }> {
  const out = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_CALL, 0, [name, JSON.stringify(event)]))).output);
  return { status: out.final.status, value: fieldText(out.final, 0) };
}

function imageOf(snapshot: EngineSnapshot): MemoryImage {
  return (snapshot as unknown as { image: { image: MemoryImage } }).image.image;
}

/** Bytes of the image at guest address `addr` (which must lie in one of its regions). */
function imageBytesAt(image: MemoryImage, addr: number, length: number): Buffer {
  const r = image.regions.find((x) => addr >= x.addr && addr + length <= x.addr + x.length);
  if (!r) throw new Error(`address ${addr} is not in the image`);
  return Buffer.from(image.bytes, r.offset + (addr - r.addr), length);
}

/** Offsets into the image's bytes of every aligned little-endian word equal to `value`
 *  within the guest's static data (where the allocator and platform keep their state). */
function findStaticWords(image: MemoryImage, value: number, width: 4 | 8): number[] {
  const { staticLow, staticHigh } = image.layout;
  const r = image.regions.find((x) => x.addr === staticLow && x.length === staticHigh - staticLow)!;
  const view = new DataView(image.bytes, r.offset, r.length);
  const hits: number[] = [];
  for (let off = 0; off + width <= r.length; off += width) {
    const v = width === 4 ? view.getUint32(off, true) : Number(view.getBigUint64(off, true));
    if (v === value) hits.push(r.offset + off);
  }
  return hits;
}

/** The guest's memory size, read from a fresh snapshot. */
async function memorySize(engine: WasmEngine): Promise<number> {
  return imageOf(await engine.snapshot()).memorySize;
}

describe('wasm guest memory', () => {
  it('imports its memory, and the host caps it at the configured static data, stack, buffers and heap', () => {
    const module = readModuleMemory(readFileSync(wasmModulePath));
    expect(module.staticPages).toBeGreaterThan(0);
    expect(module.stackHigh).toBeGreaterThan(0);
    expect(module.stackHigh).toBeLessThanOrEqual(module.staticPages * WASM_PAGE_BYTES);
    const exports = WebAssembly.Module.exports(new WebAssembly.Module(readFileSync(wasmModulePath)));
    expect(exports.some((e) => e.kind === 'memory')).toBe(false);
    const pages = maximumPages(module, CONFIG);
    const bytes = pages * WASM_PAGE_BYTES;
    const needed = CONFIG.heapSize + CONFIG.inputSize + CONFIG.outputSize + module.staticPages * WASM_PAGE_BYTES;
    expect(bytes).toBeGreaterThanOrEqual(needed);
    expect(bytes).toBeLessThan(needed + 2 * WASM_PAGE_BYTES);
    // A larger stack than the linked one is laid out past the static data, and counted.
    expect(maximumPages(module, { ...CONFIG, stackSize: 4 * MiB })).toBeGreaterThan(pages + (4 * MiB) / WASM_PAGE_BYTES);
  });

  it('keeps a guest that overwrote its allocator limits within the configured heap: the grow fails as out of memory', async () => {
    const engine = await load({
      grab: 'let kept = []; function handler(e) { kept.push(new Uint8Array(e.mb * 1048576)); return kept.length; }',
      ok: 'function handler() { return "alive"; }',
    });
    const fresh = await engine.snapshot();
    const image = imageOf(fresh);
    const { heapAddr, heapSize } = image.layout;
    const heapEnd = heapAddr + heapSize;
    // The platform's heap end (u64) and the allocator's top limit (u32) as they hold them.
    const ends = findStaticWords(image, heapEnd, 8);
    const tops = findStaticWords(image, (heapEnd - 8) & ~15, 4);
    expect(ends.length).toBeGreaterThan(0);
    expect(tops.length).toBeGreaterThan(0);
    const view = new DataView(image.bytes);
    const lie = 0xfff0_0000; // "my heap runs to the end of the 4 GiB address space"
    for (const off of ends) view.setBigUint64(off, BigInt(lie), true);
    for (const off of tops) view.setUint32(off, lie, true);
    // Another snapshot becomes the one the worker holds, so restoring the edited image
    // sends these bytes: the guest's memory now says its heap is ~4 GiB.
    await engine.snapshot();
    await engine.restore(fresh);
    const limit = maximumPages(readModuleMemory(readFileSync(wasmModulePath)), CONFIG) * WASM_PAGE_BYTES;
    // 64 MiB is four times the configured 16 MiB heap: with the limit in linear memory
    // this grew memory to hold it.
    const grab = await call(engine, 'grab', { mb: 64 });
    expect(grab.status).toBe(AIRLOCK_STATUS_OUT_OF_MEMORY);
    expect(await memorySize(engine)).toBeLessThanOrEqual(limit);
    // Small allocations inside the real heap still work after the refusal.
    await engine.restore(fresh);
    expect((await call(engine, 'grab', { mb: 1 })).status).toBe(AIRLOCK_STATUS_OK);
    expect(await call(engine, 'ok', {})).toEqual({ status: AIRLOCK_STATUS_OK, value: '"alive"' });
  });

  it('refuses a guest that grows its memory by itself past the configured maximum', async () => {
    const guest = hostileModule({ growPages: 1000 });
    const w = await GuestWorker.start(guest, true);
    try {
      expect((await w.boot(HOSTILE_SIZES)).outcome).toBe(Outcome.Ok);
      w.control[Slot.Length] = 0;
      // The request handler runs memory.grow(1000): 62.5 MiB for a guest of ~0.5 MiB.
      expect(await w.runOp(Op.Exchange, undefined, true, deadlines.sandboxOpMs)).toBe(Outcome.Ok);
      const { outcome, image } = await w.snapshot(true);
      expect(outcome).toBe(Outcome.Ok);
      expect(image!.image.memorySize).toBe(guest.memory.staticPages * WASM_PAGE_BYTES);
      expect(image!.image.memorySize).toBeLessThanOrEqual(maximumPages(guest.memory, HOSTILE_SIZES) * WASM_PAGE_BYTES);
    } finally {
      await w.terminate();
    }
  });

  it('sizes a snapshot by what memory holds, not by the heap high-water mark the guest reports', async () => {
    const engine = await load({ count: 'let n = 0; function handler() { return ++n; }' }, { ...CONFIG, heapSize: 256 * MiB });
    expect((await call(engine, 'count', {})).status).toBe(AIRLOCK_STATUS_OK);
    const snap = await engine.snapshot();
    const image = imageOf(snap);
    const size = image.bytes.byteLength;
    // Memory grows ahead of the heap, so part of it usually holds nothing yet: not
    // copied. (Whether the heap's top lands in memory's last 4 KiB block depends on the
    // runtime's allocations, so only the bound is certain.)
    expect(image.heapExtent).toBeLessThanOrEqual(image.memorySize);
    // The guest now claims its whole heap is in use; the next snapshot ignores it.
    const { control, heapAddr, heapSize } = image.layout;
    imageBytesAt(image, control + AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER, 8).writeBigUInt64LE(BigInt(heapAddr + heapSize));
    await engine.snapshot();
    await engine.restore(snap);
    const again = imageOf(await engine.snapshot());
    expect(again.heapExtent).toBe(image.heapExtent);
    expect(again.bytes.byteLength).toBe(size);
  });

  it('restores exactly: heap bytes written above the snapshot are zero again, also past the high-water mark', async () => {
    const engine = await load({
      write: 'let kept = null; function handler(e) { kept = new Uint8Array(e.mb * 1048576).fill(0x5a); return kept.length; }',
      count: 'let n = 0; function handler() { return ++n; }',
    });
    const before = await engine.snapshot();
    const extent = imageOf(before).heapExtent;
    expect((await call(engine, 'write', { mb: 4 })).status).toBe(AIRLOCK_STATUS_OK);
    await engine.restore(before);
    const after = imageOf(await engine.snapshot());
    expect(after.heapExtent).toBe(extent);
    expect(Buffer.from(after.bytes).includes(Buffer.alloc(4096, 0x5a))).toBe(false);
    expect((await call(engine, 'count', {})).value).toBe('1');
  });

  it('collects dropped snapshots: 150 snapshot and restore rounds with one live snapshot stay bounded', async () => {
    const engine = await load(
      {
        // ~20 MiB of non-zero heap that every snapshot must copy.
        big: 'const kept = new Uint8Array(20 * 1048576).fill(7); let n = 0; function handler() { return ++n; }',
      },
      { ...CONFIG, heapSize: 64 * MiB },
    );
    expect((await call(engine, 'big', {})).status).toBe(AIRLOCK_STATUS_OK);
    const start = process.memoryUsage().rss;
    let peak = start;
    let snap = await engine.snapshot();
    expect(imageOf(snap).bytes.byteLength).toBeGreaterThan(20 * MiB);
    for (let i = 0; i < 150; i++) {
      expect((await call(engine, 'big', {})).status).toBe(AIRLOCK_STATUS_OK);
      snap = await engine.snapshot();
      await call(engine, 'big', {});
      await engine.restore(snap);
      peak = Math.max(peak, process.memoryUsage().rss);
    }
    // Uncollected, the 150 images alone would be 3 GiB.
    expect(peak - start).toBeLessThan(1024 * MiB);
  });
});
