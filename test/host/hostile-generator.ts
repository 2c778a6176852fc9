// hostile-generator.ts — the seeded random hostile guest: a PRNG, and guest programs
// assembled from a few documented x86-64 templates (writes to the control block, the
// buffers and the poll word, port I/O with valid and invalid exit codes, bounded and
// unbounded spins, faults, the event loop's sleep step), each built into a raw image with
// buildImage().
import * as abi from '../../src/engine/abi.generated.js';
import { buildImage, CONTROL, encodeMessage } from './raw-guest.js';

/** Seeded PRNG (mulberry32): the same seed gives the same programs and host operations. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  /** Uniform in [0, 2^32). */
  u32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 2 ** 32) * n);
  }
  /** True with probability p. */
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)];
  }
  /** One of `choices` by weight: [weight, value] pairs. */
  weighted<T>(choices: readonly (readonly [number, T])[]): T {
    const total = choices.reduce((n, [w]) => n + w, 0);
    let r = this.u32() / 2 ** 32 * total;
    for (const [w, v] of choices) {
      if (r < w) return v;
      r -= w;
    }
    return choices[choices.length - 1][1];
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** Sizes the programs assume for the VM they run in (the driver boots with these). */
export interface GuestSizes {
  inputSize: number;
  outputSize: number;
  heapSize: number;
}

// ---- encodings -----------------------------------------------------------------------
// Absolute addresses are disp32 with a SIB byte and no base (ModRM mod=00 rm=100,
// SIB 0x25), valid because the image lives below 2 GiB (abi.h: AIRLOCK_IMAGE_BASE).

const u8 = (v: number) => Buffer.from([v & 0xff]);
const u16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v & 0xffff);
  return b;
};
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
};
const i32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v | 0);
  return b;
};
const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, v));
  return b;
};
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const cat = (...parts: Buffer[]) => Buffer.concat(parts);
const ctl = (off: number) => u32(CONTROL + off);

/** mov dword [C+off], imm32 — C7 04 25 disp32 imm32 */
export const movCtl32 = (off: number, value: number) => cat(hex('c70425'), ctl(off), u32(value));
/** mov rax, imm64; mov [C+off], rax — 48 B8 imm64; 48 89 04 25 disp32 */
export const movCtl64 = (off: number, value: bigint) => cat(hex('48b8'), u64(value), hex('48890425'), ctl(off));
/** mov rax, [C+heap_addr]; add rax, imm32; mov [C+heap_high_water], rax — a high-water
 *  mark `delta` bytes into the heap (48 8B 04 25 disp32; 48 05 imm32; 48 89 04 25 disp32) */
export const heapHighWater = (delta: number) =>
  cat(
    hex('488b0425'),
    ctl(abi.AIRLOCK_CTRL_OFF_HEAP_ADDR),
    hex('4805'),
    i32(delta),
    hex('48890425'),
    ctl(abi.AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER),
  );
/** mov rdi, [C+buffer]; mov dword [rdi+disp32], imm32 — 48 8B 3C 25 disp32; C7 87 disp32 imm32.
 *  `buffer` is AIRLOCK_CTRL_OFF_INPUT_ADDR or AIRLOCK_CTRL_OFF_OUTPUT_ADDR. */
export const movBuf32 = (buffer: number, off: number, value: number) =>
  cat(hex('488b3c25'), ctl(buffer), hex('c787'), i32(off), u32(value));
/** The request becomes the response: mov rsi,[C+8]; mov rdi,[C+24]; mov ecx,[C+104];
 *  mov [C+112],ecx; rep movsb (as raw-guest.ts's echo). */
export const echoRequest = () =>
  cat(
    hex('488b3425'),
    ctl(abi.AIRLOCK_CTRL_OFF_INPUT_ADDR),
    hex('488b3c25'),
    ctl(abi.AIRLOCK_CTRL_OFF_OUTPUT_ADDR),
    hex('8b0c25'),
    ctl(abi.AIRLOCK_CTRL_OFF_REQUEST_LEN),
    hex('890c25'),
    ctl(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN),
    hex('f3a4'),
  );
