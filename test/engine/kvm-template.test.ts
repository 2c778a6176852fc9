// kvm-template.test.ts — KVM templates (issue #12): clones of a booted guest with a
// handler loaded answer calls without booting, are isolated from each other and from
// the source, keep their own snapshots, and survive the template's release; restores
// give back the exact snapshot state whatever was written (a clone too, restored again
// with nothing run between); export -> import -> clone
// behaves like an in-memory clone.
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import type { EngineTemplate, GuestEngine } from '../../src/engine/engine.js';
import { KvmEngine } from '../../src/engine/kvm-engine.js';
import { kvmTemplateSupport } from '../../src/engine/kvm-template.js';
import { describeKvm } from '../support/kvm.js';
import { decodeMessages, encodeMessage } from '../host/raw-guest.js';

const MiB = 1 << 20;
const config = { heapSize: 96 * MiB, stackSize: 1 * MiB, inputSize: 1 * MiB, outputSize: 1 * MiB, consoleLimit: 4096 };
const noHostCalls = async () => new Uint8Array();

const handler = `function handler(e) {
  switch (e.op) {
    case 'set': globalThis.v = e.v; return { v: globalThis.v };
    case 'get': return { v: globalThis.v ?? null };
    case 'alloc': {
      globalThis.buf = new Uint8Array(e.n);
      for (let i = 0; i < e.n; i += 4096) globalThis.buf[i] = (i / 4096) & 255;
      return {};
    }
    case 'write': {
      const b = globalThis.buf;
      for (let i = 0; i < e.n; i += 4096) b[i] = 0xee;
      return {};
    }
    case 'sum': {
      let s = 0;
      const b = globalThis.buf;
      for (let i = 0; i < b.length; i += 4096) s = (s * 31 + b[i]) | 0;
      return { s, v: globalThis.v ?? null };
    }
    case 'fill': {
      const b = globalThis.buf;
      for (let r = 0; r < (e.rep ?? 1); r++) for (let i = e.from; i < e.to; i += e.step) b[i] = (e.v + r) & 255;
      return {};
    }
    case 'keep': globalThis.kept = new Uint8Array(e.n).fill(7); return { n: globalThis.kept.length };
  }
}`;

const live: GuestEngine[] = [];
const templates: EngineTemplate[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((e) => e.dispose()));
  for (const t of templates.splice(0)) t.release();
});

async function request(engine: GuestEngine, kind: number, fields: string[]) {
  const msgs = decodeMessages(Buffer.from((await engine.exchange(encodeMessage(kind, 0, fields))).output));
  return msgs[msgs.length - 1];
}

