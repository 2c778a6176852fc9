// report.ts — docs/BENCHMARKS.md and docs/benchmarks.json from one run's results (one
// or more rounds, each a pass over every contender): the table, the ratios issue #10 sets as targets, the figures issues #12 and #13 set, what each metric measures, the run's
// notes, and the hand-written sections kept from the previous file (from the first
// "## Before and after" heading on: ab.sh comparisons).
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import type { Result } from './stats.js';

export interface Unavailable {
  contender: string;
  metrics: string[];
  reason: string;
}

export function writeReport(root: string, results: readonly Result[], notes: readonly string[], unavailable: readonly Unavailable[], kvmUsable: boolean): void {
  const rounds = [...new Set(results.map((r) => r.round ?? 0))].sort((a, b) => a - b);
  const perRound = (contender: string, metric: string) =>
    rounds.map((k) => results.find((r) => r.contender === contender && r.metric === metric && (r.round ?? 0) === k));
  const merged = mergeRounds(results);
  writeFileSync(
    join(root, 'docs/benchmarks.json'),
    JSON.stringify(
      {
        rounds: rounds.length,
        results: merged.map(({ contender, metric, p50, p99 }) => ({ contender, metric, p50, p99 })),
        ...(rounds.length > 1 ? { perRound: results.map(({ contender, metric, p50, p99, n, round }) => ({ round: round ?? 0, contender, metric, p50, p99, n })) } : {}),
        unavailable,
      },
      null,
      2,
    ) + '\n',
  );

  // Every figure below is computed per round, then given as its median over the rounds
  // with the range (min–max) when there was more than one.
  const values = (c: string, m: string, pct: 'p50' | 'p99') => perRound(c, m).map((r) => r?.[pct]);
  const both = (x: (number | undefined)[], y: (number | undefined)[], f: (a: number, b: number) => number) =>
    x.flatMap((a, i) => (a !== undefined && y[i] !== undefined ? [f(a, y[i]!)] : []));
  const ratio = (a: [string, string], b: [string, string]) => spread(both(values(...a, 'p50'), values(...b, 'p50'), (x, y) => x / y), 2, '×');
  const diff = (a: [string, string], b: [string, string]) => spread(both(values(...a, 'p50'), values(...b, 'p50'), (x, y) => x - y), 1);
  const present = (v: (number | undefined)[]) => v.filter((x): x is number => x !== undefined);
  const p50 = (c: string, m: string, digits = 1) => spread(present(values(c, m, 'p50')), digits);
  const p99 = (c: string, m: string, digits = 1) => spread(present(values(c, m, 'p99')), digits);

  const metrics = [...new Set([...merged.map((r) => r.metric), ...unavailable.flatMap((u) => u.metrics)])];
  const lines: string[] = [
    '# Benchmarks',
    '',
    `Measured by \`npx just bench\` (test/bench/run.ts) on ${new Date().toISOString().slice(0, 10)}: ${cpus().length} × ${cpus()[0]?.model ?? 'unknown CPU'}, Node ${process.version}, KVM ${kvmUsable ? 'usable (nested, PVM)' : 'unusable'}.`,
    'All contenders ran in the same run, one after another (isolated-vm in a child process started with `--no-node-snapshot`). Lower is better except for `throughput_*`; p50 and p99 over n samples.',
    ...(rounds.length > 1
      ? [
          '',
          `The run made ${rounds.length} rounds: each round measured every group and contender in turn, so contenders are interleaved in time. The table gives the median over the rounds of each round's p50 and p99 (n counts every round's samples) and the range of the rounds' p50s; the ratios and figures below are computed within each round and given as their median over the rounds, with the range in brackets.`,
        ]
      : []),
    '',
    ...(rounds.length > 1 ? ['| metric | contender | p50 | p99 | n | p50 range over rounds |', '|---|---|---:|---:|---:|---|'] : ['| metric | contender | p50 | p99 | n |', '|---|---|---:|---:|---:|']),
  ];
  for (const m of metrics) {
    for (const r of merged.filter((x) => x.metric === m)) {
      const range = rounds.length > 1 ? ` ${minMax(present(values(r.contender, m, 'p50')), 3)} |` : '';
      lines.push(`| ${m} | ${r.contender} | ${r.p50.toFixed(3)} | ${r.p99.toFixed(3)} | ${r.n} |${range}`);
    }
    for (const u of unavailable.filter((x) => x.metrics.includes(m))) lines.push(`| ${m} | ${u.contender} | unavailable | | |${rounds.length > 1 ? ' |' : ''}`);
  }
  const K = 'airlock-kvm';
  const W = 'airlock-wasm';
  const E = 'quickjs-emscripten';
  lines.push(
    '',
    '## Ratios (p50 unless noted)',
    '',
    'Targets from issue #10 ("Figures to reach") and earlier issues; a ratio is what counts, since this host is shared and nested.',
    '',
    '| ratio | value | target |',
    '|---|---:|---|',
    `| raw-kvm exchange_floor − exit_floor (µs) | ${diff(['raw-kvm', 'exchange_floor_us'], ['raw-kvm', 'exit_floor_us'])} | (the guest's own work per call) |`,
    `| airlock-kvm call_roundtrip_split_cores / raw-kvm exit_floor | ${ratio([K, 'call_roundtrip_split_cores_us'], ['raw-kvm', 'exit_floor_us'])} | ≤ 1.2× |`,
    `| airlock-kvm call_roundtrip_nogc / raw-kvm exit_floor | ${ratio([K, 'call_roundtrip_nogc_us'], ['raw-kvm', 'exit_floor_us'])} | ≤ 1.2× |`,
    `| airlock-kvm call_roundtrip_same_core − raw-kvm exchange_floor (µs) | ${diff([K, 'call_roundtrip_same_core_us'], ['raw-kvm', 'exchange_floor_us'])} | ≤ 15 µs |`,
    `| airlock-kvm same core: main_thread_cpu_same_core (µs) | ${p50(K, 'main_thread_cpu_same_core_us_per_call')} | (the main thread's share of the same-core round trip) |`,
    `| airlock-kvm same core: other_threads_cpu_same_core − raw-kvm exchange_floor (µs) | ${diff([K, 'other_threads_cpu_same_core_us_per_call'], ['raw-kvm', 'exchange_floor_us'])} | (the runner's own work beyond the floor) |`,
    `| airlock-kvm main_thread_cpu_same_core − main_thread_cpu_split_cores (µs) | ${diff([K, 'main_thread_cpu_same_core_us_per_call'], [K, 'main_thread_cpu_split_cores_us_per_call'])} | (the same JavaScript, after the guest ran on its CPU) |`,
    `| airlock-wasm main_thread_cpu_same_core − main_thread_cpu_split_cores (µs) | ${diff([W, 'main_thread_cpu_same_core_us_per_call'], [W, 'main_thread_cpu_split_cores_us_per_call'])} | |`,
    `| airlock-kvm call_roundtrip / isolated-vm-async call_roundtrip | ${ratio([K, 'call_roundtrip_us'], ['isolated-vm-async', 'call_roundtrip_us'])} | ≤ 1× |`,
    `| airlock-wasm call_roundtrip / isolated-vm-async call_roundtrip | ${ratio([W, 'call_roundtrip_us'], ['isolated-vm-async', 'call_roundtrip_us'])} | |`,
    `| airlock-kvm call_roundtrip / raw-kvm exit_floor | ${ratio([K, 'call_roundtrip_us'], ['raw-kvm', 'exit_floor_us'])} | ≤ 1.5× |`,
    `| airlock-kvm call_roundtrip_spaced (guest parked) / raw-kvm exit_floor | ${ratio([K, 'call_roundtrip_spaced_us'], ['raw-kvm', 'exit_floor_us'])} | |`,
    `| airlock-kvm main_thread_cpu_us_per_call (µs) | ${p50(K, 'main_thread_cpu_us_per_call')} | ≤ 15 µs |`,
    `| airlock-wasm main_thread_cpu_us_per_call (µs) | ${p50(W, 'main_thread_cpu_us_per_call')} | ≤ 15 µs |`,
    `| airlock-kvm throughput_2 / throughput_1 | ${ratio([K, 'throughput_2_per_s'], [K, 'throughput_1_per_s'])} | ≥ 1.7× |`,
    `| airlock-kvm throughput_8 / throughput_2 | ${ratio([K, 'throughput_8_per_s'], [K, 'throughput_2_per_s'])} | ≥ 1× |`,
    `| airlock-wasm throughput_2 / throughput_1 | ${ratio([W, 'throughput_2_per_s'], [W, 'throughput_1_per_s'])} | |`,
    `| airlock-wasm throughput_8 / throughput_2 | ${ratio([W, 'throughput_8_per_s'], [W, 'throughput_2_per_s'])} | ≥ 1× |`,
    `| airlock-kvm event_loop_gap_calls p99 (ms) | ${p99(K, 'event_loop_gap_calls_ms')} | ≤ 20 ms |`,
    `| airlock-wasm event_loop_gap_calls p99 (ms) | ${p99(W, 'event_loop_gap_calls_ms')} | ≤ 20 ms |`,
    `| airlock-kvm event_loop_gap_hostcalls p99 (ms) | ${p99(K, 'event_loop_gap_hostcalls_ms')} | ≤ 20 ms |`,
    `| airlock-wasm event_loop_gap_hostcalls p99 (ms) | ${p99(W, 'event_loop_gap_hostcalls_ms')} | ≤ 20 ms |`,
    `| airlock-kvm host_call_roundtrip − raw-kvm exchange_floor (µs) | ${diff([K, 'host_call_roundtrip_us'], ['raw-kvm', 'exchange_floor_us'])} | ≤ 15 µs |`,
    `| airlock-kvm host_call_roundtrip − raw-kvm exit_floor (µs) | ${diff([K, 'host_call_roundtrip_us'], ['raw-kvm', 'exit_floor_us'])} | ≤ 25 µs |`,
    `| airlock-kvm call_roundtrip_live_heap / call_roundtrip | ${ratio([K, 'call_roundtrip_live_heap_us'], [K, 'call_roundtrip_us'])} | ≤ 2× |`,
    `| airlock-wasm call_roundtrip_live_heap / call_roundtrip | ${ratio([W, 'call_roundtrip_live_heap_us'], [W, 'call_roundtrip_us'])} | ≤ 2× |`,
    `| airlock-kvm compute_fib27 / native-quickjs | ${ratio([K, 'compute_fib27_ms'], ['native-quickjs', 'compute_fib27_ms'])} | ≤ 1.15× |`,
    `| airlock-wasm call_roundtrip / quickjs-emscripten | ${ratio([W, 'call_roundtrip_us'], ['quickjs-emscripten', 'call_roundtrip_us'])} | ≤ 2× |`,
    `| airlock-wasm call_roundtrip (gc: false) / quickjs-emscripten | ${ratio([W, 'call_roundtrip_nogc_us'], ['quickjs-emscripten', 'call_roundtrip_us'])} | |`,
    `| airlock-wasm compute_fib27 / quickjs-emscripten | ${ratio([W, 'compute_fib27_ms'], ['quickjs-emscripten', 'compute_fib27_ms'])} | ≤ 1.1× |`,
    `| airlock-kvm restore with 1 GiB heap / with 64 MiB heap | ${ratio([K, 'restore_1gib_heap_us'], [K, 'restore_us'])} | ~1× (cost independent of configured size) |`,
    `| airlock-kvm idle_cpu_ms (10 idle sandboxes, 1 s) | ${p50(K, 'idle_cpu_ms')} | ≤ 5 ms |`,
    `| airlock-wasm idle_cpu_ms (10 idle sandboxes, 1 s) | ${p50(W, 'idle_cpu_ms')} | ≤ 5 ms |`,
    `| airlock-kvm call after a snapshot / without one | ${ratio([K, 'call_after_snapshot_us'], [K, 'call_without_snapshot_us'])} | ~1× (snapshots do not slow calls) |`,
    '',
    '## Targets of issues #12 and #13 (p50 unless noted)',
    '',
    '| figure | value | target |',
    '|---|---:|---|',
    `| airlock-kvm create_from_template (ms) | ${p50(K, 'create_from_template_ms', 3)} | ≤ 0.5 ms |`,
    `| airlock-kvm create_from_template p99 (ms) | ${p99(K, 'create_from_template_ms', 3)} | ≤ 3 ms |`,
    `| airlock-kvm create_from_template / quickjs-emscripten new context | ${ratio([K, 'create_from_template_ms'], [E, 'create_from_template_ms'])} | ≤ 1× |`,
    `| airlock-wasm create_from_template (ms) | ${p50(W, 'create_from_template_ms', 3)} | |`,
    `| airlock-kvm create_from_template_to_result (ms) | ${p50(K, 'create_from_template_to_result_ms', 3)} | |`,
    `| airlock-kvm pool_acquire_to_result (ms) | ${p50(K, 'pool_acquire_to_result_ms', 3)} | |`,
    `| airlock-kvm pss_per_idle_sandbox (MiB) | ${p50(K, 'pss_per_idle_sandbox_mib', 2)} | ≤ 2.5 MiB |`,
    `| airlock-wasm pss_per_idle_sandbox (MiB) | ${p50(W, 'pss_per_idle_sandbox_mib', 2)} | |`,
    `| quickjs-emscripten / isolated-vm-async pss_per_idle_sandbox (MiB) | ${p50(E, 'pss_per_idle_sandbox_mib', 2)} / ${p50('isolated-vm-async', 'pss_per_idle_sandbox_mib', 2)} | |`,
    `| airlock-kvm live_1000_pss (GiB) | ${p50(K, 'live_1000_pss_gib', 2)} | ≤ 3 GiB |`,
    `| airlock-kvm live_1000_threads (Airlock's) | ${p50(K, 'live_1000_threads', 0)} | ≤ 64 |`,
    `| airlock-kvm live_1000_kvm_threads (KVM's per-VM kernel threads) | ${p50(K, 'live_1000_kvm_threads', 0)} | (reported apart) |`,
    `| airlock-kvm live_1000_kernel (MiB of unreclaimable kernel memory, machine-wide) | ${p50(K, 'live_1000_kernel_mib', 0)} | (not in PSS) |`,
    `| airlock-kvm live_1000_create (s) | ${p50(K, 'live_1000_create_s', 2)} | ≤ 2 s |`,
    `| airlock-kvm restore_and_call_128mib / restore_and_call_1mib | ${ratio([K, 'restore_and_call_128mib_us'], [K, 'restore_and_call_1mib_us'])} | ≤ 2× |`,
    `| airlock-kvm restore_and_call_128mib (µs) | ${p50(K, 'restore_and_call_128mib_us')} | ≤ 300 µs |`,
    `| airlock-wasm restore_and_call_128mib / restore_and_call_1mib | ${ratio([W, 'restore_and_call_128mib_us'], [W, 'restore_and_call_1mib_us'])} | |`,
    `| airlock-kvm snapshot_load (ms) | ${p50(K, 'snapshot_load_ms', 2)} | |`,
    `| airlock-kvm concurrent_host_calls (ms) | ${p50(K, 'concurrent_host_calls_ms')} | ≤ 60 ms |`,
    `| airlock-wasm concurrent_host_calls (ms) | ${p50(W, 'concurrent_host_calls_ms')} | ≤ 60 ms |`,
    `| airlock-kvm timer_wakeup overshoot (µs) | ${p50(K, 'timer_wakeup_us')} | ≤ 200 µs |`,
    `| airlock-wasm timer_wakeup overshoot (µs) | ${p50(W, 'timer_wakeup_us')} | ≤ 200 µs |`,
    `| airlock-kvm timer_sleep_cpu (µs of guest CPU in a 20 ms sleep) | ${p50(K, 'timer_sleep_cpu_us')} | ≈ 0 |`,
    `| airlock-wasm timer_sleep_cpu (µs of guest CPU in a 20 ms sleep) | ${p50(W, 'timer_sleep_cpu_us')} | ≈ 0 |`,
    `| airlock-kvm timer_sleep_cpu_per_ms (µs of guest CPU per ms slept, 200 ms vs 20 ms) | ${p50(K, 'timer_sleep_cpu_per_ms_us', 2)} | ≈ 0 |`,
    `| airlock-wasm timer_sleep_cpu_per_ms (µs of guest CPU per ms slept, 200 ms vs 20 ms) | ${p50(W, 'timer_sleep_cpu_per_ms_us', 2)} | ≈ 0 |`,
    // The compile group (compiled-code cache, issue #13) fills these when it runs.
    `| airlock-kvm compile_250k_cached / compile_250k_first | ${ratio([K, 'compile_250k_cached_ms'], [K, 'compile_250k_first_ms'])} | ≤ 0.1× |`,
    `| airlock-wasm compile_250k_cached / compile_250k_first | ${ratio([W, 'compile_250k_cached_ms'], [W, 'compile_250k_first_ms'])} | ≤ 0.1× |`,
    '',
    '## What each metric measures',
    '',
    '- `exit_floor_us`: one guest exit round trip (ring-3 `out`, KVM_RUN returns, KVM_RUN again) in a bare VM, timed off the JS thread by the addon. The floor under any call.',
    '- `exchange_floor_us` (contender `raw-kvm`): the real guest image (booted as a sandbox boots it, exit mode, no polling) answering a trivial CALL of a handler returning its event, without GC: the request written into guest memory, one KVM_RUN issued by the measuring thread itself (a worker thread of the addon doing nothing else), the answer copied out. No hand-off between threads: the floor under a call that enters the guest.',
    '- `call_roundtrip_us`: `callHandler()` of a handler returning its event, from the host and back, back to back, default options (the mirrored API\'s post-call GC policy); `call_roundtrip_nogc_us` the same with `{ gc: false }`. quickjs-emscripten: JSON in, handler call, JSON out, on the calling thread; isolated-vm the same through a `Reference` to a function doing JSON.parse, the handler and JSON.stringify, with `apply` (`isolated-vm-async`: the isolate runs on isolated-vm\'s threads) or `applySync` (`isolated-vm-sync`: on the main thread).',
    '- `call_roundtrip_same_core_us`: `call_roundtrip_us` with every thread of the process (main thread, the KVM runner threads `airlock-run-N` or WebAssembly worker thread, Node\'s own helpers) pinned to one CPU. `call_roundtrip_split_cores_us`: the sandbox\'s threads on a second CPU, the main thread and the rest of the process on the first. The bench pins with sched_setaffinity (`taskset -p` per thread id from /proc/self/task) from inside its own process, pins every thread of the process to the first CPU, creates the sandbox (threads started later inherit their creator\'s CPUs), and for the split moves the one thread carrying the sandbox\'s calls to the second CPU: the thread other than the main one whose CPU time grows most over 200 calls (on KVM among those named `airlock-run-N`; on WebAssembly it is the worker, which the tier\'s pool may have started earlier). The process is set free again after the sandbox is disposed.',
    '- `call_roundtrip_spaced_us`: the same call made 2 ms after the previous one (default options). On KVM the guest has parked by then: the call enters it and gets its answer through one exit.',
    '- `call_roundtrip_live_heap_us`: `call_roundtrip_us` into a sandbox whose handler module keeps 10,000 objects alive (default options, so the post-call GC policy meets a live heap).',
    '- `main_thread_cpu_same_core_us_per_call`, `main_thread_cpu_split_cores_us_per_call`: the main thread\'s CPU per call (as `main_thread_cpu_us_per_call`, 2,000 calls per round, 5 rounds) under the placement of `call_roundtrip_same_core_us` / `call_roundtrip_split_cores_us`, on the same sandbox right after it; `other_threads_cpu_…`: the CPU of every other thread of the process over the same calls (the runner or worker thread carrying them, Node\'s helpers), per call. Together they say where a round trip\'s time goes.',
    '- `main_thread_cpu_us_per_call`: the Node main thread\'s own CPU time (schedstat of /proc/self/task/<pid>, read after a 2 ms sleep so the kernel has brought it up to date) over 2,000 back-to-back default calls, divided by 2,000; p50/p99 over 10 rounds. Work on the vCPU, worker or isolated-vm threads is not counted.',
    '- `throughput_1_per_s`, `throughput_2_per_s`, `throughput_8_per_s`: calls per second (higher is better) with 1, 2 or 8 sandboxes, each called back to back in its own loop, all loops at once for 1 s, threads free to use every CPU; p50/p99 over 5 rounds. quickjs-emscripten calls on the main thread, so its loops take turns.',
    '- `event_loop_gap_calls_ms`: the gaps between ticks of a 1 ms `setInterval` (from the loop\'s start to its end, so an interval that never fires is one gap as long as the loop) during 2 s of back-to-back default calls; `event_loop_gap_hostcalls_ms` the same while every call makes 1,000 synchronous host calls (a host-call storm). Synchronous in-thread contenders (quickjs-emscripten, isolated-vm-sync) block the event loop for their whole loop by construction and are not measured; isolated-vm-async is measured during calls only (no host functions).',
    '- `host_call_roundtrip_us`: per call of a synchronous host function returning its argument, from a handler making 100 of them, with the bare handler call subtracted.',
    '- `create_to_first_result_ms`: build → loadRuntime → addHandler → getLoadedSandbox → first callHandler, 40 sandboxes back to back (disposed in fours); `create_to_first_result_paced_ms` the same with one sandbox every 50 ms. isolated-vm: new Isolate, context, handler script, first call, dispose.',
    '- `compute_fib27_ms`: a handler computing fib(27) recursively; native-quickjs is the same runtime and QuickJS built as a Linux program, driven over a pipe.',
    '- `restore_us`: restore() right after a trivial call (default options); `restore_idle_us`: restore() with nothing changed since the last one; `restore_1gib_heap_us`: `restore_us` in a sandbox built with a 1 GiB heap.',
    '- `call_without_snapshot_us` / `call_after_snapshot_us`: the trivial call (`gc: false`) in two identical 1 GiB-heap sandboxes, one of which has a snapshot taken, called alternately.',
    '- `kill_latency_ms`: from `interruptHandle.kill()` to the rejected call, the guest spinning in `for(;;){}`.',
    '- `create_from_template_ms`: a sandbox cloned from a snapshot of a loaded sandbox through the public API, `new SandboxBuilder().buildFromSnapshot(snapshot)` then `restoreLoadedSandbox()` (on KVM the clone maps the template copy-on-write; on WebAssembly its memory is copied into a pooled worker\'s instance); `create_from_template_to_result_ms` adds the clone\'s first `callHandler()`. Clones disposed in fours, untimed. quickjs-emscripten: `newContext()` with the handler evaluated (and its first call). Each round times every contender once, the order rotating.',
    '- `pool_acquire_to_result_ms`: `SandboxPool.call()` of a tenant whose clone is warm and idle (the handler loaded in the snapshot).',
    '- `pss_per_idle_sandbox_mib`: the growth of the process\'s PSS (/proc/self/smaps_rollup, so pages shared copy-on-write count once) over 100 live sandboxes that each made one call, 300 ms after the last, divided by 100; 3 rounds. Clones of one template on the Airlock tiers; quickjs-emscripten contexts in its one module; isolated-vm isolates (in its child process).',
    '- `live_1000_create_s`, `live_1000_pss_gib`, `live_1000_threads`, `live_1000_kvm_threads`, `live_1000_kernel_mib`: in a child process, 1,000 clones of one template made back to back (the template and one clone made before, untimed); then one call each, 500 ms to settle, the whole process\'s PSS (Node\'s own included), the threads the process gained other than KVM\'s, and KVM\'s per-VM kernel threads (`kvm-*` in /proc/self/task); `live_1000_kernel_mib` the growth of the machine\'s unreclaimable kernel memory (SUnreclaim, PageTables, SecPageTables, KernelStack of /proc/meminfo: KVM\'s structures and page tables, which PSS leaves out), so other processes add noise to it. The WebAssembly tier runs 100 (`live_100_*`) unless AIRLOCK_BENCH_LIVE_WASM is set. One sample each.',
    '- `restore_and_call_1mib_us`, `restore_and_call_128mib_us`: a sandbox (512 MiB heap) whose handler module keeps 1 or 128 MiB alive in filled 1 MiB arrays; after a call that writes a few pages, `restore()` plus the next call, timed together.',
    '- `snapshot_load_ms`: `Snapshot.load()` of a saved tag (every blob\'s digest verified) and its first clone (`buildFromSnapshot` → `restoreLoadedSandbox`), a new Snapshot object each time.',
    '- `concurrent_host_calls_ms`: a handler awaiting `Promise.all` of three async host calls that each take 50 ms on the host.',
    '- `timer_wakeup_us`: a handler\'s `await new Promise((r) => setTimeout(r, 1))`, the overshoot past 1 ms by the guest\'s own clock; `timer_sleep_cpu_us`: the guest CPU time of a call sleeping 20 ms less that of a trivial call (the fixed cost of one sleep: its exit and re-entry, and the colder run after it); `timer_sleep_cpu_per_ms_us`: a 200 ms sleep\'s guest CPU less the 20 ms sleep\'s, per millisecond of the difference, i.e. what waiting itself is charged.',
    '- `idle_cpu_ms`: 10 sandboxes, one call each, 300 ms to settle, then the CPU time (user + system) of the whole process over the next second. An idle sandbox must cost nothing; the target is ≤ 5 ms.',
  );
  if (notes.length) lines.push('', '## Notes from this run', '', ...notes.map((n) => `- ${n}`));
  const file = join(root, 'docs/BENCHMARKS.md');
  const kept = keptSections(existsSync(file) ? readFileSync(file, 'utf8') : '');
  writeFileSync(file, lines.join('\n') + '\n' + (kept ? '\n' + kept : ''));
}

