// prometheus.ts — exports a SandboxPool's metrics through prom-client (an optional peer
// dependency): counters and histograms fed by the pool's events, gauges read from
// stats() at scrape time. Airlock writes no exposition format of its own.
import { createRequire } from 'node:module';
import type * as PromClient from 'prom-client';
import { UnavailableError } from '../errors.js';
import type { PoolCallEvent, SandboxPool } from './pool.js';

/**
 * The part of a prom-client `Registry` the adapter uses. Written out here so the
 * published types do not need prom-client installed (it is an optional peer).
 */
export interface PromRegistryLike {
  /** Adds a metric (prom-client's Registry.registerMetric). */
  registerMetric(metric: never): void;
  /** Removes a metric by name (prom-client's Registry.removeSingleMetric). */
  removeSingleMetric(name: string): void;
}

/** Options of registerPoolMetrics(): where the metrics go and how they are named and labelled. */
export interface PoolMetricsOptions {
  /** Where the metrics are registered: a prom-client `Registry` (default: prom-client's
   *  global registry). */
  registry?: PromRegistryLike;
  /** Metric name prefix (default 'airlock_pool_'). */
  prefix?: string;
  /** Label series by tenant (default true). Turn off for very many tenants: each tenant
   *  is a time series per metric. */
  tenantLabel?: boolean;
}

function loadPromClient(): typeof PromClient {
  try {
    return createRequire(__filename)('prom-client') as typeof PromClient;
  } catch {
    const reason = "the optional peer dependency 'prom-client' is not installed (npm install prom-client)";
    throw new UnavailableError(reason, [reason]);
  }
}

/**
 * Registers the pool's metrics; returns a function that unregisters them and stops
 * listening. Counters: calls (by tenant and outcome: 'ok' or the error code), restores,
 * evictions (by reason), guest CPU seconds; histograms: call latency and queue wait;
 * gauges: queue depth, resident sandboxes, committed guest memory bytes.
 */
export function registerPoolMetrics(pool: SandboxPool, options: PoolMetricsOptions = {}): () => void {
  const client = loadPromClient();
  // The caller's object is a prom-client Registry; only its shape is declared above.
  const registry = (options.registry as PromClient.Registry | undefined) ?? client.register;
  const prefix = options.prefix ?? 'airlock_pool_';
  const byTenant = options.tenantLabel ?? true;
  const tenant = (name: string) => (byTenant ? { tenant: name } : {});
  const tl = byTenant ? (['tenant'] as const) : ([] as const);
  const registers = [registry];

  const calls = new client.Counter({ name: `${prefix}calls_total`, help: 'Handler calls, by outcome (ok or error code)', labelNames: [...tl, 'outcome'], registers });
  const cpu = new client.Counter({ name: `${prefix}cpu_seconds_total`, help: 'Guest CPU time of calls (wall-clock time where the tier does not measure CPU)', labelNames: [...tl], registers });
  const restores = new client.Counter({ name: `${prefix}restores_total`, help: 'Poisoned sandboxes replaced by a fresh clone', labelNames: [...tl], registers });
  const evictions = new client.Counter({ name: `${prefix}evictions_total`, help: 'Sandboxes disposed to free room, by reason', labelNames: [...tl, 'reason'], registers });
  const latency = new client.Histogram({
    name: `${prefix}call_duration_seconds`,
    help: 'Time from call() to its result, queueing included',
    labelNames: [...tl],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers,
  });
  const queueWait = new client.Histogram({
    name: `${prefix}queue_wait_seconds`,
    help: 'Time a call waited for a sandbox',
    labelNames: [...tl],
    buckets: [0.0001, 0.001, 0.01, 0.1, 1, 10],
    registers,
  });
  const gauges = [
    new client.Gauge({
      name: `${prefix}queue_depth`,
      help: 'Calls waiting for a sandbox',
      labelNames: [...tl],
      registers,
      collect() {
        this.reset();
        const s = pool.stats();
        if (!byTenant) this.set(s.queueDepth);
        else for (const [name, t] of Object.entries(s.tenants)) this.set(tenant(name), t.queueDepth);
      },
    }),
    new client.Gauge({
      name: `${prefix}resident_sandboxes`,
      help: 'Live sandboxes, busy or idle',
      labelNames: [...tl],
      registers,
      collect() {
        this.reset();
        const s = pool.stats();
        if (!byTenant) this.set(s.resident);
        else for (const [name, t] of Object.entries(s.tenants)) this.set(tenant(name), t.resident);
      },
    }),
    new client.Gauge({
      name: `${prefix}committed_guest_memory_bytes`,
      help: 'Guest memory reserved for live sandboxes (the most their guests can commit)',
      labelNames: [...tl],
      registers,
      collect() {
        this.reset();
        const s = pool.stats();
        if (!byTenant) this.set(s.committedBytes);
        else for (const [name, t] of Object.entries(s.tenants)) this.set(tenant(name), t.committedBytes);
      },
    }),
  ];

  const onCall = (e: PoolCallEvent) => {
    calls.inc({ ...tenant(e.tenant), outcome: e.error ?? 'ok' });
    latency.observe(tenant(e.tenant), e.latencyMs / 1000);
    queueWait.observe(tenant(e.tenant), e.queueMs / 1000);
    if (e.cpuTimeMs !== null) cpu.inc(tenant(e.tenant), e.cpuTimeMs / 1000);
  };
  const onRestore = (e: { tenant: string }) => restores.inc(tenant(e.tenant));
  const onEvict = (e: { tenant: string; reason: string }) => evictions.inc({ ...tenant(e.tenant), reason: e.reason });
  pool.on('call', onCall);
  pool.on('restore', onRestore);
  pool.on('evict', onEvict);

  return () => {
    pool.off('call', onCall);
    pool.off('restore', onRestore);
    pool.off('evict', onEvict);
    for (const m of [calls, cpu, restores, evictions, latency, queueWait, ...gauges]) registry.removeSingleMetric((m as unknown as { name: string }).name);
  };
}
