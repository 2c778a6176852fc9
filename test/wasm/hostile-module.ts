// hostile-module.ts — hand-assembled guest modules for the WebAssembly tier's hostile
// tests: the tier's counterpart of test/host's raw guests. Each imports its memory and
// exports what the worker calls, with a control block that passes the worker's layout
// checks, and misbehaves in a chosen way: an endless loop in one export, so a test can
// make a worker that never answers at a chosen point of the protocol, a request
// handler that grows its memory by itself, or one that publishes chosen output (the
// request's bytes, under a chosen response_len) and then traps or calls abort.
import {
  AIRLOCK_CTRL_OFF_HEAP_ADDR,
  AIRLOCK_CTRL_OFF_HEAP_SIZE,
  AIRLOCK_CTRL_OFF_INPUT_ADDR,
  AIRLOCK_CTRL_OFF_INPUT_SIZE,
  AIRLOCK_CTRL_OFF_OUTPUT_ADDR,
  AIRLOCK_CTRL_OFF_OUTPUT_SIZE,
  AIRLOCK_CTRL_OFF_REQUEST_LEN,
  AIRLOCK_CTRL_OFF_RESPONSE_LEN,
  AIRLOCK_CTRL_OFF_STACK_TOP,
  AIRLOCK_CONTROL_SIZE,
} from '../../src/engine/abi.generated.js';
import type { GuestModule } from '../../src/engine/wasm/pool.js';
import { readModuleMemory, type GuestSizes } from '../../src/engine/wasm/module-memory.js';

/** The sizes a hostile guest's layout is written for: boot it with exactly these. */
export const HOSTILE_SIZES: GuestSizes = { heapSize: 64 << 10, stackSize: 64 << 10, inputSize: 4096, outputSize: 4096, consoleLimit: 0 };

/** Exports of the guest protocol a hostile module can make loop forever. */
export type LoopingExport = 'airlock_init' | 'airlock_boot' | 'airlock_handle' | 'airlock_after';

const PAGE = 65536;
const CONTROL_ADDR = 1024;
/** Static data ends here (the layout starts at the second page). */
const LAYOUT_BASE = PAGE;
const MEMORY_PAGES = 2;

function leb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

/** A signed LEB128 (i32.const operand) of a non-negative value below 2^31. */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(b & 0x40)) || (n === -1 && b & 0x40)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const vec = (items: number[][]) => [...leb(items.length), ...items.flat()];
const name = (s: string) => [...leb(Buffer.byteLength(s)), ...Buffer.from(s)];
const section = (id: number, body: number[]) => [id, ...leb(body.length), ...body];

const I32 = 0x7f;
const END = 0x0b;
const I32_CONST = 0x41;
const MEMORY_GROW = 0x40;
const DROP = 0x1a;
const LOOP_FOREVER = [0x03, 0x40, 0x0c, 0x00, END]; // loop: br 0; end
const UNREACHABLE = 0x00;
const CALL = 0x10;
const I32_LOAD = [0x28, 0x02]; // align 4, then the offset
const I32_STORE = [0x36, 0x02];
const MEMORY_COPY = [0xfc, 0x0a, 0x00, 0x00];
/** The abort import's text, in static data below the control block. */
const ABORT_TEXT = 'hostile abort';
const ABORT_TEXT_ADDR = 512;

/** The control block the worker reads at boot: buffers and heap in the second page. */
function controlBlock(): Buffer {
  const c = Buffer.alloc(AIRLOCK_CONTROL_SIZE);
  const inputAddr = LAYOUT_BASE;
  const outputAddr = inputAddr + HOSTILE_SIZES.inputSize;
  const heapAddr = outputAddr + HOSTILE_SIZES.outputSize;
  c.writeBigUInt64LE(BigInt(inputAddr), AIRLOCK_CTRL_OFF_INPUT_ADDR);
  c.writeBigUInt64LE(BigInt(HOSTILE_SIZES.inputSize), AIRLOCK_CTRL_OFF_INPUT_SIZE);
  c.writeBigUInt64LE(BigInt(outputAddr), AIRLOCK_CTRL_OFF_OUTPUT_ADDR);
  c.writeBigUInt64LE(BigInt(HOSTILE_SIZES.outputSize), AIRLOCK_CTRL_OFF_OUTPUT_SIZE);
  c.writeBigUInt64LE(BigInt(heapAddr), AIRLOCK_CTRL_OFF_HEAP_ADDR);
  c.writeBigUInt64LE(BigInt(HOSTILE_SIZES.heapSize), AIRLOCK_CTRL_OFF_HEAP_SIZE);
  // The linked stack ends where the static data begins, at the control block.
  c.writeBigUInt64LE(BigInt(CONTROL_ADDR), AIRLOCK_CTRL_OFF_STACK_TOP);
  return c;
}

