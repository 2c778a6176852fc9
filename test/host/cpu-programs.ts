// cpu-programs.ts — hand-assembled raw guests that probe the vCPU a sandbox gets: its
// vector register files across snapshot/restore, the CPUID it reads, the CPU number it
// can see, and the ways into ring 0 (SYSCALL, SYSENTER, RDMSR) that must fault.
// Images come from buildImage (raw-guest.ts); no assembler is needed at test time.

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// Assembled with GNU as (--64, .intel_syntax noprefix) and objcopy -O binary, with
// C = 0x401000 (the control block: input pointer at C+8, output pointer at C+24,
// request_len at C+104, response_len at C+112) and PORT = AIRLOCK_PORT (0x3a1).
// Every program starts with "boot answers":
//   mov dx, PORT; mov dword [C+112], 0; mov eax, 1; out dx, eax
// and each request ends with "answer": mov dx, PORT; mov eax, 1; out dx, eax; jmp <loop>.
const BOOT = hex(
      '66baa103c704257010400000000000b801000000ef',
    );

/** Requests to the state programs: the first input byte selects the operation. */
export const LOAD = 1;
export const DUMP = 0;

/** Where the register images sit in a LOAD request (after the operation byte). */
export const YMM_LOAD_OFFSET = 32;
export const YMM_IMAGE_BYTES = 16 * 32;
export const ZMM_LOAD_OFFSET = 64;
/** zmm0-31 (64 bytes each), then k0-7 (8 bytes each). */
export const ZMM_IMAGE_BYTES = 32 * 64 + 8 * 8;
export const FXSAVE_LOAD_OFFSET = 64;
export const FXSAVE_IMAGE_BYTES = 512;
/** FS base, then GS base (u64 each). */
export const FSGS_LOAD_OFFSET = 8;
export const FSGS_IMAGE_BYTES = 16;

