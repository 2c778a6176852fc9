// compile-cache.ts — the process-wide compiled-code cache: QuickJS bytecode of handler and
// module source, made by a compiler sandbox that never runs tenant code, kept LRU within a
// byte budget the host owns, and handed to LOAD so each source is compiled once per process.
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Backend, EngineConfig } from './engine/engine.js';
import { AIRLOCK_ABI_VERSION } from './engine/abi.generated.js';
import { engineFactory } from './engine/select.js';
import { guestImageSha256 } from './engine/kvm-template.js';
import { guestModuleFacts } from './engine/wasm/template.js';
import { InvalidArgumentError } from './errors.js';
import { SandboxCore, type CompileUnit } from './core.js';

const MiB = 1024 * 1024;

/** What the key separates beside the unit itself: compiled where, and for which profile. */
export interface CompileTarget {
  backend: Backend;
  /** The sizes of the sandbox asking; its compiler is made with the same heap and stack. */
  config: EngineConfig;
  hardened: boolean;
}

/** Counters of the compiled-code cache since it was last configured or cleared. */
export interface CompileCacheStats {
  /** Units whose bytecode (or known compile failure) came from the cache. */
  hits: number;
  /** Units that had to be compiled. */
  misses: number;
  /** COMPILE requests sent to compiler sandboxes. */
  compileRequests: number;
  /** Bytes the cache holds (bytecode plus a fixed overhead per entry). */
  bytes: number;
  /** Units the cache holds (bytecode, or a remembered compile failure). */
  entries: number;
}

/** Per-entry overhead counted against the budget, so empty entries (a failed compile) cost too. */
const ENTRY_OVERHEAD = 128;
/** A compiler with no work for this long is disposed: its guest memory is freed and an
 *  idle process can exit. The cached bytes stay. */
const COMPILER_IDLE_MS = 2000;
/** Host budget for one COMPILE: a source whose parse takes longer is not cached (its
 *  sandbox then compiles it itself, as without a cache). */
const COMPILE_WALL_CLOCK_MS = 30_000;
/** The compiler's output buffer: room for a large bundle's bytecode. */
const COMPILER_MIN_OUTPUT = 32 * MiB;

interface Compiler {
  core: Promise<SandboxCore>;
  /** Settles when the compiler is back at its pristine snapshot (rejects if it cannot be). */
  pristine: Promise<void>;
  idle: NodeJS.Timeout | undefined;
  users: number;
}

/**
 * One per process (`compileCache`). Why the bytecode can be trusted: QuickJS's bytecode
 * reader assumes well-formed input, so bytes a tenant's guest wrote must never reach
 * another guest. The cache holds only what COMPILE returned from a compiler sandbox that
 * has run no tenant code (it only parses; it never evaluates), restored to its pristine
 * snapshot before every COMPILE, so its bytes are a function of the source alone.
 */
export class CompileCache {
  #maxBytes = 64 * MiB;
  #entries = this.#makeLru();
  readonly #inflight = new Map<string, Promise<Uint8Array | undefined>>();
  readonly #compilers = new Map<string, Compiler>();
  #hits = 0;
  #misses = 0;
  #compileRequests = 0;