/** mov dx, port; mov eax, value; out dx, eax — 66 BA imm16; B8 imm32; EF */
export const outDword = (port: number, value: number) => cat(hex('66ba'), u16(port), u8(0xb8), u32(value), u8(0xef));
/** mov dx, port; mov eax, value; out dx, al — 66 BA imm16; B8 imm32; EE (a 1-byte exit) */
export const outByte = (port: number, value: number) => cat(hex('66ba'), u16(port), u8(0xb8), u32(value), u8(0xee));
/** mov dx, port; in eax, dx — 66 BA imm16; ED (a read exit) */
export const inDword = (port: number) => cat(hex('66ba'), u16(port), u8(0xed));
/** mov rsi, [C+output_addr]; mov ecx, count; mov dx, port; rep outsd — 48 8B 34 25 disp32;
 *  B9 imm32; 66 BA imm16; F3 6F (a string exit, count > 1) */
export const repOutsd = (port: number, count: number) =>
  cat(hex('488b3425'), ctl(abi.AIRLOCK_CTRL_OFF_OUTPUT_ADDR), u8(0xb9), u32(count), hex('66ba'), u16(port), hex('f36f'));
/** mov ecx, n; 1: dec ecx; jnz 1b — B9 imm32; FF C9; 75 FC (about n cycles of guest CPU) */
export const spin = (n: number) => cat(u8(0xb9), u32(n), hex('ffc9 75fc'));
/** jmp $ — EB FE: runs until a budget or kill stops it */
export const spinForever = () => hex('ebfe');
/** mov eax, from; mov ecx, to; lock cmpxchg [C+poll_state], ecx — B8 imm32; B9 imm32;
 *  F0 0F B1 0C 25 disp32 (a poll-word transition, as the protocol does it) */
export const casPoll = (from: number, to: number) =>
  cat(u8(0xb8), u32(from), u8(0xb9), u32(to), hex('f00fb10c25'), ctl(abi.AIRLOCK_CTRL_OFF_POLL_STATE));
/** Waits up to n rounds for poll_state == REQUEST: mov ecx, n; 1: cmp dword [C+136], 2;
 *  je 2f; pause; dec ecx; jnz 1b; 2: — B9 imm32; 83 3C 25 disp32 02; 74 06; F3 90; FF C9; 75 F0 */
export const awaitPollRequest = (n: number) =>
  cat(
    u8(0xb9),
    u32(n),
    hex('833c25'),
    ctl(abi.AIRLOCK_CTRL_OFF_POLL_STATE),
    u8(abi.AIRLOCK_POLL_REQUEST),
    hex('7406 f390 ffc9 75f0'),
  );
/** Faults and privileged instructions (each ends the run as a shutdown or an odd exit). */
export const faults = {
  hlt: hex('f4'),
  ud2: hex('0f0b'),
  int3: hex('cc'),
  syscall: hex('0f05'),
  sysenter: hex('0f34'),
  /** mov eax, [0] — 8B 04 25 00000000: a read of the unmapped first 2 MiB */
  readNull: hex('8b0425 00000000'),
  /** mov dword [0x40000000], 0 — C7 04 25 disp32 imm32: a write far beyond guest memory */
  writeFar: hex('c70425 00000040 00000000'),
  /** cli — FA: privileged at CPL 3 with IOPL checked by PVM */
  cli: hex('fa'),
} as const;
/** jmp rel32 — E9 rel32, relative to the end of the 5-byte instruction */
const jmpTo = (from: number, to: number) => cat(u8(0xe9), i32(to - (from + 5)));

// ---- random choices -----------------------------------------------------------------

