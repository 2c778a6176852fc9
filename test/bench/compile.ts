// compile.ts — the compile group of `just bench` (AIRLOCK_BENCH_ONLY=compile): loading a
// 250 KiB handler in a first sandbox (the process has not compiled it: the compiler
// sandbox compiles it) and in a second one (its bytecode comes from the cache), plus the
// same load with the cache off for reference. Also runs alone: npx tsx test/bench/compile.ts [kvm|wasm]
import { SandboxBuilder, compileCache } from '../../src/index.js';
import type { Backend } from '../../src/engine/engine.js';
import { collect, summarize, type Result } from './stats.js';

/** A bundle-like handler of about `bytes`: many small functions, classes and literals. */
export function bundleSource(bytes: number, salt: string): string {
  const parts: string[] = [`const salt = ${JSON.stringify(salt)};`];
  let size = parts[0]!.length;
  for (let i = 0; size < bytes; i++) {
    const part = `
function util${i}(items, options = {}) {
  const out = [];
  for (const [k, v] of Object.entries(items ?? {})) {
    if (typeof v === 'number' && v > ${i % 97}) out.push({ key: k + '${i}', value: v * ${i % 13} });
    else if (Array.isArray(v)) out.push(...v.map((x, j) => ({ key: \`\${k}.\${j}\`, value: x })));
  }
  return options.sort ? out.sort((a, b) => a.value - b.value) : out;
}
class Model${i} {
  #state = { id: ${i}, tags: ['a${i}', 'b${i}'], created: null };
  get id() { return this.#state.id; }
  update(patch) { this.#state = { ...this.#state, ...patch }; return this; }
  toJSON() { return { kind: 'Model${i}', ...this.#state }; }
}`;
    parts.push(part);
    size += part.length;
  }
  parts.push(`
export default function handler(event) {
  return { salt, n: util0({ a: event?.n ?? 1 }).length, model: new Model1().update({ created: 1 }).toJSON() };
}`);
  return parts.join('\n');
}

const SIZE = 250 * 1024;

/** Milliseconds from addHandler() to a loaded sandbox (the LOAD), in a fresh sandbox. */
async function loadMs(backend: Backend, source: string, cache: boolean): Promise<number> {
  const js = await (await new SandboxBuilder().setBackend(backend).setCompileCache(cache).build()).loadRuntime();
  js.addHandler('bundle', source);
  const t = performance.now();
  const loaded = await js.getLoadedSandbox();
  const ms = performance.now() - t;
  await loaded.dispose();
  return ms;
}

/** Runs the group on one tier; `scale` shrinks sample counts for a quick run. */
export async function benchCompile(backend: Backend, record: (r: Result) => void, scale: (n: number) => number = (n) => n): Promise<void> {
  const contender = `airlock-${backend}`;
  let sample = 0;
  // A new salt per sample: a source this process has not compiled yet.
  const fresh = () => bundleSource(SIZE, `${backend}-${process.pid}-${sample++}-${Math.random()}`);
  record(summarize(contender, 'compile_250k_first_ms', await collect(scale(10), 1, () => loadMs(backend, fresh(), true))));
  const source = fresh();
  await loadMs(backend, source, true); // the first sandbox: fills the cache
  record(summarize(contender, 'compile_250k_cached_ms', await collect(scale(10), 1, () => loadMs(backend, source, true))));
  record(summarize(contender, 'compile_250k_nocache_ms', await collect(scale(10), 1, () => loadMs(backend, source, false))));
  compileCache.clear();
}

if (require.main === module) {
  const tiers = (process.argv[2] ? [process.argv[2]] : ['kvm', 'wasm']) as Backend[];
  const print = (r: Result) => console.log(`  ${r.metric.padEnd(28)} ${r.contender.padEnd(14)} p50 ${r.p50.toFixed(3).padStart(10)}  p99 ${r.p99.toFixed(3).padStart(10)}  (n=${r.n})`);
  (async () => {
    for (const t of tiers) await benchCompile(t, print);
  })().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
