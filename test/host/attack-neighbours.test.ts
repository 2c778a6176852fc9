// attack-neighbours.test.ts — noisy neighbours on the KVM tier's runner pool: tenants
// CPU-bound on more runners than the pool has, or making host calls without end, must
// not stop another tenant's calls (each of its host calls needs a runner again, and the
// pool's hand-back rule prefers the runner that ran it last). Progress is asserted,
// never a time: the other tenant finishes while the neighbours still run.
import { expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';
import { tenant } from './fixtures/kvm-tenants.js';
import { loadAddon } from './raw-guest.js';

/** Settles with the error code (or 'resolved'); `settled` says whether it did yet. */
function watch(p: Promise<unknown>): { done: Promise<string>; settled: () => boolean } {
  let settled = false;
  const done = p.then(
    () => 'resolved',
    (e: { code?: string }) => e.code ?? String(e),
  );
  void done.then(() => (settled = true));
  return { done, settled: () => settled };
}

describeKvm('attack: noisy neighbours on the runner pool', () => {
  it('a tenant making hundreds of host calls finishes while CPU-bound tenants hold more runners than exist', async () => {
    const { limit } = loadAddon().runnerPool();
    const hogs = await Promise.all(Array.from({ length: 2 * limit }, () => tenant({ spin: 'function handler() { for (;;) {} }' })));
    const spinning = hogs.map((s) => watch(s.callHandler('spin', {}, { wallClockTimeoutMs: 600_000 })));
    const caller = await tenant(
      { many: 'import { add } from "host:m"; function handler(e) { let s = 0; for (let i = 0; i < e.n; i++) s = add(s, i); return s; }' },
      { add: (a, b) => (a as number) + (b as number) },
    );
    const n = 300;
    expect(await caller.callHandler('many', { n }, { wallClockTimeoutMs: 600_000 })).toBe((n * (n - 1)) / 2);
    // The hogs never stopped: the caller made progress beside them, not after them.
    expect(spinning.some((s) => s.settled())).toBe(false);
    for (const h of hogs) h.interruptHandle.kill();
    for (const s of spinning) expect(await s.done).toBe('ERR_CANCELLED');
  }, 120_000);

  it("one tenant's endless host-call storm does not stop another tenant's calls, and a kill ends the storm", async () => {
    let stormCalls = 0;
    const storms = await Promise.all(
      Array.from({ length: 2 }, () =>
        tenant(
          { storm: 'import { tick } from "host:m"; function handler() { for (;;) tick(); }' },
          {
            tick: () => {
              stormCalls++;
              return stormCalls;
            },
          },
        ),
      ),
    );
    const storming = storms.map((s) => watch(s.callHandler('storm', {}, { wallClockTimeoutMs: 600_000 })));
    const quiet = await tenant(
      { echo: 'import { id } from "host:m"; function handler(e) { return id(e); }' },
      { id: (x) => x },
    );
    for (let i = 0; i < 50; i++) expect(await quiet.callHandler('echo', i, { wallClockTimeoutMs: 600_000 })).toBe(i);
    expect(storming.some((s) => s.settled())).toBe(false);
    const before = stormCalls;
    expect(before).toBeGreaterThan(0);
    for (const s of storms) s.interruptHandle.kill();
    for (const s of storming) expect(await s.done).toBe('ERR_CANCELLED');
    // Killed for good: no host call of a storm reaches JavaScript any more.
    const after = stormCalls;
    await new Promise((r) => setTimeout(r, 50));
    expect(stormCalls).toBe(after);
  }, 120_000);
});
