// eventloop.ts — the guest event-loop group of `just bench` (AIRLOCK_BENCH_ONLY=guest-eventloop):
// concurrent async host calls, timer wake-up overshoot, and guest CPU while sleeping
// (less a trivial call, and less a blocking host call that takes as long), and the guest
// CPU a sleep adds per millisecond it lasts.
// Also runs alone: npx tsx test/bench/eventloop.ts [kvm|wasm]
import { SandboxBuilder } from '../../src/index.js';
import type { Backend } from '../../src/engine/engine.js';
import { collect, summarize, type Result } from './stats.js';

const HANDLERS = {
  concurrent: `import { io } from 'host:bench?async';
    export default async function () { await Promise.all([io(), io(), io()]); }`,
  // The overshoot past 1 ms, measured by the guest's own clock, in microseconds.
  wakeup: `export default async function () {
      const t0 = performance.now();
      await new Promise((r) => setTimeout(r, 1));
      return (performance.now() - t0 - 1) * 1000;
    }`,
  sleep20: 'export default async function () { await new Promise((r) => setTimeout(r, 20)); }',
  sleep200: 'export default async function () { await new Promise((r) => setTimeout(r, 200)); }',
  // The same 20 ms spent in one blocking host call: what any host call of that length
  // costs the guest (its exit and re-entry, and the slower run of a guest whose host
  // went idle), to tell the timer's own cost from it.
  hostWait20: `import { wait20 } from 'host:bench'; export default function () { wait20(); }`,
  trivial: 'export default function () {}',
};

/** Runs the group on one tier; `scale` shrinks sample counts for a quick run. */
export async function benchEventLoop(backend: Backend, record: (r: Result) => void, scale: (n: number) => number = (n) => n): Promise<void> {
  const contender = `airlock-${backend}`;
  const proto = await new SandboxBuilder().setBackend(backend).build();
  proto.hostModule('bench').register('io', () => new Promise((r) => setTimeout(r, 50)));
  proto.hostModule('bench').register('wait20', () => new Promise((r) => setTimeout(r, 20)));
  const js = await proto.loadRuntime();
  for (const [k, v] of Object.entries(HANDLERS)) js.addHandler(k, v);
  const loaded = await js.getLoadedSandbox();
  try {
    record(summarize(contender, 'concurrent_host_calls_ms', await collect(scale(30), 3, async () => {
      const t = performance.now();
      await loaded.callHandler('concurrent', {});
      return performance.now() - t;
    })));
    record(summarize(contender, 'timer_wakeup_us', await collect(scale(300), 20, async () => (await loaded.callHandler('wakeup', {})) as number)));
    // Guest CPU of a call that sleeps 20 ms, less that of a trivial call: the sleep's own
    // cost (a cpuTimeoutMs makes the WebAssembly tier measure CPU time too).
    const cpu = async (name: string) => {
      await loaded.callHandler(name, {}, { cpuTimeoutMs: 1000 });
      return (loaded.lastCallStats?.cpuTimeMs ?? NaN) * 1000;
    };
    const trivial = summarize(contender, 'x', await collect(scale(100), 10, () => cpu('trivial'))).p50;
    const sleeps = await collect(scale(50), 3, () => cpu('sleep20'));
    record(summarize(contender, 'timer_sleep_cpu_us', sleeps.map((us) => us - trivial)));
    // What waiting itself costs: the guest CPU a sleep adds per millisecond it lasts
    // (200 ms against 20 ms), apart from the fixed cost of going to sleep and waking.
    const sleep20 = summarize(contender, 'x', sleeps).p50;
    const longSleeps = await collect(scale(15), 2, () => cpu('sleep200'));
    record(summarize(contender, 'timer_sleep_cpu_per_ms_us', longSleeps.map((us) => (us - sleep20) / 180)));
    const hostWait = summarize(contender, 'x', await collect(scale(50), 3, () => cpu('hostWait20'))).p50;
    record(summarize(contender, 'timer_sleep_cpu_over_host_call_us', sleeps.map((us) => us - hostWait)));
  } finally {
    await loaded.dispose();
  }
}

if (require.main === module) {
  const tiers = (process.argv[2] ? [process.argv[2]] : ['kvm', 'wasm']) as Backend[];
  const print = (r: Result) => console.log(`  ${r.metric.padEnd(28)} ${r.contender.padEnd(14)} p50 ${r.p50.toFixed(3).padStart(10)}  p99 ${r.p99.toFixed(3).padStart(10)}  (n=${r.n})`);
  (async () => {
    for (const t of tiers) await benchEventLoop(t, print);
  })().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
