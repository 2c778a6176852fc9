// run.ts — `just bench`: measures every contender side by side in one run on this
// machine and writes docs/BENCHMARKS.md and docs/benchmarks.json (test/bench/report.ts).
// Contenders: raw-kvm (the exit and exchange floors), airlock-kvm, airlock-wasm,
// native-quickjs (the same runtime and QuickJS built as a Linux program),
// quickjs-emscripten (npm, in-thread), isolated-vm-async and isolated-vm-sync (installed
// for the bench only, run in a child process: test/bench/isolated-vm.ts).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SandboxBuilder, type LoadedJSSandbox } from '../../src/index.js';
import type { Backend } from '../../src/engine/engine.js';
import { loadAddon } from '../../src/engine/native.js';
import { kvmImagePath } from '../../src/engine/paths.js';
import { kvmUnusableReasons } from '../../src/engine/probe.js';
import { collect, summarize, usSince, type Result } from './stats.js';
import { NativeGuest } from '../guest/driver.js';
import { emscriptenContender } from './quickjs-emscripten.js';
import { benchEventLoop, benchLiveHeap, benchMainThread, benchPlacement, benchThroughput, type CallpathContext } from './callpath.js';
import { mainThreadCpuPerCall, throughput } from './loops.js';
import { runIsolatedVm } from './isolated-vm.js';
import { writeReport, type Unavailable } from './report.js';
import { benchEventLoop as benchGuestEventLoop } from './eventloop.js';
import { benchTemplates, runLive } from './templates.js';
import { benchCompile } from './compile.js';

const root = join(__dirname, '..', '..');
const quick = process.env.AIRLOCK_BENCH_QUICK === '1';
const scale = (n: number) => (quick ? Math.max(3, Math.ceil(n / 10)) : n);
// AIRLOCK_BENCH_ONLY=calls,idle runs only those groups (a before/after comparison of
// one figure needs no full run): exit-floor, exchange-floor, calls (per-tier call,
// host-call, restore, kill), placement (same core / split cores), main-thread (its CPU
// per call), throughput, eventloop, guest-eventloop (timers and async host calls), compile (the
// compiled-code cache: test/bench/compile.ts), live-heap, create, snapshot, idle, native,
// emscripten, isolated-vm. AIRLOCK_BENCH_QUICK=1 takes a tenth of the samples (a smoke
// run); a partial run writes its results to AIRLOCK_BENCH_OUT (default out/bench-partial.json).
const only = new Set((process.env.AIRLOCK_BENCH_ONLY ?? '').split(',').filter(Boolean));
const wants = (group: string) => only.size === 0 || only.has(group);
// A full run repeats every group AIRLOCK_BENCH_ROUNDS times (default 3): figures from one
// pass on this shared machine do not hold, so the report gives each ratio as its median
// over the rounds with the range. Partial and quick runs default to one round.
const rounds = parseRounds(process.env.AIRLOCK_BENCH_ROUNDS, only.size > 0 || quick ? 1 : 3);
let round = 0;

function parseRounds(text: string | undefined, fallback: number): number {
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 20) throw new Error(`AIRLOCK_BENCH_ROUNDS must be an integer from 1 to 20, not ${JSON.stringify(text)}`);
  return n;
}

const FIB = 'function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }\nfunction handler(e) { return fib(e.n); }';
const ECHO = 'function handler(e) { return e; }';

const results: Result[] = [];
const notes: string[] = [];
const unavailable: Unavailable[] = [];

