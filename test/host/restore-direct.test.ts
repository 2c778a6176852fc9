// restore-direct.test.ts — restore() made by the main thread itself when no runner uses
// the vCPU (host/src/direct_restore.cc): as exact and private as a runner's (memory,
// YMM upper halves, SYSCALL/SYSENTER still faulting), settled as a later macrotask so
// it races nothing the API allows (a send, kill, dispose in the same tick), and never
// taken while the guest runs: a guest that ignores its poll window is restored by its
// runner. The counters (restoresDirect / restoresByRunner) say which path each took.
import { afterEach, expect, it } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { YMM_IMAGE_BYTES, YMM_LOAD_OFFSET, LOAD, DUMP, cpuPrograms, pattern } from './cpu-programs.js';
import { hostile } from './hostile-programs.js';
import { buildImage, defaultConfig, encodeMessage, loadAddon, rejection, type NativeVm, type VmConfig } from './raw-guest.js';
import { finalMessage, realGuestBooter, realGuestConfig, realImagePresent } from './real-guest-vms.js';
import { PAGE, WRITER, checksum, run, writerConfig } from './restore-writer.js';

// One polling slot whatever this machine's load (read when the addon loads), so the
// hostile poller below surely runs on in a window.
process.env.AIRLOCK_KVM_POLLERS = '1';

const counters = () => loadAddon().pollingBudget().counters;
const count = (name: string) => counters()[name] ?? 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

async function booted(code: Buffer, config: VmConfig = defaultConfig): Promise<NativeVm> {
  const vm = new (loadAddon().Vm)(buildImage(code), config, () => {});
  live.push(vm);
  await vm.boot();
  return vm;
}

/**
 * Runs `dirty` (calls that change the guest), gives its runner a moment to finish the
 * guest's last exit and wait for an op, restores `snap` and runs `check`; again until
 * one restore was made by the main thread (at most `tries` rounds). Every restore,
 * whichever thread made it, must pass `check`. The number of direct restores.
 */
async function restoreUntilDirect(
  vm: NativeVm,
  snap: object,
  dirty: () => Promise<unknown>,
  check: () => Promise<void>,
  tries = 30,
): Promise<number> {
  let direct = 0;
  for (let i = 0; i < tries && direct === 0; i++) {
    await dirty();
    await sleep(5);
    const before = count('restoresDirect');
    await vm.restore(snap);
    direct += count('restoresDirect') - before;
    await check();
  }
  return direct;
}

const loadYmm = (image: Buffer) => {
  const request = Buffer.alloc(YMM_LOAD_OFFSET + image.length);
  request[0] = LOAD;
  image.copy(request, YMM_LOAD_OFFSET);
  return request;
};

describeKvm('restore made by the main thread', () => {
  it('gives back memory exactly (a checksum of the whole heap)', async () => {
    const vm = await booted(WRITER, writerConfig);
    await run(vm, { offset: 0, count: (1 << 20) / 8, stride: 8, value: 0x0102_0304_0506_0708n });
    const snap = await vm.snapshot();
    const before = await checksum(vm);
    let round = 0;
    const direct = await restoreUntilDirect(
      vm,
      snap,
      () => run(vm, { offset: 8 + round * PAGE, count: 40, stride: 37 * PAGE + 8, value: BigInt(++round) }),
      async () => expect(await checksum(vm)).toBe(before),
    );
    expect(direct).toBe(1);
    // Restored again with nothing run since (the skip), and after a call: still exact.
    await vm.restore(snap);
    expect(await checksum(vm)).toBe(before);
  });

  it('gives back the full YMM registers (upper halves included), or AVX faults in the guest', async () => {
    const vm = await booted(cpuPrograms.ymm);
    const probe = await vm.send(Buffer.from([DUMP])).catch((e: Error & { code?: string }) => e);
    if (probe instanceof Error) {
      // No AVX in the guest: no YMM state to leak (cpu-isolation.test.ts checks the fault).
      expect((probe as Error & { code?: string }).code).toBe('ERR_GUEST_ABORT');
      return;
    }
    const tenantA = pattern(1, YMM_IMAGE_BYTES);
    const tenantB = pattern(2, YMM_IMAGE_BYTES);
    await vm.send(loadYmm(tenantA));
    const snap = await vm.snapshot();
    const direct = await restoreUntilDirect(
      vm,
      snap,
      async () => {
        await vm.send(loadYmm(tenantB));
        expect((await vm.send(Buffer.from([DUMP]))).output).toEqual(tenantB);
      },
      async () => expect((await vm.send(Buffer.from([DUMP]))).output).toEqual(tenantA),
    );
    expect(direct).toBe(1);
  });

  for (const [what, code] of [
    ['SYSCALL', cpuPrograms.syscall],
    ['SYSENTER', cpuPrograms.sysenter],
  ] as const) {
    it(`leaves ${what} faulting (EFER.SCE and SYSENTER_CS still 0)`, async () => {
      const vm = await booted(code);
      const snap = await vm.snapshot();
      const faults = async () => {
        const err = await rejection(vm.send(Buffer.from('x')));
        expect(err.code).toBe('ERR_GUEST_ABORT');
        expect(err.message).toMatch(/shutdown \(CPU fault or triple fault\)/);
      };
      const direct = await restoreUntilDirect(vm, snap, faults, async () => {});
      expect(direct).toBe(1);
      await faults();
    });
  }
});

