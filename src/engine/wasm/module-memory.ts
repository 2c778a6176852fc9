// module-memory.ts — what the host reads from the guest module's binary before it
// creates an instance: the pages the module's imported memory needs for its stack and
// static data, and where its linked shadow stack ends; and from those and a sandbox's
// sizes, the memory maximum (guest/platform/wasm/platform.c lays out the rest).
// The module is the one the host built and compiled; this reads it, not guest memory.

export const WASM_PAGE_BYTES = 65536;
/** Pages of the 4 GiB wasm32 address space. */
export const WASM32_PAGES = 65536;

/** Mirrors of guest/platform/wasm/platform.c: the two shadow-stack reserves around
 *  QuickJS's limit and the largest shadow stack, reserves included. */
const STACK_RESERVE = 128 * 1024;
export const MAX_SHADOW_STACK_BYTES = 8 * 1024 * 1024;

export interface ModuleMemory {
  /** Pages the module's imported memory ("env"."memory") declares as its minimum: the
   *  linked shadow stack, data and bss. airlock_init lays out from this end. */
  staticPages: number;
  /** The initial value of __stack_pointer: where the linked shadow stack ends. */
  stackHigh: number;
}

/** The sizes a guest is booted with (EngineConfig's fields). */
export interface GuestSizes {
  heapSize: number;
  stackSize: number;
  inputSize: number;
  outputSize: number;
  consoleLimit: number;
}

class Reader {
  pos: number;
  constructor(
    readonly bytes: Uint8Array,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  byte(): number {
    if (this.pos >= this.end) throw new Error('the guest module is truncated');
    return this.bytes[this.pos++];
  }

  /** An unsigned LEB128 of at most 32 bits. */
  u32(): number {
    let value = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const b = this.byte();
      value += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) return value;
    }
    throw new Error('the guest module has an overlong integer');
  }

  /** A signed LEB128 of at most 32 bits (an i32.const operand). */
  s32(): number {
    let value = 0;
    let shift = 0;
    let b: number;
    do {
      b = this.byte();
      value |= (b & 0x7f) << shift;
      shift += 7;
    } while (b & 0x80 && shift < 35);
    if (shift < 32 && b & 0x40) value |= -1 << shift;
    return value | 0;
  }

  name(): string {
    const n = this.u32();
    if (this.pos + n > this.end) throw new Error('the guest module is truncated');
    const s = Buffer.from(this.bytes.buffer, this.bytes.byteOffset + this.pos, n).toString('utf8');
    this.pos += n;
    return s;
  }

  limits(): { min: number; max?: number } {
    const flags = this.byte();
    const min = this.u32();
    return flags & 1 ? { min, max: this.u32() } : { min };
  }
}

const SECTION_IMPORT = 2;
const SECTION_GLOBAL = 6;
const SECTION_EXPORT = 7;
const KIND_FUNC = 0;
const KIND_TABLE = 1;
const KIND_MEMORY = 2;
const KIND_GLOBAL = 3;
const KIND_TAG = 4;
const OP_I32_CONST = 0x41;

/** Reads the memory import and the linked stack end from a guest module binary. */
export function readModuleMemory(bytes: Uint8Array): ModuleMemory {
  if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    throw new Error('the guest module is not a WebAssembly binary');
  }
  let staticPages: number | undefined;
  let importedGlobals = 0;
  let stackGlobal: number | undefined;
  const globalInits: number[] = [];
  const top = new Reader(bytes, 8, bytes.length);
  while (top.pos < top.end) {
    const id = top.byte();
    const size = top.u32();
    const r = new Reader(bytes, top.pos, top.pos + size);
    top.pos += size;
    if (id === SECTION_IMPORT) {
      for (let n = r.u32(); n > 0; n--) {
        const module = r.name();
        const field = r.name();
        const kind = r.byte();
        if (kind === KIND_FUNC) r.u32();
        else if (kind === KIND_TABLE) {
          r.byte();
          r.limits();
        } else if (kind === KIND_MEMORY) {
          const l = r.limits();
          if (module === 'env' && field === 'memory') staticPages = l.min;
        } else if (kind === KIND_GLOBAL) {
          r.byte();
          r.byte();
          importedGlobals++;
        } else if (kind === KIND_TAG) {
          r.byte();
          r.u32();
        } else throw new Error(`the guest module has an import of unknown kind ${kind}`);
      }
    } else if (id === SECTION_GLOBAL) {
      for (let n = r.u32(); n > 0; n--) {
        r.byte(); // value type
        r.byte(); // mutability
        // Only an i32.const initialiser matters here; any other ends the scan (its
        // global is then not the stack pointer's, which the linker makes a constant).
        const op = r.byte();
        if (op !== OP_I32_CONST) break;
        globalInits.push(r.s32());
        if (r.byte() !== 0x0b) break;
      }
    } else if (id === SECTION_EXPORT) {
      for (let n = r.u32(); n > 0; n--) {
        const field = r.name();
        const kind = r.byte();
        const index = r.u32();
        if (kind === KIND_GLOBAL && field === '__stack_pointer') stackGlobal = index;
      }
    }
  }
  if (staticPages === undefined) throw new Error('the guest module does not import its memory (link with --import-memory)');
  const init = stackGlobal === undefined ? undefined : globalInits[stackGlobal - importedGlobals];
  if (init === undefined) throw new Error('the guest module does not export a constant-initialised __stack_pointer');
  return { staticPages, stackHigh: init >>> 0 };
}

const alignUp = (value: number, alignment: number) => Math.ceil(value / alignment) * alignment;

/**
 * Pages a guest of `sizes` can ever need: static data, shadow stack, input and output
 * buffers and heap, laid out as airlock_init lays them out. The worker creates the
 * guest's memory with this as its maximum, so no value in linear memory (the
 * allocator's limit, a heap claim) can make it larger; a grow past it fails, which
 * the guest reports as out of memory. Capped at the wasm32 address space: a layout
 * that does not fit is refused by airlock_init itself (INIT_NO_MEMORY).
 */
export function maximumPages(module: ModuleMemory, sizes: GuestSizes): number {
  const base = module.staticPages * WASM_PAGE_BYTES;
  // --stack-first: the linked stack runs from address 0 to stackHigh.
  const linkedUsable = Math.max(0, module.stackHigh - 2 * STACK_RESERVE);
  const usable = Math.min(sizes.stackSize, MAX_SHADOW_STACK_BYTES - 2 * STACK_RESERVE);
  const inputAddr = usable > linkedUsable ? alignUp(base + usable + 2 * STACK_RESERVE, 16) : base;
  const outputAddr = alignUp(inputAddr + sizes.inputSize, 16);
  const heapAddr = alignUp(outputAddr + sizes.outputSize, 4096);
  const end = alignUp(heapAddr + sizes.heapSize, WASM_PAGE_BYTES);
  return Math.min(end / WASM_PAGE_BYTES, WASM32_PAGES);
}
