// templates.ts — the template groups of `just bench` (issue #12): sandboxes cloned from
// a snapshot (group `templates`: create, pool hit, restore with a live heap, snapshot
// files, PSS per idle clone, with quickjs-emscripten interleaved) and 1,000 live clones
// (group `live-1000`, run in a child process so their memory and threads do not skew
// the rest: runLive() starts this file).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SandboxBuilder, SandboxPool, Snapshot, type LoadedJSSandbox } from '../../src/index.js';
import type { Backend } from '../../src/engine/engine.js';
import { collect, summarize, usSince, type Result } from './stats.js';
import { GiB, MiB, kernelBytes, pssBytes, threadCount } from './process-memory.js';
import type { EmscriptenSandbox } from './quickjs-emscripten.js';

const ECHO = 'function handler(e) { return e; }';
const CHILD_FLAG = '--airlock-live-child';

export interface TemplateContext {
  backends: Backend[];
  record(r: Result): void;
  note(text: string): void;
  scale(n: number): number;
  quick: boolean;
  /** quickjs-emscripten's new context with the handlers evaluated, when it loaded. */
  emscripten?: (handlers: Record<string, string>) => EmscriptenSandbox;
}

async function loaded(backend: Backend, handlers: Record<string, string>, heapSize?: number): Promise<LoadedJSSandbox> {
  const builder = new SandboxBuilder().setBackend(backend);
  if (heapSize) builder.setHeapSize(heapSize);
  const js = await (await builder.build()).loadRuntime();
  for (const [k, v] of Object.entries(handlers)) js.addHandler(k, v);
  return js.getLoadedSandbox();
}

/** The public path: buildFromSnapshot's restorer, then restoreLoadedSandbox (one clone). */
async function cloneOf(snapshot: Snapshot): Promise<LoadedJSSandbox> {
  return (await new SandboxBuilder().buildFromSnapshot(snapshot)).restoreLoadedSandbox();
}

const settle = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function benchTemplates(c: TemplateContext): Promise<void> {
  const sources = new Map<Backend, { origin: LoadedJSSandbox; snapshot: Snapshot }>();
  try {
    for (const b of c.backends) {
      const origin = await loaded(b, { echo: ECHO });
      sources.set(b, { origin, snapshot: await origin.snapshot() });
    }
    // PSS first: quickjs-emscripten's module keeps the memory its freed contexts used,
    // which would hide what new ones take.
    await pssPerIdle(c, sources);
    await createFromTemplate(c, sources);
    for (const [b, s] of sources) await poolHit(c, b, s.snapshot);
    for (const [b, s] of sources) await snapshotLoad(c, b, s.snapshot);
    await restoreWithLiveHeap(c);
  } finally {
    await Promise.all([...sources.values()].map((s) => s.origin.dispose()));
  }
}

// create_from_template_ms: buildFromSnapshot → restoreLoadedSandbox; *_to_result_ms
// adds the first call. The tiers and quickjs-emscripten's new context take turns in
// every round (the order rotating), so machine noise falls on all alike.
async function createFromTemplate(c: TemplateContext, sources: Map<Backend, { snapshot: Snapshot }>): Promise<void> {
  type Sampler = { contender: string; once(): Promise<[number, number]>; drain(): Promise<void> };
  const samplers: Sampler[] = [];
  for (const [b, { snapshot }] of sources) {
    const live: LoadedJSSandbox[] = [];
    samplers.push({
      contender: `airlock-${b}`,
      async once() {
        const t = process.hrtime.bigint();
        const clone = await cloneOf(snapshot);
        const created = usSince(t) / 1e3;
        await clone.callHandler('echo', { first: true });
        const first = usSince(t) / 1e3;
        live.push(clone);
        if (live.length >= 4) await this.drain();
        return [created, first];
      },
      async drain() {
        await Promise.all(live.splice(0).map((s) => s.dispose()));
      },
    });
  }
  const em = c.emscripten;
  if (em) {
    samplers.push({
      contender: 'quickjs-emscripten',
      async once() {
        const t = process.hrtime.bigint();
        const ctx = em({ echo: ECHO });
        const created = usSince(t) / 1e3;
        ctx.call('echo', { first: true });
        const first = usSince(t) / 1e3;
        ctx.dispose();
        return [created, first];
      },
      async drain() {},
    });
  }
  const created = samplers.map(() => [] as number[]);
  const first = samplers.map(() => [] as number[]);
  const warmup = 5;
  const rounds = warmup + c.scale(300);
  for (let i = 0; i < rounds; i++) {
    for (let k = 0; k < samplers.length; k++) {
      const j = (i + k) % samplers.length;
      const [a, b] = await samplers[j].once();
      if (i >= warmup) {
        created[j].push(a);
        first[j].push(b);
      }
    }
  }
  for (const s of samplers) await s.drain();
  samplers.forEach((s, j) => {
    c.record(summarize(s.contender, 'create_from_template_ms', created[j]));
    c.record(summarize(s.contender, 'create_from_template_to_result_ms', first[j]));
  });
}

