// pool-deadline.test.ts — a worker that never answers cannot hold up the WebAssembly
// tier: hand-assembled guests (hostile-module.ts) loop forever in their post-call work
// or their boot, and every pool operation, call, snapshot or restore waiting on them
// ends at its deadline with the worker terminated and never handed out again. Its own
// file: the pool must start empty here.
import { describe, expect, it } from 'vitest';
import { AIRLOCK_MSG_CALL, AIRLOCK_MSG_LOAD, AIRLOCK_MSG_LOAD_RUNTIME, AIRLOCK_MSG_READY, AIRLOCK_STATUS_OK } from '../../src/engine/abi.generated.js';
import { decodeOutput, encodeMessage, fieldText } from '../../src/engine/protocol.js';
import { INIT_OK, Op, Outcome, Slot } from '../../src/engine/wasm/channel.js';
import { WasmEngine } from '../../src/engine/wasm/index.js';
import { GuestWorker, deadlines, poolCounts, releaseWorker } from '../../src/engine/wasm/pool.js';
import type { AirlockError } from '../../src/errors.js';
import { HOSTILE_SIZES, hostileModule, type LoopingExport } from './hostile-module.js';
import { CONFIG } from './support.js';

// Shorter than the defaults so these tests wait (and their hostile guests spin) for
// 1 s, not 5: the behaviour at the deadline is the same.
deadlines.poolOpMs = 1_000;
deadlines.postCallMs = 1_000;

/** A started worker running a hostile guest, booted unless the boot itself loops. */
async function hostileWorker(looping: LoopingExport): Promise<GuestWorker> {
  const w = await GuestWorker.start(hostileModule({ looping }), true);
  if (looping !== 'airlock_init' && looping !== 'airlock_boot') {
    const booted = await w.boot(HOSTILE_SIZES);
    expect(booted.outcome).toBe(Outcome.Ok);
    expect(booted.initCode).toBe(INIT_OK);
  }
  return w;
}

/** Runs one (empty) exchange; the worker answers it, then starts its post-call work. */
async function exchange(w: GuestWorker): Promise<void> {
  w.control[Slot.Length] = 0;
  expect(await w.runOp(Op.Exchange, undefined, true, deadlines.poolOpMs)).toBe(Outcome.Ok);
}

async function threadEnded(w: GuestWorker): Promise<void> {
  for (let i = 0; i < 500 && w.thread.threadId !== -1; i++) await new Promise((r) => setTimeout(r, 10));
  expect(w.thread.threadId).toBe(-1);
}

