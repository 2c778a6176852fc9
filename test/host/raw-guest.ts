// raw-guest.ts — hand-assembled guest images for the VMM's tests: a valid header
// (guest/include/abi.h) around a few instructions, so the native layer is tested
// without the real runtime, including guests that break the protocol on purpose.
import { createRequire } from 'node:module';
import { join } from 'node:path';
import * as abi from '../../src/engine/abi.generated.js';

export const addonPath = process.env.AIRLOCK_ADDON_PATH || join(__dirname, '..', '..', 'host', 'build', 'Release', 'airlock.node');

export interface NativeVm {
  boot(): Promise<Buffer>;
  send(
    request: Buffer,
    opts?: { wallClockTimeoutMs?: number; cpuTimeoutMs?: number },
  ): Promise<{ output: Buffer; wallTimeNs: number; cpuTimeNs: number; afterCpuTimeNs: number }>;
  hostReturn(reply: Buffer, callId?: number): void;
  kill(): void;
  snapshot(): Promise<object>;
  restore(snapshot: object): Promise<void>;
  dispose(): Promise<void>;
}

export interface VmConfig {
  heapSize: number;
  stackSize: number;
  inputSize: number;
  outputSize: number;
  consoleLimit: number;
  vcpuSpinUs?: number;
  guestPollUs?: number;
}

export interface Addon {
  abiVersion: number;
  probe(): { usable: boolean; reasons: string[] };
  measureExitFloor(iterations: number): Promise<number[]>;
  /** The process-wide busy-wait budget: exit floor (0 until the first VM started), cap, guests polling now. */
  pollingBudget(): { exitFloorUs: number; cores: number; cap: number; polling: number; sessions: number; othersLoad: number; counters: Record<string, number> };
  setCancelSignal(signal: number): void;
  /** The runner pool: runners kept busy at once (soft size), the most that may exist, and threads now. */
  runnerPool(): { limit: number; hardCap: number; runners: number };
  /** Native objects alive now (sandboxes, guest memories, snapshot and template images), what they hold, and malloc's
   *  totals; `trim` first returns malloc's free pages to the kernel (malloc_trim), so RSS then counts memory in use. */
  census(opts?: { trim?: boolean }): Census;
  Vm: new (image: Buffer, config: VmConfig, onHostCall: (output: Buffer, callId: number) => void) => NativeVm;
}

export interface Census {
  sandboxes: number;
  guestMemories: number;
  guestMemoryBytes: number;
  memoryImages: number;
  memoryImageBytes: number;
  mallocInUse: number;
  mallocFree: number;
}

export function loadAddon(): Addon {
  return createRequire(__filename)(addonPath) as Addon;
}

export const defaultConfig: VmConfig = {
  heapSize: 4 << 20,
  stackSize: 1 << 20,
  inputSize: 64 << 10,
  outputSize: 64 << 10,
  consoleLimit: 4096,
};

// The raw images' fixed layout, linked like the real image (data on its own 2 MiB
// slot, so no slot is writable and executable): header and code in the first page of
// the text slot, one data page starting the next slot, one bss page holding the
// control block.
export const IMAGE_BASE = abi.AIRLOCK_IMAGE_BASE;
export const CODE = IMAGE_BASE + abi.AIRLOCK_IMG_HEADER_SIZE;
export const DATA_START = IMAGE_BASE + abi.AIRLOCK_HUGE_PAGE_SIZE;
export const CONTROL = DATA_START + 0x1000;
export const BSS_END = CONTROL + 0x1000;
export const TLS_BLOCK = DATA_START;
const FILE_BYTES = DATA_START + 0x1000 - IMAGE_BASE;

const bytes = (hex: string) => Buffer.from(hex.replace(/\s+/g, ''), 'hex');