// pool_acquire_to_result_ms: pool.call() of a tenant whose clone is warm and idle.
async function poolHit(c: TemplateContext, backend: Backend, snapshot: Snapshot): Promise<void> {
  const pool = new SandboxPool({ snapshot });
  try {
    await pool.warm('bench');
    await pool.call('bench', 'echo', { warm: true });
    c.record(summarize(`airlock-${backend}`, 'pool_acquire_to_result_ms', await collect(c.scale(1000), 50, async () => {
      const t = process.hrtime.bigint();
      await pool.call('bench', 'echo', { id: 1 });
      return usSince(t) / 1e3;
    })));
  } finally {
    await pool.close();
  }
}

// snapshot_load_ms: Snapshot.load of a saved tag (digests verified), then its first
// clone (buildFromSnapshot → restoreLoadedSandbox), a new Snapshot object every time.
async function snapshotLoad(c: TemplateContext, backend: Backend, snapshot: Snapshot): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-snap-'));
  try {
    await snapshot.save(dir, 'bench');
    c.record(summarize(`airlock-${backend}`, 'snapshot_load_ms', await collect(c.scale(50), 3, async () => {
      const t = process.hrtime.bigint();
      const clone = await cloneOf(await Snapshot.load(dir, 'bench'));
      const ms = usSince(t) / 1e3;
      await clone.dispose();
      return ms;
    })));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// restore_and_call_<n>mib_us: a handler module keeping n MiB alive (1 MiB chunks,
// filled so every page is committed); a call writes a few pages, then restore() and
// the next call are timed together. Both sizes run in a 512 MiB heap, so only the live
// heap differs.
async function restoreWithLiveHeap(c: TemplateContext): Promise<void> {
  for (const backend of c.backends) {
    for (const mib of [1, 128]) {
      const touch = `const keep = []; for (let i = 0; i < ${mib}; i++) keep.push(new Uint8Array(${MiB}).fill(i + 1));
        let n = 0; const notes = {};
        function handler(e) { n++; notes[n % 8] = { n, e }; return keep.length; }`;
      const s = await loaded(backend, { touch }, 512 * MiB);
      try {
        const snap = await s.snapshot();
        c.record(summarize(`airlock-${backend}`, `restore_and_call_${mib}mib_us`, await collect(c.scale(500), 20, async () => {
          await s.callHandler('touch', { before: true });
          const t = process.hrtime.bigint();
          await s.restore(snap);
          await s.callHandler('touch', { after: true });
          return usSince(t);
        })));
      } finally {
        await s.dispose();
      }
    }
  }
}

// pss_per_idle_sandbox_mib: the process's PSS grown by N live sandboxes that each made
// one call, divided by N (100; 20 in a quick run), after 300 ms to settle. Clones of a
// template share its pages, which PSS counts once. quickjs-emscripten: N new contexts
// with the handler evaluated and called once, in its one shared module. quickjs-emscripten
// goes first and every baseline waits 1 s: memory that disposed sandboxes of the
// previous round or contender give back meanwhile would otherwise be subtracted.
async function pssPerIdle(c: TemplateContext, sources: Map<Backend, { snapshot: Snapshot }>): Promise<void> {
  const n = c.quick ? 20 : 100;
  const rounds = c.quick ? 1 : 3;
  const em = c.emscripten;
  if (em) {
    // One round: the module never gives memory back, so later rounds would reuse it.
    const samples: number[] = [];
    {
      await settle(1000);
      const before = pssBytes();
      const live = Array.from({ length: n }, (_, i) => {
        const ctx = em({ echo: ECHO });
        ctx.call('echo', { i });
        return ctx;
      });
      await settle(300);
      samples.push((pssBytes() - before) / n / MiB);
      for (const ctx of live) ctx.dispose();
    }
    c.record(summarize('quickjs-emscripten', 'pss_per_idle_sandbox_mib', samples));
  }
  for (const [b, { snapshot }] of sources) {
    // The template is made by the first clone: not an idle sandbox's cost.
    await (await cloneOf(snapshot)).dispose();
    const samples: number[] = [];
    for (let r = 0; r < rounds; r++) {
      await settle(1000);
      const before = pssBytes();
      const live: LoadedJSSandbox[] = [];
      try {
        for (let i = 0; i < n; i++) {
          const clone = await cloneOf(snapshot);
          live.push(clone);
          await clone.callHandler('echo', { i });
        }
        await settle(300);
        samples.push((pssBytes() - before) / n / MiB);
      } finally {
        await Promise.all(live.map((s) => s.dispose()));
      }
    }
    c.record(summarize(`airlock-${b}`, 'pss_per_idle_sandbox_mib', samples));
  }
}

// ---- live-1000: in a child process --------------------------------------------

/** Runs the live-N group for one tier in a child process; its results, or why it failed. */
export async function runLive(backend: Backend, count: number): Promise<{ results: Result[]; failed?: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', __filename, CHILD_FLAG, backend, String(count)], {
    cwd: join(__dirname, '..', '..'),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d: string) => {
    out += d;
  });
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  try {
    const parsed = JSON.parse(out.trim().split('\n').pop() ?? '') as { results: Result[]; failed?: string };
    if (code !== 0 && !parsed.failed) parsed.failed = `the live-${count} child exited with ${String(code)}`;
    return parsed;
  } catch {
    return { results: [], failed: `the live-${count} child exited with ${String(code)} and no results` };
  }
}

