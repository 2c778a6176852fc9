// poll-window-calls.test.ts — the poll-window rule (host/src/poll_window.h) on the real
// guest with a core free (one polling slot whatever this machine's load): back-to-back
// default calls (post-call GC on growth, GC_AUTO) end up handed over in memory, spaced-out
// calls close the window (the guest answers with an exit and parks, nothing is probed),
// and back-to-back calls open it again. Counters (pollingBudget().counters), not timings.
import { expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { othersLoadSince } from '../support/others-load.js';
import { finalMessage, realGuestBooter, realImagePresent } from './real-guest-vms.js';
import { encodeMessage, loadAddon, type NativeVm } from './raw-guest.js';

// Read when the addon loads (lazily, in the first test of this file's process).
process.env.AIRLOCK_KVM_POLLERS = '1';

const boot = realGuestBooter();
const counters = () => loadAddon().pollingBudget().counters;
const delta = (after: Record<string, number>, before: Record<string, number>, ...names: string[]) =>
  names.reduce((sum, n) => sum + (after[n] - before[n]), 0);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Each call leaves garbage (an array of 200 strings), so GC_AUTO collects every few
// dozen calls: the window must hold across those collections.
const HANDLER = 'let n = 0; function handler(e) { const junk = []; for (let i = 0; i < 200; i++) junk.push("x" + i); n += 1; return { n, e }; }';

async function call(vm: NativeVm, n: number) {
  const m = finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, abi.AIRLOCK_CALL_FLAG_GC_AUTO, ['h', JSON.stringify(n)]))).output);
  expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  expect(JSON.parse(m.fields[0].toString())).toEqual({ n, e: n });
}

// Under AddressSanitizer (scripts/test-sanitized.sh).
const sanitized = (process.env.LD_PRELOAD ?? '').includes('libasan');

describeKvm('poll window on back-to-back and spaced-out calls', () => {
  it.skipIf(!realImagePresent)('back-to-back default calls are handed over in memory; spaced-out calls close the window; back-to-back ones reopen it', async () => {
    const vm = await boot(HANDLER);
    let n = 0;
    for (let i = 0; i < 300; i++) await call(vm, ++n);

    // Back-to-back for at least 400 ms (2,000 calls or more): long enough to measure
    // others' load over the loop itself to a few hundredths of a core.
    const b0 = counters();
    const othersLoad = othersLoadSince();
    const t0 = performance.now();
    let backToBack = 0;
    while (backToBack < 2000 || (performance.now() - t0 < 400 && backToBack < 40_000)) {
      await call(vm, ++n);
      backToBack += 1;
    }
    const others = othersLoad();
    const b1 = counters();
    const inMemory = delta(b1, b0, 'requestsInMemoryWatched', 'requestsInMemoryExit');
    // Every window the rule closed (back-to-back requests that kept missing it) was
    // opened again (a probe, or a request soon enough to grow it), and some request met
    // the guest polling.
    expect(delta(b1, b0, 'windowProbes', 'windowGrows')).toBeGreaterThanOrEqual(delta(b1, b0, 'windowCloses') - 1);
    expect(inMemory).toBeGreaterThan(0);
    // With the machine's other work under half a core over the loop (other test files
    // in parallel take more), the core is really free: the old rule settled at zero here
    // in a third of runs (0.19-0.27 of requests in memory, the rest by the mailbox); the
    // new one hands over 0.45-0.95 here, under vitest's own load the least. A neighbour
    // holding a core throughout gives 0.28-0.40, which is why the load is measured over
    // the loop: sampled only before and after it (as this test once did), a burst of
    // another test file inside a 50 ms loop went unseen (660 of 2,000 in one CI run).
    // Not under AddressSanitizer: its main thread is several times slower, so the gap
    // between an answer and the next request is no longer one a window is sized for
    // (a sanitized CI run handed over 661 of 2,000, another 458).
    if (!sanitized && others < 0.5) expect(inMemory, `others' load ${others.toFixed(2)} cores`).toBeGreaterThan(backToBack / 3);

    // 3 ms apart (over the rule's 1 ms back-to-back bound): each halves the window,
    // 50 us to zero in at most five; from then on each answer is an exit with no window.
    const spaced = 8;
    for (let i = 0; i < spaced; i++) {
      await sleep(3);
      await call(vm, ++n);
    }
    const s1 = counters();
    expect(delta(s1, b1, 'windowHalvings')).toBeLessThanOrEqual(5);
    expect(delta(s1, b1, 'answersWithoutWindow')).toBeGreaterThanOrEqual(spaced - 5);
    expect(delta(s1, b1, 'windowProbes')).toBe(0);
    expect(delta(s1, b1, 'requestsMailbox')).toBe(spaced);

    // Back-to-back again: a request soon after an answer grows the window; later than the
    // longest window (a loaded host's wake-ups), it counts towards a probe, due within
    // the rule's longest backoff (kMaxProbeBackoff, 64 requests) even after failed probes.
    for (let i = 0; i < 70; i++) await call(vm, ++n);
    const r1 = counters();
    expect(delta(r1, s1, 'windowGrows', 'windowProbes')).toBeGreaterThanOrEqual(1);
  });
});