export const cpuPrograms = {
  /** loop: mov rsi,[C+8]; mov rdi,[C+24]; cmp byte [rsi],1; je load;
   *  vmovdqu [rdi+32*i], ymm<i> (i = 0..15); mov dword [C+112],512; jmp answer;
   *  load: vmovdqu ymm<i>, [rsi+32+32*i] (i = 0..15); mov dword [C+112],0; answer. */
  ymm: Buffer.concat([
    BOOT,
    hex(
      '488b342508104000488b3c2518104000803e010f8483000000c5fe7f07c5fe7f4f20c5fe7f5740c5fe7f5f60c5fe7fa7' +
      '80000000c5fe7fafa0000000c5fe7fb7c0000000c5fe7fbfe0000000c57e7f8700010000c57e7f8f20010000c57e7f97' +
      '40010000c57e7f9f60010000c57e7fa780010000c57e7fafa0010000c57e7fb7c0010000c57e7fbfe0010000c7042570' +
      '10400000020000e982000000c5fe6f4620c5fe6f4e40c5fe6f5660c5fe6f9e80000000c5fe6fa6a0000000c5fe6faec0' +
      '000000c5fe6fb6e0000000c5fe6fbe00010000c57e6f8620010000c57e6f8e40010000c57e6f9660010000c57e6f9e80' +
      '010000c57e6fa6a0010000c57e6faec0010000c57e6fb6e0010000c57e6fbe00020000c70425701040000000000066ba' +
      'a103b801000000efe9d3feffff',
    ),
  ]),
  /** loop: mov rsi,[C+8]; mov rdi,[C+24]; cmp byte [rsi],1; je load;
   *  vmovdqu64 [rdi+64*i], zmm<i> (i = 0..31); kmovq [rdi+2048+8*j], k<j> (j = 0..7);
   *  mov dword [C+112],2112; jmp answer;
   *  load: vmovdqu64 zmm<i>, [rsi+64+64*i]; kmovq k<j>, [rsi+64+2048+8*j]; mov dword [C+112],0; answer. */
  zmm: Buffer.concat([
    BOOT,
    hex(
      '488b342508104000488b3c2518104000803e010f843701000062f1fe487f0762f1fe487f4f0162f1fe487f570262f1fe' +
      '487f5f0362f1fe487f670462f1fe487f6f0562f1fe487f770662f1fe487f7f076271fe487f47086271fe487f4f096271' +
      'fe487f570a6271fe487f5f0b6271fe487f670c6271fe487f6f0d6271fe487f770e6271fe487f7f0f62e1fe487f471062' +
      'e1fe487f4f1162e1fe487f571262e1fe487f5f1362e1fe487f671462e1fe487f6f1562e1fe487f771662e1fe487f7f17' +
      '6261fe487f47186261fe487f4f196261fe487f571a6261fe487f5f1b6261fe487f671c6261fe487f6f1d6261fe487f77' +
      '1e6261fe487f7f1fc4e1f8918700080000c4e1f8918f08080000c4e1f8919710080000c4e1f8919f18080000c4e1f891' +
      'a720080000c4e1f891af28080000c4e1f891b730080000c4e1f891bf38080000c704257010400040080000e933010000' +
      '62f1fe486f460162f1fe486f4e0262f1fe486f560362f1fe486f5e0462f1fe486f660562f1fe486f6e0662f1fe486f76' +
      '0762f1fe486f7e086271fe486f46096271fe486f4e0a6271fe486f560b6271fe486f5e0c6271fe486f660d6271fe486f' +
      '6e0e6271fe486f760f6271fe486f7e1062e1fe486f461162e1fe486f4e1262e1fe486f561362e1fe486f5e1462e1fe48' +
      '6f661562e1fe486f6e1662e1fe486f761762e1fe486f7e186261fe486f46196261fe486f4e1a6261fe486f561b6261fe' +
      '486f5e1c6261fe486f661d6261fe486f6e1e6261fe486f761f6261fe486f7e20c4e1f8908640080000c4e1f8908e4808' +
      '0000c4e1f8909650080000c4e1f8909e58080000c4e1f890a660080000c4e1f890ae68080000c4e1f890b670080000c4' +
      'e1f890be78080000c70425701040000000000066baa103b801000000efe96efdffff',
    ),
  ]),
  /** loop: mov rsi,[C+8]; mov rdi,[C+24]; cmp byte [rsi],1; je load;
   *  fxsave64 [rdi]; mov dword [C+112],512; jmp answer;
   *  load: fxrstor64 [rsi+64]; mov dword [C+112],0; answer. */
  fxsave: Buffer.concat([BOOT, hex(
      '488b342508104000488b3c2518104000803e017411480fae07c704257010400000020000eb10480fae4e40c704257010' +
      '40000000000066baa103b801000000efebbe',
    )]),
  /** loop: mov rsi,[C+8]; mov rdi,[C+24]; cmp byte [rsi],1; je load;
   *  rdfsbase rax; mov [rdi],rax; rdgsbase rax; mov [rdi+8],rax; mov dword [C+112],16; jmp answer;
   *  load: mov rax,[rsi+8]; wrfsbase rax; mov rax,[rsi+16]; wrgsbase rax; mov dword [C+112],0; answer. */
  fsgsBase: Buffer.concat([
    BOOT,
    hex(
      '488b342508104000488b3c2518104000803e01741ef3480faec0488907f3480faec848894708c7042570104000100000' +
      '00eb1d488b4608f3480faed0488b4610f3480faed8c70425701040000000000066baa103b801000000efeba4',
    ),
  ]),
  /** The request is a list of (leaf, subleaf) u32 pairs; the answer is eax, ebx, ecx, edx
   *  (u32 each) per pair. loop: mov rsi,[C+8]; mov rdi,[C+24]; mov r8d,[C+104]; shr r8d,3;
   *  mov r9d,r8d; shl r9d,4; mov [C+112],r9d;
   *  next: test r8d,r8d; jz answer; mov eax,[rsi]; mov ecx,[rsi+4]; cpuid; mov [rdi],eax;
   *  mov [rdi+4],ebx; mov [rdi+8],ecx; mov [rdi+12],edx; add rsi,8; add rdi,16; dec r8d;
   *  jmp next; answer. */
  cpuid: Buffer.concat([BOOT, hex(
      '488b342508104000488b3c2518104000448b04256810400041c1e8034589c141c1e10444890c25701040004585c0741f' +
      '8b068b4e040fa28907895f04894f0889570c4883c6084883c71041ffc8ebdc66baa103b801000000efeba5',
    )]),
  /** loop: mov rdi,[C+24]; xor ecx,ecx; xgetbv; mov [rdi],eax; mov [rdi+4],edx;
   *  mov dword [C+112],8; answer (XCR0 as a u64). */
  xgetbv: Buffer.concat([BOOT, hex(
      '488b3c251810400031c90f01d08907895704c70425701040000800000066baa103b801000000efebd7',
    )]),
  /** loop: mov rdi,[C+24]; rdtscp; mov [rdi],ecx; mov dword [C+112],4; answer (TSC_AUX). */
  rdtscp: Buffer.concat([BOOT, hex(
      '488b3c25181040000f01f9890fc70425701040000400000066baa103b801000000efebdc',
    )]),
  /** loop: mov rdi,[C+24]; rdpid rax; mov [rdi],eax; mov dword [C+112],4; answer. */
  rdpid: Buffer.concat([BOOT, hex(
      '488b3c2518104000f30fc7f88907c70425701040000400000066baa103b801000000efebdb',
    )]),
  /** The first request executes syscall. */
  syscall: Buffer.concat([BOOT, hex(
      '0f05',
    )]),
  /** The first request executes sysenter. */
  sysenter: Buffer.concat([BOOT, hex(
      '0f34',
    )]),
  /** The first request executes mov ecx, 0x174 (SYSENTER_CS); rdmsr. */
  rdmsr: Buffer.concat([BOOT, hex(
      'b9740100000f32',
    )]),
};

/** Deterministic bytes that differ per tenant (xorshift32). */
export function pattern(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = (seed * 0x9e3779b9) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
