// stats.ts — percentiles and sampling loops for the benchmarks. Timing only lives here
// and in test/bench/; tests never assert on time.

export interface Result {
  contender: string;
  metric: string;
  p50: number;
  p99: number;
  n: number;
  /** Which pass of a multi-round run (AIRLOCK_BENCH_ROUNDS) measured it; absent: the only one. */
  round?: number;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx];
}

export function summarize(contender: string, metric: string, samples: readonly number[]): Result {
  const sorted = [...samples].sort((a, b) => a - b);
  return { contender, metric, p50: percentile(sorted, 50), p99: percentile(sorted, 99), n: sorted.length };
}

/** Microseconds elapsed since `start` (a process.hrtime.bigint() reading). */
export function usSince(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e3;
}

/** Runs `once` `warmup` times unmeasured, then `n` times, collecting what it returns. */
export async function collect(n: number, warmup: number, once: () => Promise<number>): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await once();
  const samples: number[] = [];
  for (let i = 0; i < n; i++) samples.push(await once());
  return samples;
}