// AIRLOCK_BENCH_COUNTERS=1: after each KVM figure, the call-path counters it moved per
// sample (pollingBudget().counters, docs/PROTOCOL.md "Polling"): which path its calls
// took. An addon without counters prints nothing.
let lastCounters: Record<string, number> | undefined;
function callPathCounters(): Record<string, number> | undefined {
  return (loadAddon().addon?.pollingBudget() as { counters?: Record<string, number> } | undefined)?.counters;
}
function record(r: Result): void {
  results.push({ ...r, round });
  console.log(`  ${r.metric.padEnd(30)} ${r.contender.padEnd(20)} p50 ${r.p50.toFixed(3).padStart(10)}  p99 ${r.p99.toFixed(3).padStart(10)}  (n=${r.n})`);
  if (process.env.AIRLOCK_BENCH_COUNTERS !== '1') return;
  const now = callPathCounters();
  if (now && lastCounters && r.contender === 'airlock-kvm') {
    const moved = Object.entries(now)
      .filter(([k, v]) => v !== lastCounters![k])
      .map(([k, v]) => `${k} ${((v - lastCounters![k]) / r.n).toFixed(2)}`);
    const budget = loadAddon().addon!.pollingBudget();
    console.log(`    cap ${budget.cap} cores ${budget.cores} others ${typeof budget.othersLoad === 'number' ? budget.othersLoad.toFixed(2) : '?'} sessions ${budget.sessions} per sample: ${moved.join(', ')}`);
  }
  lastCounters = now;
}

async function guarded(what: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    const msg = `${what} failed: ${(e as Error).message}`;
    notes.push(msg);
    console.error(`  ! ${msg}`);
  }
}

async function loadAirlock(backend: Backend, handlers: Record<string, string>, setup?: (p: import('../../src/index.js').ProtoJSSandbox) => void): Promise<LoadedJSSandbox> {
  return loadAirlockWith(new SandboxBuilder().setBackend(backend), handlers, setup);
}

async function loadAirlockWith(
  builder: SandboxBuilder,
  handlers: Record<string, string>,
  setup?: (p: import('../../src/index.js').ProtoJSSandbox) => void,
): Promise<LoadedJSSandbox> {
  const proto = await builder.build();
  setup?.(proto);
  const js = await proto.loadRuntime();
  for (const [k, v] of Object.entries(handlers)) js.addHandler(k, v);
  return js.getLoadedSandbox();
}

async function benchExitFloor(): Promise<void> {
  const addon = loadAddon().addon;
  if (!addon) throw new Error('addon not built');
  const samples = await addon.measureExitFloor(scale(20000));
  record(summarize('raw-kvm', 'exit_floor_us', samples));
}

// The real guest image answering a trivial CALL through KVM_RUN on the measuring
// thread (host/src/exit_floor.cc). An addon built before it existed lacks the function.
async function benchExchangeFloor(): Promise<void> {
  const addon = loadAddon().addon as { measureExchangeFloor?: (image: Uint8Array, n: number) => Promise<number[]> } | undefined;
  if (!addon?.measureExchangeFloor) throw new Error('this addon has no measureExchangeFloor (rebuild it: bash scripts/setup.sh)');
  record(summarize('raw-kvm', 'exchange_floor_us', await addon.measureExchangeFloor(readFileSync(kvmImagePath), scale(20000))));
}

async function benchAirlock(backend: Backend): Promise<void> {
  const c: CallpathContext = {
    backend,
    load: (handlers, setup) => loadAirlock(backend, handlers, setup),
    record,
    note: (text) => {
      notes.push(text);
      console.error(`  ! ${text}`);
    },
    scale,
    quick,
  };
  const contender = `airlock-${backend}`;
  if (wants('calls')) await benchCalls(backend);
  if (wants('placement')) await guarded(`${contender} placement`, () => benchPlacement(c));
  if (wants('main-thread')) await guarded(`${contender} main-thread`, () => benchMainThread(c));
  if (wants('throughput')) await guarded(`${contender} throughput`, () => benchThroughput(c));
  if (wants('eventloop')) await guarded(`${contender} eventloop`, () => benchEventLoop(c));
  if (wants('live-heap')) await guarded(`${contender} live-heap`, () => benchLiveHeap(c));
  if (wants('create')) await benchCreate(backend);
  if (wants('snapshot')) await benchSnapshot(backend);
  if (wants('idle')) await benchIdle(backend);
  if (wants('guest-eventloop')) await benchGuestEventLoop(backend, record, scale);
  if (wants('compile')) await benchCompile(backend, record, scale);
}

