// cpu-timeout.ts — the recommended pattern: both monitors at once (first to fire wins).
// Compute-bound work trips the CPU monitor; a handler waiting on a slow host function
// burns no CPU, so the wall clock is the backstop that ends it.
// Run: npx tsx examples/cpu-timeout.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const proto = await new SandboxBuilder().build();
  // A host function that answers after 10 s (unref'd: it must not keep this demo alive).
  proto.register('net', 'slowFetch', () => new Promise((resolve) => setTimeout(() => resolve('late'), 10_000).unref()));
  const sandbox = await proto.loadRuntime();
  sandbox.addHandler('compute', 'function handler() { let x = 0; for (;;) x++; }');
  sandbox.addHandler('wait', "import { slowFetch } from 'host:net';\nfunction handler() { return slowFetch(); }");
  const loaded = await sandbox.getLoadedSandbox();
  const snapshot = await loaded.snapshot();
  // Compute gets a generous wall clock, so the CPU monitor ends it even on a busy host.
  const limits: Record<string, { cpuTimeoutMs: number; wallClockTimeoutMs: number }> = {
    compute: { cpuTimeoutMs: 200, wallClockTimeoutMs: 10_000 },
    wait: { cpuTimeoutMs: 200, wallClockTimeoutMs: 1000 },
  };

  for (const name of ['compute', 'wait']) {
    try {
      await loaded.callHandler(name, {}, limits[name]);
    } catch (error) {
      const e = error as Error & { code?: string };
      if (e.code !== 'ERR_CANCELLED') throw error;
      const stats = loaded.lastCallStats!;
      const cpu = stats.cpuTimeMs === null ? 'n/a' : `${stats.cpuTimeMs.toFixed(0)}ms`;
      console.log(`${name}: terminatedBy=${stats.terminatedBy} wall=${stats.wallClockMs.toFixed(0)}ms cpu=${cpu}`);
    }
    await loaded.restore(snapshot);
  }
  await loaded.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
