// template.test.ts — the WebAssembly tier's templates at the engine level: clones start
// in the template's state and stay independent, and importTemplate() refuses every
// hostile field of serialised data (CPU state, layout, memory ranges, sizes, ABI, image).
import { afterEach, describe, expect, it } from 'vitest';
import type { EngineTemplate, GuestEngine, SerializedTemplate } from '../../src/engine/engine.js';
import { clone, exportTemplate, importTemplate } from '../../src/engine/wasm/template.js';
import { SandboxBuilder } from '../../src/index.js';
import { Snapshot } from '../../src/sandbox.js';

const noHostCalls = async (): Promise<Uint8Array> => {
  throw new Error('no host calls expected');
};

async function counterTemplate(): Promise<EngineTemplate> {
  const js = await (await new SandboxBuilder().setBackend('wasm').build()).loadRuntime();
  js.addHandler('counter', 'let n = 0; function handler() { return ++n; }');
  const loaded = await js.getLoadedSandbox();
  await loaded.callHandler('counter', {});
  const t = await Snapshot.contentOf(await loaded.snapshot()).stateTemplate();
  await loaded.dispose();
  return t;
}

function withState(s: SerializedTemplate, edit: (state: any) => void): SerializedTemplate {
  const state = JSON.parse(new TextDecoder().decode(s.cpuState));
  edit(state);
  return { ...s, cpuState: new TextEncoder().encode(JSON.stringify(state)) };
}

describe('WebAssembly templates', () => {
  const engines: GuestEngine[] = [];
  afterEach(async () => {
    await Promise.all(engines.splice(0).map((e) => e.dispose()));
  });

  it('round-trips through plain data and clones from the imported copy', async () => {
    const t = await counterTemplate();
    const s = exportTemplate(t);
    expect(s.backend).toBe('wasm');
    expect(s.imageSha256).toMatch(/^[0-9a-f]{64}$/);
    for (let i = 1; i < s.memory.length; i++) expect(s.memory[i].offset).toBeGreaterThanOrEqual(s.memory[i - 1].offset + s.memory[i - 1].bytes.byteLength);
    const imported = importTemplate(s);
    expect(imported.byteLength).toBe(t.byteLength);
    expect(imported.config).toEqual(t.config);
    const e = clone(imported, noHostCalls);
    engines.push(e);
    await expect(e.boot()).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(e.snapshot()).resolves.toBeDefined();
  });

  it('refuses hostile serialised templates field by field', async () => {
    const s = exportTemplate(await counterTemplate());
    const refused = (bad: unknown, field: RegExp) => {
      expect(() => importTemplate(bad as SerializedTemplate)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG', message: expect.stringMatching(field) }));
    };
    refused({ ...s, backend: 'kvm' }, /backend/);
    refused({ ...s, abiVersion: s.abiVersion + 1 }, /abiVersion/);
    refused({ ...s, imageSha256: '0'.repeat(64) }, /imageSha256/);
    refused({ ...s, config: { ...s.config, heapSize: 0 } }, /config/);
    refused({ ...s, config: { ...s.config, inputSize: s.config.inputSize + 16 } }, /layout/);
    refused({ ...s, cpuState: new TextEncoder().encode('not json') }, /cpuState/);
    refused(withState(s, (st) => (st.memorySize = 2 ** 33)), /memorySize/);
    refused(withState(s, (st) => (st.memorySize += 1)), /memorySize/);
    refused(withState(s, (st) => (st.layout.outputAddr = st.layout.inputAddr)), /overlapping/);
    refused(withState(s, (st) => (st.layout.stackTop += 8)), /stack/);
    refused(withState(s, (st) => (st.stackPointer = st.layout.stackTop + 16)), /stackPointer/);
    refused(withState(s, (st) => (st.heapExtent = st.layout.heapAddr - 1)), /heapExtent/);
    refused(withState(s, (st) => (st.layout.control = -1)), /control/);
    refused({ ...s, memory: [...s.memory].reverse() }, /out of order|overlaps/);
    refused({ ...s, memory: [...s.memory, { offset: s.memory[s.memory.length - 1].offset, bytes: new Uint8Array(1) }] }, /overlaps/);
    refused({ ...s, memory: [...s.memory, { offset: 2 ** 31, bytes: new Uint8Array(1) }] }, /outside memory|heap extent/);
    refused({ ...s, memory: [{ offset: 0.5, bytes: new Uint8Array(1) }] }, /offset/);
    refused({ ...s, memory: 'x' }, /memory/);
  });
});
