// attack-storm.test.ts — noisy neighbours where every guest may poll (the operator's
// AIRLOCK_KVM_POLLERS raised above the cores): tenants making host calls in memory
// without end, one per runner, keep their exchanges watched, which a runner's quantum
// does not preempt. Another tenant's calls must still get a runner and finish while
// the storms go on; a kill ends each storm.
import { expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';
import { tenant } from './fixtures/kvm-tenants.js';
import { loadAddon } from './raw-guest.js';

// Read when the addon loads: more guests may poll than this machine has cores.
process.env.AIRLOCK_KVM_POLLERS = '8';

describeKvm('attack: host-call storms in memory on every runner', () => {
  it("another tenant's calls finish while the storms go on", async () => {
    const { limit } = loadAddon().runnerPool();
    const before = loadAddon().pollingBudget().counters;
    let stormCalls = 0;
    const storms = await Promise.all(
      Array.from({ length: limit + 1 }, () =>
        tenant({ storm: 'import { tick } from "host:m"; function handler() { for (;;) tick(); }' }, { tick: () => ++stormCalls }),
      ),
    );
    let stormsSettled = 0;
    const storming = storms.map((s) =>
      s.callHandler('storm', {}, { wallClockTimeoutMs: 600_000 }).then(
        () => 'resolved',
        (e: { code?: string }) => e.code,
      ).finally(() => stormsSettled++),
    );
    const quiet = await tenant({ echo: 'import { id } from "host:m"; function handler(e) { return id(e); }' }, { id: (x) => x });
    for (let i = 0; i < 30; i++) expect(await quiet.callHandler('echo', i, { wallClockTimeoutMs: 600_000 })).toBe(i);
    expect(stormsSettled).toBe(0);
    expect(stormCalls).toBeGreaterThan(0);
    const after = loadAddon().pollingBudget().counters;
    // The storms took the memory paths this attacks (an exit host call answered in
    // memory, or one the watcher took).
    const moved = (n: string) => (after[n] ?? 0) - (before[n] ?? 0);
    expect(moved('hostCallsInMemory') + moved('hostRepliesInMemory')).toBeGreaterThan(0);
    for (const s of storms) s.interruptHandle.kill();
    for (const s of storming) expect(await s).toBe('ERR_CANCELLED');
  }, 300_000);
});