async function benchCalls(backend: Backend): Promise<void> {
  const contender = `airlock-${backend}`;
  const loaded = await loadAirlock(backend, { echo: ECHO, fib: FIB, spin: 'function handler() { for (;;) {} }', hostloop: 'import { echo } from "host:bench";\nfunction handler(e) { let v = 0; for (let i = 0; i < e.n; i++) v = echo(i); return v; }' }, (p) =>
    p.register('bench', 'echo', (x: unknown) => x),
  );
  // The first figure's counters (AIRLOCK_BENCH_COUNTERS) start here, not at boot.
  if (process.env.AIRLOCK_BENCH_COUNTERS === '1' && backend === 'kvm') lastCounters = callPathCounters();
  try {
    // call_roundtrip_us: a trivial handler, host to host, with default options.
    const event = { id: 1, name: 'bench' };
    record(summarize(contender, 'call_roundtrip_us', await collect(scale(3000), 300, async () => {
      const t = process.hrtime.bigint();
      await loaded.callHandler('echo', event);
      return usSince(t);
    })));
    record(summarize(contender, 'call_roundtrip_nogc_us', await collect(scale(3000), 300, async () => {
      const t = process.hrtime.bigint();
      await loaded.callHandler('echo', event, { gc: false });
      return usSince(t);
    })));
    // The same call 2 ms after the previous one: a KVM guest has parked by then, so the
    // call enters it and it answers with an exit (docs/PROTOCOL.md, "Polling").
    record(summarize(contender, 'call_roundtrip_spaced_us', await collect(scale(300), 20, async () => {
      await new Promise((r) => setTimeout(r, 2));
      const t = process.hrtime.bigint();
      await loaded.callHandler('echo', event);
      return usSince(t);
    })));

    // host_call_roundtrip_us: per host call, the bare handler call subtracted.
    const calls = 100;
    const bare = await collect(scale(200), 20, async () => {
      const t = process.hrtime.bigint();
      await loaded.callHandler('hostloop', { n: 0 }, { gc: false });
      return usSince(t);
    });
    const bareP50 = summarize('', '', bare).p50;
    record(summarize(contender, 'host_call_roundtrip_us', await collect(scale(200), 20, async () => {
      const t = process.hrtime.bigint();
      await loaded.callHandler('hostloop', { n: calls }, { gc: false });
      return (usSince(t) - bareP50) / calls;
    })));

    // compute_fib27_ms
    record(summarize(contender, 'compute_fib27_ms', await collect(scale(15), 2, async () => {
      const t = process.hrtime.bigint();
      await loaded.callHandler('fib', { n: 27 }, { gc: false });
      return usSince(t) / 1e3;
    })));

    // restore_us: after a call that dirtied a typical amount of memory, and after none.
    const snap = await loaded.snapshot();
    record(summarize(contender, 'restore_us', await collect(scale(500), 20, async () => {
      await loaded.callHandler('echo', event);
      const t = process.hrtime.bigint();
      await loaded.restore(snap);
      return usSince(t);
    })));
    record(summarize(contender, 'restore_idle_us', await collect(scale(500), 20, async () => {
      const t = process.hrtime.bigint();
      await loaded.restore(snap);
      return usSince(t);
    })));

    // kill_latency_ms: from kill() to the rejected promise, the guest spinning.
    record(summarize(contender, 'kill_latency_ms', await collect(scale(40), 3, async () => {
      const pending = loaded.callHandler('spin', {}).catch((e: unknown) => e);
      await new Promise((r) => setTimeout(r, 5));
      const t = process.hrtime.bigint();
      loaded.interruptHandle.kill();
      const err = (await pending) as { code?: string };
      const ms = usSince(t) / 1e3;
      if (err?.code !== 'ERR_CANCELLED') throw new Error(`kill did not cancel: ${String(err?.code)}`);
      await loaded.restore(snap);
      return ms;
    })));
  } finally {
    await loaded.dispose();
  }
}

