// pool.test.ts — the WebAssembly tier's worker pool: a disposed sandbox's worker serves
// the next sandbox with nothing of the old guest left, unhealthy workers are not reused,
// the idle pool is capped, idle workers never hold the process open, and snapshots
// restore correctly whether or not the worker still holds their image.
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  AIRLOCK_MSG_CALL,
  AIRLOCK_MSG_LOAD,
  AIRLOCK_MSG_LOAD_RUNTIME,
  AIRLOCK_MSG_READY,
  AIRLOCK_STATUS_OK,
} from '../../src/engine/abi.generated.js';
import { decodeOutput, encodeMessage, fieldText } from '../../src/engine/protocol.js';
import { CONFIG, disposedAfterEach } from './support.js';
import { Slot } from '../../src/engine/wasm/channel.js';
import { WasmEngine } from '../../src/engine/wasm/index.js';
import { poolCounts, type GuestWorker, type Image } from '../../src/engine/wasm/pool.js';

const engines = disposedAfterEach();

async function load(handlers: Record<string, string>): Promise<WasmEngine> {
  const engine = new WasmEngine(CONFIG, async () => new Uint8Array(0));
  engines.push(engine);
  expect(decodeOutput(await engine.boot()).final.kind).toBe(AIRLOCK_MSG_READY);
  expect(decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD_RUNTIME, 0, []))).output).final.status).toBe(AIRLOCK_STATUS_OK);
  const fields = Object.entries(handlers).flatMap(([name, src]) => ['handler', '', name, src]);
  const loaded = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD, 0, fields))).output);
  expect(loaded.final.status, fieldText(loaded.final, 0)).toBe(AIRLOCK_STATUS_OK);
  return engine;
}

async function call(engine: WasmEngine, name: string, event: unknown): Promise<string | undefined> {
  const out = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_CALL, 0, [name, JSON.stringify(event)]))).output);
  expect(out.final.status, fieldText(out.final, 0)).toBe(AIRLOCK_STATUS_OK);
  return fieldText(out.final, 0);
}

function workerOf(engine: WasmEngine): GuestWorker {
  return (engine as unknown as { worker: GuestWorker }).worker;
}

/** Resolves once the pool has finished resetting and starting workers. */
async function poolSettled(): Promise<void> {
  for (let i = 0; i < 500 && poolCounts().preparing > 0; i++) await new Promise((r) => setTimeout(r, 10));
  expect(poolCounts().preparing).toBe(0);
}

/** Creates sandboxes until one runs on `threadId` (the pool hands out its idle workers
 *  in some order); the others stay registered for disposal. */
async function loadOnThread(threadId: number, handlers: Record<string, string>): Promise<WasmEngine> {
  for (let i = 0; i < 8; i++) {
    const e = await load(handlers);
    if (workerOf(e).thread.threadId === threadId) return e;
  }
  throw new Error(`no sandbox got thread ${threadId} back from the pool`);
}

