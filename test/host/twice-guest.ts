// twice-guest.ts — the real KVM guest loaded with one handler that calls the host function
// `host:m` `twice` in a loop (h(e) = sum of twice(i) for i < e.k), for the host-call tests
// that need the real runtime rather than a hand-assembled guest.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import * as abi from '../../src/engine/abi.generated.js';
import { decodeMessages, encodeMessage, loadAddon, type NativeVm } from './raw-guest.js';

const imagePath = join(__dirname, '..', '..', 'out', 'guest', 'kvm', 'airlock-guest.img');
const config = { heapSize: 64 << 20, stackSize: 1 << 20, inputSize: 1 << 20, outputSize: 1 << 20, consoleLimit: 4096 };

/** The last message of a guest's output. */
export const finalMessage = (output: Buffer) => decodeMessages(output).at(-1)!;

/** `HOST_RETURN` OK with `text` as the result JSON. */
export const hostReturnOk = (text: string) => encodeMessage(abi.AIRLOCK_MSG_HOST_RETURN, abi.AIRLOCK_STATUS_OK, [text]);

/** Boots the guest (pushed on `live` for disposal) with `guestPollUs`; each `twice(x)` is
 *  handed to `answer`, whose `send()` replies 2·x. */
export async function bootTwiceGuest(
  live: NativeVm[],
  answer: (x: number, send: () => void, id: number) => void,
  guestPollUs: number,
): Promise<NativeVm> {
  const vm: NativeVm = new (loadAddon().Vm)(readFileSync(imagePath), { ...config, guestPollUs }, (out, id) => {
    const [x] = JSON.parse(finalMessage(out).fields[2].toString()) as number[];
    answer(x, () => vm.hostReturn(hostReturnOk(String(2 * x)), id), id);
  });
  live.push(vm);
  await vm.boot();
  await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, 0, ['m', 'twice']));
  const source =
    "import { twice } from 'host:m'; function handler(e) { let s = 0; for (let i = 0; i < e.k; i++) s += twice(i); return s; }";
  const loaded = finalMessage((await vm.send(encodeMessage(abi.AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', source]))).output);
  expect(loaded.status).toBe(abi.AIRLOCK_STATUS_OK);
  return vm;
}
