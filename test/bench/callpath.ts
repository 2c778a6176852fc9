// callpath.ts — the call-path metrics of an Airlock tier (issue #10): the call with
// the sandbox's threads and the main thread on one CPU or on two, the main thread's
// CPU per call, throughput with 1, 2 and 8 sandboxes, the event loop's gaps during
// calls and during a host-call storm, and the call into a sandbox holding a live heap.
import type { LoadedJSSandbox, ProtoJSSandbox } from '../../src/index.js';
import type { Backend } from '../../src/engine/engine.js';
import { eventLoopGaps, mainThreadCpuPerCall, threadsCpuPerCall, throughput } from './loops.js';
import { collect, summarize, usSince, type Result } from './stats.js';
import { allowedCpus, cpuList, pinProcess, pinThread, threadCpuNs, threadIds, threadName } from './threads.js';

export const ECHO = 'function handler(e) { return e; }';
const HOSTLOOP = 'import { echo } from "host:bench";\nfunction handler(e) { let v = 0; for (let i = 0; i < e.n; i++) v = echo(i); return v; }';
// 10,000 objects reachable from the handler's module for the sandbox's whole life.
const LIVE_HEAP = 'const live = [];\nfor (let i = 0; i < 10000; i++) live.push({ i, s: "item " + i });\nfunction handler(e) { return e; }';
const EVENT = { id: 1, name: 'bench' };

export interface CallpathContext {
  backend: Backend;
  load(handlers: Record<string, string>, setup?: (p: ProtoJSSandbox) => void): Promise<LoadedJSSandbox>;
  record(r: Result): void;
  note(text: string): void;
  scale(n: number): number;
  quick: boolean;
}

const timedCall = (s: LoadedJSSandbox, handler = 'echo', event: unknown = EVENT) => async () => {
  const t = process.hrtime.bigint();
  await s.callHandler(handler, event);
  return usSince(t);
};

/**
 * The thread that carries a sandbox's calls: the KVM tier's runner thread (named
 * airlock-run-N; an idle sandbox holds none, and a quiet pool keeps handing its calls to the same one), the WebAssembly tier's worker thread (Node gives it no name of its own,
 * and the tier's pool may have started it before the sandbox existed). Found as the
 * thread other than the main one whose CPU time grows most over a burst of calls.
 */
async function callingThread(backend: Backend, burst: () => Promise<unknown>): Promise<number> {
  const cpuOf = () => new Map(threadIds().map((t) => [t, threadCpuNs(t)] as const));
  const before = cpuOf();
  for (let i = 0; i < 200; i++) await burst();
  const growth = [...cpuOf()]
    .filter(([tid]) => tid !== process.pid)
    .map(([tid, ns]) => ({ tid, grew: ns - (before.get(tid) ?? 0), vcpu: threadName(tid).startsWith('airlock-run-') }))
    .filter((t) => t.grew > 0)
    .sort((a, b) => b.grew - a.grew);
  // On KVM the vCPU thread by its name when it has one; any busiest thread otherwise.
  const found = (backend === 'kvm' ? growth.find((t) => t.vcpu) : undefined) ?? growth[0];
  if (!found) throw new Error(`no thread of the ${backend} sandbox found in /proc/self/task`);
  return found.tid;
}

/**
 * call_roundtrip_same_core_us: every thread of the process on the first allowed CPU;
 * call_roundtrip_split_cores_us: the main thread (and the rest of the process) on the
 * first, the thread carrying the sandbox's calls on the second. Pinned with
 * sched_setaffinity (taskset -p per thread) from inside the bench; the sandbox is
 * created under the placement and disposed before the process is set free again.
 * Under each placement also the main thread's CPU per call and that of every other
 * thread (main_thread_cpu_<placement>_us_per_call, other_threads_cpu_<…>): what the
 * round trip is made of.
 */