/** One result per contender and metric: the median over the rounds of each round's p50 and p99. */
function mergeRounds(results: readonly Result[]): Result[] {
  const byKey = new Map<string, Result[]>();
  for (const r of results) {
    const key = `${r.contender}\u0000${r.metric}`;
    byKey.set(key, [...(byKey.get(key) ?? []), r]);
  }
  return [...byKey.values()].map((rs) => ({
    contender: rs[0].contender,
    metric: rs[0].metric,
    p50: median(rs.map((r) => r.p50)),
    p99: median(rs.map((r) => r.p99)),
    n: rs.reduce((sum, r) => sum + r.n, 0),
  }));
}

function median(v: readonly number[]): number {
  const sorted = [...v].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function minMax(v: readonly number[], digits: number): string {
  return v.length ? `${Math.min(...v).toFixed(digits)}–${Math.max(...v).toFixed(digits)}` : 'n/a';
}

/** A figure from each round: 'n/a' when none, the value alone for one round, else the median with the range. */
function spread(v: readonly number[], digits: number, unit = ''): string {
  if (v.length === 0) return 'n/a';
  const mid = `${median(v).toFixed(digits)}${unit}`;
  return v.length === 1 ? mid : `${mid} (${minMax(v, digits)})`;
}

/** The previous file from its first "## Before and after" heading on ('' when none). */
function keptSections(previous: string): string {
  const at = previous.search(/^## Before and after/m);
  return at < 0 ? '' : previous.slice(at).replace(/\n*$/, '\n');
}
