// restore-writer.ts — the raw guest the restore tests check memory with: it writes a
// pattern into its heap and answers with a checksum of the heap, so every byte a
// restore failed to revert (or reverted wrongly) shows in the checksum.
import { expect } from 'vitest';
import { defaultConfig, type NativeVm, type VmConfig } from './raw-guest.js';

// Per request: write the qword `value` at heap + offset + i * stride for i < count, then
// answer with an 8-byte checksum (h = h * 31 + qword) of `sumQwords` qwords from heap +
// sumOffset. Assembled from (C = 0x401000, the control block; heap_addr at C+40):
//   mov dx, 0x3a1; mov dword [C+112], 0; mov eax, 1; out dx, eax       (boot answers)
// again: mov rsi, [C+8]; mov rbx, [C+40]; mov rdi, [rsi]; add rdi, rbx
//   mov rcx, [rsi+8]; mov r8, [rsi+16]; mov r9, [rsi+24]; test rcx, rcx; jz sum
// wloop: mov [rdi], r9; add rdi, r8; dec rcx; jnz wloop
// sum: mov rdi, [rsi+32]; add rdi, rbx; mov rcx, [rsi+40]; xor eax, eax; test rcx, rcx; jz done
// sloop: imul rax, rax, 31; add rax, [rdi]; add rdi, 8; dec rcx; jnz sloop
// done: mov r10, [C+24]; mov [r10], rax; mov dword [C+112], 8; mov eax, 1; out dx, eax; jmp again
export const WRITER = Buffer.from(
  '66baa103c704257010400000000000b801000000ef488b342508104000488b1c2528104000488b3e4801df' +
    '488b4e084c8b46104c8b4e184885c9740b4c890f4c01c748ffc975f5488b7e204801df488b4e2831c04885' +
    'c97410486bc01f4803074883c70848ffc975f04c8b142518104000498902c704257010400008000000b801' +
    '000000efeb8e',
  'hex',
);

export const PAGE = 4096;
export const HEAP = 8 << 20;
export const writerConfig: VmConfig = { ...defaultConfig, heapSize: HEAP };

export interface Writes {
  offset: number;
  count: number;
  stride: number;
  value: bigint;
}

/** Writes `w` (if any), then returns the checksum of `sum` (default: the whole heap). */
export async function run(vm: NativeVm, w?: Writes, sum = { offset: 0, qwords: HEAP / 8 }): Promise<bigint> {
  const req = Buffer.alloc(48);
  req.writeBigUInt64LE(BigInt(w?.offset ?? 0), 0);
  req.writeBigUInt64LE(BigInt(w?.count ?? 0), 8);
  req.writeBigUInt64LE(BigInt(w?.stride ?? 0), 16);
  req.writeBigUInt64LE(w?.value ?? 0n, 24);
  req.writeBigUInt64LE(BigInt(sum.offset), 32);
  req.writeBigUInt64LE(BigInt(sum.qwords), 40);
  const { output } = await vm.send(req);
  expect(output.length).toBe(8);
  return output.readBigUInt64LE(0);
}

export const checksum = (vm: NativeVm) => run(vm);
/** Reads one qword at heap + offset (the guest maps the page it lies in). */
export const readAt = (vm: NativeVm, offset: number) => run(vm, undefined, { offset, qwords: 1 });

