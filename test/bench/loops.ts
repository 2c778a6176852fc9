// loops.ts — the measurement loops shared by every contender (this process's and the
// isolated-vm child's): main-thread CPU per call, throughput of concurrent callers and
// the event loop's gaps during a call loop. Each takes the call to make as a function.
import { collect, usSince } from './stats.js';
import { threadCpuNs, threadIds } from './threads.js';

export type Call = () => Promise<unknown> | unknown;

/** Resolves after the main thread slept: the kernel then brings its CPU time up to date. */
const sleep = () => new Promise((r) => setTimeout(r, 2));

/**
 * Per round: the Node main thread's own CPU time over `calls` back-to-back calls,
 * divided by `calls` (µs). Other threads (vCPU, workers) are not counted. The kernel
 * updates a running thread's CPU time only at scheduler events, so each reading
 * follows a short sleep (the sleep's own wake-up is in the figure, spread over `calls`).
 */
export async function mainThreadCpuPerCall(call: Call, calls: number, rounds: number): Promise<number[]> {
  return (await threadsCpuPerCall(call, calls, rounds)).main;
}

/**
 * Per round: the main thread's CPU per call (as mainThreadCpuPerCall) and, apart, that
 * of every other thread of the process (the sandbox's runner or worker threads, Node's
 * own helpers), summed over the threads alive at the round's end (µs per call).
 */
export async function threadsCpuPerCall(call: Call, calls: number, rounds: number): Promise<{ main: number[]; others: number[] }> {
  const main: number[] = [];
  const others: number[] = [];
  const cpuOf = () => new Map(threadIds().map((t) => [t, threadCpuNs(t)] as const));
  await collect(rounds, 1, async () => {
    await sleep();
    const before = cpuOf();
    for (let i = 0; i < calls; i++) await call();
    await sleep();
    let rest = 0;
    for (const [tid, ns] of cpuOf()) if (tid !== process.pid) rest += ns - (before.get(tid) ?? 0);
    const own = (threadCpuNs() - (before.get(process.pid) ?? 0)) / 1e3 / calls;
    main.push(own);
    others.push(rest / 1e3 / calls);
    return own;
  });
  return { main: main.slice(1), others: others.slice(1) };
}

/** Calls per second with every caller calling in its own loop at once, for `ms`, per round. */
export async function throughput(callers: readonly Call[], ms: number, rounds: number): Promise<number[]> {
  return collect(rounds, 1, async () => {
    let done = 0;
    const t = process.hrtime.bigint();
    const until = performance.now() + ms;
    await Promise.all(
      callers.map(async (call) => {
        while (performance.now() < until) {
          await call();
          done++;
        }
      }),
    );
    return done / (usSince(t) / 1e6);
  });
}

/**
 * The gaps (ms) between ticks of a 1 ms setInterval while `load` runs its loop for
 * `ms`, counted from the loop's start to its end: an interval that never fires yields
 * one gap as long as the loop.
 */
export async function eventLoopGaps(load: Call, ms: number): Promise<number[]> {
  const ticks: number[] = [];
  const start = performance.now();
  const timer = setInterval(() => ticks.push(performance.now()), 1);
  try {
    while (performance.now() - start < ms) await load();
  } finally {
    clearInterval(timer);
  }
  const marks = [start, ...ticks, performance.now()];
  const gaps: number[] = [];
  for (let i = 1; i < marks.length; i++) gaps.push(marks[i] - marks[i - 1]);
  return gaps;
}
