// index.ts — the WebAssembly tier's public surface inside the engine layer.
export { WasmEngine } from './wasm-engine.js';
export { wasmAvailable, prewarm as prewarmWasmWorkers } from './pool.js';
