// idle-cpu.ts — the `idle_cpu_ms` figure: what idle sandboxes cost the process. Ten
// sandboxes of one tier make one call each, get 300 ms to settle (post-call work,
// spinning, parking), then the process's CPU time (every thread: main, workers or vCPU
// threads) is measured over the next second. Target: at most 5 ms.
import { SandboxBuilder, type LoadedJSSandbox } from '../../src/index.js';
import type { Backend } from '../../src/engine/engine.js';

const SANDBOXES = 10;
const SETTLE_MS = 300;
const WINDOW_MS = 1000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One measurement: process CPU in ms over the window, with the sandboxes idle. */
export async function idleCpuMs(backend: Backend): Promise<number> {
  const sandboxes: LoadedJSSandbox[] = [];
  try {
    for (let i = 0; i < SANDBOXES; i++) {
      const js = await (await new SandboxBuilder().setBackend(backend).build()).loadRuntime();
      js.addHandler('echo', 'function handler(e) { return e; }');
      sandboxes.push(await js.getLoadedSandbox());
    }
    for (const s of sandboxes) await s.callHandler('echo', { idle: true });
    await sleep(SETTLE_MS);
    const before = process.cpuUsage();
    await sleep(WINDOW_MS);
    const used = process.cpuUsage(before);
    return (used.user + used.system) / 1000;
  } finally {
    await Promise.all(sandboxes.map((s) => s.dispose()));
  }
}
