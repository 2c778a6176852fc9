// snapshot-restore.test.ts — the newest mirrored API for sandboxes started from
// snapshots: HostFunctionModule and setHostFunctionModules, setHostFunctionFilter,
// JSSandbox.snapshot(), Snapshot.kind/requirements, buildFromSnapshot and its restorer.
import { afterEach, expect, it } from 'vitest';
import { HostFunctionModule, SandboxBuilder, SandboxRestorer, SandboxStatus, Snapshot, SnapshotRequirementStatus } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const counter = `
  let count = 0;
  function handler(event) { event.count = ++count; return event; }
`;

function stateModules(): HostFunctionModule[] {
  const state = new HostFunctionModule('state');
  let n = 0;
  state.register('next', () => ++n);
  return [state];
}

it('exports the restoration API', () => {
  expect(typeof SandboxRestorer).toBe('function');
  expect(SandboxStatus.LoadedJsSandbox).toBe('loadedJsSandbox');
  expect(SnapshotRequirementStatus.Unknown).toBe('unknown');
});

it('validates host function modules and consumes them for one builder only', () => {
  expect(() => new HostFunctionModule('')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  const [state] = stateModules();
  new SandboxBuilder().setHostFunctionModules(() => [state]);
  expect(() => new SandboxBuilder().setHostFunctionModules(() => [state])).toThrow(expect.objectContaining({ code: 'ERR_CONSUMED' }));
  expect(() => state.register('more', () => 1)).toThrow(expect.objectContaining({ code: 'ERR_CONSUMED' }));

  const fresh = new HostFunctionModule('fresh').register('f', () => 1);
  expect(() => new SandboxBuilder().setHostFunctionModules(() => [fresh, state])).toThrow(expect.objectContaining({ code: 'ERR_CONSUMED' }));
  // A rejected batch consumes nothing.
  expect(fresh.register('g', () => 2)).toBe(fresh);
  expect(() => new SandboxBuilder().setHostFunctionModules(() => [fresh, fresh])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  expect(() => new SandboxBuilder().setHostFunctionModules(() => [{ name: 'fake' } as never])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  expect(() => new SandboxBuilder().setHostFunctionFilter('some' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  expect(() => new SandboxBuilder().setDeterministicRandom('yes' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
});

it('refuses a value that is not a Snapshot', async () => {
  await expect(new SandboxBuilder().buildFromSnapshot({ kind: 'jsSandbox' } as never)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
});

describeEachBackend('sandboxes from snapshots', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  it('registers setHostFunctionModules() functions on build()', async () => {
    const proto = await h.builder().setHostFunctionModules(stateModules).build();
    open.push(proto);
    const js = await proto.loadRuntime();
    js.addHandler('h', 'import * as state from "host:state"; function handler() { return [state.next(), state.next()]; }');
    const loaded = await js.getLoadedSandbox();
    expect(await loaded.callHandler('h', {})).toEqual([1, 2]);
    expect(() => new SandboxBuilder().setHeapSize(8 << 20)).not.toThrow();
  });

  it('restores a jsSandbox snapshot with its staged handlers, and clones do not share state', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    const js = await proto.loadRuntime();
    js.addHandler('counter', counter);
    const snapshot = await js.snapshot();
    expect(snapshot.kind).toBe('jsSandbox');
    expect(snapshot.requirements).toEqual({ hostFunctions: [], moduleLoader: 'unknown' });

    const restorer = await new SandboxBuilder().buildFromSnapshot(snapshot);
    expect((restorer as unknown as { loadRuntime?: unknown }).loadRuntime).toBeUndefined();
    const restoredJs = await restorer.restoreJsSandbox();
    open.push(restoredJs);
    expect(restoredJs.backend).toBe(h.backend);
    const a = await restoredJs.getLoadedSandbox();
    expect(await a.callHandler('counter', {})).toEqual({ count: 1 });
    expect(await a.callHandler('counter', {})).toEqual({ count: 2 });
    await expect(restorer.restoreJsSandbox()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });

    const b = await (await new SandboxBuilder().buildFromSnapshot(snapshot)).restoreLoadedSandbox();
    open.push(b);
    expect(await b.callHandler('counter', {})).toEqual({ count: 1 });
  });

  it('restores a loadedJsSandbox snapshot with its globals, and unload() returns to its runtime', async () => {
    const js = await (await h.builder().build()).loadRuntime();
    js.addHandler('counter', counter);
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    expect(await loaded.callHandler('counter', {})).toEqual({ count: 1 });
    const snapshot = await loaded.snapshot();
    expect(snapshot.kind).toBe('loadedJsSandbox');

    const restored = await (await new SandboxBuilder().buildFromSnapshot(snapshot)).restoreLoadedSandbox();
    open.push(restored);
    expect(await restored.callHandler('counter', {})).toEqual({ count: 2 });
    expect(await restored.callHandler('counter', {})).toEqual({ count: 3 });
    // The original is untouched by its clone.
    expect(await loaded.callHandler('counter', {})).toEqual({ count: 2 });

    const unloaded = await restored.unload();
    unloaded.addHandler('replacement', 'function handler(e) { return { again: typeof count }; }');
    const reloaded = await unloaded.getLoadedSandbox();
    expect(await reloaded.callHandler('replacement', {})).toEqual({ again: 'undefined' });
    // A second unload restores in place.
    const again = await (await reloaded.unload()).getLoadedSandbox();
    await expect(again.callHandler('replacement', {})).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });

  it('rolls a restored sandbox back with its own snapshot after a poisoning call', async () => {
    const js = await (await h.builder().build()).loadRuntime();
    js.addHandler('counter', counter);
    js.addHandler('spin', 'function handler() { for (;;) {} }');
    const template = await (await js.getLoadedSandbox()).snapshot();
    const restored = await (await new SandboxBuilder().buildFromSnapshot(template)).restoreLoadedSandbox();
    open.push(restored);
    const own = await restored.snapshot();
    await expect(restored.restore(template)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(restored.callHandler('spin', {}, { wallClockTimeoutMs: 50 })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    expect(restored.poisoned).toBe(true);
    await restored.restore(own);
    expect(await restored.callHandler('counter', {})).toEqual({ count: 1 });
  });

  it('restore() gives back every byte whatever the sandbox wrote, also restored twice in a row', async () => {
    const js = await (await h.builder().build()).loadRuntime();
    js.addHandler(
      'mem',
      `const buf = new Uint8Array(1 << 19).map((_, i) => (i * 7) & 255);
      let extra = null;
      function handler(e) {
        if (e.op === 'fill') for (let r = 0; r < (e.rep ?? 1); r++) for (let i = e.from; i < e.to; i += e.step) buf[i] = (e.v + r) & 255;
        if (e.op === 'grow') extra = new Uint8Array(e.n).fill(9);
        let s = 2166136261;
        for (let i = 0; i < buf.length; i++) s = Math.imul(s ^ buf[i], 16777619);
        return { s: s >>> 0, extra: extra ? extra.length : 0 };
      }`,
    );
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    const snapshot = await loaded.snapshot();
    const clean = await loaded.callHandler('mem', {});
    const writes = [
      { op: 'fill', from: 3, to: 1 << 19, step: 37 * 4096 + 5, v: 1 }, // sparse
      { op: 'fill', from: 0, to: 1 << 19, step: 512, v: 2 }, // every page
      { op: 'fill', from: 4096, to: 4104, step: 1, v: 3, rep: 3000 }, // one page over and over
      { op: 'grow', n: 8 << 20 }, // memory the snapshot never had
    ];
    for (const w of writes) {
      expect(await loaded.callHandler('mem', w)).not.toEqual(clean);
      await loaded.restore(snapshot);
      expect(await loaded.callHandler('mem', {})).toEqual(clean);
      await loaded.restore(snapshot);
      await loaded.restore(snapshot);
      expect(await loaded.callHandler('mem', {})).toEqual(clean);
      await loaded.restore(snapshot);
    }
  });

  it('records required host functions and refuses a restore without them before guest code runs', async () => {
    const proto = await h.builder().setHostFunctionModules(stateModules).build();
    const js = await proto.loadRuntime();
    js.addHandler('handler', 'import * as state from "host:state"; function handler(e) { e.value = state.next(); return e; }');
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    const snapshot = await loaded.snapshot();
    expect(snapshot.requirements).toEqual({ hostFunctions: [{ module: 'host:state', functions: ['next'] }], moduleLoader: 'unknown' });

    const missing = await new SandboxBuilder().buildFromSnapshot(snapshot);
    await expect(missing.restoreLoadedSandbox()).rejects.toThrow(/requires host module 'host:state'/);
    const partial = await new SandboxBuilder()
      .setHostFunctionModules(() => [new HostFunctionModule('state').register('other', () => 0)])
      .buildFromSnapshot(snapshot);
    await expect(partial.restoreLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_INVALID_ARG', message: expect.stringMatching(/'host:state'.next/) });

    const seen: string[] = [];
    const restorer = await new SandboxBuilder()
      .setHostFunctionModules(() => {
        const state = new HostFunctionModule('state').register('next', () => 41);
        const extra = new HostFunctionModule('extra').register('x', () => seen.push('x'));
        return [state, extra];
      })
      .setHostFunctionFilter('snapshotRequirements')
      .buildFromSnapshot(snapshot);
    const restored = await restorer.restoreLoadedSandbox();
    open.push(restored);
    expect(await restored.callHandler('handler', {})).toEqual({ value: 41 });
  });

  it('routes a restored sandbox console to the restoring builder', async () => {
    const js = await (await h.builder().build()).loadRuntime();
    js.addHandler('log', 'function handler(e) { console.log("hello " + e.who); return null; }');
    const snapshot = await (await js.getLoadedSandbox()).snapshot();
    open.push(js);
    const lines: string[] = [];
    const restored = await (await new SandboxBuilder().setConsoleHandler((level, m) => lines.push(`${level}:${m}`)).buildFromSnapshot(snapshot)).restoreLoadedSandbox();
    open.push(restored);
    await restored.callHandler('log', { who: 'tenant' });
    expect(lines).toEqual(['log:hello tenant']);
  });

  it('keeps a snapshot usable after its sandbox is disposed', async () => {
    const js = await (await h.builder().build()).loadRuntime();
    js.addHandler('counter', counter);
    const loaded = await js.getLoadedSandbox();
    await loaded.callHandler('counter', {});
    const snapshot = await loaded.snapshot();
    const staged = await (await loaded.unload()).snapshot();
    await loaded.dispose();
    const restored = await (await new SandboxBuilder().buildFromSnapshot(snapshot)).restoreLoadedSandbox();
    open.push(restored);
    expect(await restored.callHandler('counter', {})).toEqual({ count: 2 });
    const js2 = await (await new SandboxBuilder().buildFromSnapshot(staged)).restoreJsSandbox();
    open.push(js2);
    js2.addHandler('counter', counter);
    expect(await (await js2.getLoadedSandbox()).callHandler('counter', {})).toEqual({ count: 1 });
  });

  it('refuses a builder set to another tier', async () => {
    const js = await (await h.builder().build()).loadRuntime();
    open.push(js);
    const snapshot = await js.snapshot();
    const other = h.backend === 'kvm' ? 'wasm' : 'kvm';
    await expect(new SandboxBuilder().setBackend(other).buildFromSnapshot(snapshot)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });
});
