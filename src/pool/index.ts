// index.ts — the pool's public surface.
export { SandboxPool, type SandboxPoolOptions, type PoolConsoleEntry, type PoolCallEvent, type PoolStats } from './pool.js';
export { setGuestMemoryLimit, guestMemoryUsage } from './memory-budget.js';
export { registerPoolMetrics, type PoolMetricsOptions, type PromRegistryLike } from './prometheus.js';
export type { TenantUsage, HistogramSnapshot } from './metrics.js';