describe('wasm worker pool', () => {
  it('reuses a disposed sandbox worker with nothing of the old guest left', async () => {
    const secret = `AIRLOCK-SECRET-${randomUUID()}`;
    const a = await load({
      keep: 'let kept = []; function handler(e) { globalThis.secret = e.s; for (let i = 0; i < 50; i++) kept.push(e.s + i); return kept.length; }',
    });
    expect(await call(a, 'keep', { s: secret })).toBe('50');
    // The search below finds the secret where it is.
    const before = (await a.snapshot()) as unknown as { image: Image };
    expect(Buffer.from(new Uint8Array(before.image.image.bytes)).indexOf(secret)).toBeGreaterThan(-1);
    const old = workerOf(a);
    const oldData = old.data!;
    // The data area carried the request with the secret.
    expect(Buffer.from(new Uint8Array(oldData)).indexOf(secret)).toBeGreaterThan(-1);
    const threadId = old.thread.threadId;
    await a.dispose();
    await poolSettled();
    expect(old.exitReason).toBeUndefined();

    const b = await loadOnThread(threadId, { peek: 'function handler() { return typeof globalThis.secret; }' });
    const w = workerOf(b);
    expect(w).toBe(old);
    // The data area is reused, cleared.
    expect(Buffer.from(new Uint8Array(w.data!)).indexOf(secret)).toBe(-1);
    expect(await call(b, 'peek', {})).toBe('"undefined"');
    // Everything the snapshot covers (stack, data, heap up to its high-water mark, any
    // growth) is free of the old guest's bytes; the rest of a fresh memory is zero.
    const { image } = (await b.snapshot()) as unknown as { image: Image };
    const bytes = Buffer.from(new Uint8Array(image.image.bytes));
    expect(bytes.indexOf(secret)).toBe(-1);
    expect(bytes.indexOf(secret.slice('AIRLOCK-SECRET-'.length))).toBe(-1);
  });

  it('clears the control words when a worker comes back', async () => {
    const a = await load({ spin: 'function handler() { for (;;) {} }' });
    const w = workerOf(a);
    const p = a.exchange(encodeMessage(AIRLOCK_MSG_CALL, 0, ['spin', '{}']), { cpuTimeoutMs: 20, wallClockTimeoutMs: 5000 });
    await expect(p).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    expect(w.control[Slot.Cancel]).not.toBe(0);
    await a.dispose();
    await poolSettled();
    // Pre-booted again for the next sandbox: no cancel reason, CPU limit or image left.
    expect(w.exitReason).toBeUndefined();
    expect(w.control[Slot.Cancel]).toBe(0);
    expect(w.control[Slot.CpuLimitUs]).toBe(0);
    expect(w.control[Slot.CpuUsedUs]).toBe(0);
    expect(w.control[Slot.ImageId]).toBe(0);
  });

  it('terminates the worker of a sandbox disposed mid-call instead of reusing it', async () => {
    const a = await load({ spin: 'function handler() { for (;;) {} }' });
    const w = workerOf(a);
    const p = a.exchange(encodeMessage(AIRLOCK_MSG_CALL, 0, ['spin', '{}'])).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 20));
    await a.dispose();
    await p;
    expect(w.exitReason).toBeDefined();
    expect(w.reusable).toBe(false);
  });

  it('does not reuse a worker terminated after a guest ignored its cancel', async () => {
    const a = await load({ x: 'function handler() { return 1; }' });
    const w = workerOf(a);
    // Terminate it the way the cancel grace timer does.
    void w.terminate();
    expect(w.reusable).toBe(false);
    await a.dispose();
    await poolSettled();
    const b = await load({ x: 'function handler() { return 2; }' });
    expect(workerOf(b)).not.toBe(w);
    expect(await call(b, 'x', {})).toBe('2');
  });

  it('keeps at most four idle workers and terminates the rest', async () => {
    const many = await Promise.all(Array.from({ length: 7 }, () => load({ x: 'function handler() { return 1; }' })));
    const workers = many.map(workerOf);
    await Promise.all(many.map((e) => e.dispose()));
    await poolSettled();
    expect(poolCounts().idle).toBeLessThanOrEqual(4);
    for (let i = 0; i < 200 && workers.filter((w) => w.exitReason === undefined).length > 4; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(workers.filter((w) => w.exitReason === undefined).length).toBeLessThanOrEqual(4);
  });

  it('restores snapshots whether or not the worker still holds their image', async () => {
    const e = await load({ count: 'let n = 0; function handler() { return ++n; }' });
    expect(await call(e, 'count', {})).toBe('1');
    const a = await e.snapshot();
    expect(await call(e, 'count', {})).toBe('2');
    const b = await e.snapshot();
    expect(await call(e, 'count', {})).toBe('3');
    // b is held by the worker (the latest), a has to be sent, then b again, then a twice.
    await e.restore(b);
    expect(await call(e, 'count', {})).toBe('3');
    await e.restore(a);
    expect(await call(e, 'count', {})).toBe('2');
    await e.restore(b);
    expect(await call(e, 'count', {})).toBe('3');
    await e.restore(a);
    await e.restore(a);
    expect(await call(e, 'count', {})).toBe('2');
  });

  it('lets the process exit while idle workers wait in the pool', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-pool-'));
    try {
      const script = join(dir, 'main.ts');
      const src = resolve(__dirname, '..', '..', 'src', 'index.js');
      writeFileSync(
        script,
        `import { SandboxBuilder } from ${JSON.stringify(src)};
         (async () => {
           const proto = await new SandboxBuilder().setBackend('wasm').build();
           const js = await proto.loadRuntime();
           js.addHandler('h', 'function handler(e) { return e + 1; }');
           const loaded = await js.getLoadedSandbox();
           console.log(await loaded.callHandler('h', 41));
           await loaded.dispose();
         })();`,
      );
      const started = Date.now();
      const r = spawnSync(process.execPath, ['--require', createRequire(__filename).resolve('tsx/cjs'), script], { encoding: 'utf8', timeout: 30_000 });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout.trim()).toBe('42');
      expect(Date.now() - started).toBeLessThan(20_000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