/** How a hostile module misbehaves. */
export interface Hostility {
  /** This export never returns. */
  looping?: LoopingExport;
  /** airlock_handle asks for this many more pages of memory (memory.grow). */
  growPages?: number;
  /** airlock_handle copies the request into the output buffer, sets response_len to
   *  `claim` (default: the request's length), then traps (unreachable) or calls the
   *  `airlock.abort` import. */
  echoThen?: { stop: 'trap' | 'abort'; claim?: number };
}

/** The binary of a guest module that misbehaves as `hostility` says and otherwise does
 *  the least the worker needs: its memory layout is valid and every output is empty. */
export function hostileModuleBytes(hostility: Hostility): Uint8Array<ArrayBuffer> {
  // Types: 0 () -> (); 1 (i32 x5) -> i32; 2 () -> i32; 3 (i32 i32) -> ().
  const types = section(
    1,
    vec([[0x60, 0, 0], [0x60, 5, I32, I32, I32, I32, I32, 1, I32], [0x60, 0, 1, I32], [0x60, 2, I32, I32, 0]]),
  );
  // Function 0 is the imported airlock.abort; the bodies below start at index 1.
  const imports = section(
    2,
    vec([
      [...name('env'), ...name('memory'), 0x02, 0x00, ...leb(MEMORY_PAGES)],
      [...name('airlock'), ...name('abort'), 0x00, ...leb(3)],
    ]),
  );
  const bodies: { export: string; type: number; code: number[] }[] = [
    { export: 'airlock_init', type: 1, code: [I32_CONST, 0, END] },
    { export: 'airlock_boot', type: 0, code: [END] },
    { export: 'airlock_handle', type: 0, code: [END] },
    { export: 'airlock_after', type: 0, code: [END] },
    { export: 'airlock_control', type: 2, code: [I32_CONST, ...sleb(CONTROL_ADDR), END] },
    { export: 'airlock_stack_high', type: 2, code: [I32_CONST, ...sleb(CONTROL_ADDR), END] },
    { export: 'airlock_layout_base', type: 2, code: [I32_CONST, ...sleb(LAYOUT_BASE), END] },
  ];
  for (const b of bodies) {
    if (b.export === 'airlock_handle' && hostility.growPages !== undefined) {
      b.code = [I32_CONST, ...sleb(hostility.growPages), MEMORY_GROW, 0x00, DROP, END];
    }
    if (b.export === 'airlock_handle' && hostility.echoThen) {
      const { stop, claim } = hostility.echoThen;
      const outputAddr = LAYOUT_BASE + HOSTILE_SIZES.inputSize;
      const requestLen = [I32_CONST, ...sleb(CONTROL_ADDR), ...I32_LOAD, ...leb(AIRLOCK_CTRL_OFF_REQUEST_LEN)];
      b.code = [
        ...[I32_CONST, ...sleb(outputAddr), I32_CONST, ...sleb(LAYOUT_BASE), ...requestLen, ...MEMORY_COPY],
        I32_CONST,
        ...sleb(CONTROL_ADDR),
        ...(claim === undefined ? requestLen : [I32_CONST, ...sleb(claim | 0)]),
        ...I32_STORE,
        ...leb(AIRLOCK_CTRL_OFF_RESPONSE_LEN),
        ...(stop === 'trap'
          ? [UNREACHABLE]
          : [I32_CONST, ...sleb(ABORT_TEXT_ADDR), I32_CONST, ...sleb(ABORT_TEXT.length), CALL, 0x00]),
        END,
      ];
    }
    if (b.export !== hostility.looping) continue;
    b.code = b.type === 1 || b.type === 2 ? [...LOOP_FOREVER, I32_CONST, 0, END] : [...LOOP_FOREVER, END];
  }
  const functions = section(3, vec(bodies.map((b) => leb(b.type))));
  const globals = section(6, vec([[I32, 0x01, I32_CONST, ...sleb(CONTROL_ADDR), END]]));
  const exports = section(
    7,
    vec([...bodies.map((b, i) => [...name(b.export), 0x00, ...leb(i + 1)]), [...name('__stack_pointer'), 0x03, 0x00]]),
  );
  const code = section(
    10,
    vec(
      bodies.map((b) => {
        const body = [0x00, ...b.code]; // no locals
        return [...leb(body.length), ...body];
      }),
    ),
  );
  const control = [...controlBlock()];
  const text = [...Buffer.from(ABORT_TEXT)];
  const data = section(
    11,
    vec([
      [0x00, I32_CONST, ...sleb(CONTROL_ADDR), END, ...leb(control.length), ...control],
      [0x00, I32_CONST, ...sleb(ABORT_TEXT_ADDR), END, ...leb(text.length), ...text],
    ]),
  );
  return new Uint8Array([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...types, ...imports, ...functions, ...globals, ...exports, ...code, ...data]);
}

/** The compiled hostile module with what the pool reads from it, ready for GuestWorker.start. */
export function hostileModule(hostility: Hostility): GuestModule {
  const bytes = hostileModuleBytes(hostility);
  return { module: new WebAssembly.Module(bytes), memory: readModuleMemory(bytes), webapi: new SharedArrayBuffer(0) };
}
