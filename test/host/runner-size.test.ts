// runner-size.test.ts — the runner pool's soft size set by the operator
// (AIRLOCK_KVM_RUNNERS): at most that many sandboxes run at once, the others wait in
// the queue and take turns of a quantum, so none starves, a guest that never ends
// holds the only runner for a quantum at a time and no longer, and its own CPU limit
// still ends it; a value outside [1, 16] refuses to load the addon, naming the range,
// and the library gives that as the reason KVM is unavailable.
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { finalMessage, realGuestBooter, realImagePresent } from './real-guest-vms.js';
import * as abi from '../../src/engine/abi.generated.js';
import { describeKvm } from '../support/kvm.js';
import { addonPath, encodeMessage, loadAddon, rejection, type NativeVm } from './raw-guest.js';

// Read when the addon loads (lazily, in the first test of this file's process).
process.env.AIRLOCK_KVM_RUNNERS = '1';

const boot = realGuestBooter();
const COUNTER = 'let n = 0; function handler(e) { n += 1; return { n, id: e.id }; }';

async function call(vm: NativeVm, id: number, options?: { cpuTimeoutMs?: number }) {
  const m = finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', JSON.stringify({ id })]), options)).output);
  expect(m.status, m.fields.map(String).join(' ')).toBe(abi.AIRLOCK_STATUS_OK);
  return JSON.parse(m.fields[0].toString()) as { n: number; id: number };
}

describeKvm('runner pool size set by AIRLOCK_KVM_RUNNERS', () => {
  it('reports the size the operator set', () => {
    expect(loadAddon().runnerPool().limit).toBe(1);
  });

  it.skipIf(!realImagePresent)('serves four sandboxes called at once with one runner, every call answered in order', async () => {
    const vms = await Promise.all([0, 1, 2, 3].map(() => boot(COUNTER)));
    let most = 0;
    const watch = setInterval(() => (most = Math.max(most, loadAddon().runnerPool().runners)), 1);
    try {
      await Promise.all(
        vms.map(async (vm, id) => {
          for (let i = 1; i <= 400; i++) expect(await call(vm, id)).toEqual({ n: i, id });
        }),
      );
    } finally {
      clearInterval(watch);
    }
    // One runner at a time (a runner asleep in a guest's timer sleep would be the
    // only reason for a second, and these guests never sleep).
    expect(most).toBe(1);
  });

  it.skipIf(!realImagePresent)('a guest that never returns holds the one runner a quantum at a time: the others finish, its CPU limit ends it', async () => {
    const spinner = await boot('function handler() { for (;;) {} }');
    const others = await Promise.all([0, 1].map(() => boot(COUNTER)));
    let spinnerEnded = false;
    const stuck = rejection(spinner.send(encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', '{}']), { cpuTimeoutMs: 3000 })).finally(
      () => (spinnerEnded = true),
    );
    // Each of their calls waits for the spinner's quantum (10 ms of CPU), then runs.
    await Promise.all(
      others.map(async (vm, id) => {
        for (let i = 1; i <= 10; i++) expect(await call(vm, id)).toEqual({ n: i, id });
      }),
    );
    // Served turn by turn while the spinner still runs, not after its limit ended it.
    expect(spinnerEnded).toBe(false);
    const err = await stuck;
    expect(err).toMatchObject({ code: 'ERR_CANCELLED', terminatedBy: 'cpu-time' });
  });

  it('refuses a size outside [1, 16] as the addon loads', () => {
    for (const bad of ['0', '17', '-1', '2x', '1.5']) {
      let out = '';
      try {
        execFileSync(process.execPath, ['-e', `require(${JSON.stringify(addonPath)})`], {
          env: { ...process.env, AIRLOCK_KVM_RUNNERS: bad },
          stdio: 'pipe',
        });
      } catch (e) {
        out = String((e as { stderr?: Buffer }).stderr ?? '');
      }
      expect(out, `AIRLOCK_KVM_RUNNERS=${bad}`).toContain('AIRLOCK_KVM_RUNNERS must be an integer in [1, 16]');
    }
  });

  it('the library names the bad setting as the reason KVM is unavailable, and does not tell the user to rebuild', () => {
    const native = join(__dirname, '..', '..', 'src', 'engine', 'native.ts');
    const reason = execFileSync(
      process.execPath,
      ['--require', createRequire(__filename).resolve('tsx/cjs'), '-e', `process.stdout.write(String(require(${JSON.stringify(native)}).loadAddon().error))`],
      { env: { ...process.env, AIRLOCK_KVM_RUNNERS: '0' }, encoding: 'utf8' },
    );
    expect(reason).toContain('AIRLOCK_KVM_RUNNERS must be an integer in [1, 16]');
    expect(reason).toContain('correct or unset it');
    expect(reason).not.toContain('rebuild');
  });
});
