// interrupt.ts — stopping a handler that runs too long: a wall-clock timeout ends a
// 4-second handler after 1 second, a kill() from a timer ends another, and restore()
// rolls the poisoned sandbox back to a snapshot.
// Run: npx tsx examples/interrupt.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const proto = await new SandboxBuilder().build();
  const sandbox = await proto.loadRuntime();
  sandbox.addHandler('slow', `
    function handler(event) {
      const end = Date.now() + event.ms;
      while (Date.now() < end) {}
      return { finished: true };
    }
  `);
  const loaded = await sandbox.getLoadedSandbox();
  const snapshot = await loaded.snapshot();

  // 1. A wall-clock timeout.
  const started = Date.now();
  try {
    await loaded.callHandler('slow', { ms: 4000 }, { wallClockTimeoutMs: 1000 });
  } catch (error) {
    const e = error as Error & { code?: string };
    if (e.code !== 'ERR_CANCELLED') throw error;
    console.log(`timed out after ~${Math.round((Date.now() - started) / 100) / 10}s: ${e.code}, terminatedBy=${loaded.lastCallStats?.terminatedBy}`);
  }
  console.log(`poisoned: ${loaded.poisoned}`);
  await loaded.restore(snapshot);
  console.log(`after restore, poisoned: ${loaded.poisoned}`);

  // 2. kill() from a timer, through the interrupt handle.
  const handle = loaded.interruptHandle;
  const timer = setTimeout(() => handle.kill(), 200);
  try {
    await loaded.callHandler('slow', { ms: 4000 });
  } catch (error) {
    console.log(`killed: ${(error as { code?: string }).code}, terminatedBy=${loaded.lastCallStats?.terminatedBy}`);
  } finally {
    clearTimeout(timer);
  }
  await loaded.restore(snapshot);

  // 3. The sandbox works again.
  console.log(JSON.stringify(await loaded.callHandler('slow', { ms: 10 })));
  await loaded.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
