// real-guest-vms.ts — booting the real guest image straight on the addon for host tests
// (no facade): the image path, a loaded handler `h`, and disposal after each test.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { decodeMessages, encodeMessage, loadAddon, type NativeVm, type VmConfig } from './raw-guest.js';

export const realImagePath = join(__dirname, '..', '..', 'out', 'guest', 'kvm', 'airlock-guest.img');
export const realImagePresent = existsSync(realImagePath);
// Where KVM tests must run (CI), a missing image is a failure, never a quiet skip.
if (!realImagePresent && process.env.AIRLOCK_REQUIRE_KVM === '1')
  throw new Error(`AIRLOCK_REQUIRE_KVM=1 but the guest image ${realImagePath} is missing: run bash scripts/setup.sh`);
export const realGuestConfig: VmConfig = { heapSize: 64 << 20, stackSize: 1 << 20, inputSize: 1 << 20, outputSize: 1 << 20, consoleLimit: 4096 };

/** The last message of an output buffer (the final answer after any console lines). */
export function finalMessage(output: Buffer) {
  const msgs = decodeMessages(output);
  return msgs[msgs.length - 1];
}

/** A booter whose VMs are disposed after each test of the calling file. */
export function realGuestBooter(config: VmConfig = realGuestConfig) {
  const live: NativeVm[] = [];
  afterEach(async () => {
    await Promise.all(live.splice(0).map((vm) => vm.dispose()));
  });
  /** Boots the image, loads the runtime with `hostFunctions` and handler `h` = `source`. */
  return async function boot(source: string, hostFunctions: string[] = [], onHostCall = (_o: Buffer, _id: number) => {}): Promise<NativeVm> {
    const vm = new (loadAddon().Vm)(readFileSync(realImagePath), config, onHostCall);
    live.push(vm);
    expect(finalMessage(await vm.boot()).kind).toBe(abi.AIRLOCK_MSG_READY);
    expect(finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, 0, hostFunctions))).output).status).toBe(abi.AIRLOCK_STATUS_OK);
    expect(finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', source]))).output).status).toBe(abi.AIRLOCK_STATUS_OK);
    return vm;
  };
}
