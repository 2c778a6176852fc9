// attack-rounds.test.ts — many rounds over the newest KVM paths, with a poll slot forced
// so they are taken: host calls crossing in memory (taken by the watcher, or made with
// an exit and answered in memory), the post-restore window, a kill and a dispose while a
// host call is taken and never answered. Every call settles as it should, and the
// process gets back every file descriptor and thread the rounds used.
import { readdirSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { expect, it } from 'vitest';
import { SandboxBuilder, type LoadedJSSandbox } from '../../src/index.js';
import { describeKvm } from '../support/kvm.js';
import { loadAddon } from './raw-guest.js';

// Read when the addon loads: one guest may poll whatever this machine's load, so
// requests and host calls are handed over in memory where the protocol allows it.
process.env.AIRLOCK_KVM_POLLERS = '1';

const fds = () => readdirSync('/proc/self/fd').length;

// Snapshots hold their memory (a sealed memfd) until the garbage collector drops them:
// the count is taken with the rounds' garbage collected.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
async function collected(): Promise<void> {
  for (let i = 0; i < 5; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 100));
  }
}
const threads = () => readdirSync('/proc/self/task').length;

const HANDLERS = {
  many: 'import { add } from "host:m"; function handler(e) { let s = 0; for (let i = 0; i < e.n; i++) s = add(s, i); return s; }',
  later: 'import { slow } from "host:m?async"; async function handler(e) { const r = []; for (let i = 0; i < e.n; i++) r.push(await slow(i)); return r; }',
  hang: 'import { never } from "host:m"; function handler() { return never(); }',
};

async function tenant(): Promise<LoadedJSSandbox> {
  const proto = await new SandboxBuilder().setBackend('kvm').build();
  proto.register('m', 'add', (a, b) => (a as number) + (b as number));
  proto.register('m', 'slow', (i) => new Promise((r) => setImmediate(() => r((i as number) * 2))));
  proto.register('m', 'never', () => new Promise(() => {}));
  const js = await proto.loadRuntime();
  for (const [name, code] of Object.entries(HANDLERS)) js.addHandler(name, code);
  return js.getLoadedSandbox();
}

async function round(): Promise<void> {
  const a = await tenant();
  const b = await tenant();
  try {
    const snap = await a.snapshot();
    for (let i = 0; i < 3; i++) {
      expect(await a.callHandler('many', { n: 40 }, { wallClockTimeoutMs: 60_000 })).toBe(780);
      // A restore after a call: the guest polls in its window for the next one.
      await a.restore(snap);
    }
    expect(await a.callHandler('later', { n: 5 }, { wallClockTimeoutMs: 60_000 })).toEqual([0, 2, 4, 6, 8]);
    // Killed while its host call waits for JavaScript: cancelled, then restorable. (Not
    // expect().rejects: vitest keeps that promise, and with it this round's sandboxes.)
    const hung = a.callHandler('hang', {}, { wallClockTimeoutMs: 60_000 });
    setTimeout(() => a.interruptHandle.kill(), 2);
    expect(await hung.then(() => 'resolved', (e: { code?: string }) => e.code)).toBe('ERR_CANCELLED');
    await a.restore(snap);
    expect(await a.callHandler('many', { n: 3 }, { wallClockTimeoutMs: 60_000 })).toBe(3);
    // Disposed while its host call waits: the call ends ERR_CONSUMED, dispose finishes.
    const orphan = b.callHandler('hang', {}, { wallClockTimeoutMs: 60_000 }).then(
      () => 'resolved',
      (e: { code?: string }) => e.code,
    );
    await new Promise((r) => setTimeout(r, 2));
    await b.dispose();
    expect(await orphan).toBe('ERR_CONSUMED');
  } finally {
    await Promise.all([a.dispose(), b.dispose()]);
  }
}

describeKvm('attack: rounds over the newest host paths', () => {
  it('settles every call and gives back every fd and thread', async () => {
    // The first round starts what lives as long as the process (runners, the watcher).
    await round();
    await collected();
    const before = counters();
    const fdsBefore = fds();
    const threadsBefore = threads();
    const rounds = 25;
    for (let i = 0; i < rounds; i++) await round();
    await collected();
    const moved = (name: string) => (counters()[name] ?? 0) - (before[name] ?? 0);
    // The rounds took the paths they are meant to attack (any one of them may miss its
    // moment on a loaded machine; together they cannot all miss every round).
    expect(moved('hostCallsInMemory') + moved('hostRepliesInMemory')).toBeGreaterThan(0);
    expect(moved('pollsAfterRestore')).toBeGreaterThan(0);
    expect(fds()).toBeLessThanOrEqual(fdsBefore);
    // Runners come and go with the load (at most the pool's limit besides the ones
    // that were there); a thread kept per sandbox or per round would pass it.
    expect(threads()).toBeLessThanOrEqual(threadsBefore + loadAddon().runnerPool().limit);
  }, 300_000);
});

function counters(): Record<string, number> {
  return loadAddon().pollingBudget().counters;
}
