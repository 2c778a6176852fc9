// template.ts — templates of the WebAssembly tier (issue #12): a frozen memory image
// that new engines start from (each clone copies it into its own instance), and its
// conversion to and from plain data for persistent snapshots, where every field read
// back is treated as hostile.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from '../../errors.js';
import { AIRLOCK_ABI_VERSION, AIRLOCK_CONTROL_SIZE } from '../abi.generated.js';
import type {
  EngineConfig,
  EngineSnapshot,
  EngineTemplate,
  ExchangeOptions,
  ExchangeResult,
  GuestEngine,
  HostCallHandler,
  SerializedTemplate,
} from '../engine.js';
import { wasmModulePath } from '../paths.js';
import type { GuestLayout, MemoryImage, MemoryRegion } from './channel.js';
import { WASM_PAGE_BYTES, maximumPages, readModuleMemory, type ModuleMemory } from './module-memory.js';
import { newImageId, type Image } from './pool.js';
import { WasmEngine } from './wasm-engine.js';

/** The engine state a template is made of: the image and the sizes it was taken with. */
export class WasmTemplate implements EngineTemplate {
  readonly backend = 'wasm' as const;
  readonly byteLength: number;
  #released = false;

  /** @internal `image` is never written after it was taken (workers get copies). */
  constructor(
    readonly config: EngineConfig,
    readonly image: Image,
  ) {
    this.config = { ...config };
    this.byteLength = image.image.bytes.byteLength;
  }

  get released(): boolean {
    return this.#released;
  }

  /** Clones hold the image themselves (a worker keeps its own copy), so nothing waits. */
  release(): void {
    this.#released = true;
  }
}

function asWasmTemplate(template: EngineTemplate): WasmTemplate {
  if (!(template instanceof WasmTemplate)) throw new InvalidArgumentError('the template was not made by the WebAssembly tier');
  if (template.released) throw new InvalidArgumentError('the template was released');
  return template;
}

/**
 * A WebAssembly engine that starts in a template's state. The copy into a worker runs
 * in the background from creation on; every operation waits for it first, and fails
 * with its error when it failed.
 */
class WasmClone implements GuestEngine {
  readonly backend = 'wasm' as const;
  readonly #engine: WasmEngine;
  readonly #ready: Promise<void>;

  constructor(template: WasmTemplate, onHostCall: HostCallHandler) {
    this.#engine = new WasmEngine(template.config, onHostCall);
    this.#ready = this.#engine.adoptTemplateImage(template.image);
    // Observed by the first operation; never an unhandled rejection meanwhile.
    this.#ready.catch(() => undefined);
  }

  boot(): Promise<Uint8Array> {
    return Promise.reject(new InvalidArgumentError('the guest is already booted: it was cloned from a template'));
  }

  async exchange(request: Uint8Array, options?: ExchangeOptions): Promise<ExchangeResult> {
    await this.#ready;
    return this.#engine.exchange(request, options);
  }

  kill(): void {
    this.#engine.kill();
  }

  async snapshot(): Promise<EngineSnapshot> {
    await this.#ready;
    return this.#engine.snapshot();
  }

  async restore(snapshot: EngineSnapshot): Promise<void> {
    await this.#ready.catch(() => undefined);
    return this.#engine.restore(snapshot);
  }

  async template(snapshot: EngineSnapshot): Promise<EngineTemplate> {
    await this.#ready;
    return this.#engine.template(snapshot);
  }

  dispose(): Promise<void> {
    return this.#engine.dispose();
  }
}

/**
 * TemplateSupport.clone. Math.random's state is part of the image; the guest reseeds it
 * from the per-request entropy the host sends unless the sandbox asked for deterministic
 * replay, so `options` changes nothing the engine does here.
 */
export function clone(template: EngineTemplate, onHostCall: HostCallHandler, _options?: { deterministic?: boolean }): GuestEngine {
  return new WasmClone(asWasmTemplate(template), onHostCall);
}

// --- serialisation ----------------------------------------------------------------

let moduleFacts: { sha256: string; memory: ModuleMemory } | undefined;

