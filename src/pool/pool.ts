// pool.ts — SandboxPool, the multi-tenant scheduler: per tenant, warm sandboxes cloned
// from a template snapshot, a concurrency limit and a bounded queue (ERR_OVERLOADED past
// it), a fresh clone in place of a poisoned sandbox, idle eviction and an LRU cap on
// resident sandboxes, a share of the process-wide guest memory cap, console lines
// tagged with tenant and call, and usage counters (metrics.ts) and events for exporters.
import { EventEmitter } from 'node:events';
import { SandboxBuilder } from '../builder.js';
import type { ConsoleLevel } from '../engine/protocol.js';
import { AirlockError, ConsumedError, InternalError, InvalidArgumentError, OverloadedError } from '../errors.js';
import type { HostFunctionModule } from '../host-function-module.js';
import { Snapshot, type CallHandlerOptions, type CallStats, type LoadedJSSandbox } from '../sandbox.js';
import { requireName } from '../validate.js';
import * as budget from './memory-budget.js';
import { Histogram, TenantMeter, type HistogramSnapshot, type TenantUsage } from './metrics.js';

/** One console line of a pooled sandbox, with where it came from. */
export interface PoolConsoleEntry {
  /** The tenant whose sandbox printed it. */
  tenant: string;
  /** The pool's id of the call that printed it (also in the 'call' event). */
  callId: number;
  /** The handler of that call ('' and callId 0 for a line printed outside any call). */
  handler: string;
  /** The guest console method that printed it ('log', 'info', 'warn', 'error', 'debug'). */
  level: ConsoleLevel;
  /** The guest's formatted text, unescaped (guest-controlled: escape it before a terminal or log line). */
  message: string;
}

/** Options of new SandboxPool(): the template snapshot, host functions and the limits per tenant. */
export interface SandboxPoolOptions {
  /** The snapshot every sandbox of a tenant is cloned from: one for all tenants, or one
   *  per tenant (asked once per tenant, on its first call). */
  snapshot: Snapshot | ((tenant: string) => Snapshot | Promise<Snapshot>);
  /** Fresh host function modules for each new sandbox of `tenant`. */
  hostFunctionModules?: (tenant: string) => HostFunctionModule[];
  /** setHostFunctionFilter() of each sandbox's builder (default 'all'). */
  hostFunctionFilter?: 'all' | 'snapshotRequirements';
  /** Receives every guest console line; without it lines go to the host's console. */
  console?: (entry: PoolConsoleEntry) => void;
  /** Sandboxes (so calls) one tenant may run at once (default 1). */
  maxConcurrencyPerTenant?: number;
  /** Calls of one tenant that may wait for a sandbox; more are ERR_OVERLOADED (default 32). */
  maxQueuePerTenant?: number;
  /** How long a call may wait for a sandbox before ERR_OVERLOADED (ms, default 30,000). */
  queueTimeoutMs?: number;
  /** Sandboxes kept alive across all tenants; the least recently used idle one goes first (default 1,000). */
  maxResident?: number;
  /** An idle sandbox unused this long is disposed (ms, default 60,000). */
  idleTimeoutMs?: number;
  /** Tenant records (usage counters, cached snapshot) kept (default 100,000). A new tenant
   *  past it makes the pool forget the least recently active tenant that has no sandbox,
   *  call or queue, emitting 'forget' with its final usage; with none, the new tenant's
   *  call is ERR_OVERLOADED (reason 'tenants'). Keeps memory bounded whatever tenant
   *  names callers send. */
  maxTenants?: number;
  /** Options every call gets unless it passes its own (timeouts, gc). */
  callDefaults?: CallHandlerOptions;
}

/** What the 'call' event reports about each finished call. */
export interface PoolCallEvent {
  /** The tenant the call ran for. */
  tenant: string;
  /** The handler it called. */
  handler: string;
  /** The pool's id of the call, unique in the process; console lines carry it too. */
  callId: number;
  /** Time from call() to its result, queueing included. */
  latencyMs: number;
  /** Time from call() until it had a sandbox (a new clone's start included); 0 when it never got one. */
  queueMs: number;
  /** Guest CPU time of the call in ms; null where the tier does not measure it or no sandbox ran it. */
  cpuTimeMs: number | null;
  /** The error code when the call failed. */
  error?: string;
}