  #makeLru(): LRUCache<string, Uint8Array> {
    return new LRUCache<string, Uint8Array>({
      maxSize: Math.max(this.#maxBytes, 1),
      maxEntrySize: Math.max(Math.floor(this.#maxBytes / 4), 1),
      sizeCalculation: (bytes) => bytes.length + ENTRY_OVERHEAD,
    });
  }

  /** The byte budget; 0 turns the cache off (every LOAD compiles its source, as before it). */
  get maxBytes(): number {
    return this.#maxBytes;
  }

  /** Sets the byte budget (an entry may take at most a quarter of it) and empties the cache. */
  configure(options: { maxBytes: number }): void {
    const max = options?.maxBytes;
    if (typeof max !== 'number' || !Number.isSafeInteger(max) || max < 0) {
      throw new InvalidArgumentError(`compile cache maxBytes must be a non-negative integer (got ${String(max)})`);
    }
    this.#maxBytes = max;
    this.clear();
  }

  /** Drops every entry and resets the counters; compilers are kept. */
  clear(): void {
    this.#entries = this.#makeLru();
    this.#hits = this.#misses = this.#compileRequests = 0;
  }

  /** Hits, misses, COMPILE requests and the bytes and entries held. */
  stats(): CompileCacheStats {
    return { hits: this.#hits, misses: this.#misses, compileRequests: this.#compileRequests, bytes: this.#entries.calculatedSize, entries: this.#entries.size };
  }

  /**
   * Bytecode for each unit (undefined: compile the source in the sandbox, as without a
   * cache). Never throws: a compiler that fails only means no bytecode.
   */
  async bytecodeFor(target: CompileTarget, units: readonly CompileUnit[]): Promise<(Uint8Array | undefined)[]> {
    if (this.#maxBytes === 0 || units.length === 0) return units.map(() => undefined);
    let keys: string[];
    try {
      keys = units.map((u) => cacheKey(target, u));
    } catch {
      return units.map(() => undefined); // the guest image digest is unreadable: no cache
    }
    const result: (Uint8Array | undefined)[] = new Array(units.length);
    const missing: number[] = [];
    const waits: Promise<void>[] = [];
    keys.forEach((key, i) => {
      const cached = this.#entries.get(key);
      if (cached) {
        this.#hits++;
        result[i] = cached.length ? cached : undefined;
        return;
      }
      const pending = this.#inflight.get(key);
      if (pending) {
        this.#hits++;
        waits.push(pending.then((b) => void (result[i] = b)));
        return;
      }
      this.#misses++;
      missing.push(i);
    });
    if (missing.length) {
      const compiled = this.#compile(target, missing.map((i) => units[i]!));
      missing.forEach((unitIndex, j) => {
        const key = keys[unitIndex]!;
        const one = compiled.then((all) => all?.[j]);
        this.#inflight.set(key, one);
        waits.push(
          one.then((bytes) => {
            this.#inflight.delete(key);
            // A compiler that failed as a whole (undefined list) is not remembered: the
            // next load tries again. A unit that does not compile is (empty entry).
            compiled.then((all) => {
              if (all) this.#entries.set(key, bytes ?? new Uint8Array(0));
            });
            result[unitIndex] = bytes;
          }),
        );
      });
    }
    await Promise.all(waits);
    return result;
  }

  /** One COMPILE of `units` in a pristine compiler; undefined when the compiler failed. */
  async #compile(target: CompileTarget, units: CompileUnit[]): Promise<(Uint8Array | undefined)[] | undefined> {
    const config: EngineConfig = { ...target.config, outputSize: Math.max(target.config.outputSize, COMPILER_MIN_OUTPUT) };
    const id = JSON.stringify([target.backend, target.hardened, config]);
    let compiler = this.#compilers.get(id);
    if (!compiler) {
      compiler = { core: startCompiler(target, config), pristine: Promise.resolve(), idle: undefined, users: 0 };
      this.#compilers.set(id, compiler);
    }
    clearTimeout(compiler.idle);
    compiler.users++;
    try {
      const core = await compiler.core;
      // Pristine before every COMPILE: nothing an earlier source did to the compiler's
      // parser state can reach the next one's bytecode. The restore runs after each
      // COMPILE, off the loading sandbox's path, and the next COMPILE waits for it.
      await compiler.pristine;
      this.#compileRequests++;
      const pending = core.compile(units, { wallClockTimeoutMs: COMPILE_WALL_CLOCK_MS });
      compiler.pristine = pending.then(
        () => core.unload(),
        () => core.unload(),
      );
      compiler.pristine.catch(() => undefined); // observed by the next COMPILE
      const out = await pending;
      const limit = this.#entries.maxEntrySize;
      return out.map((b) => (b && b.length + ENTRY_OVERHEAD <= limit ? b : undefined));
    } catch {
      this.#compilers.delete(id);
      void compiler.core.then((c) => c.dispose()).catch(() => undefined);
      return undefined;
    } finally {
      compiler.users--;
      if (compiler.users === 0 && this.#compilers.get(id) === compiler) {
        compiler.idle = setTimeout(() => {
          this.#compilers.delete(id);
          void compiler!.core.then((c) => c.dispose()).catch(() => undefined);
        }, COMPILER_IDLE_MS);
        compiler.idle.unref();
      }
    }
  }
}

async function startCompiler(target: CompileTarget, config: EngineConfig): Promise<SandboxCore> {
  const core = await SandboxCore.create(config, engineFactory(target.backend), () => undefined, target.hardened ? { hardened: { timeResolutionUs: 1000, fixedTimeMs: undefined } } : {});
  try {
    await core.loadRuntime();
  } catch (e) {
    await core.dispose();
    throw e;
  }
  return core;
}

/** The key: ABI version, guest image digest and tier, profile, unit kind and names, source. */
function cacheKey(target: CompileTarget, unit: CompileUnit): string {
  const image = target.backend === 'kvm' ? guestImageSha256() : guestModuleFacts().sha256;
  const h = createHash('sha256');
  for (const part of [String(AIRLOCK_ABI_VERSION), target.backend, image, target.hardened ? 'hardened' : 'plain', unit.tag, unit.namespace, unit.name]) {
    h.update(`${part.length}:${part}`);
  }
  h.update(unit.source);
  return h.digest('hex');
}

/** The process's compiled-code cache (docs/ARCHITECTURE.md, "Compiled-code cache"). */
export const compileCache = new CompileCache();