export async function benchPlacement(c: CallpathContext): Promise<void> {
  const contender = `airlock-${c.backend}`;
  const original = allowedCpus();
  const cpus = cpuList(original);
  for (const mode of ['same', 'split'] as const) {
    if (mode === 'split' && cpus.length < 2) {
      c.note(`call_roundtrip_split_cores_us (${contender}) needs two CPUs; this process may use only ${original}`);
      continue;
    }
    pinProcess(String(cpus[0]));
    let loaded: LoadedJSSandbox | undefined;
    try {
      const sandbox = await c.load({ echo: ECHO });
      loaded = sandbox;
      if (mode === 'split') {
        const tid = await callingThread(c.backend, () => sandbox.callHandler('echo', EVENT));
        if (!pinThread(tid, String(cpus[1]))) throw new Error(`cannot pin thread ${tid} (${threadName(tid)}) to CPU ${cpus[1]}`);
      }
      const place = mode === 'same' ? 'same_core' : 'split_cores';
      c.record(summarize(contender, `call_roundtrip_${place}_us`, await collect(c.scale(3000), 300, timedCall(loaded))));
      // Where the round trip's time goes under this placement: the main thread's CPU
      // and the sandbox's threads' (every other thread of the process), per call.
      const cpu = await threadsCpuPerCall(() => sandbox.callHandler('echo', EVENT), c.scale(2000), c.scale(5));
      c.record(summarize(contender, `main_thread_cpu_${place}_us_per_call`, cpu.main));
      c.record(summarize(contender, `other_threads_cpu_${place}_us_per_call`, cpu.others));
    } finally {
      await loaded?.dispose();
      pinProcess(original);
    }
  }
}

/** main_thread_cpu_us_per_call: the main thread's CPU over back-to-back default calls, per call. */
export async function benchMainThread(c: CallpathContext): Promise<void> {
  const loaded = await c.load({ echo: ECHO });
  try {
    const call = () => loaded.callHandler('echo', EVENT);
    c.record(summarize(`airlock-${c.backend}`, 'main_thread_cpu_us_per_call', await mainThreadCpuPerCall(call, c.scale(2000), c.scale(10))));
  } finally {
    await loaded.dispose();
  }
}

/** throughput_N_per_s: N sandboxes, each called back to back in its own loop, all at once; threads free. */
export async function benchThroughput(c: CallpathContext): Promise<void> {
  for (const n of [1, 2, 8]) {
    const sandboxes = await Promise.all(Array.from({ length: n }, () => c.load({ echo: ECHO })));
    try {
      const callers = sandboxes.map((s) => () => s.callHandler('echo', EVENT));
      c.record(summarize(`airlock-${c.backend}`, `throughput_${n}_per_s`, await throughput(callers, c.quick ? 200 : 1000, c.scale(5))));
    } finally {
      await Promise.all(sandboxes.map((s) => s.dispose()));
    }
  }
}

/**
 * event_loop_gap_calls_ms: gaps between ticks of a 1 ms setInterval during back-to-back
 * default calls; event_loop_gap_hostcalls_ms: the same while each call makes 1,000 host
 * calls (a host-call storm).
 */
export async function benchEventLoop(c: CallpathContext): Promise<void> {
  const loaded = await c.load({ echo: ECHO, hostloop: HOSTLOOP }, (p) => p.register('bench', 'echo', (x: unknown) => x));
  try {
    const ms = c.quick ? 200 : 2000;
    const contender = `airlock-${c.backend}`;
    c.record(summarize(contender, 'event_loop_gap_calls_ms', await eventLoopGaps(() => loaded.callHandler('echo', EVENT), ms)));
    c.record(summarize(contender, 'event_loop_gap_hostcalls_ms', await eventLoopGaps(() => loaded.callHandler('hostloop', { n: 1000 }), ms)));
  } finally {
    await loaded.dispose();
  }
}

/** call_roundtrip_live_heap_us: the default call into a sandbox whose handler keeps 10,000 objects alive. */
export async function benchLiveHeap(c: CallpathContext): Promise<void> {
  const loaded = await c.load({ echo: LIVE_HEAP });
  try {
    c.record(summarize(`airlock-${c.backend}`, 'call_roundtrip_live_heap_us', await collect(c.scale(3000), 300, timedCall(loaded))));
  } finally {
    await loaded.dispose();
  }
}
