// callpath-probe.ts — a small probe of the KVM call path's mode: each process times
// back-to-back default calls (optionally with N sandboxes called at once, or one
// host-calling handler) and prints the p50 with the call-path counters per call
// (pollingBudget().counters), so a slow round can be told from a fast one by the path
// its exchanges took, not by its latency alone.
//   npx tsx test/bench/callpath-probe.ts [processes=5] [calls=2000] [sandboxes=1] [mode=echo|host|nogc]
import { spawnSync } from 'node:child_process';
import { SandboxBuilder } from '../../src/index.js';
import { loadAddon } from '../../src/engine/native.js';

const [procs = '5', calls = '2000', sandboxes = '1', mode = 'echo'] = process.argv.slice(2);
const HOSTLOOP = 'import { echo } from "host:bench";\nfunction handler(e) { return echo(e); }';

type Counters = Record<string, number>;

async function child(): Promise<void> {
  const addon = loadAddon().addon;
  if (!addon) throw new Error(loadAddon().error);
  const n = Number(sandboxes);
  const loaded = await Promise.all(
    Array.from({ length: n }, async () => {
      const proto = await new SandboxBuilder().setBackend('kvm').build();
      proto.hostModule('bench').register('echo', (x: unknown) => x);
      const js = await proto.loadRuntime();
      js.addHandler('h', mode === 'host' ? HOSTLOOP : 'function handler(e) { return e; }');
      return js.getLoadedSandbox();
    }),
  );
  const options = mode === 'nogc' ? { gc: false } : undefined;
  const event = { id: 1 };
  for (const s of loaded) for (let i = 0; i < 200; i++) await s.callHandler('h', event, options);
  const before = (addon.pollingBudget() as unknown as { counters?: Counters }).counters ?? {};
  const samples: number[] = [];
  const total = Number(calls);
  const start = process.hrtime.bigint();
  await Promise.all(
    loaded.map(async (s) => {
      for (let i = 0; i < total / n; i++) {
        const t = process.hrtime.bigint();
        await s.callHandler('h', event, options);
        samples.push(Number(process.hrtime.bigint() - t) / 1e3);
      }
    }),
  );
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  const budget = addon.pollingBudget() as unknown as { cap: number; cores: number; othersLoad?: number; exitFloorUs: number; counters?: Counters };
  samples.sort((a, b) => a - b);
  const per: Record<string, number> = {};
  for (const [k, v] of Object.entries(budget.counters ?? {})) {
    const d = v - (before[k] ?? 0);
    if (d) per[k] = Math.round((d / samples.length) * 100) / 100;
  }
  console.log(
    JSON.stringify({
      p50: Math.round(samples[samples.length >> 1] * 10) / 10,
      p90: Math.round(samples[Math.floor(samples.length * 0.9)] * 10) / 10,
      perS: Math.round(samples.length / secs),
      cap: budget.cap,
      cores: budget.cores,
      others: Math.round((budget.othersLoad ?? 0) * 100) / 100,
      floor: Math.round(budget.exitFloorUs * 10) / 10,
      perCall: per,
    }),
  );
  await Promise.all(loaded.map((s) => s.dispose()));
}

if (process.env.AIRLOCK_PROBE_CHILD) {
  child().catch((e) => {
    console.error(e);
    process.exit(1);
  });
} else {
  for (let i = 0; i < Number(procs); i++) {
    const r = spawnSync(process.execPath, [...process.execArgv, process.argv[1], ...process.argv.slice(2)], {
      env: { ...process.env, AIRLOCK_PROBE_CHILD: '1' },
      encoding: 'utf8',
    });
    process.stdout.write(r.stdout || r.stderr);
  }
}