const CONTROL_OFFSETS = {
  pollState: abi.AIRLOCK_CTRL_OFF_POLL_STATE,
  responseLen: abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN,
  guestFlags: abi.AIRLOCK_CTRL_OFF_GUEST_FLAGS,
  heapHighWater: abi.AIRLOCK_CTRL_OFF_HEAP_HIGH_WATER,
  heapInUse: abi.AIRLOCK_CTRL_OFF_HEAP_IN_USE,
  requestLen: abi.AIRLOCK_CTRL_OFF_REQUEST_LEN,
  pollTicks: abi.AIRLOCK_CTRL_OFF_POLL_TICKS,
  hostCallTicks: abi.AIRLOCK_CTRL_OFF_HOST_CALL_TICKS,
};

const EXIT_CODES = [
  abi.AIRLOCK_EXIT_RESPONSE,
  abi.AIRLOCK_EXIT_HOST_CALL,
  abi.AIRLOCK_EXIT_ABORT,
  abi.AIRLOCK_EXIT_IDLE,
] as const;
const POLL_STATES = [
  abi.AIRLOCK_POLL_IDLE,
  abi.AIRLOCK_POLL_READY,
  abi.AIRLOCK_POLL_REQUEST,
  abi.AIRLOCK_POLL_REQUEST_EXIT,
  abi.AIRLOCK_POLL_HOST_CALL,
  abi.AIRLOCK_POLL_HOST_CALL_TAKEN,
  abi.AIRLOCK_POLL_HOST_CALL_EXIT,
];
const EDGE_U32 = [0, 1, 2, 3, 4, 0x7f, 0x80, 0xff, 0x1000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];

function controlWrite(rng: Rng, sizes: GuestSizes): Buffer {
  const o = CONTROL_OFFSETS;
  return rng.weighted<() => Buffer>([
    [4, () => movCtl32(o.pollState, rng.chance(0.8) ? rng.pick(POLL_STATES) : rng.pick(EDGE_U32))],
    [
      4,
      () =>
        movCtl32(
          o.responseLen,
          rng.pick([0, 16, rng.int(sizes.outputSize), sizes.outputSize, sizes.outputSize + 1, ...EDGE_U32]),
        ),
    ],
    [2, () => movCtl32(o.guestFlags, rng.pick([0, abi.AIRLOCK_GUEST_FLAG_POLLS, rng.u32()]))],
    [
      2,
      () => heapHighWater(rng.pick([0, 0x1000, rng.int(sizes.heapSize), sizes.heapSize, sizes.heapSize + 0x200000, -0x1000])),
    ],
    [1, () => movCtl64(o.heapHighWater, rng.pick([0n, 1n << 47n, -1n, BigInt(rng.u32()) << 16n]))],
    [1, () => movCtl64(o.heapInUse, rng.pick([0n, -1n, BigInt(rng.u32())]))],
    [1, () => movCtl32(o.requestLen, rng.pick(EDGE_U32))],
    [1, () => movCtl64(o.pollTicks, rng.pick([0n, 1n, -1n, BigInt(rng.u32())]))],
    [1, () => movCtl64(o.hostCallTicks, rng.pick([0n, 1n, -1n, BigInt(rng.u32())]))],
    // Anywhere in the control page, host-written fields (buffer addresses) included.
    [1, () => movCtl32(rng.int(abi.AIRLOCK_PAGE_SIZE / 4) * 4, rng.chance(0.5) ? rng.pick(EDGE_U32) : rng.u32())],
  ])();
}

function bufferWrite(rng: Rng, sizes: GuestSizes): Buffer {
  const output = rng.chance(0.7);
  const size = output ? sizes.outputSize : sizes.inputSize;
  // Mostly the message and field headers at the start; sometimes anywhere inside.
  const off = rng.chance(0.7) ? rng.int(8) * 4 : rng.int(size / 4) * 4;
  const value = rng.weighted<number>([
    [3, rng.pick(EDGE_U32)],
    [2, rng.int(16)], // message kinds, statuses, counts
    [1, rng.u32()],
  ]);
  return movBuf32(output ? abi.AIRLOCK_CTRL_OFF_OUTPUT_ADDR : abi.AIRLOCK_CTRL_OFF_INPUT_ADDR, off, value);
}