// Every program below was assembled from the listed instructions with C = 0x401000
// (the control block), DATA = 0x400100, PORT = AIRLOCK_PORT (0x3a1). "boot answers"
// is: mov dx, PORT; mov dword [C+112], 0; mov eax, 1; out dx, eax.
const BOOT_ANSWERS = '66baa103 c7042570104000 00000000 b801000000 ef';
// copy the request to the output: mov rsi,[C+8]; mov rdi,[C+24]; mov ecx,[C+104];
// mov [C+112],ecx; rep movsb
const COPY_INPUT_TO_OUTPUT = '488b342508104000 488b3c2518104000 8b0c2568104000 890c2570104000 f3a4';

export const programs = {
  /** Every request comes back as the response; boot answers with 0 bytes.
   *  mov dx, PORT; 1: <copy input to output>; mov eax, 1; out dx, eax; jmp 1b */
  echo: bytes(`66baa103 ${COPY_INPUT_TO_OUTPUT} b801000000 ef ebd8`),
  /** Boot answers; each request goes out as a host call (exit 2) and the host's
   *  reply comes back as the response (exit 1). */
  hostCall: bytes(
    `${BOOT_ANSWERS} ${COPY_INPUT_TO_OUTPUT} b802000000 ef ${COPY_INPUT_TO_OUTPUT} b801000000 ef ebb2`,
  ),
  /** Boot answers; the first request spins forever (jmp $). */
  spin: bytes(`${BOOT_ANSWERS} ebfe`),
  /** Boot answers; then mov dx, 0x80; out dx, al. */
  badPort: bytes(`${BOOT_ANSWERS} 66ba8000 ee`),
  /** Boot answers; then hlt (privileged at CPL 3: #GP, no IDT, triple fault). */
  hlt: bytes(`${BOOT_ANSWERS} f4`),
  /** Boot answers; then ud2 (#UD, no IDT, triple fault). */
  ud2: bytes(`${BOOT_ANSWERS} 0f0b`),
  /** Boot answers; then response_len = 0xffffffff and a RESPONSE exit. */
  hugeResponse: bytes(`${BOOT_ANSWERS} c7042570104000 ffffffff b801000000 ef`),
  /** Boot answers; then the request's bytes become the output of an ABORT exit (3). */
  abort: bytes(`${BOOT_ANSWERS} ${COPY_INPUT_TO_OUTPUT} b803000000 ef`),
  /** Boot answers; each request increments a u64 at heap_addr and one at DATA,
   *  answers both (16 bytes), pushes/pops on the stack and reports
   *  heap_high_water = heap_addr + 0x1000:
   *  mov rax,[C+40]; inc qword [rax]; inc qword [DATA]; mov rdi,[C+24];
   *  mov rbx,[rax]; mov [rdi],rbx; mov rbx,[DATA]; mov [rdi+8],rbx; push rbx; pop rbx;
   *  lea rbx,[rax+0x1000]; mov [C+120],rbx; mov dword [C+112],16; mov eax,1; out dx,eax; jmp */
  counter: bytes(
    `${BOOT_ANSWERS} 488b042528104000 48ff00 48ff042500014000 488b3c2518104000 488b18 48891f ` +
      `488b1c2500014000 48895f08 53 5b 488d9800100000 48891c2578104000 c7042570104000 10000000 ` +
      `b801000000 ef ebaf`,
  ),
};

export interface HeaderOverrides {
  magic?: number;
  abiVersion?: number;
  loadAddr?: bigint;
  entry?: bigint;
  fileEnd?: bigint;
  bssEnd?: bigint;
  dataStart?: bigint;
  control?: bigint;
  tlsBlock?: bigint;
}

