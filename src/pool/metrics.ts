// metrics.ts — what a SandboxPool counts: calls and errors by code, latency and queue
// wait histograms, restores, evictions, and per-tenant CPU time and memory for billing.
// Plain numbers a caller can read at any time (SandboxPool.stats()); exporters (the
// prom-client adapter in prometheus.ts) listen to the pool's events instead.

/** Upper bounds (ms) of the latency histogram's buckets; the last bucket is unbounded. */
export const LATENCY_BUCKETS_MS = [0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000] as const;

/** A histogram of durations in ms with cumulative buckets, as Prometheus reads them. */
export interface HistogramSnapshot {
  /** [upper bound in ms, calls at or below it] (cumulative), then [Infinity, count]. */
  buckets: [number, number][];
  /** Durations observed (one per call). */
  count: number;
  /** Sum of the durations observed, in ms (sumMs / count is the mean). */
  sumMs: number;
}

export class Histogram {
  private readonly counts = new Array<number>(LATENCY_BUCKETS_MS.length + 1).fill(0);
  private count = 0;
  private sum = 0;

  observe(ms: number): void {
    let i = 0;
    while (i < LATENCY_BUCKETS_MS.length && ms > LATENCY_BUCKETS_MS[i]) i++;
    this.counts[i]++;
    this.count++;
    this.sum += ms;
  }

  snapshot(): HistogramSnapshot {
    let cumulative = 0;
    const buckets: [number, number][] = LATENCY_BUCKETS_MS.map((le, i) => [le, (cumulative += this.counts[i])]);
    buckets.push([Infinity, this.count]);
    return { buckets, count: this.count, sumMs: this.sum };
  }
}

/** Usage of one tenant since the pool started. */
export interface TenantUsage {
  /** The tenant's calls, failed and turned-away ones included. */
  calls: number;
  /** Failed calls by error code. */
  errors: Record<string, number>;
  /** Guest CPU time where the tier measures it, else the call's wall-clock time. */
  cpuTimeMs: number;
  /** Wall-clock time the tenant's calls ran in a sandbox, in ms (queue wait excluded). */
  wallTimeMs: number;
  /** The tenant's sandboxes disposed because a call poisoned them. */
  restores: number;
  /** The tenant's idle sandboxes disposed to free room (idle, LRU or memory). */
  evictions: number;
  /** Guest memory reserved for the tenant's sandboxes now (bytes). */
  committedBytes: number;
  /** Committed guest memory integrated over time, in byte-seconds (for billing). */
  memoryByteSeconds: number;
}

export class TenantMeter implements TenantUsage {
  calls = 0;
  errors: Record<string, number> = {};
  cpuTimeMs = 0;
  wallTimeMs = 0;
  restores = 0;
  evictions = 0;
  committedBytes = 0;
  memoryByteSeconds = 0;
  private since = performance.now();

  /** Adds committed memory held until now to the integral, then changes it by `delta`. */
  commit(delta: number): void {
    this.settle();
    this.committedBytes += delta;
  }

  settle(): void {
    const now = performance.now();
    this.memoryByteSeconds += (this.committedBytes * (now - this.since)) / 1000;
    this.since = now;
  }

  usage(): TenantUsage {
    this.settle();
    return {
      calls: this.calls,
      errors: { ...this.errors },
      cpuTimeMs: this.cpuTimeMs,
      wallTimeMs: this.wallTimeMs,
      restores: this.restores,
      evictions: this.evictions,
      committedBytes: this.committedBytes,
      memoryByteSeconds: this.memoryByteSeconds,
    };
  }
}