/** What SandboxPool.stats() reports: totals since the pool started, and gauges of now. */
export interface PoolStats {
  /** Calls made, failed and turned-away ones included. */
  calls: number;
  /** Failed calls by error code ('ERR_INTERNAL' for an error that is not an AirlockError). */
  errors: Record<string, number>;
  /** Calls waiting for a sandbox now. */
  queueDepth: number;
  /** Live sandboxes now, busy or idle. */
  resident: number;
  /** Live sandboxes waiting for a call now. */
  idle: number;
  /** Guest memory reserved for live sandboxes now (bytes): the most their guests can commit. */
  committedBytes: number;
  /** Sandboxes disposed because a call poisoned them (the next call gets a fresh clone). */
  restores: number;
  /** Idle sandboxes disposed to free room: idle too long, over maxResident, or over the memory cap (close() not counted). */
  evictions: number;
  /** Time from call() to its result or error, queueing included, of every call (turned-away ones too). */
  latency: HistogramSnapshot;
  /** Time each call waited for a sandbox (PoolCallEvent.queueMs: 0 for one that never got one). */
  queueWait: HistogramSnapshot;
  /** Usage by tenant name, with each tenant's live sandboxes and waiting calls now. */
  tenants: Record<string, TenantUsage & { resident: number; queueDepth: number }>;
}

type EvictReason = 'idle' | 'lru' | 'memory' | 'close';

interface PooledSandbox {
  tenant: Tenant;
  sandbox: LoadedJSSandbox;
  bytes: number;
  busy: boolean;
  lastUsed: number;
  /** The call running on it, for console routing. */
  call: { id: number; handler: string } | undefined;
}

interface Waiter {
  resolve(s: PooledSandbox): void;
  reject(e: unknown): void;
  timer: NodeJS.Timeout;
}

interface Tenant {
  name: string;
  /** Every live sandbox of the tenant, busy or idle. */
  sandboxes: Set<PooledSandbox>;
  /** Idle ones, least recently used first. */
  idle: PooledSandbox[];
  creating: number;
  queue: Waiter[];
  snapshot: Promise<Snapshot> | undefined;
  snapshotResolved: Snapshot | undefined;
  meter: TenantMeter;
  /** Calls and warm() runs of the tenant in progress (queueing included). */
  active: number;
}

function positiveInt(value: unknown, what: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
    throw new InvalidArgumentError(`${what} must be a positive integer (got ${String(value)})`);
  }
  return value;
}

let nextCallId = 1;

/**
 * Runs calls of many tenants, each in sandboxes cloned from a snapshot: per tenant a
 * concurrency limit and a bounded queue (ERR_OVERLOADED past it), a fresh clone in place
 * of a poisoned sandbox, idle and LRU eviction under maxResident and the process-wide
 * guest memory cap. Emits 'call' (PoolCallEvent), 'restore' ({ tenant }), 'evict'
 * ({ tenant, reason: 'idle' | 'lru' | 'memory' }) and 'forget' ({ tenant, usage }: a
 * dormant tenant's record dropped under maxTenants, with its final TenantUsage for
 * billing). Bad options are ERR_INVALID_ARG.
 */
export class SandboxPool extends EventEmitter {
  readonly #options: SandboxPoolOptions;
  readonly #maxConcurrency: number;
  readonly #maxQueue: number;
  readonly #queueTimeoutMs: number;
  readonly #maxResident: number;
  readonly #idleTimeoutMs: number;
  readonly #maxTenants: number;
  /** Least recently active first (a tenant is moved to the end on each use). */
  readonly #tenants = new Map<string, Tenant>();
  #resident = 0;
  #creating = 0;
  #running = 0;
  #restores = 0;
  #evictions = 0;
  readonly #errors: Record<string, number> = {};
  #calls = 0;
  readonly #latency = new Histogram();
  readonly #queueWait = new Histogram();
  #closing = false;
  readonly #settled: (() => void)[] = [];
  readonly #sweeper: NodeJS.Timeout;

