// api-contract.test.ts — the public API under odd and hostile callers: exact names,
// consumption rules of the mirrored API, option checking, coded rejections for values
// that throw, and sandboxes kept alive by their pending calls.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, expect, it, vi } from 'vitest';
import { Snapshot, type LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const ECHO = 'function handler(e) { return e; }';

describeEachBackend('API contract', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((s) => s.dispose()));
    vi.restoreAllMocks();
  });
  const load = async (handlers: Record<string, string>) => {
    const l = await h.load(handlers);
    open.push(l);
    return l;
  };

  it('keeps a sandbox reachable only through its pending call alive until the call settles', () => {
    const child = join(__dirname, 'fixtures', 'pending-gc-child.ts');
    const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', child, h.backend], {
      encoding: 'utf8',
      timeout: 60_000,
      cwd: join(__dirname, '..', '..'),
    });
    expect(r.error).toBeUndefined();
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toEqual({ resolved: { kept: true } });
  }, 60_000);

  it('refuses names that are not well-formed UTF-16 or contain NUL, at registration', async () => {
    const proto = await h.builder().build();
    open.push(proto);
    for (const bad of ['a\uD800', '\uDC00b', 'x\u0000y']) {
      expect(() => proto.register('db', bad, () => 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => proto.hostModule(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
    const js = await proto.loadRuntime();
    for (const bad of ['h\uD800', 'h\u0000']) {
      expect(() => js.addHandler(bad, ECHO)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => js.addModule(bad, 'export const x = 1;')).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => js.addModule('m', 'export const x = 1;', bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
    // Names that differ only where a lone surrogate would have become U+FFFD stay apart.
    js.addHandler('h\uFFFD', 'function handler() { return "replacement"; }');
    js.addHandler('h\uD83D\uDE00', 'function handler() { return "emoji"; }');
    const loaded = await js.getLoadedSandbox();
    expect(await loaded.callHandler('h\uFFFD', null)).toBe('replacement');
    expect(await loaded.callHandler('h\uD83D\uDE00', null)).toBe('emoji');
    await expect(loaded.callHandler('h\uD800', null)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });

  it('rejects events whose toJSON throws, even `throw null`, with ERR_INVALID_ARG', async () => {
    const loaded = await load({ echo: ECHO });
    for (const thrown of [null, undefined, 42, Object.create(null), { toString() { throw new Error('no'); } }]) {
      const event = { toJSON() { throw thrown; } };
      await expect(loaded.callHandler('echo', event)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    }
    await expect(loaded.callHandler('echo', { toJSON() { throw null; } })).rejects.toThrow(/null was thrown/);
    expect(await loaded.callHandler('echo', { still: 'usable' })).toEqual({ still: 'usable' });
  });

  it('refuses a restore() argument that only inherits from Snapshot.prototype', async () => {
    const loaded = await load({ echo: ECHO });
    const fake = Object.create(Snapshot.prototype) as Snapshot;
    await expect(loaded.restore(fake)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(loaded.restore({} as Snapshot)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    await expect(loaded.restore(null as unknown as Snapshot)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
  });

  it('accepts timeouts from 1 to 3,600,000 ms and nothing else', async () => {
    const loaded = await load({ echo: ECHO });
    const snap = await loaded.snapshot();
    for (const ms of [1, 1.5, 3_600_000]) {
      // Accepted: the call runs. On a loaded machine 1 ms can really expire, which is
      // ERR_CANCELLED, never ERR_INVALID_ARG.
      const outcome = await loaded.callHandler('echo', 1, { wallClockTimeoutMs: ms, cpuTimeoutMs: ms }).catch((e: { code?: string }) => e.code);
      expect([1, 'ERR_CANCELLED']).toContain(outcome);
      if (loaded.poisoned) await loaded.restore(snap);
    }
    for (const ms of [0, 0.5, -1, 3_600_001, NaN, Infinity, '10']) {
      for (const key of ['wallClockTimeoutMs', 'cpuTimeoutMs']) {
        await expect(loaded.callHandler('echo', 1, { [key]: ms })).rejects.toMatchObject({
          code: 'ERR_INVALID_ARG',
          message: expect.stringContaining('from 1 to 3600000'),
        });
      }
    }
  });

  it('warns once about an unknown option, naming the closest known one, and still runs the call', async () => {
    const loaded = await load({ echo: ECHO });
    const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    const key = `wallClockTimeoutMz${h.backend}`; // unique per run: warnings are once per process
    expect(await loaded.callHandler('echo', 7, { [key]: 5 } as object)).toBe(7);
    expect(await loaded.callHandler('echo', 8, { [key]: 5 } as object)).toBe(8);
    const mine = warn.mock.calls.filter((c) => String(c[0]).includes(key));
    expect(mine).toHaveLength(1);
    expect(String(mine[0][0])).toContain("did you mean 'wallClockTimeoutMs'");
    expect(mine[0][1]).toMatchObject({ code: 'AIRLOCK_UNKNOWN_OPTION' });
  });

  it('rejects unknown options with ERR_INVALID_ARG in strict mode', async () => {
    const proto = await h.builder().setStrictOptions().build();
    const js = await proto.loadRuntime();
    js.addHandler('echo', ECHO);
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    await expect(loaded.callHandler('echo', 1, { timeoutMs: 5 } as object)).rejects.toMatchObject({
      code: 'ERR_INVALID_ARG',
      message: expect.stringMatching(/unknown option 'timeoutMs'.*did you mean '(wallClock|cpu)TimeoutMs'/),
    });
    expect(await loaded.callHandler('echo', 2, { gc: false })).toBe(2);
  });

  it('consumes the builder in build(): a second build() or a setter afterwards is ERR_CONSUMED', async () => {
    const builder = h.builder();
    const first = builder.build();
    await expect(builder.build()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    const proto = await first;
    open.push(proto);
    expect(() => builder.setHeapSize(8 << 20)).toThrow(expect.objectContaining({ code: 'ERR_CONSUMED' }));
    expect(() => builder.setConsoleLimit(100)).toThrow(expect.objectContaining({ code: 'ERR_CONSUMED' }));
    await expect(builder.build()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
  });

  it('consumes a JSSandbox in getLoadedSandbox(): later edits are ERR_CONSUMED; unload() gives a fresh one', async () => {
    const proto = await h.builder().build();
    const js = await proto.loadRuntime();
    expect(js.poisoned).toBe(false);
    js.addHandler('echo', ECHO);
    const loaded: LoadedJSSandbox = await js.getLoadedSandbox();
    open.push(loaded);
    for (const edit of [
      () => js.addHandler('other', ECHO),
      () => js.removeHandler('echo'),
      () => js.clearHandlers(),
      () => js.addModule('m', 'export const x = 1;'),
      () => js.removeModule('m'),
      () => js.clearModules(),
    ]) {
      expect(edit).toThrow(expect.objectContaining({ code: 'ERR_CONSUMED' }));
    }
    await expect(js.getLoadedSandbox()).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    const fresh = await loaded.unload();
    fresh.addHandler('twice', 'function handler(e) { return e * 2; }');
    const again = await fresh.getLoadedSandbox();
    expect(await again.callHandler('twice', 21)).toBe(42);
  });

  it('reports poisoning on a JSSandbox too', async () => {
    const proto = await h.builder().build();
    const js = await proto.loadRuntime();
    js.addHandler('spin', 'function handler() { for (;;) {} }');
    const loaded = await js.getLoadedSandbox();
    open.push(loaded);
    await expect(loaded.callHandler('spin', null, { cpuTimeoutMs: 20 })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    expect(loaded.poisoned).toBe(true);
    expect(js.poisoned).toBe(true);
    const fresh = await loaded.unload();
    expect(fresh.poisoned).toBe(false);
  });
});
