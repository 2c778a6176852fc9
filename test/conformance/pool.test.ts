// pool.test.ts — SandboxPool: per-tenant sandboxes cloned from a snapshot, the
// concurrency limit and bounded queue (ERR_OVERLOADED), a fresh clone after a poisoning
// call, idle and LRU eviction, the process-wide guest memory cap, console routing by
// tenant and call, drain/close, usage counters and the prom-client adapter.
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { Registry } from 'prom-client';
import {
  HostFunctionModule,
  SandboxPool,
  guestMemoryUsage,
  registerPoolMetrics,
  setGuestMemoryLimit,
  type PoolConsoleEntry,
  type Snapshot,
} from '../../src/index.js';
import type { BackendHarness } from './backends.js';
import { describeEachBackend } from './backends.js';

const handlers = {
  counter: 'let n = 0; function handler(e) { return { n: ++n, tenant: e.tenant }; }',
  spin: 'function handler() { for (;;) {} }',
  log: 'function handler(e) { console.log("hi " + e.x); console.warn("careful"); return 1; }',
  wait: 'import * as gate from "host:gate"; function handler() { return gate.pass(); }',
};

describeEachBackend('SandboxPool', (h: BackendHarness) => {
  let template: Snapshot;
  const pools: SandboxPool[] = [];
  const originalLimit = guestMemoryUsage().limit;
  let gates: (() => void)[] = [];

  const gateModules = () => [
    new HostFunctionModule('gate').register('pass', () => new Promise<string>((resolve) => gates.push(() => resolve('passed')))),
  ];
  const openGates = () => {
    for (const g of gates.splice(0)) g();
  };

  beforeEach(async () => {
    if (template) return;
    const js = await (await h.builder().setHostFunctionModules(gateModules).build()).loadRuntime();
    for (const [name, code] of Object.entries(handlers)) js.addHandler(name, code);
    const loaded = await js.getLoadedSandbox();
    template = await loaded.snapshot();
    await loaded.dispose();
  });

  afterEach(async () => {
    openGates();
    setGuestMemoryLimit(originalLimit);
    await Promise.all(pools.splice(0).map((p) => p.close()));
    gates = [];
  });

  function pool(options: Partial<ConstructorParameters<typeof SandboxPool>[0]> = {}): SandboxPool {
    const p = new SandboxPool({ snapshot: template, hostFunctionModules: gateModules, ...options });
    pools.push(p);
    return p;
  }

  it('keeps one warm sandbox per tenant, isolated from other tenants', async () => {
    const p = pool();
    expect(await p.call('a', 'counter', { tenant: 'a' })).toEqual({ n: 1, tenant: 'a' });
    expect(await p.call('a', 'counter', { tenant: 'a' })).toEqual({ n: 2, tenant: 'a' });
    expect(await p.call('b', 'counter', { tenant: 'b' })).toEqual({ n: 1, tenant: 'b' });
    const s = p.stats();
    expect(s.resident).toBe(2);
    expect(s.calls).toBe(3);
    expect(s.tenants.a.calls).toBe(2);
    expect(s.tenants.a.committedBytes).toBeGreaterThan(0);
    expect(s.committedBytes).toBe(s.tenants.a.committedBytes + s.tenants.b.committedBytes);
    // Billing: time used and memory held over time.
    expect(s.tenants.a.cpuTimeMs).toBeGreaterThan(0);
    expect(s.tenants.a.wallTimeMs).toBeGreaterThan(0);
    expect(s.tenants.a.memoryByteSeconds).toBeGreaterThan(0);
    expect(s.latency.count).toBe(3);
    await p.warm('c');
    expect(p.stats().tenants.c.resident).toBe(1);
  });

  it('reports a tenant named like an Object.prototype key as its own entry', async () => {
    const p = pool();
    expect(await p.call('__proto__', 'counter', { tenant: 'x' })).toEqual({ n: 1, tenant: 'x' });
    const s = p.stats();
    expect(Object.getPrototypeOf(s.tenants)).toBe(Object.prototype);
    expect(Object.keys(s.tenants)).toEqual(['__proto__']);
    expect(Object.getOwnPropertyDescriptor(s.tenants, '__proto__')?.value).toMatchObject({ calls: 1, resident: 1 });
  });

  it('queues past the concurrency limit and turns calls away past the queue bound', async () => {
    const p = pool({ maxConcurrencyPerTenant: 1, maxQueuePerTenant: 1 });
    const first = p.call('a', 'wait', {});
    while (gates.length === 0) await new Promise((r) => setImmediate(r));
    const second = p.call('a', 'counter', {});
    await new Promise((r) => setImmediate(r));
    expect(p.stats().queueDepth).toBe(1);
    await expect(p.call('a', 'counter', {})).rejects.toMatchObject({ code: 'ERR_OVERLOADED', reason: 'queue-full' });
    // Another tenant is not held up by a's queue.
    expect(await p.call('b', 'counter', {})).toMatchObject({ n: 1 });
    openGates();
    expect(await first).toBe('passed');
    expect(await second).toMatchObject({ n: 1 });
    expect(p.stats().errors).toEqual({ ERR_OVERLOADED: 1 });
    expect(p.stats().tenants.a.errors).toEqual({ ERR_OVERLOADED: 1 });
  });

  it('runs up to maxConcurrencyPerTenant calls of one tenant at once, each in its own sandbox', async () => {
    const p = pool({ maxConcurrencyPerTenant: 2 });
    const calls = [p.call('a', 'wait', {}), p.call('a', 'wait', {})];
    while (gates.length < 2) await new Promise((r) => setImmediate(r));
    expect(p.stats().queueDepth).toBe(0);
    expect(p.stats().tenants.a.resident).toBe(2);
    const third = p.call('a', 'counter', {});
    await new Promise((r) => setImmediate(r));
    expect(p.stats().queueDepth).toBe(1);
    openGates();
    expect(await Promise.all(calls)).toEqual(['passed', 'passed']);
    expect(await third).toMatchObject({ n: 1 });
    expect(p.stats().tenants.a.resident).toBe(2);
  });

  it('turns a queued call away when it waits longer than queueTimeoutMs', async () => {
    const p = pool({ queueTimeoutMs: 20 });
    const first = p.call('a', 'wait', {});
    while (gates.length === 0) await new Promise((r) => setImmediate(r));
    await expect(p.call('a', 'counter', {})).rejects.toMatchObject({ code: 'ERR_OVERLOADED', reason: 'queue-timeout' });
    openGates();
    await first;
  });

  it('replaces a poisoned sandbox with a fresh clone', async () => {
    const restores: string[] = [];
    const p = pool();
    p.on('restore', (e: { tenant: string }) => restores.push(e.tenant));
    expect(await p.call('a', 'counter', {})).toMatchObject({ n: 1 });
    await expect(p.call('a', 'spin', {}, { wallClockTimeoutMs: 50 })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    expect(await p.call('a', 'counter', {})).toMatchObject({ n: 1 });
    expect(restores).toEqual(['a']);
    expect(p.stats().restores).toBe(1);
    expect(p.stats().tenants.a.errors).toEqual({ ERR_CANCELLED: 1 });
  });

  it('evicts idle sandboxes and the least recently used one past maxResident', async () => {
    const evicted: string[] = [];
    const p = pool({ maxResident: 2 });
    p.on('evict', (e: { tenant: string; reason: string }) => evicted.push(`${e.tenant}:${e.reason}`));
    await p.call('a', 'counter', {});
    await p.call('b', 'counter', {});
    await p.call('a', 'counter', {});
    await p.call('c', 'counter', {});
    expect(evicted).toEqual(['b:lru']);
    expect(p.stats().resident).toBe(2);
    expect(await p.call('a', 'counter', {})).toMatchObject({ n: 3 });
    expect(await p.evictIdle(0)).toBe(2);
    expect(p.stats().resident).toBe(0);
    expect(p.stats().evictions).toBe(3);
    expect(await p.call('a', 'counter', {})).toMatchObject({ n: 1 });
  });

  it('holds pooled guest memory under the process-wide cap', async () => {
    const p = pool();
    await p.call('a', 'counter', {});
    const perSandbox = p.stats().committedBytes;
    expect(guestMemoryUsage().reserved).toBeGreaterThanOrEqual(perSandbox);
    setGuestMemoryLimit(guestMemoryUsage().reserved + Math.floor(perSandbox / 2));
    // No room for b's sandbox: a's idle one is evicted to make it.
    const evicted: string[] = [];
    p.on('evict', (e: { tenant: string; reason: string }) => evicted.push(`${e.tenant}:${e.reason}`));
    await p.call('b', 'counter', {});
    expect(evicted).toEqual(['a:memory']);
    // With b busy, a must wait, and is turned away when the wait runs out.
    const busy = p.call('b', 'wait', {});
    while (gates.length === 0) await new Promise((r) => setImmediate(r));
    const other = pool({ queueTimeoutMs: 20 });
    await expect(other.call('x', 'counter', {})).rejects.toMatchObject({ code: 'ERR_OVERLOADED', reason: 'queue-timeout' });
    openGates();
    await busy;
    // A cap below one sandbox can never be met: refused at once.
    setGuestMemoryLimit(Math.floor(perSandbox / 2));
    await expect(other.call('y', 'counter', {})).rejects.toMatchObject({ code: 'ERR_OVERLOADED', reason: 'memory' });
  });

  it('routes console lines with their tenant and call', async () => {
    const lines: PoolConsoleEntry[] = [];
    const calls: number[] = [];
    const p = pool({ console: (e) => lines.push(e) });
    p.on('call', (e: { callId: number }) => calls.push(e.callId));
    await p.call('a', 'log', { x: 1 });
    await p.call('b', 'log', { x: 2 });
    expect(lines).toEqual([
      { tenant: 'a', callId: calls[0], handler: 'log', level: 'log', message: 'hi 1' },
      { tenant: 'a', callId: calls[0], handler: 'log', level: 'warn', message: 'careful' },
      { tenant: 'b', callId: calls[1], handler: 'log', level: 'log', message: 'hi 2' },
      { tenant: 'b', callId: calls[1], handler: 'log', level: 'warn', message: 'careful' },
    ]);
    expect(calls[0]).not.toBe(calls[1]);
  });

  it('bills a call refused before it ran with no time, not the previous call\'s', async () => {
    const events: { cpuTimeMs: number | null; error?: string }[] = [];
    const p = pool();
    p.on('call', (e: { cpuTimeMs: number | null; error?: string }) => events.push(e));
    await p.call('a', 'counter', {});
    await expect(p.call('a', 'counter', {}, { wallClockTimeoutMs: -1 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    expect(events).toHaveLength(2);
    if (h.backend === 'kvm') expect(events[0].cpuTimeMs).toBeGreaterThan(0);
    expect(events[1]).toMatchObject({ cpuTimeMs: null, error: 'ERR_INVALID_ARG' });
    expect(p.stats().tenants.a.calls).toBe(2);
  });

  it('forgets the least recently active dormant tenant past maxTenants, reporting its usage, and refuses a new one when all are busy', async () => {
    const forgotten: { tenant: string; usage: { calls: number } }[] = [];
    const p = pool({ maxTenants: 2, idleTimeoutMs: 60_000 });
    p.on('forget', (e: { tenant: string; usage: { calls: number } }) => forgotten.push(e));
    await p.call('a', 'counter', {});
    await p.call('b', 'counter', {});
    await p.call('a', 'counter', {});
    // Both hold an idle sandbox: neither is dormant until idle eviction frees it.
    await expect(p.call('c', 'counter', {})).rejects.toMatchObject({ code: 'ERR_OVERLOADED', reason: 'tenants' });
    await p.evictIdle(0);
    expect(await p.call('c', 'counter', {})).toMatchObject({ n: 1 });
    // 'b' was the least recently active of the two dormant tenants.
    expect(forgotten).toEqual([{ tenant: 'b', usage: expect.objectContaining({ calls: 1 }) }]);
    expect(Object.keys(p.stats().tenants).sort()).toEqual(['a', 'c']);
    // A tenant with a call in progress is never forgotten.
    const running = p.call('a', 'wait', {});
    await vi.waitFor(() => expect(gates.length).toBe(1));
    await p.evictIdle(0);
    await expect(p.call('d', 'counter', {})).resolves.toMatchObject({ n: 1 });
    expect(forgotten.map((f) => f.tenant)).toEqual(['b', 'c']);
    openGates();
    expect(await running).toBe('passed');
    expect(() => new SandboxPool({ snapshot: template, maxTenants: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  });

  it('clones per-tenant snapshots and drains before closing', async () => {
    const asked: string[] = [];
    const p = pool({
      snapshot: (tenant) => {
        asked.push(tenant);
        return template;
      },
    });
    await p.call('a', 'counter', {});
    await p.call('a', 'counter', {});
    expect(asked).toEqual(['a']);
    const running = p.call('a', 'wait', {});
    while (gates.length === 0) await new Promise((r) => setImmediate(r));
    const drained = p.drain();
    await expect(p.call('a', 'counter', {})).rejects.toMatchObject({ code: 'ERR_CONSUMED' });
    openGates();
    await drained;
    expect(await running).toBe('passed');
    await p.close();
    expect(p.stats().resident).toBe(0);
  });

  it('exports its metrics through prom-client', async () => {
    const registry = new Registry();
    const p = pool();
    const stop = registerPoolMetrics(p, { registry });
    await p.call('a', 'counter', {});
    await p.call('a', 'counter', {});
    await expect(p.call('a', 'spin', {}, { wallClockTimeoutMs: 50 })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    const text = await registry.metrics();
    expect(text).toContain('airlock_pool_calls_total{tenant="a",outcome="ok"} 2');
    expect(text).toContain('airlock_pool_calls_total{tenant="a",outcome="ERR_CANCELLED"} 1');
    expect(text).toContain('airlock_pool_restores_total{tenant="a"} 1');
    expect(text).toContain('airlock_pool_call_duration_seconds_count{tenant="a"} 3');
    expect(text).toMatch(/airlock_pool_committed_guest_memory_bytes\{tenant="a"\} 0/);
    await p.call('a', 'counter', {});
    expect(await registry.metrics()).toMatch(/airlock_pool_resident_sandboxes\{tenant="a"\} 1/);
    stop();
    expect(await registry.metrics()).not.toContain('airlock_pool_');
  });
});

it('validates pool options', () => {
  expect(() => new SandboxPool(undefined as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  expect(() => new SandboxPool({ snapshot: {} as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  expect(() => new SandboxPool({ snapshot: () => undefined as never, maxConcurrencyPerTenant: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  expect(() => setGuestMemoryLimit(-1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
});
