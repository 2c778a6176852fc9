// isolated-vm.ts — the isolated-vm 5 contenders: `isolated-vm-async` (Reference.apply:
// the isolate runs on isolated-vm's own threads) and `isolated-vm-sync` (applySync: on
// the calling thread). isolated-vm needs `--no-node-snapshot` on Node 20 and is installed
// for the bench only (scripts/bench-deps.sh, into out/bench-deps), so it runs in a child
// process: runIsolatedVm() starts this file, which prints its results as one JSON line.
// Each call does what an Airlock call does: JSON in, handler call, JSON out.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { collect, summarize, usSince, type Result } from './stats.js';
import { eventLoopGaps, mainThreadCpuPerCall, throughput } from './loops.js';
import { MiB, pssBytes } from './process-memory.js';

const root = join(__dirname, '..', '..');
// AIRLOCK_BENCH_DEPS: where scripts/bench-deps.sh installed isolated-vm (default out/bench-deps).
const depsDir = process.env.AIRLOCK_BENCH_DEPS ?? join(root, 'out', 'bench-deps');
const CHILD_FLAG = '--airlock-isolated-vm-child';

export interface IsolatedVmRun {
  results: Result[];
  /** Why isolated-vm did not run (not installed, failed to load or crashed), else undefined. */
  unavailable?: string;
}

