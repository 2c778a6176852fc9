// run.ts — `just bench`: measures every contender side by side in one run on this
// machine and writes docs/BENCHMARKS.md and docs/benchmarks.json.
// Contenders: raw-kvm (the exit floor), airlock-kvm, airlock-wasm, native-quickjs (the
// same runtime and QuickJS built as a Linux program), quickjs-emscripten (npm, in-thread).
import { writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { SandboxBuilder, type LoadedJSSandbox } from '../../src/index.js';
import type { Backend } from '../../src/engine/engine.js';
import { loadAddon } from '../../src/engine/native.js';
import { kvmUnusableReasons } from '../../src/engine/probe.js';
import { collect, summarize, usSince, type Result } from './stats.js';
import { NativeGuest } from '../guest/driver.js';
import { emscriptenContender } from './quickjs-emscripten.js';
import { benchEventLoop } from './eventloop.js';

const root = join(__dirname, '..', '..');
const quick = process.env.AIRLOCK_BENCH_QUICK === '1';
const scale = (n: number) => (quick ? Math.max(3, Math.ceil(n / 10)) : n);
// AIRLOCK_BENCH_ONLY=calls,idle runs only those groups (a before/after comparison of
// one figure needs no full run): exit-floor, calls (per-tier call, host-call, restore,
// kill), create, snapshot, idle, eventloop, native, emscripten.
const only = new Set((process.env.AIRLOCK_BENCH_ONLY ?? '').split(',').filter(Boolean));
const wants = (group: string) => only.size === 0 || only.has(group);

const FIB = 'function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }\nfunction handler(e) { return fib(e.n); }';
const ECHO = 'function handler(e) { return e; }';

const results: Result[] = [];
const notes: string[] = [];

function record(r: Result): void {
  results.push(r);
  console.log(`  ${r.metric.padEnd(28)} ${r.contender.padEnd(20)} p50 ${r.p50.toFixed(3).padStart(10)}  p99 ${r.p99.toFixed(3).padStart(10)}  (n=${r.n})`);
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

async function benchAirlock(backend: Backend): Promise<void> {
  if (wants('calls')) await benchCalls(backend);
  if (wants('create')) await benchCreate(backend);
  if (wants('snapshot')) await benchSnapshot(backend);
  if (wants('idle')) await benchIdle(backend);
  if (wants('eventloop')) await benchEventLoop(backend, record, scale);
}

async function benchCalls(backend: Backend): Promise<void> {
  const contender = `airlock-${backend}`;
  const loaded = await loadAirlock(backend, { echo: ECHO, fib: FIB, spin: 'function handler() { for (;;) {} }', hostloop: 'import { echo } from "host:bench";\nfunction handler(e) { let v = 0; for (let i = 0; i < e.n; i++) v = echo(i); return v; }' }, (p) =>
    p.register('bench', 'echo', (x: unknown) => x),
  );
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
  c.context.dispose();
}

function p50(contender: string, metric: string): number | undefined {
  return results.find((r) => r.contender === contender && r.metric === metric)?.p50;
}

function ratio(a: [string, string], b: [string, string]): string {
  const x = p50(...a);
  const y = p50(...b);
  return x !== undefined && y !== undefined ? `${(x / y).toFixed(2)}×` : 'n/a';
}

function diff(a: [string, string], b: [string, string]): string {
  const x = p50(...a);
  const y = p50(...b);
  return x !== undefined && y !== undefined ? (x - y).toFixed(1) : 'n/a';
}

function writeReport(): void {
  writeFileSync(join(root, 'docs/benchmarks.json'), JSON.stringify({ results: results.map(({ contender, metric, p50, p99 }) => ({ contender, metric, p50, p99 })) }, null, 2) + '\n');
  const metrics = [...new Set(results.map((r) => r.metric))];
  const lines: string[] = [
    '# Benchmarks',
    '',
    `Measured by \`npx just bench\` (test/bench/run.ts) on ${new Date().toISOString().slice(0, 10)}: ${cpus().length} × ${cpus()[0]?.model ?? 'unknown CPU'}, Node ${process.version}, KVM ${kvmUnusableReasons().length === 0 ? 'usable (nested, PVM)' : 'unusable'}.`,
    'All contenders ran in the same process run, one after another. Lower is better; p50 and p99 over n samples.',
    '',
    '| metric | contender | p50 | p99 | n |',
    '|---|---|---:|---:|---:|',
  ];
  for (const m of metrics) {
    for (const r of results.filter((x) => x.metric === m)) {
      lines.push(`| ${m} | ${r.contender} | ${r.p50.toFixed(3)} | ${r.p99.toFixed(3)} | ${r.n} |`);
    }
  }
  lines.push(
    '',
    '## Ratios (p50)',
    '',
    '| ratio | value | target |',
    '|---|---:|---|',
    `| airlock-kvm host_call_roundtrip − raw-kvm exit_floor (µs) | ${diff(['airlock-kvm', 'host_call_roundtrip_us'], ['raw-kvm', 'exit_floor_us'])} | ≤ 25 µs |`,
    `| airlock-kvm compute_fib27 / native-quickjs | ${ratio(['airlock-kvm', 'compute_fib27_ms'], ['native-quickjs', 'compute_fib27_ms'])} | ≤ 1.15× |`,
    `| airlock-kvm call_roundtrip / raw-kvm exit_floor | ${ratio(['airlock-kvm', 'call_roundtrip_us'], ['raw-kvm', 'exit_floor_us'])} | ≤ 1.5× |`,
    `| airlock-kvm call_roundtrip (gc: false) / raw-kvm exit_floor | ${ratio(['airlock-kvm', 'call_roundtrip_nogc_us'], ['raw-kvm', 'exit_floor_us'])} | |`,
    `| airlock-kvm call_roundtrip_spaced (guest parked) / raw-kvm exit_floor | ${ratio(['airlock-kvm', 'call_roundtrip_spaced_us'], ['raw-kvm', 'exit_floor_us'])} | |`,
    `| airlock-wasm call_roundtrip / quickjs-emscripten | ${ratio(['airlock-wasm', 'call_roundtrip_us'], ['quickjs-emscripten', 'call_roundtrip_us'])} | ≤ 2× |`,
    `| airlock-wasm call_roundtrip (gc: false) / quickjs-emscripten | ${ratio(['airlock-wasm', 'call_roundtrip_nogc_us'], ['quickjs-emscripten', 'call_roundtrip_us'])} | |`,
    `| airlock-wasm compute_fib27 / quickjs-emscripten | ${ratio(['airlock-wasm', 'compute_fib27_ms'], ['quickjs-emscripten', 'compute_fib27_ms'])} | ≤ 1.1× |`,
    `| airlock-kvm restore with 1 GiB heap / with 64 MiB heap | ${ratio(['airlock-kvm', 'restore_1gib_heap_us'], ['airlock-kvm', 'restore_us'])} | ~1× (cost independent of configured size) |`,
    `| airlock-kvm idle_cpu_ms (10 idle sandboxes, 1 s) | ${p50('airlock-kvm', 'idle_cpu_ms')?.toFixed(1) ?? 'n/a'} | ≤ 5 ms |`,
    `| airlock-wasm idle_cpu_ms (10 idle sandboxes, 1 s) | ${p50('airlock-wasm', 'idle_cpu_ms')?.toFixed(1) ?? 'n/a'} | ≤ 5 ms |`,
    `| airlock-kvm call after a snapshot / without one | ${ratio(['airlock-kvm', 'call_after_snapshot_us'], ['airlock-kvm', 'call_without_snapshot_us'])} | ~1× (snapshots do not slow calls) |`,
    '',
    '## What each metric measures',
    '',
    '- `exit_floor_us`: one guest exit round trip (ring-3 `out`, KVM_RUN returns, KVM_RUN again) in a bare VM, timed off the JS thread by the addon. The floor under any call.',
    '- `call_roundtrip_us`: `callHandler()` of a handler returning its event, from the host and back, back to back, default options (the guest GC runs after each call, as in the mirrored API); `call_roundtrip_nogc_us` the same with `{ gc: false }`. quickjs-emscripten: JSON in, handler call, JSON out, on the calling thread. On KVM a guest polls for a short, adaptive window after answering and the main thread hands the next request over in guest memory, so back-to-back calls make no VM exit (docs/PROTOCOL.md, "Polling"); that is why they can beat the exit floor.',
    '- `call_roundtrip_spaced_us`: the same call made 2 ms after the previous one (default options). On KVM the guest has parked by then: the call wakes the vCPU thread, enters the guest and gets its answer through one exit.',
    '- `host_call_roundtrip_us`: per call of a synchronous host function returning its argument, from a handler making 100 of them, with the bare handler call subtracted.',
    '- `create_to_first_result_ms`: build → loadRuntime → addHandler → getLoadedSandbox → first callHandler, 40 sandboxes back to back (disposed in fours); `create_to_first_result_paced_ms` the same with one sandbox every 50 ms.',
    '- `compute_fib27_ms`: a handler computing fib(27) recursively; native-quickjs is the same runtime and QuickJS built as a Linux program, driven over a pipe.',
    '- `restore_us`: restore() right after a trivial call (default options); `restore_idle_us`: restore() with nothing changed since the last one; `restore_1gib_heap_us`: `restore_us` in a sandbox built with a 1 GiB heap.',
    '- `call_without_snapshot_us` / `call_after_snapshot_us`: the trivial call (`gc: false`) in two identical 1 GiB-heap sandboxes, one of which has a snapshot taken, called alternately.',
    '- `kill_latency_ms`: from `interruptHandle.kill()` to the rejected call, the guest spinning in `for(;;){}`.',
    '- `idle_cpu_ms`: 10 sandboxes, one call each, 300 ms to settle, then the CPU time (user + system) of the whole process over the next second. An idle sandbox must cost nothing; the target is ≤ 5 ms.',
  );
  if (notes.length) lines.push('', '## Notes from this run', '', ...notes.map((n) => `- ${n}`));
  writeFileSync(join(root, 'docs/BENCHMARKS.md'), lines.join('\n') + '\n');
}

async function main(): Promise<void> {
  console.log('Airlock benchmarks' + (quick ? ' (quick)' : ''));
  const kvm = kvmUnusableReasons().length === 0;
  if (kvm) {
    if (wants('exit-floor')) await guarded('raw-kvm', benchExitFloor);
    await guarded('airlock-kvm', () => benchAirlock('kvm'));
  } else {
    notes.push(`KVM unusable: ${kvmUnusableReasons().join('; ')}`);
  }
  await guarded('airlock-wasm', () => benchAirlock('wasm'));
  if (wants('native')) await guarded('native-quickjs', benchNative);
  if (wants('emscripten')) await guarded('quickjs-emscripten', benchEmscripten);
  if (only.size > 0) {
    // A partial run must not overwrite the report of a full one.
    const out = join(root, 'out', 'bench-partial.json');
    writeFileSync(out, JSON.stringify({ groups: [...only], results }, null, 2) + '\n');
    console.log(`partial run (${[...only].join(', ')}): wrote ${out}`);
    return;
  }
  writeReport();
  console.log('wrote docs/BENCHMARKS.md and docs/benchmarks.json');
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
