// support.ts — what the WebAssembly-tier tests share: a small engine configuration and
// the list of engines each test made, disposed after it.
import { afterEach } from 'vitest';
import type { EngineConfig } from '../../src/engine/engine.js';
import type { WasmEngine } from '../../src/engine/wasm/index.js';

export const CONFIG: EngineConfig = {
  heapSize: 16 << 20,
  stackSize: 1 << 20,
  inputSize: 64 << 10,
  outputSize: 64 << 10,
  consoleLimit: 4096,
};

/** Engines pushed here are disposed after every test of the calling file. */
export function disposedAfterEach(): WasmEngine[] {
  const engines: WasmEngine[] = [];
  afterEach(async () => {
    await Promise.all(engines.splice(0).map((e) => e.dispose()));
  });
  return engines;
}