/** A flat image: header, `code` at CODE, the text slot's padding, a data page, bss up to BSS_END. */
export function buildImage(code: Buffer, overrides: HeaderOverrides = {}): Buffer {
  if (abi.AIRLOCK_IMG_HEADER_SIZE + code.length > 0x1000) throw new Error('code does not fit the text page');
  const img = Buffer.alloc(FILE_BYTES);
  img.writeUInt32LE(overrides.magic ?? abi.AIRLOCK_IMAGE_MAGIC, abi.AIRLOCK_IMG_OFF_MAGIC);
  img.writeUInt32LE(overrides.abiVersion ?? abi.AIRLOCK_ABI_VERSION, abi.AIRLOCK_IMG_OFF_ABI_VERSION);
  img.writeBigUInt64LE(overrides.loadAddr ?? BigInt(IMAGE_BASE), abi.AIRLOCK_IMG_OFF_LOAD_ADDR);
  img.writeBigUInt64LE(overrides.entry ?? BigInt(CODE), abi.AIRLOCK_IMG_OFF_ENTRY);
  img.writeBigUInt64LE(overrides.fileEnd ?? BigInt(IMAGE_BASE + FILE_BYTES), abi.AIRLOCK_IMG_OFF_FILE_END);
  img.writeBigUInt64LE(overrides.bssEnd ?? BigInt(BSS_END), abi.AIRLOCK_IMG_OFF_BSS_END);
  img.writeBigUInt64LE(overrides.dataStart ?? BigInt(DATA_START), abi.AIRLOCK_IMG_OFF_DATA_START);
  img.writeBigUInt64LE(overrides.control ?? BigInt(CONTROL), abi.AIRLOCK_IMG_OFF_CONTROL);
  img.writeBigUInt64LE(overrides.tlsBlock ?? BigInt(TLS_BLOCK), abi.AIRLOCK_IMG_OFF_TLS_BLOCK);
  code.copy(img, abi.AIRLOCK_IMG_HEADER_SIZE);
  return img;
}

/** One message framed as abi.h says: 16-byte header, then u32-length-prefixed fields. */
export function encodeMessage(kind: number, status: number, fields: (string | Buffer)[]): Buffer {
  const bodies = fields.map((f) => (typeof f === 'string' ? Buffer.from(f, 'utf8') : f));
  const length = bodies.reduce((n, b) => n + abi.AIRLOCK_FIELD_HEADER_SIZE + b.length, 0);
  const out = Buffer.alloc(abi.AIRLOCK_MSG_HEADER_SIZE + length);
  out.writeUInt32LE(kind, 0);
  out.writeUInt32LE(status, 4);
  out.writeUInt32LE(length, 8);
  out.writeUInt32LE(bodies.length, 12);
  let off = abi.AIRLOCK_MSG_HEADER_SIZE;
  for (const b of bodies) {
    out.writeUInt32LE(b.length, off);
    b.copy(out, off + abi.AIRLOCK_FIELD_HEADER_SIZE);
    off += abi.AIRLOCK_FIELD_HEADER_SIZE + b.length;
  }
  return out;
}

export interface DecodedMessage {
  kind: number;
  status: number;
  fields: Buffer[];
}

/** Splits a buffer of messages; throws on any framing error. */
export function decodeMessages(buf: Buffer): DecodedMessage[] {
  const out: DecodedMessage[] = [];
  let off = 0;
  while (off < buf.length) {
    if (buf.length - off < abi.AIRLOCK_MSG_HEADER_SIZE) throw new Error('truncated message header');
    const kind = buf.readUInt32LE(off);
    const status = buf.readUInt32LE(off + 4);
    const length = buf.readUInt32LE(off + 8);
    const count = buf.readUInt32LE(off + 12);
    let p = off + abi.AIRLOCK_MSG_HEADER_SIZE;
    const end = p + length;
    if (end > buf.length) throw new Error('message body beyond the buffer');
    const fields: Buffer[] = [];
    for (let i = 0; i < count; i++) {
      const n = buf.readUInt32LE(p);
      p += abi.AIRLOCK_FIELD_HEADER_SIZE;
      if (p + n > end) throw new Error('field beyond its message');
      fields.push(buf.subarray(p, p + n));
      p += n;
    }
    out.push({ kind, status, fields });
    off = end;
  }
  return out;
}

/** Resolves with the error a promise rejects with (fails if it resolves). */
export async function rejection(p: Promise<unknown>): Promise<Error & Record<string, unknown>> {
  try {
    await p;
  } catch (e) {
    return e as Error & Record<string, unknown>;
  }
  throw new Error('expected the promise to reject, but it resolved');
}
