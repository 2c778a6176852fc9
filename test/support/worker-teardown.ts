// worker-teardown.ts — sandboxes a worker thread abandons: the worker (plain JavaScript
// that loads the addon itself) sets them in some wait and says so, then is terminated,
// which runs their finalizers; every VM's fds and the runners must then go, which needs
// a runner to take each sandbox out of its wait.
import { readdirSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { expect, vi } from 'vitest';

const openFds = () => readdirSync('/proc/self/fd').length;

/** Runs `source` in a worker until its first message, terminates it, and waits for its sandboxes to be freed. */
export async function expectAbandonedSandboxesFreed(addon: { runnerPool(): { runners: number } }, source: string, workerData: unknown): Promise<void> {
  const before = openFds();
  const worker = new Worker(source, { eval: true, workerData });
  await new Promise<void>((resolve, reject) => {
    worker.once('message', () => resolve());
    worker.once('error', reject);
  });
  await worker.terminate();
  await vi.waitFor(() => expect(openFds()).toBeLessThanOrEqual(before), { timeout: 20_000, interval: 50 });
  await vi.waitFor(() => expect(addon.runnerPool().runners).toBe(0), { timeout: 10_000, interval: 50 });
}