/** The event loop's timer sleep as the runtime sends it (host/src/loop_wait.cc serves it
 *  on the vCPU thread), sometimes with one dword forged: the message written into the
 *  output buffer dword by dword, response_len set, then a HOST_CALL exit. Every delay
 *  is short or due in the past, so a served sleep never outlasts a step. */
function loopSleep(rng: Rng): Buffer {
  const args = rng.pick(['[0]', '[1]', '[2,0]', '[0.5,1]', '[1e300,1]', '[1,1e300]']);
  const message = encodeMessage(abi.AIRLOCK_MSG_HOST_CALL, 0, ['airlock:loop', 'sleep', args]);
  const words = Buffer.alloc(Math.ceil(message.length / 4) * 4);
  message.copy(words);
  if (rng.chance(0.3)) words.writeUInt32LE(rng.pick(EDGE_U32), rng.int(words.length / 4) * 4);
  const writes: Buffer[] = [];
  for (let off = 0; off < words.length; off += 4) writes.push(movBuf32(abi.AIRLOCK_CTRL_OFF_OUTPUT_ADDR, off, words.readUInt32LE(off)));
  return cat(...writes, movCtl32(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN, message.length), outDword(abi.AIRLOCK_PORT, abi.AIRLOCK_EXIT_HOST_CALL));
}

function portExit(rng: Rng): Buffer {
  const port = rng.weighted<number>([
    [12, abi.AIRLOCK_PORT],
    [1, rng.int(0x400)], // other ports the TSS bitmap lets through
    [1, 0x400 + rng.int(0xfc00)], // ports it does not: #GP
  ]);
  const value = rng.weighted<number>([
    [10, rng.pick(EXIT_CODES)],
    [1, rng.pick(EDGE_U32)],
    [1, rng.u32()],
  ]);
  return rng.weighted<() => Buffer>([
    [12, () => outDword(port, value)],
    [1, () => outByte(port, value)],
    [1, () => inDword(port)],
    [1, () => repOutsd(port, 1 + rng.int(4))],
  ])();
}

export interface Program {
  /** The guest code (BOOT prefix, then the loop body). */
  code: Buffer;
  /** The full image for new Vm(). */
  image: Buffer;
  /** One line per template, for replaying a failure by hand. */
  listing: string[];
}

/**
 * A hostile program: it answers the boot and parks (so the VM can be snapshotted and
 * reused), then loops over random templates. Half the programs are "mostly valid" (echo the
 * request and answer RESPONSE, among random writes and exits) so long runs reach
 * deep protocol states; the rest are free-form.
 */