async function call(engine: GuestEngine, event: unknown): Promise<Record<string, unknown>> {
  const r = await request(engine, abi.AIRLOCK_MSG_CALL, ['h', JSON.stringify(event)]);
  expect(r.status, r.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  return JSON.parse(r.fields[0].toString());
}

/** A booted engine with the handler loaded, and a template of that state. */
async function source(): Promise<{ engine: KvmEngine; template: EngineTemplate }> {
  const engine = new KvmEngine(config, noHostCalls);
  live.push(engine);
  await engine.boot();
  expect((await request(engine, abi.AIRLOCK_MSG_LOAD_RUNTIME, [])).status).toBe(abi.AIRLOCK_STATUS_OK);
  expect((await request(engine, abi.AIRLOCK_MSG_LOAD, ['handler', '', 'h', handler])).status).toBe(abi.AIRLOCK_STATUS_OK);
  await call(engine, { op: 'set', v: 'template' });
  const template = await engine.template!(await engine.snapshot());
  templates.push(template);
  return { engine, template };
}

function clone(template: EngineTemplate): GuestEngine {
  const engine = kvmTemplateSupport.clone(template, noHostCalls);
  live.push(engine);
  return engine;
}

function rssBytes(): number {
  const m = /^Rss:\s+(\d+) kB/m.exec(require('node:fs').readFileSync('/proc/self/smaps_rollup', 'utf8'));
  return Number(m![1]) * 1024;
}

describeKvm('KVM templates', () => {
  it('clones start in the template state, isolated from each other and from the source', async () => {
    const { engine, template } = await source();
    expect(template.backend).toBe('kvm');
    expect(template.config).toEqual(config);
    expect(template.byteLength).toBeGreaterThan(0);
    // Guest memory nobody touched is a hole in the image, not bytes (98 MiB configured).
    expect(template.byteLength).toBeLessThan(16 * MiB);
    const a = clone(template);
    const b = clone(template);
    await expect(a.boot()).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    expect(await call(a, { op: 'get' })).toEqual({ v: 'template' });
    await call(a, { op: 'set', v: 'a' });
    await call(engine, { op: 'set', v: 'source' });
    expect(await call(b, { op: 'get' })).toEqual({ v: 'template' });
    await call(b, { op: 'set', v: 'b' });
    expect(await call(a, { op: 'get' })).toEqual({ v: 'a' });
    expect(await call(engine, { op: 'get' })).toEqual({ v: 'source' });
    // A clone made after others wrote still sees the frozen state.
    expect(await call(clone(template), { op: 'get' })).toEqual({ v: 'template' });
  });

  it('runs calls in 100 clones of one template', async () => {
    const { template } = await source();
    const clones = Array.from({ length: 100 }, () => clone(template));
    for (let i = 0; i < clones.length; i++) expect(await call(clones[i], { op: 'set', v: i })).toEqual({ v: i });
    for (let i = 0; i < clones.length; i++) expect(await call(clones[i], { op: 'get' })).toEqual({ v: i });
  });

  it('serves clones made all at once, each in its own VM', async () => {
    const { template } = await source();
    const clones = Array.from({ length: 24 }, () => clone(template));
    const values = await Promise.all(clones.map((c, i) => call(c, { op: 'set', v: i })));
    expect(values).toEqual(clones.map((_, i) => ({ v: i })));
    expect(await Promise.all(clones.map((c) => call(c, { op: 'get' })))).toEqual(clones.map((_, i) => ({ v: i })));
  });

  it("restores a clone's own snapshot", async () => {
    const { template } = await source();
    const c = clone(template);
    await call(c, { op: 'set', v: 1 });
    const snap = await c.snapshot();
    await call(c, { op: 'set', v: 2 });
    await c.restore(snap);
    expect(await call(c, { op: 'get' })).toEqual({ v: 1 });
    await call(c, { op: 'set', v: 3 });
    await c.restore(snap);
    expect(await call(c, { op: 'get' })).toEqual({ v: 1 });
  });

  it('a restore after writing one page or 32 MiB gives back the exact snapshot state', async () => {
    const engine = new KvmEngine(config, noHostCalls);
    live.push(engine);
    await engine.boot();
    await request(engine, abi.AIRLOCK_MSG_LOAD_RUNTIME, []);
    await request(engine, abi.AIRLOCK_MSG_LOAD, ['handler', '', 'h', handler]);
    await call(engine, { op: 'alloc', n: 40 * MiB });
    await call(engine, { op: 'set', v: 'snap' });
    const expected = await call(engine, { op: 'sum' });
    const snap = await engine.snapshot();
    for (const n of [4096, 32 * MiB, 4096, 32 * MiB]) {
      await call(engine, { op: 'write', n });
      await call(engine, { op: 'set', v: n });
      expect(await call(engine, { op: 'sum' })).not.toEqual(expected);
      await engine.restore(snap);
      expect(await call(engine, { op: 'sum' })).toEqual(expected);
      await engine.restore(snap);
    }
    // Memory the guest took after the snapshot is zero again once restored.
    await call(engine, { op: 'keep', n: 16 * MiB });
    await engine.restore(snap);
    expect(await call(engine, { op: 'sum' })).toEqual(expected);
  });

  it("a clone's restores are exact whatever pattern it wrote, and again with nothing run between", async () => {
    const { template } = await source();
    const c = clone(template);
    await call(c, { op: 'alloc', n: 8 * MiB });
    const snap = await c.snapshot();
    const expected = await call(c, { op: 'sum' });
    const patterns = [
      { op: 'fill', from: 0, to: 8 * MiB, step: 37 * 4096, v: 1 }, // sparse pages
      { op: 'fill', from: 0, to: 8 * MiB, step: 4096, v: 2 }, // every page
      { op: 'fill', from: 8192, to: 8200, step: 1, v: 3, rep: 5000 }, // one page over and over
      { op: 'keep', n: 24 * MiB }, // memory above the snapshot's extent
      { op: 'set', v: 'changed' }, // a few pages of the JS heap
    ];
    for (const p of patterns) {
      await call(c, p);
      const after = await call(c, { op: 'sum' });
      if (p.op === 'fill') expect(after).not.toEqual(expected);
      await c.restore(snap);
      expect(await call(c, { op: 'sum' })).toEqual(expected);
      await c.restore(snap);
      await c.restore(snap);
      expect(await call(c, { op: 'sum' })).toEqual(expected);
      expect(await call(c, { op: 'get' })).toEqual({ v: 'template' });
      await c.restore(snap);
    }
  });

  it('keeps clones working after release(), and refuses new clones of a released template', async () => {
    const { template } = await source();
    const c = clone(template);
    template.release();
    template.release(); // idempotent
    expect(await call(c, { op: 'get' })).toEqual({ v: 'template' });
    expect(() => kvmTemplateSupport.clone(template, noHostCalls)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => kvmTemplateSupport.exportTemplate(template)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  });

  it("refuses a template of a disposed sandbox's snapshot, and keeps a template made before", async () => {
    const { engine, template } = await source();
    const late = await engine.snapshot();
    await engine.dispose();
    await expect(engine.template!(late)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    expect(await call(clone(template), { op: 'get' })).toEqual({ v: 'template' });
  });

  it('gives the memory of disposed clones back', async () => {
    const { template } = await source();
    const clones = Array.from({ length: 16 }, () => clone(template));
    const before = rssBytes();
    for (const c of clones) await call(c, { op: 'keep', n: 4 * MiB });
    const grown = rssBytes();
    // 64 MiB written in all: each clone's own copy of what it wrote.
    expect(grown - before).toBeGreaterThan(32 * MiB);
    await Promise.all(clones.map((c) => c.dispose()));
    expect(grown - rssBytes()).toBeGreaterThan(32 * MiB);
  });

  it('export -> import -> clone answers like an in-memory clone', async () => {
    const { template } = await source();
    const serialized = kvmTemplateSupport.exportTemplate(template);
    expect(serialized.backend).toBe('kvm');
    expect(serialized.abiVersion).toBe(abi.AIRLOCK_ABI_VERSION);
    expect(serialized.imageSha256).toMatch(/^[0-9a-f]{64}$/);
    for (let i = 1; i < serialized.memory.length; i++) {
      const prev = serialized.memory[i - 1];
      expect(serialized.memory[i].offset).toBeGreaterThanOrEqual(prev.offset + prev.bytes.length);
    }
    const imported = kvmTemplateSupport.importTemplate(serialized);
    templates.push(imported);
    expect(imported.config).toEqual(config);
    const a = clone(template);
    const b = clone(imported);
    for (const event of [{ op: 'get' }, { op: 'set', v: 5 }, { op: 'alloc', n: 1 * MiB }, { op: 'sum' }])
      expect(await call(b, event)).toEqual(await call(a, event));
    // A re-export of the import holds the same bytes.
    const again = kvmTemplateSupport.exportTemplate(imported);
    expect(Buffer.from(again.cpuState).equals(Buffer.from(serialized.cpuState))).toBe(true);
    expect(again.memory.map((r) => r.offset)).toEqual(serialized.memory.map((r) => r.offset));
  });
});