/** Runs the isolated-vm contenders in a child under --no-node-snapshot. Never throws. */
export async function runIsolatedVm(): Promise<IsolatedVmRun> {
  if (!existsSync(join(depsDir, 'node_modules', 'isolated-vm'))) {
    return { results: [], unavailable: `isolated-vm is not installed in ${depsDir} (bash scripts/bench-deps.sh installs it)` };
  }
  const child = spawn(process.execPath, ['--no-node-snapshot', '--import', 'tsx', __filename, CHILD_FLAG], {
    cwd: root,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    out += d;
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  const last = out.trim().split('\n').pop() ?? '';
  try {
    const parsed = JSON.parse(last) as IsolatedVmRun;
    if (code !== 0 && !parsed.unavailable) parsed.unavailable = `the isolated-vm child exited with ${String(code)}`;
    return parsed;
  } catch {
    return { results: [], unavailable: `the isolated-vm child exited with ${String(code)} and no results` };
  }
}

// ---- the child ----------------------------------------------------------------

interface IvmReference {
  apply(recv: undefined, args: unknown[], opts?: object): Promise<unknown>;
  applySync(recv: undefined, args: unknown[], opts?: object): unknown;
}
interface IvmContext {
  evalSync(code: string, opts?: object): unknown;
}
interface IvmIsolate {
  createContextSync(): IvmContext;
  createContext(): Promise<IvmContext>;
  compileScript(code: string): Promise<{ run(ctx: IvmContext, opts?: object): Promise<unknown> }>;
  dispose(): void;
}
interface Ivm {
  Isolate: new (opts?: { memoryLimit?: number }) => IvmIsolate;
}

const ECHO = 'function handler(e) { return e; }';
const wrap = (src: string) => `(function () {\n${src}\nreturn (json) => JSON.stringify(handler(JSON.parse(json)));\n})()`;

class IvmSandbox {
  private constructor(
    readonly isolate: IvmIsolate,
    private readonly fn: IvmReference,
  ) {}

  static createSync(ivm: Ivm, src: string): IvmSandbox {
    const isolate = new ivm.Isolate({ memoryLimit: 64 });
    const ctx = isolate.createContextSync();
    return new IvmSandbox(isolate, ctx.evalSync(wrap(src), { reference: true }) as IvmReference);
  }

  static async create(ivm: Ivm, src: string): Promise<IvmSandbox> {
    const isolate = new ivm.Isolate({ memoryLimit: 64 });
    const ctx = await isolate.createContext();
    const script = await isolate.compileScript(wrap(src));
    return new IvmSandbox(isolate, (await script.run(ctx, { reference: true })) as IvmReference);
  }

  async call(event: unknown): Promise<unknown> {
    const s = (await this.fn.apply(undefined, [JSON.stringify(event)])) as string | undefined;
    return s === undefined ? undefined : JSON.parse(s);
  }

  callSync(event: unknown): unknown {
    const s = this.fn.applySync(undefined, [JSON.stringify(event)]) as string | undefined;
    return s === undefined ? undefined : JSON.parse(s);
  }
}

async function child(): Promise<void> {
  const quick = process.env.AIRLOCK_BENCH_QUICK === '1';
  const scale = (n: number) => (quick ? Math.max(3, Math.ceil(n / 10)) : n);
  const results: Result[] = [];
  const report = (unavailable?: string) => process.stdout.write('\n' + JSON.stringify({ results, unavailable }) + '\n');
  let ivm: Ivm;
  try {
    ivm = createRequire(join(depsDir, 'package.json'))('isolated-vm') as Ivm;
  } catch (e) {
    report(`isolated-vm does not load: ${(e as Error).message}`);
    return;
  }
  const event = { id: 1, name: 'bench' };
  const add = (r: Result) => {
    results.push(r);
    console.error(`  ${r.metric.padEnd(30)} ${r.contender.padEnd(20)} p50 ${r.p50.toFixed(3).padStart(10)}  p99 ${r.p99.toFixed(3).padStart(10)}  (n=${r.n})`);
  };
  const timed = (f: () => Promise<unknown> | unknown) => async () => {
    const t = process.hrtime.bigint();
    await f();
    return usSince(t);
  };

  const one = await IvmSandbox.create(ivm, ECHO);
  add(summarize('isolated-vm-async', 'call_roundtrip_us', await collect(scale(3000), 300, timed(() => one.call(event)))));
  add(summarize('isolated-vm-sync', 'call_roundtrip_us', await collect(scale(3000), 300, timed(() => one.callSync(event)))));
  add(summarize('isolated-vm-async', 'main_thread_cpu_us_per_call', await mainThreadCpuPerCall(() => one.call(event), scale(2000), scale(10))));
  add(summarize('isolated-vm-sync', 'main_thread_cpu_us_per_call', await mainThreadCpuPerCall(() => one.callSync(event), scale(2000), scale(10))));
  // Only the asynchronous call can leave the event loop free: a synchronous call
  // blocks it for the whole loop by construction.
  const gaps = await eventLoopGaps(() => one.call(event), quick ? 200 : 2000);
  add(summarize('isolated-vm-async', 'event_loop_gap_calls_ms', gaps));

  for (const n of [1, 2, 8]) {
    const many = await Promise.all(Array.from({ length: n }, () => IvmSandbox.create(ivm, ECHO)));
    const samples = await throughput(
      many.map((s) => () => s.call(event)),
      quick ? 200 : 1000,
      scale(5),
    );
    add(summarize('isolated-vm-async', `throughput_${n}_per_s`, samples));
    for (const s of many) s.isolate.dispose();
  }

  add(summarize('isolated-vm-async', 'create_to_first_result_ms', await collect(scale(40), 3, async () => {
    const t = process.hrtime.bigint();
    const s = await IvmSandbox.create(ivm, ECHO);
    await s.call({ first: true });
    const ms = usSince(t) / 1e3;
    s.isolate.dispose();
    return ms;
  })));
  add(summarize('isolated-vm-sync', 'create_to_first_result_ms', await collect(scale(40), 3, async () => {
    const t = process.hrtime.bigint();
    const s = IvmSandbox.createSync(ivm, ECHO);
    s.callSync({ first: true });
    const ms = usSince(t) / 1e3;
    s.isolate.dispose();
    return ms;
  })));
  // pss_per_idle_sandbox_mib: the child's PSS grown by 100 isolates (20 in a quick run),
  // each with the handler loaded and called once, divided by their number.
  const n = quick ? 20 : 100;
  const pss: number[] = [];
  for (let r = 0; r < (quick ? 1 : 3); r++) {
    await new Promise((res) => setTimeout(res, 200));
    const before = pssBytes();
    const live = await Promise.all(Array.from({ length: n }, () => IvmSandbox.create(ivm, ECHO)));
    for (const s of live) await s.call({ first: true });
    await new Promise((res) => setTimeout(res, 300));
    pss.push((pssBytes() - before) / n / MiB);
    for (const s of live) s.isolate.dispose();
  }
  add(summarize('isolated-vm-async', 'pss_per_idle_sandbox_mib', pss));
  one.isolate.dispose();
  report();
}

if (process.argv.includes(CHILD_FLAG)) {
  child().catch((e: unknown) => {
    process.stdout.write('\n' + JSON.stringify({ results: [], unavailable: `isolated-vm run failed: ${(e as Error).message}` }) + '\n');
    process.exitCode = 1;
  });
}
