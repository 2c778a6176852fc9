// cpu-clock-refusal.test.ts — on a platform where a thread's CPU time cannot be read
// (macOS, Windows, a Linux without /proc), the WebAssembly tier refuses cpuTimeoutMs with
// ERR_UNAVAILABLE instead of running the call unlimited. The platform is stood in for by
// mocking the probe; the refusal leaves the sandbox usable.
import { afterEach, describe, expect, it, vi } from 'vitest';

const probe = vi.hoisted(() => ({ reason: null as string | null }));
vi.mock('../../src/engine/thread-cpu-clock.js', async (importOriginal) => ({
  ...(await importOriginal<typeof import('../../src/engine/thread-cpu-clock.js')>()),
  threadCpuClockUnavailableReason: () => probe.reason,
}));

import { SandboxBuilder, UnavailableError, type LoadedJSSandbox } from '../../src/index.js';
import { threadCpuClockPath } from '../../src/engine/thread-cpu-clock.js';

async function wasmSandbox(): Promise<LoadedJSSandbox> {
  const js = await (await new SandboxBuilder().setBackend('wasm').build()).loadRuntime();
  js.addHandler('spin', 'function handler(n) { let x = 0; for (let i = 0; i < n; i++) x += i; return x; }');
  return js.getLoadedSandbox();
}

describe('cpuTimeoutMs without a thread CPU clock (WebAssembly tier)', () => {
  afterEach(() => {
    probe.reason = null;
  });

  it('is refused with ERR_UNAVAILABLE naming the reason, and the sandbox stays usable', async () => {
    const loaded = await wasmSandbox();
    try {
      probe.reason = 'thread CPU time is not readable on testos; use wallClockTimeoutMs';
      const refused = loaded.callHandler('spin', 10, { cpuTimeoutMs: 50 });
      await expect(refused).rejects.toBeInstanceOf(UnavailableError);
      await expect(loaded.callHandler('spin', 10, { cpuTimeoutMs: 50 })).rejects.toMatchObject({
        code: 'ERR_UNAVAILABLE',
        reasons: [probe.reason],
      });
      expect(loaded.poisoned).toBe(false);
      // Limits the platform can enforce still apply, and the call runs.
      expect(await loaded.callHandler('spin', 10, { wallClockTimeoutMs: 5000 })).toBe(45);
    } finally {
      await loaded.dispose();
    }
  });

  it.runIf(process.platform === 'linux')('is enforced where the clock exists (Linux with /proc)', async () => {
    const loaded = await wasmSandbox();
    try {
      await expect(loaded.callHandler('spin', 1e12, { cpuTimeoutMs: 100 })).rejects.toMatchObject({
        code: 'ERR_CANCELLED',
        terminatedBy: 'cpu-time',
      });
    } finally {
      await loaded.dispose();
    }
  });
});

describe('the thread CPU clock probe', () => {
  it(`finds ${threadCpuClockPath} on Linux`, async () => {
    const { threadCpuClockUnavailableReason } = await vi.importActual<typeof import('../../src/engine/thread-cpu-clock.js')>(
      '../../src/engine/thread-cpu-clock.js',
    );
    expect(threadCpuClockUnavailableReason()).toBe(process.platform === 'linux' ? null : expect.any(String));
  });
});