/** The guest module's digest and memory needs, read once from the file engines load. */
export function guestModuleFacts(): { sha256: string; memory: ModuleMemory } {
  if (!moduleFacts) {
    const bytes = readFileSync(wasmModulePath);
    moduleFacts = { sha256: createHash('sha256').update(bytes).digest('hex'), memory: readModuleMemory(bytes) };
  }
  return moduleFacts;
}

/** The instance state beside memory, as cpuState's JSON. */
interface InstanceState {
  memorySize: number;
  stackPointer: number;
  heapExtent: number;
  layout: GuestLayout;
}

const LAYOUT_KEYS = [
  'control',
  'inputAddr',
  'inputSize',
  'outputAddr',
  'outputSize',
  'heapAddr',
  'heapSize',
  'stackLow',
  'stackTop',
  'staticLow',
  'staticHigh',
] as const satisfies readonly (keyof GuestLayout)[];

export function exportTemplate(template: EngineTemplate): SerializedTemplate {
  const t = asWasmTemplate(template);
  const img = t.image.image;
  const state: InstanceState = { memorySize: img.memorySize, stackPointer: img.stackPointer, heapExtent: img.heapExtent, layout: { ...img.layout } };
  const bytes = new Uint8Array(img.bytes);
  const memory = img.regions
    .filter((r) => r.length > 0)
    .map((r) => ({ offset: r.addr, bytes: bytes.subarray(r.offset, r.offset + r.length) }))
    .sort((a, b) => a.offset - b.offset);
  return {
    backend: 'wasm',
    abiVersion: AIRLOCK_ABI_VERSION,
    imageSha256: guestModuleFacts().sha256,
    config: { ...t.config },
    cpuState: new TextEncoder().encode(JSON.stringify(state)),
    memory,
  };
}

const MAX_U32 = 0xffff_ffff;

function refuse(field: string, why: string): never {
  throw new InvalidArgumentError(`the WebAssembly template's ${field} ${why}`);
}

function u32(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_U32) refuse(field, 'is not a 32-bit unsigned integer');
  return value;
}

/** The state as the worker would have produced it; every bound is checked like readLayout checks a fresh guest's. */
function parseInstanceState(cpuState: Uint8Array, config: EngineConfig, memoryLimit: number): InstanceState {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(cpuState));
  } catch {
    refuse('cpuState', 'is not JSON');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) refuse('cpuState', 'is not an object');
  const o = raw as Record<string, unknown>;
  const lraw = o.layout;
  if (typeof lraw !== 'object' || lraw === null || Array.isArray(lraw)) refuse('cpuState.layout', 'is not an object');
  const l = {} as GuestLayout;
  for (const k of LAYOUT_KEYS) l[k] = u32((lraw as Record<string, unknown>)[k], `cpuState.layout.${k}`);
  const state: InstanceState = {
    memorySize: u32(o.memorySize, 'cpuState.memorySize'),
    stackPointer: u32(o.stackPointer, 'cpuState.stackPointer'),
    heapExtent: u32(o.heapExtent, 'cpuState.heapExtent'),
    layout: l,
  };
  if (state.memorySize % WASM_PAGE_BYTES !== 0 || state.memorySize > memoryLimit) refuse('cpuState.memorySize', 'does not fit the guest memory of these sizes');
  if (l.inputSize !== config.inputSize || l.outputSize !== config.outputSize || l.heapSize !== config.heapSize) {
    refuse('cpuState.layout', 'has buffer or heap sizes other than its config');
  }
  if (l.staticLow > l.staticHigh || l.stackLow > l.stackTop || l.stackTop > l.inputAddr || l.stackTop % 16 !== 0) refuse('cpuState.layout', 'puts the stack or static data outside its place');
  if (l.inputAddr + l.inputSize > l.outputAddr || l.outputAddr + l.outputSize > l.heapAddr || l.staticHigh > l.inputAddr) {
    refuse('cpuState.layout', 'has overlapping regions');
  }
  if (l.outputAddr + l.outputSize > state.memorySize || l.heapAddr + l.heapSize > memoryLimit) refuse('cpuState.layout', 'lies outside memory');
  if (l.control + AIRLOCK_CONTROL_SIZE > state.memorySize) refuse('cpuState.layout.control', 'lies outside memory');
  if (state.stackPointer < l.stackLow || state.stackPointer > l.stackTop) refuse('cpuState.stackPointer', 'is outside the stack');
  if (state.heapExtent < l.heapAddr || state.heapExtent > state.memorySize) refuse('cpuState.heapExtent', 'is outside the heap');
  return state;
}