  constructor(options: SandboxPoolOptions) {
    super();
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('SandboxPool needs an options object');
    if (typeof options.snapshot !== 'function') Snapshot.contentOf(options.snapshot);
    if (options.console !== undefined && typeof options.console !== 'function') throw new InvalidArgumentError('console must be a function');
    if (options.hostFunctionModules !== undefined && typeof options.hostFunctionModules !== 'function') {
      throw new InvalidArgumentError('hostFunctionModules must be a function of the tenant');
    }
    this.#options = { ...options };
    this.#maxConcurrency = positiveInt(options.maxConcurrencyPerTenant, 'maxConcurrencyPerTenant', 1);
    this.#maxQueue = options.maxQueuePerTenant === 0 ? 0 : positiveInt(options.maxQueuePerTenant, 'maxQueuePerTenant', 32);
    this.#queueTimeoutMs = positiveInt(options.queueTimeoutMs, 'queueTimeoutMs', 30_000);
    this.#maxResident = positiveInt(options.maxResident, 'maxResident', 1000);
    this.#idleTimeoutMs = positiveInt(options.idleTimeoutMs, 'idleTimeoutMs', 60_000);
    this.#maxTenants = positiveInt(options.maxTenants, 'maxTenants', 100_000);
    this.#sweeper = setInterval(() => void this.evictIdle(this.#idleTimeoutMs), Math.max(1000, this.#idleTimeoutMs / 2));
    this.#sweeper.unref();
  }