// live_1000_create_s: clones made back to back (after the template exists and one
// warm-up clone); then each makes one call and the process settles.
// live_1000_pss_gib: the whole process's PSS then (Node's own included).
// live_1000_threads: threads the process gained, KVM's per-VM kernel threads
// excluded; live_1000_kvm_threads: those, counted apart; live_1000_kernel_mib: the
// growth of the machine's unreclaimable kernel memory (page tables, KVM's structures,
// thread stacks), which PSS leaves out: machine-wide, so other processes add noise.
// One sample each.
async function liveChild(backend: Backend, count: number): Promise<void> {
  const results: Result[] = [];
  const one = (metric: string, v: number) => results.push({ contender: `airlock-${backend}`, metric, p50: v, p99: v, n: 1 });
  const live: LoadedJSSandbox[] = [];
  let failed: string | undefined;
  try {
    const threadsBefore = threadCount();
    const kernelBefore = kernelBytes();
    const origin = await loaded(backend, { echo: ECHO });
    const snapshot = await origin.snapshot();
    await (await cloneOf(snapshot)).dispose();
    await origin.dispose();
    await settle(200);
    const t = process.hrtime.bigint();
    for (let i = 0; i < count; i++) live.push(await cloneOf(snapshot));
    one(`live_${count}_create_s`, usSince(t) / 1e6);
    for (const s of live) await s.callHandler('echo', { first: true });
    await settle(500);
    const threads = threadCount();
    one(`live_${count}_pss_gib`, pssBytes() / GiB);
    one(`live_${count}_threads`, threads.own - threadsBefore.own);
    one(`live_${count}_kvm_threads`, threads.kvm - threadsBefore.kvm);
    one(`live_${count}_kernel_mib`, (kernelBytes() - kernelBefore) / MiB);
  } catch (e) {
    failed = `live-${count} on ${backend} failed after ${live.length} sandboxes: ${(e as Error).message}`;
  } finally {
    await Promise.all(live.map((s) => s.dispose().catch(() => undefined)));
  }
  process.stdout.write('\n' + JSON.stringify({ results, failed }) + '\n');
}

if (process.argv.includes(CHILD_FLAG)) {
  const at = process.argv.indexOf(CHILD_FLAG);
  liveChild(process.argv[at + 1] as Backend, Number(process.argv[at + 2])).catch((e: unknown) => {
    process.stdout.write('\n' + JSON.stringify({ results: [], failed: (e as Error).message }) + '\n');
    process.exitCode = 1;
  });
}