async function benchCreate(backend: Backend): Promise<void> {
  const contender = `airlock-${backend}`;
  // create_to_first_result_ms: build -> loadRuntime -> addHandler -> getLoadedSandbox -> first call.
  const created: LoadedJSSandbox[] = [];
  record(summarize(contender, 'create_to_first_result_ms', await collect(scale(40), 3, async () => {
    const t = process.hrtime.bigint();
    const proto = await new SandboxBuilder().setBackend(backend).build();
    const js = await proto.loadRuntime();
    js.addHandler('echo', ECHO);
    const l = await js.getLoadedSandbox();
    await l.callHandler('echo', { first: true });
    const ms = usSince(t) / 1e3;
    created.push(l);
    if (created.length >= 4) await Promise.all(created.splice(0).map((s) => s.dispose()));
    return ms;
  })));
  await Promise.all(created.map((s) => s.dispose()));

  // The same, one sandbox every 50 ms (a server creating sandboxes as requests come,
  // rather than a tight loop): lets pools and the engine's own GC keep up.
  record(summarize(contender, 'create_to_first_result_paced_ms', await collect(scale(20), 2, async () => {
    await new Promise((r) => setTimeout(r, 50));
    const t = process.hrtime.bigint();
    const proto = await new SandboxBuilder().setBackend(backend).build();
    const js = await proto.loadRuntime();
    js.addHandler('echo', ECHO);
    const l = await js.getLoadedSandbox();
    await l.callHandler('echo', { first: true });
    const ms = usSince(t) / 1e3;
    await l.dispose();
    return ms;
  })));
}

async function benchSnapshot(backend: Backend): Promise<void> {
  const contender = `airlock-${backend}`;
  // Restore cost must follow what the guest used, not its configured size: the same
  // restore with a 1 GiB heap. And a snapshot must not slow the calls after it: two
  // identical sandboxes, one with a snapshot taken, called alternately (ABBA) so
  // warm-up, machine noise and polling fall on both alike.
  const bigBuilder = () => new SandboxBuilder().setBackend(backend).setHeapSize(1024 * 1024 * 1024);
  const plain = await loadAirlockWith(bigBuilder(), { echo: ECHO });
  const big = await loadAirlockWith(bigBuilder(), { echo: ECHO });
  try {
    const event = { id: 1, name: 'bench' };
    const snap = await big.snapshot();
    const before: number[] = [];
    const after: number[] = [];
    const timed = async (s: LoadedJSSandbox) => {
      const t = process.hrtime.bigint();
      await s.callHandler('echo', event, { gc: false });
      return usSince(t);
    };
    for (let i = 0; i < 200 + scale(2000); i++) {
      // Swap the order every round: each sandbox then follows the other equally often
      // (a KVM guest that answered last may still be polling when it is called).
      let a: number, b: number;
      if (i % 2 === 0) {
        a = await timed(plain);
        b = await timed(big);
      } else {
        b = await timed(big);
        a = await timed(plain);
      }
      if (i >= 200) {
        before.push(a);
        after.push(b);
      }
    }
    record(summarize(contender, 'call_without_snapshot_us', before));
    record(summarize(contender, 'call_after_snapshot_us', after));
    record(summarize(contender, 'restore_1gib_heap_us', await collect(scale(500), 20, async () => {
      await big.callHandler('echo', event);
      const t = process.hrtime.bigint();
      await big.restore(snap);
      return usSince(t);
    })));
  } finally {
    await Promise.all([plain.dispose(), big.dispose()]);
  }
}

/** Process CPU (user + system) in ms over `ms` of wall time with nothing to do. */
async function cpuOver(ms: number): Promise<number> {
  const before = process.cpuUsage();
  await new Promise((r) => setTimeout(r, ms));
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1e3;
}

// idle_cpu_ms: 10 sandboxes, one call each, 300 ms to settle, then the whole process's
// CPU over the next second. An idle sandbox must cost nothing: no guest polling, no
// thread spinning, no timer left armed. (The process's own idle cost is in it too.)
async function benchIdle(backend: Backend): Promise<void> {
  const contender = `airlock-${backend}`;
  const samples: number[] = [];
  for (let round = 0; round < scale(5); round++) {
    const sandboxes = await Promise.all(Array.from({ length: 10 }, () => loadAirlock(backend, { echo: ECHO })));
    try {
      for (const s of sandboxes) await s.callHandler('echo', { round });
      await new Promise((r) => setTimeout(r, 300));
      samples.push(await cpuOver(1000));
    } finally {
      await Promise.all(sandboxes.map((s) => s.dispose()));
    }
  }
  record(summarize(contender, 'idle_cpu_ms', samples));
}

