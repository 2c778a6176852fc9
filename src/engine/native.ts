// native.ts — loads the host addon (the VMM) once and describes its JS surface.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { addonPath as builtAddonPath, prebuiltAddonPath } from './paths.js';

// AIRLOCK_ADDON_PATH swaps in another build of the same addon (the sanitizer build of
// scripts/test-sanitized.sh); the package's own build otherwise.
const addonPath = process.env.AIRLOCK_ADDON_PATH || builtAddonPath;

export interface NativeSendResult {
  output: Buffer;
  wallTimeNs: number;
  cpuTimeNs: number;
  /** Guest CPU time after the previous answer (post-call GC, poll window), bounded by
   *  the host's post-answer window (docs/CANCELLATION.md). */
  afterCpuTimeNs: number;
}

export interface NativeVm {
  boot(): Promise<Buffer>;
  send(request: Buffer, opts?: { wallClockTimeoutMs?: number; cpuTimeoutMs?: number }): Promise<NativeSendResult>;
  /** Answers host call `callId`; an answer for a call that is no longer waiting is ignored. */
  hostReturn(reply: Buffer, callId: number): void;
  kill(): void;
  snapshot(): Promise<object>;
  restore(snapshot: object): Promise<void>;
  dispose(): Promise<void>;
}

export interface NativeAddon {
  abiVersion: number;
  probe(): { usable: boolean; reasons: string[] };
  measureExitFloor(iterations: number): Promise<number[]>;
  /** The process-wide busy-wait budget: the exit floor measured when the first VM
   *  started (0 before), the CPUs the call path's threads (main, vCPU)
   *  may run on, re-checked every 10 ms, the load other processes put on them (cores'
   *  worth, smoothed over two 200 ms samples: what the cap leaves them), how many guests may poll for requests at once
   *  (0: every call takes one exit and nothing spins), how many poll now, how many
   *  guests run now (an exchange or a window after one), and the call-path counters:
   *  process-wide counts of the path each exchange took (docs/PROTOCOL.md, "Polling"). */
  pollingBudget(): { exitFloorUs: number; cores: number; othersLoad: number; cap: number; polling: number; sessions: number; counters: Record<string, number> };
  /** Chooses the real-time signal that interrupts vCPU threads (0 = automatic, or
   *  AIRLOCK_KVM_SIGNAL); only before the first VM. Throws ERR_INVALID_ARG otherwise. */
  setCancelSignal(signal: number): void;
  Vm: new (
    image: Buffer,
    config: { heapSize: number; stackSize: number; inputSize: number; outputSize: number; consoleLimit: number },
    onHostCall: (output: Buffer, callId: number) => void,
  ) => NativeVm;
}

let cached: { addon?: NativeAddon; error?: string } | undefined;

/** The addon, or the reason it cannot be loaded (with the fix). */
export function loadAddon(): { addon?: NativeAddon; error?: string } {
  if (cached) return cached;
  // An installed package ships only the prebuilt addon (linux-x64, glibc >= 2.28): its
  // failures need another fix than a clone's own build.
  const prebuilt = addonPath === prebuiltAddonPath;
  if (!existsSync(addonPath)) {
    cached = {
      error: prebuilt
        ? `no KVM addon ships for ${process.platform}-${process.arch} (only linux-x64 with glibc 2.28 or newer); the WebAssembly tier runs here`
        : `the host addon is not built (${addonPath} is missing; run \`npm run setup\`)`,
    };
    return cached;
  }
  try {
    const req = createRequire(__filename);
    cached = { addon: req(addonPath) as NativeAddon };
  } catch (e) {
    // A setting of the addon's own from the environment (AIRLOCK_KVM_POLLERS, ...) that
    // it refused: the fix is the setting, not a rebuild.
    const fix =
      (e as { code?: unknown }).code === 'ERR_INVALID_ARG'
        ? 'correct or unset it'
        : prebuilt
          ? 'the prebuilt addon needs linux-x64 with glibc 2.28 or newer (not musl); the WebAssembly tier runs here'
          : 'rebuild it with `npm run setup`';
    cached = { error: `the host addon failed to load: ${(e as Error).message} (${fix})` };
  }
  return cached;
}