  /**
   * Runs `handler` with `event` in a sandbox of `tenant`: an idle one, a new clone, or
   * the next one free. Rejects with the call's own error, ERR_OVERLOADED when the
   * tenant's queue is full or the wait too long, ERR_CONSUMED once the pool is closing.
   */
  async call(tenant: string, handler: string, event: unknown, options?: CallHandlerOptions): Promise<any> {
    const started = performance.now();
    const name = requireName(handler, 'handler name');
    const t = this.#tenant(tenant);
    const callId = nextCallId++;
    // Counted from here, queueing included, so drain() waits for queued calls too.
    this.#running++;
    t.active++;
    let pooled: PooledSandbox | undefined;
    let queueMs = 0;
    let error: string | undefined;
    // The sandbox's stats object from before this call: a call refused before it ran
    // (bad options, a consumed sandbox) leaves it in place and must not be billed again.
    let statsBefore: CallStats | null = null;
    try {
      // The tenant's snapshot sizes its sandboxes: known before any room is made.
      await this.#snapshotOf(t);
      pooled = await this.#acquire(t);
      queueMs = performance.now() - started;
      pooled.call = { id: callId, handler: name };
      statsBefore = pooled.sandbox.lastCallStats;
      return await pooled.sandbox.callHandler(name, event, options ?? this.#options.callDefaults);
    } catch (e) {
      error = e instanceof AirlockError ? e.code : 'ERR_INTERNAL';
      throw e;
    } finally {
      const latest = pooled?.sandbox.lastCallStats ?? null;
      const stats = latest !== statsBefore ? latest : null;
      if (pooled) pooled.call = undefined;
      this.#running--;
      t.active--;
      const latencyMs = performance.now() - started;
      this.#record(t, { tenant: t.name, handler: name, callId, latencyMs, queueMs, cpuTimeMs: stats?.cpuTimeMs ?? null, error }, stats?.wallClockMs ?? 0);
      if (pooled) this.#release(pooled);
      else this.#notifySettled();
    }
  }

  /** Creates sandboxes for `tenant` ahead of its calls, up to `count` (default: its concurrency limit). */
  async warm(tenant: string, count = this.#maxConcurrency): Promise<void> {
    const n = Math.min(positiveInt(count, 'count', 1), this.#maxConcurrency);
    const t = this.#tenant(tenant);
    t.active++;
    try {
      await this.#snapshotOf(t);
      const made: Promise<void>[] = [];
      while (t.sandboxes.size + t.creating < n && this.#makeRoom(t, false)) {
        made.push(this.#create(t).then((p) => this.#release(p)));
      }
      await Promise.all(made);
    } finally {
      t.active--;
    }
  }

  /** Disposes idle sandboxes unused for `olderThanMs` (the sweeper runs this with idleTimeoutMs). */
  async evictIdle(olderThanMs = 0): Promise<number> {
    const cutoff = performance.now() - olderThanMs;
    const gone: Promise<void>[] = [];
    for (const t of this.#tenants.values()) {
      for (const p of [...t.idle]) if (p.lastUsed <= cutoff) gone.push(this.#evict(p, 'idle'));
    }
    await Promise.all(gone);
    return gone.length;
  }

  /** Counters and histograms since the pool started. */
  stats(): PoolStats {
    const tenants: PoolStats['tenants'] = {};
    let idle = 0;
    let queueDepth = 0;
    let committedBytes = 0;
    for (const t of this.#tenants.values()) {
      idle += t.idle.length;
      queueDepth += t.queue.length;
      const usage = t.meter.usage();
      committedBytes += usage.committedBytes;
      // Defined, not assigned: a tenant named '__proto__' is a key like any other.
      Object.defineProperty(tenants, t.name, { value: { ...usage, resident: t.sandboxes.size, queueDepth: t.queue.length }, enumerable: true, writable: true, configurable: true });
    }
    return {
      calls: this.#calls,
      errors: { ...this.#errors },
      queueDepth,
      resident: this.#resident,
      idle,
      committedBytes,
      restores: this.#restores,
      evictions: this.#evictions,
      latency: this.#latency.snapshot(),
      queueWait: this.#queueWait.snapshot(),
      tenants,
    };
  }

  /** Stops taking calls (ERR_CONSUMED) and resolves when queued and running calls have finished. */
  async drain(): Promise<void> {
    this.#closing = true;
    while (this.#running > 0 || this.#creating > 0) {
      await new Promise<void>((r) => this.#settled.push(r));
    }
  }

  /** drain(), then disposes every sandbox and stops the idle sweeper. */
  async close(): Promise<void> {
    await this.drain();
    clearInterval(this.#sweeper);
    const gone: Promise<void>[] = [];
    for (const t of this.#tenants.values()) for (const p of [...t.sandboxes]) gone.push(this.#evict(p, 'close'));
    await Promise.all(gone);
  }

  /** `await using pool = new SandboxPool(...)` closes the pool when the scope ends (same as close()). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // ---------------------------------------------------------------------------

  #tenant(name: string): Tenant {
    if (this.#closing) throw new ConsumedError('the SandboxPool is draining or closed');
    const key = requireName(name, 'tenant');
    const known = this.#tenants.get(key);
    if (known) {
      // Most recently active last: the first dormant record is the one to forget.
      this.#tenants.delete(key);
      this.#tenants.set(key, known);
      return known;
    }
    if (this.#tenants.size >= this.#maxTenants) this.#forgetDormantTenant();
    const t: Tenant = {
      name: key,
      sandboxes: new Set(),
      idle: [],
      creating: 0,
      queue: [],
      snapshot: undefined,
      snapshotResolved: undefined,
      meter: new TenantMeter(),
      active: 0,
    };
    this.#tenants.set(key, t);
    return t;
  }

  /** Drops the least recently active tenant with no sandbox, call or queue (its final
   *  usage goes out with 'forget'), or refuses the new tenant when every one is busy. */
  #forgetDormantTenant(): void {
    for (const t of this.#tenants.values()) {
      if (t.active === 0 && t.creating === 0 && t.sandboxes.size === 0 && t.queue.length === 0) {
        this.#tenants.delete(t.name);
        this.emit('forget', { tenant: t.name, usage: t.meter.usage() });
        return;
      }
    }
    throw new OverloadedError('tenants', `the pool already holds ${this.#tenants.size} tenants with sandboxes or calls (maxTenants)`);
  }

  async #acquire(t: Tenant): Promise<PooledSandbox> {
    const idle = t.idle.pop();
    if (idle) {
      idle.busy = true;
      return Promise.resolve(idle);
    }
    if (t.sandboxes.size + t.creating < this.#maxConcurrency && t.queue.length === 0 && this.#makeRoom(t, true)) return this.#create(t);
    if (t.queue.length >= this.#maxQueue) {
      throw new OverloadedError('queue-full', `tenant '${t.name}' already has ${t.queue.length} calls waiting (maxQueuePerTenant)`);
    }
    return new Promise<PooledSandbox>((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          const i = t.queue.indexOf(waiter);
          if (i >= 0) t.queue.splice(i, 1);
          reject(new OverloadedError('queue-timeout', `tenant '${t.name}' waited ${this.#queueTimeoutMs} ms for a sandbox (queueTimeoutMs)`));
          this.#notifySettled();
        }, this.#queueTimeoutMs),
      };
      t.queue.push(waiter);
    });
  }

  /**
   * Whether one more sandbox fits: under maxResident and the guest memory cap, evicting
   * least recently used idle sandboxes (any tenant's) to get there. Reserves its memory.
   * `throwIfNever`: a sandbox larger than the whole cap is ERR_OVERLOADED, not a wait.
   */
  #makeRoom(t: Tenant, throwIfNever: boolean): boolean {
    const bytes = this.#bytesPerSandbox(t);
    const usage = budget.guestMemoryUsage();
    if (bytes > usage.limit) {
      if (throwIfNever) throw new OverloadedError('memory', `a sandbox needs ${bytes} bytes of guest memory, more than the process-wide cap of ${usage.limit} (setGuestMemoryLimit())`);
      return false;
    }
    for (;;) {
      if (this.#resident + this.#creating < this.#maxResident) {
        if (budget.tryReserve(bytes)) return true;
        if (!this.#evictLru('memory')) return false;
      } else if (!this.#evictLru('lru')) return false;
    }
  }

  /** What one sandbox of `t` reserves; its snapshot is resolved (#snapshotOf) first. */
  #bytesPerSandbox(t: Tenant): number {
    const snapshot = typeof this.#options.snapshot === 'function' ? t.snapshotResolved : this.#options.snapshot;
    if (!snapshot) throw new InternalError(`the snapshot of tenant '${t.name}' is not resolved yet`);
    const c = Snapshot.contentOf(snapshot).config;
    return c.heapSize + c.stackSize + c.inputSize + c.outputSize;
  }

  /** Disposes the least recently used idle sandbox of any tenant; false when none is idle. */
  #evictLru(reason: EvictReason): boolean {
    let oldest: PooledSandbox | undefined;
    for (const t of this.#tenants.values()) {
      const p = t.idle[0];
      if (p && (!oldest || p.lastUsed < oldest.lastUsed)) oldest = p;
    }
    if (!oldest) return false;
    void this.#evict(oldest, reason);
    return true;
  }

  async #evict(p: PooledSandbox, reason: EvictReason): Promise<void> {
    const t = p.tenant;
    const i = t.idle.indexOf(p);
    if (i >= 0) t.idle.splice(i, 1);
    if (!t.sandboxes.delete(p)) return;
    this.#resident--;
    budget.release(p.bytes);
    t.meter.commit(-p.bytes);
    if (reason !== 'close') {
      this.#evictions++;
      t.meter.evictions++;
      this.emit('evict', { tenant: t.name, reason });
    }
    await p.sandbox.dispose().catch(() => undefined);
  }

  /** A new sandbox for `t`, busy; its memory was reserved by #makeRoom. */
  async #create(t: Tenant): Promise<PooledSandbox> {
    t.creating++;
    this.#creating++;
    let reserved: number | undefined = this.#bytesPerSandbox(t);
    try {
      const snapshot = await this.#snapshotOf(t);
      const pooled: PooledSandbox = { tenant: t, sandbox: undefined as unknown as LoadedJSSandbox, bytes: reserved, busy: true, lastUsed: performance.now(), call: undefined };
      const builder = new SandboxBuilder();
      const modules = this.#options.hostFunctionModules;
      if (modules) builder.setHostFunctionModules(() => modules(t.name));
      if (this.#options.hostFunctionFilter) builder.setHostFunctionFilter(this.#options.hostFunctionFilter);
      const route = this.#options.console;
      if (route) {
        builder.setConsoleHandler((level, message) => {
          const call = pooled.call;
          route({ tenant: t.name, callId: call?.id ?? 0, handler: call?.handler ?? '', level, message });
        });
      }
      pooled.sandbox = await (await builder.buildFromSnapshot(snapshot)).restoreLoadedSandbox();
      t.sandboxes.add(pooled);
      this.#resident++;
      t.meter.commit(reserved);
      reserved = undefined;
      return pooled;
    } finally {
      if (reserved !== undefined) budget.release(reserved);
      t.creating--;
      this.#creating--;
      // A failed creation may leave waiters that can now be served another way.
      queueMicrotask(() => this.#pump());
    }
  }

  #snapshotOf(t: Tenant): Promise<Snapshot> {
    const source = this.#options.snapshot;
    if (typeof source !== 'function') return Promise.resolve(source);
    if (!t.snapshot) {
      const p = Promise.resolve().then(() => source(t.name));
      t.snapshot = p.then(
        (s) => {
          Snapshot.contentOf(s);
          t.snapshotResolved = s;
          return s;
        },
        (e: unknown) => {
          t.snapshot = undefined;
          throw e;
        },
      );
    }
    return t.snapshot;
  }

  /** Back to idle, or (poisoned) replaced by a fresh clone on demand; then serves waiters. */
  #release(p: PooledSandbox): void {
    p.busy = false;
    p.lastUsed = performance.now();
    const t = p.tenant;
    if (p.sandbox.poisoned) {
      this.#restores++;
      t.meter.restores++;
      this.emit('restore', { tenant: t.name });
      t.sandboxes.delete(p);
      this.#resident--;
      budget.release(p.bytes);
      t.meter.commit(-p.bytes);
      void p.sandbox.dispose().catch(() => undefined);
    } else {
      t.idle.push(p);
    }
    this.#pump();
  }

  /** Hands idle sandboxes to waiting calls and starts clones for the rest, as room allows. */
  #pump(): void {
    for (const t of this.#tenants.values()) {
      while (t.queue.length > 0) {
        const idle = t.idle.pop();
        if (idle) {
          idle.busy = true;
          const w = t.queue.shift()!;
          clearTimeout(w.timer);
          w.resolve(idle);
          continue;
        }
        if (t.sandboxes.size + t.creating >= this.#maxConcurrency) break;
        let room = false;
        try {
          room = this.#makeRoom(t, true);
        } catch (e) {
          const w = t.queue.shift()!;
          clearTimeout(w.timer);
          w.reject(e);
          continue;
        }
        if (!room) break;
        const w = t.queue.shift()!;
        clearTimeout(w.timer);
        this.#create(t).then(w.resolve, w.reject);
      }
    }
    this.#notifySettled();
  }

  #notifySettled(): void {
    for (const r of this.#settled.splice(0)) r();
  }

  #record(t: Tenant, e: PoolCallEvent, wallMs: number): void {
    this.#calls++;
    t.meter.calls++;
    t.meter.wallTimeMs += wallMs;
    t.meter.cpuTimeMs += e.cpuTimeMs ?? wallMs;
    if (e.error) {
      this.#errors[e.error] = (this.#errors[e.error] ?? 0) + 1;
      t.meter.errors[e.error] = (t.meter.errors[e.error] ?? 0) + 1;
    }
    this.#latency.observe(e.latencyMs);
    this.#queueWait.observe(e.queueMs);
    this.emit('call', e);
  }
}