async function benchNative(): Promise<void> {
  // The same runtime and QuickJS as the guests, built as a Linux program (test/guest/driver.ts).
  const guest = new NativeGuest();
  try {
    await guest.boot();
    await guest.loadRuntime();
    await guest.load({ fib: FIB });
    record(summarize('native-quickjs', 'compute_fib27_ms', await collect(scale(15), 2, async () => {
      const t = process.hrtime.bigint();
      await guest.call('fib', { n: 27 });
      return usSince(t) / 1e3;
    })));
  } finally {
    await guest.close();
  }
}

async function benchEmscripten(): Promise<void> {
  const c = await emscriptenContender({ echo: ECHO, fib: FIB });
  const event = { id: 1, name: 'bench' };
  if (wants('emscripten')) {
    record(summarize('quickjs-emscripten', 'call_roundtrip_us', await collect(scale(3000), 300, async () => {
      const ctx = c.context;
      const t = process.hrtime.bigint();
      ctx.call('echo', event);
      return usSince(t);
    })));
    record(summarize('quickjs-emscripten', 'compute_fib27_ms', await collect(scale(15), 2, async () => {
      const t = process.hrtime.bigint();
      c.context.call('fib', { n: 27 });
      return usSince(t) / 1e3;
    })));
    record(summarize('quickjs-emscripten', 'create_to_first_result_ms', await collect(scale(40), 3, async () => {
      const t = process.hrtime.bigint();
      const fresh = c.create({ echo: ECHO });
      fresh.call('echo', { first: true });
      const ms = usSince(t) / 1e3;
      fresh.dispose();
      return ms;
    })));
  }
  if (wants('main-thread')) {
    record(summarize('quickjs-emscripten', 'main_thread_cpu_us_per_call', await mainThreadCpuPerCall(() => c.context.call('echo', event), scale(2000), scale(10))));
  }
  if (wants('throughput')) {
    for (const n of [1, 2, 8]) {
      const many = Array.from({ length: n }, () => c.create({ echo: ECHO }));
      record(summarize('quickjs-emscripten', `throughput_${n}_per_s`, await throughput(many.map((s) => () => s.call('echo', event)), quick ? 200 : 1000, scale(5))));
      for (const s of many) s.dispose();
    }
  }
  c.context.dispose();
}

const ISOLATED_VM_METRICS = ['call_roundtrip_us', 'main_thread_cpu_us_per_call', 'event_loop_gap_calls_ms', 'throughput_1_per_s', 'throughput_2_per_s', 'throughput_8_per_s', 'create_to_first_result_ms', 'pss_per_idle_sandbox_mib'];

async function benchIsolatedVm(): Promise<void> {
  const run = await runIsolatedVm();
  results.push(...run.results.map((r) => ({ ...r, round }))); // the child printed them as it went
  if (run.unavailable) {
    notes.push(`isolated-vm unavailable: ${run.unavailable}`);
    console.error(`  ! isolated-vm unavailable: ${run.unavailable}`);
    if (run.results.length === 0) {
      for (const contender of ['isolated-vm-async', 'isolated-vm-sync']) unavailable.push({ contender, metrics: ISOLATED_VM_METRICS, reason: run.unavailable });
    }
  }
}

async function benchTemplateGroup(backends: Backend[]): Promise<void> {
  let emscripten: Awaited<ReturnType<typeof emscriptenContender>> | undefined;
  try {
    emscripten = await emscriptenContender({ echo: ECHO });
  } catch (e) {
    notes.push(`templates: quickjs-emscripten did not load: ${(e as Error).message}`);
  }
  try {
    await benchTemplates({
      backends,
      record,
      note: (text) => {
        notes.push(text);
        console.error(`  ! ${text}`);
      },
      scale,
      quick,
      emscripten: emscripten?.create,
    });
  } finally {
    emscripten?.context.dispose();
  }
}

