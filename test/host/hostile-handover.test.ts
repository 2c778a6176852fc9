// hostile-handover.test.ts — guests that forge the polling hand-over (abi.h,
// "Polling"): every state the guest can write is a valid step or a violation that
// poisons the sandbox, and kill(), dispose() and the GC finalizer always finish.
// Each scenario runs in its own process: a wedged host is a child that never exits.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';
import { hostile } from './hostile-programs.js';
import { buildImage, defaultConfig, loadAddon, rejection, type NativeVm } from './raw-guest.js';

const child = join(__dirname, 'fixtures', 'hostile-child.ts');

function runChild(scenario: string, nodeFlags: string[] = []) {
  const r = spawnSync(process.execPath, [...nodeFlags, '--import', 'tsx', child, scenario], {
    encoding: 'utf8',
    timeout: 30_000,
    cwd: join(__dirname, '..', '..'),
  });
  expect(r.error, `child ${scenario} did not finish: ${r.stderr}`).toBeUndefined();
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeKvm('hostile guest: forged poll states', () => {
  // Whether the forged state is met with no request in flight depends on the guest
  // running before its post-answer window ends (a loaded machine may not let it);
  // with a request in flight the same value is a valid step, and the request's
  // monitor ends it. Either way the host answers, and kill and dispose work.
  it('REQUEST with no exchange in flight poisons the sandbox; kill and dispose still work', () => {
    const r = runChild('forged-request');
    expect(['ERR_POISONED', 'ERR_CANCELLED']).toContain(r.code);
    if (r.code === 'ERR_POISONED') expect(String(r.message)).toMatch(/aborted.*poll_state/);
  });

  it('dispose() wins over a forged REQUEST', () => {
    expect(runChild('forged-request-dispose')).toEqual({ disposed: true });
  });

  it('the GC finalizer of a forged-REQUEST guest does not block the process', () => {
    expect(runChild('forged-request-finalizer', ['--expose-gc'])).toEqual({ collected: true });
  });

  // Same timing caveat: met during the request, REQUEST_EXIT is the host's own step
  // (the monitor ends the request) and a garbage value aborts that request.
  for (const [name, duringRequest] of [
    ['forgedRequestExit', 'ERR_CANCELLED'],
    ['garbagePollState', 'ERR_GUEST_ABORT'],
  ] as const) {
    it(`${name}: the violation poisons the sandbox, with the reason`, async () => {
      const vm = new (loadAddon().Vm)(buildImage(hostile[name]()), defaultConfig, () => {});
      live.push(vm);
      await vm.boot();
      await sleep(20);
      const err = await rejection(vm.send(Buffer.from('x'), { wallClockTimeoutMs: 2000 }));
      expect(['ERR_POISONED', duringRequest]).toContain(err.code);
      if (err.code !== 'ERR_CANCELLED') expect(err.message).toMatch(/poll_state/);
      expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
    });
  }

  it('a host call after an answer handed over in memory poisons the sandbox instead of waiting forever', async () => {
    let hostCalls = 0;
    const vm = new (loadAddon().Vm)(buildImage(hostile.hostCallAfterAnswer()), defaultConfig, () => {
      hostCalls += 1; // never answered
    });
    live.push(vm);
    await vm.boot();
    // The answer watcher may take the answer from memory first (resolves); otherwise the
    // runner sees a host call made with poll_state READY (after answering) and aborts the
    // guest, which ends the request ERR_GUEST_ABORT.
    const first = await vm.send(Buffer.from('x'), { wallClockTimeoutMs: 2000 }).then(
      () => 'answered',
      (e: Error & { code?: string }) => e.code,
    );
    expect(['answered', 'ERR_GUEST_ABORT']).toContain(first);
    await sleep(20); // past the post-answer window
    expect((await rejection(vm.send(Buffer.from('x')))).code).toBe('ERR_POISONED');
    expect(hostCalls).toBeLessThanOrEqual(1);
  });

  for (const [name, state] of [['READY', 1], ['IDLE', 0]] as const) {
    it(`a guest that writes ${name} and parks during a request answers it; the request is never stranded`, async () => {
      // Found by the hostile-guest generator: with READY, the vCPU thread took the
      // guest out of its poll and left with the request unclaimed, so the call (and its
      // wall-clock monitor, which fired into an idle thread) never settled.
      const vm = new (loadAddon().Vm)(buildImage(hostile.parksDuringRequest(state)), defaultConfig, () => {});
      live.push(vm);
      await vm.boot();
      await sleep(20); // the guest has parked
      const outcome = await vm.send(Buffer.from('x'), { wallClockTimeoutMs: 2000 }).then(
        (r) => r.output.length,
        (e: Error & { code?: string }) => e.code,
      );
      expect(outcome).toBe(0); // its (empty) output buffer is the answer
      await vm.dispose();
    });
  }

  it('IDLE exits with a request in flight stay under the request budget', async () => {
    const vm = new (loadAddon().Vm)(buildImage(hostile.idleLoop()), defaultConfig, () => {});
    live.push(vm);
    await vm.boot();
    const err = await rejection(vm.send(Buffer.from('x'), { cpuTimeoutMs: 30 }));
    expect(err.code).toBe('ERR_CANCELLED');
  });
});