/** The sizes a wasm guest may have; the builder's own limits are narrower. */
function checkConfig(config: unknown): EngineConfig {
  if (typeof config !== 'object' || config === null) refuse('config', 'is not an object');
  const c = config as Record<string, unknown>;
  const out: EngineConfig = {
    heapSize: u32(c.heapSize, 'config.heapSize'),
    stackSize: u32(c.stackSize, 'config.stackSize'),
    inputSize: u32(c.inputSize, 'config.inputSize'),
    outputSize: u32(c.outputSize, 'config.outputSize'),
    consoleLimit: u32(c.consoleLimit, 'config.consoleLimit'),
  };
  if (out.heapSize === 0 || out.stackSize === 0 || out.inputSize === 0 || out.outputSize === 0) refuse('config', 'has a zero size');
  return out;
}

export function importTemplate(serialized: SerializedTemplate): EngineTemplate {
  if (typeof serialized !== 'object' || serialized === null) refuse('data', 'is not an object');
  if (serialized.backend !== 'wasm') refuse('backend', `is ${JSON.stringify(serialized.backend)}, not 'wasm'`);
  if (serialized.abiVersion !== AIRLOCK_ABI_VERSION) {
    refuse('abiVersion', `is ${JSON.stringify(serialized.abiVersion)} but this Airlock's guest speaks ABI ${AIRLOCK_ABI_VERSION}; save the snapshot again with this version`);
  }
  const facts = guestModuleFacts();
  if (serialized.imageSha256 !== facts.sha256) {
    refuse('imageSha256', `(${String(serialized.imageSha256).slice(0, 80)}) names another guest module than this Airlock's (${facts.sha256}); save the snapshot again with this build`);
  }
  const config = checkConfig(serialized.config);
  const memoryLimit = maximumPages(facts.memory, config) * WASM_PAGE_BYTES;
  if (!(serialized.cpuState instanceof Uint8Array)) refuse('cpuState', 'is not bytes');
  const state = parseInstanceState(serialized.cpuState, config, memoryLimit);
  if (!Array.isArray(serialized.memory)) refuse('memory', 'is not a list of ranges');

  // Ascending, non-overlapping, inside the memory the image says it had.
  let total = 0;
  let end = 0;
  for (const [i, r] of serialized.memory.entries()) {
    if (typeof r !== 'object' || r === null || !(r.bytes instanceof Uint8Array)) refuse(`memory[${i}]`, 'is not a range with bytes');
    const offset = u32(r.offset, `memory[${i}].offset`);
    if (offset < end) refuse(`memory[${i}]`, 'overlaps the range before it or is out of order');
    end = offset + r.bytes.byteLength;
    if (end > state.memorySize) refuse(`memory[${i}]`, 'lies outside memory');
    total += r.bytes.byteLength;
  }
  const bytes = new ArrayBuffer(total);
  const all = new Uint8Array(bytes);
  const regions: MemoryRegion[] = [];
  let at = 0;
  for (const r of serialized.memory) {
    all.set(r.bytes, at);
    regions.push({ addr: r.offset, offset: at, length: r.bytes.byteLength });
    at += r.bytes.byteLength;
  }
  // A restore clears memory from heapExtent up: content above it would be lost, so
  // a range there means the data was not made by exportTemplate.
  if (end > state.heapExtent) refuse('memory', 'holds bytes above the heap extent');
  const image: MemoryImage = { memorySize: state.memorySize, stackPointer: state.stackPointer, regions, bytes, heapExtent: state.heapExtent, layout: state.layout };
  return new WasmTemplate(config, { id: newImageId(), image });
}