// The WebAssembly tier gives every live sandbox a worker thread with its own V8 isolate
// (~7 MiB of PSS each here): 1,000 of them would take most of this shared machine's memory, so
// it runs 100 unless AIRLOCK_BENCH_LIVE_WASM says otherwise (its metrics are then
// named live_100_*).
async function benchLive(backends: Backend[]): Promise<void> {
  for (const b of backends) {
    const count = quick ? 100 : b === 'wasm' ? Number(process.env.AIRLOCK_BENCH_LIVE_WASM ?? 100) : 1000;
    if (b === 'wasm' && !quick && count !== 1000) notes.push(`live-1000 on the WebAssembly tier ran with ${count} sandboxes (live_${count}_*): set AIRLOCK_BENCH_LIVE_WASM=1000 for the full figure`);
    const run = await runLive(b, count);
    for (const r of run.results) record(r);
    if (run.failed) {
      notes.push(run.failed);
      console.error(`  ! ${run.failed}`);
    }
  }
}

async function main(): Promise<void> {
  console.log('Airlock benchmarks' + (quick ? ' (quick)' : '') + (rounds > 1 ? `, ${rounds} rounds` : ''));
  const kvm = kvmUnusableReasons().length === 0;
  if (!kvm) notes.push(`KVM unusable: ${kvmUnusableReasons().join('; ')}`);
  for (round = 0; round < rounds; round++) {
    if (rounds > 1) console.log(`round ${round + 1} of ${rounds}`);
    await runRound(kvm);
  }
  // A note repeated by every round (a contender that is missing) is said once.
  const said = [...new Set(notes)];
  const missing = unavailable.filter((u, i) => unavailable.findIndex((v) => v.contender === u.contender && v.reason === u.reason) === i);
  if (only.size > 0) {
    // A partial run must not overwrite the report of a full one.
    const out = process.env.AIRLOCK_BENCH_OUT ?? join(root, 'out', 'bench-partial.json');
    writeFileSync(out, JSON.stringify({ groups: [...only], rounds, results, notes: said, unavailable: missing }, null, 2) + '\n');
    console.log(`partial run (${[...only].join(', ')}): wrote ${out}`);
    return;
  }
  writeReport(root, results, said, missing, kvm);
  console.log('wrote docs/BENCHMARKS.md and docs/benchmarks.json');
}

/** One pass over every wanted group and contender, in a fixed order. */
async function runRound(kvm: boolean): Promise<void> {
  if (kvm) {
    if (wants('exit-floor')) await guarded('raw-kvm', benchExitFloor);
    if (wants('exchange-floor')) await guarded('raw-kvm exchange floor', benchExchangeFloor);
    await guarded('airlock-kvm', () => benchAirlock('kvm'));
  }
  await guarded('airlock-wasm', () => benchAirlock('wasm'));
  const tiers: Backend[] = kvm ? ['kvm', 'wasm'] : ['wasm'];
  if (wants('templates')) await guarded('templates', () => benchTemplateGroup(tiers));
  if (wants('live-1000')) await guarded('live-1000', () => benchLive(tiers));
  if (wants('native')) await guarded('native-quickjs', benchNative);
  if (wants('emscripten') || wants('main-thread') || wants('throughput')) await guarded('quickjs-emscripten', benchEmscripten);
  if (wants('isolated-vm')) await guarded('isolated-vm', benchIsolatedVm);
}

// Node exits with code 0 when its event loop empties while main() still awaits (a
// promise nothing will settle): that must be a failure naming itself, not a silent
// run without a report.
let finished = false;
process.on('beforeExit', () => {
  if (finished) return;
  console.error('bench: the event loop emptied before the run finished (a call never settled); no report was written');
  process.exitCode = 1;
  finished = true;
});
main()
  .then(() => {
    finished = true;
  })
  .catch((e) => {
    finished = true;
    console.error(e);
    process.exitCode = 1;
  });