describeKvm('restore made by the main thread: never one that opens a window', () => {
  const bootReal = realGuestBooter({ ...realGuestConfig, guestPollUs: 1000 });
  const HANDLER = 'let n = 0; function handler(e) { n++; return n; }';

  it.skipIf(!realImagePresent)('a polling guest restored after a call goes to its runner, which opens the window', async () => {
    const vm = await bootReal(HANDLER);
    live.push(vm);
    const call = async () => {
      const m = finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', '{}']))).output);
      expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
      return JSON.parse(m.fields[0].toString()) as number;
    };
    await call();
    const snap = await vm.snapshot();
    let windows = 0;
    for (let i = 0; i < 10; i++) {
      const before = counters();
      await vm.restore(snap);
      const moved = (name: string) => (counters()[name] ?? 0) - (before[name] ?? 0);
      // A window opens before the restore's answer goes out, so it is counted by now;
      // the main thread restores only a guest that gets none.
      if (moved('pollsAfterRestore') > 0) {
        windows++;
        expect(moved('restoresDirect')).toBe(0);
        expect(moved('restoresByRunner')).toBe(1);
      }
      // Each restore gives back the state after the first call: n was 1.
      expect(await call()).toBe(2);
      await sleep(5); // the window's poll ends, the guest parks and its runner idles
    }
    // One polling slot is granted (AIRLOCK_KVM_POLLERS=1) while no other guest runs.
    expect(windows).toBeGreaterThan(0);
  });
});

describeKvm('restore made by the main thread: races', () => {
  /** A writer guest whose next restore is made by the main thread: the promise of it. */
  async function directRestore(): Promise<{ vm: NativeVm; before: bigint; restoring: Promise<void>; snap: object }> {
    const vm = await booted(WRITER, writerConfig);
    const snap = await vm.snapshot();
    const before = await checksum(vm);
    // A restore after a call: from now on the runner finishes each call's exit when idle.
    await vm.restore(snap);
    for (let i = 0; i < 30; i++) {
      await run(vm, { offset: i * PAGE, count: 1, stride: 0, value: 7n });
      await sleep(5);
      const was = count('restoresDirect');
      const restoring = vm.restore(snap);
      // Made synchronously inside restore(): the counter has moved already.
      if (count('restoresDirect') > was) return { vm, before, restoring, snap };
      await restoring;
    }
    throw new Error('no restore was made by the main thread in 30 tries');
  }

  it('a send in the same tick is refused with ERR_BUSY; the restore settles and the next send sees it', async () => {
    const { vm, before, restoring } = await directRestore();
    expect((await rejection(vm.send(Buffer.alloc(48)))).code).toBe('ERR_BUSY');
    await restoring;
    expect(await checksum(vm)).toBe(before);
  });

  it('kill() in the same tick ends nothing: the restore settles and the guest runs on', async () => {
    const { vm, before, restoring } = await directRestore();
    vm.kill();
    await restoring;
    expect(await checksum(vm)).toBe(before);
  });

  it('dispose() in the same tick: the restore settles, then the VM is gone', async () => {
    const { vm, restoring } = await directRestore();
    const disposing = vm.dispose();
    await restoring;
    await disposing;
    expect((await rejection(vm.send(Buffer.alloc(48)))).code).toBe('ERR_INVALID_ARG');
  });

  it('a restore in the same tick as another is refused with ERR_BUSY', async () => {
    const { vm, before, restoring, snap } = await directRestore();
    expect((await rejection(vm.restore(snap))).code).toBe('ERR_BUSY');
    await restoring;
    expect(await checksum(vm)).toBe(before);
  });
});

describeKvm('restore made by the main thread: never while the guest runs', () => {
  it('a guest that ignores its poll window is restored by its runner, and only delays itself', async () => {
    // It answers each request with an exit, then spins in its window and never parks.
    const vm = await booted(hostile.spinsUntilEntered(), { ...defaultConfig, guestPollUs: 10_000 });
    const snap = await vm.snapshot();
    let whileRunning = 0;
    for (let i = 0; i < 20 && whileRunning < 3; i++) {
      await vm.send(Buffer.alloc(0));
      // Its window (10 ms + the host's allowance) still runs unless this thread stalled.
      const running = loadAddon().pollingBudget().sessions > 0;
      const direct = count('restoresDirect');
      const byRunner = count('restoresByRunner');
      await vm.restore(snap);
      if (!running) continue;
      whileRunning++;
      expect(count('restoresDirect')).toBe(direct);
      expect(count('restoresByRunner') - byRunner).toBe(1);
    }
    expect(whileRunning).toBeGreaterThan(0);
    // Another sandbox is not held up by it.
    const other = await booted(WRITER, writerConfig);
    expect(typeof (await checksum(other))).toBe('bigint');
  });
});