// Concurrent: each test waits out a deadline, and they share nothing but the pool, which
// only the last one uses.
describe.concurrent('wasm pool deadlines', () => {
  it('terminates a worker stuck in its post-call work when a reset misses the deadline', async () => {
    const w = await hostileWorker('airlock_after');
    await exchange(w);
    await expect(w.reset(false)).rejects.toThrow(`after its previous call ran past ${deadlines.postCallMs} ms`);
    expect(w.reusable).toBe(false);
    expect(w.guestAtFault).toBe(true);
    await threadEnded(w);
  });

  it('terminates a worker whose guest never finishes booting', async () => {
    const w = await hostileWorker('airlock_init');
    await expect(w.boot(HOSTILE_SIZES, false)).rejects.toThrow(`did not answer within ${deadlines.poolOpMs} ms`);
    expect(w.reusable).toBe(false);
    expect(w.guestAtFault).toBe(false);
    await threadEnded(w);
  });

  it("gives up a guest whose post-call work outlasts the next request's deadline", async () => {
    const w = await hostileWorker('airlock_after');
    const engine = new WasmEngine(HOSTILE_SIZES, async () => new Uint8Array(0));
    // The engine serves this booted hostile guest as if it had booted it.
    Object.assign(engine as unknown as object, { worker: w, booted: true });
    try {
      // Answered at once; the guest then loops in its post-call work.
      expect((await engine.exchange(new Uint8Array(0))).output.byteLength).toBe(0);
      const err = (await engine.exchange(new Uint8Array(0)).catch((e: unknown) => e)) as AirlockError;
      expect(err.code).toBe('ERR_GUEST_ABORT');
      expect(err.message).toContain(`ran past ${deadlines.postCallMs} ms`);
      expect(w.reusable).toBe(false);
      await threadEnded(w);
      // Lost until restored: later requests fail at once.
      expect(((await engine.exchange(new Uint8Array(0)).catch((e: unknown) => e)) as AirlockError).code).toBe('ERR_GUEST_ABORT');
    } finally {
      await engine.dispose();
    }
  });

  it('gives up a guest whose post-call work holds up a snapshot, as the guest aborting', async () => {
    const w = await hostileWorker('airlock_after');
    const engine = new WasmEngine(HOSTILE_SIZES, async () => new Uint8Array(0));
    Object.assign(engine as unknown as object, { worker: w, booted: true });
    try {
      await engine.exchange(new Uint8Array(0));
      // A snapshot may wait for a large heap's copy for up to 30 s, but not for this.
      const err = (await engine.snapshot().catch((e: unknown) => e)) as AirlockError;
      expect(err.code).toBe('ERR_GUEST_ABORT');
      expect(err.message).toContain(`ran past ${deadlines.postCallMs} ms`);
      await threadEnded(w);
    } finally {
      await engine.dispose();
    }
  });

  it('does not let a released worker that never answers block the next build', async () => {
    const stuck = await hostileWorker('airlock_after');
    await exchange(stuck);
    // The pool takes it back and starts resetting it: the reset never gets an answer.
    releaseWorker(stuck);
    expect(poolCounts().preparing).toBe(1);
    // A new sandbox waits for the worker being prepared, as it should for a healthy
    // one; at the deadline that worker is dropped and the sandbox gets another.
    // Disposed here, not by an afterEach: the tests run side by side.
    const engine = new WasmEngine(CONFIG, async () => new Uint8Array(0));
    try {
      expect(decodeOutput(await engine.boot()).final.kind).toBe(AIRLOCK_MSG_READY);
      expect((engine as unknown as { worker: GuestWorker }).worker).not.toBe(stuck);
      expect(stuck.reusable).toBe(false);
      await threadEnded(stuck);
      expect(decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD_RUNTIME, 0, []))).output).final.status).toBe(AIRLOCK_STATUS_OK);
      const loaded = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'x', 'function handler() { return 7; }']))).output);
      expect(loaded.final.status, fieldText(loaded.final, 0)).toBe(AIRLOCK_STATUS_OK);
      const out = decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_CALL, 0, ['x', '{}']))).output);
      expect(fieldText(out.final, 0)).toBe('7');
      // Nothing of the stuck worker is left in the pool.
      for (let i = 0; i < 500 && poolCounts().preparing > 0; i++) await new Promise((r) => setTimeout(r, 10));
      expect(poolCounts().preparing).toBe(0);
    } finally {
      await engine.dispose();
    }
  });
});

// After the concurrent ones: this one takes workers from the pool, whose emptiness the
// last test above relies on.
describe('wasm restore past a stuck worker', () => {
  it('restores a sandbox whose worker is stuck in post-call work into a fresh worker', async () => {
    const engine = new WasmEngine(CONFIG, async () => new Uint8Array(0));
    try {
      expect(decodeOutput(await engine.boot()).final.kind).toBe(AIRLOCK_MSG_READY);
      await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD_RUNTIME, 0, []));
      await engine.exchange(encodeMessage(AIRLOCK_MSG_LOAD, 0, ['handler', '', 'count', 'let n = 0; function handler() { return ++n; }']));
      const call = async () => fieldText(decodeOutput((await engine.exchange(encodeMessage(AIRLOCK_MSG_CALL, 0, ['count', '{}']))).output).final, 0);
      expect(await call()).toBe('1');
      const snap = await engine.snapshot();
      // The sandbox's worker is swapped for one whose guest loops in its post-call work.
      const own = (engine as unknown as { worker: GuestWorker }).worker;
      const stuck = await hostileWorker('airlock_after');
      await exchange(stuck);
      Object.assign(engine as unknown as object, { worker: stuck });
      releaseWorker(own);
      await engine.restore(snap);
      expect(stuck.guestAtFault).toBe(true);
      await threadEnded(stuck);
      expect((engine as unknown as { worker: GuestWorker }).worker).not.toBe(stuck);
      expect(await call()).toBe('2');
    } finally {
      await engine.dispose();
    }
  });
});