export function generateProgram(rng: Rng, sizes: GuestSizes): Program {
  const listing: string[] = [];
  const parts: Buffer[] = [];
  const add = (name: string, code: Buffer) => {
    listing.push(`${name}: ${code.toString('hex')}`);
    parts.push(code);
  };
  // Boot: maybe claim to poll, answer with 0 bytes (raw-guest.ts's BOOT_ANSWERS).
  if (rng.chance(0.5)) add('set POLLS', movCtl32(abi.AIRLOCK_CTRL_OFF_GUEST_FLAGS, abi.AIRLOCK_GUEST_FLAG_POLLS));
  add('boot: response_len = 0', movCtl32(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN, 0));
  add('boot: RESPONSE', outDword(abi.AIRLOCK_PORT, abi.AIRLOCK_EXIT_RESPONSE));
  // Park as a polling guest does (READY -> IDLE, exit IDLE), so the driver's baseline
  // snapshot finds the guest stopped rather than already running its random body.
  add('park: cas poll READY -> IDLE', casPoll(abi.AIRLOCK_POLL_READY, abi.AIRLOCK_POLL_IDLE));
  add('park: IDLE', outDword(abi.AIRLOCK_PORT, abi.AIRLOCK_EXIT_IDLE));
  const bodyStart = parts.reduce((n, p) => n + p.length, 0);

  const mostlyValid = rng.chance(0.5);
  const count = 1 + rng.int(mostlyValid ? 6 : 12);
  for (let i = 0; i < count; i++) {
    const kind = rng.weighted<string>([
      [mostlyValid ? 2 : 5, 'control'],
      [mostlyValid ? 2 : 4, 'buffer'],
      [mostlyValid ? 1 : 5, 'port'],
      [2, 'spin'],
      [1, 'cas'],
      [1, 'await'],
      [1, 'host call in memory'],
      [mostlyValid ? 2 : 1, 'echo'],
      [0.5, 'sleep'],
      [mostlyValid ? 0.05 : 0.3, 'forever'],
      [mostlyValid ? 0.05 : 0.5, 'fault'],
    ]);
    switch (kind) {
      case 'control':
        add('control write', controlWrite(rng, sizes));
        break;
      case 'buffer':
        add('buffer write', bufferWrite(rng, sizes));
        break;
      case 'port':
        add('port I/O', portExit(rng));
        break;
      case 'spin':
        add('bounded spin', spin(rng.pick([1, 100, 10_000, 100_000, 1_000_000])));
        break;
      case 'cas': {
        const from = rng.pick(POLL_STATES);
        add(`cas poll ${from}`, casPoll(from, rng.chance(0.9) ? rng.pick(POLL_STATES) : rng.u32()));
        break;
      }
      case 'await':
        add('await poll REQUEST', awaitPollRequest(rng.pick([10, 1000, 100_000])));
        break;
      case 'echo':
        add('echo request', echoRequest());
        break;
      case 'sleep':
        add('loop sleep', loopSleep(rng));
        break;
      case 'host call in memory': {
        // abi.h "Polling": REQUEST -> HOST_CALL with an empty output, a bounded wait for
        // the reply; then maybe give up on a taken call (HOST_CALL_TAKEN -> HOST_CALL_EXIT)
        // and make it with an exit, or skip the wait altogether.
        add('host call: response_len = 0', movCtl32(abi.AIRLOCK_CTRL_OFF_RESPONSE_LEN, 0));
        add('host call: cas poll REQUEST -> HOST_CALL', casPoll(abi.AIRLOCK_POLL_REQUEST, abi.AIRLOCK_POLL_HOST_CALL));
        if (rng.chance(0.7)) add('host call: await REQUEST', awaitPollRequest(rng.pick([10, 1000, 100_000])));
        if (rng.chance(0.3)) {
          add('host call: cas TAKEN -> EXIT', casPoll(abi.AIRLOCK_POLL_HOST_CALL_TAKEN, abi.AIRLOCK_POLL_HOST_CALL_EXIT));
          add('host call: HOST_CALL exit', outDword(abi.AIRLOCK_PORT, abi.AIRLOCK_EXIT_HOST_CALL));
        }
        break;
      }
      case 'forever':
        add('spin forever', spinForever());
        break;
      case 'fault': {
        const name = rng.pick(Object.keys(faults) as (keyof typeof faults)[]);
        add(`fault ${name}`, faults[name]);
        break;
      }
    }
    if (mostlyValid && rng.chance(0.4)) {
      add('echo request', echoRequest());
      add('RESPONSE', outDword(abi.AIRLOCK_PORT, abi.AIRLOCK_EXIT_RESPONSE));
    }
  }
  if (mostlyValid) {
    add('echo request', echoRequest());
    add('RESPONSE', outDword(abi.AIRLOCK_PORT, abi.AIRLOCK_EXIT_RESPONSE));
  }
  const end = parts.reduce((n, p) => n + p.length, 0);
  add('jmp body', jmpTo(end, bodyStart));
  const code = Buffer.concat(parts);
  return { code, image: buildImage(code), listing };
}
