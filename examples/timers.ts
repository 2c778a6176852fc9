// timers.ts — setTimeout, setInterval and queueMicrotask inside a handler: the guest
// sleeps in the host between timers (no CPU spent), timers left pending when the
// handler settles are cancelled, and the wall-clock limit still applies.
// Run: npx tsx examples/timers.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const proto = await new SandboxBuilder().build();
  const sandbox = await proto.loadRuntime();
  sandbox.addHandler(
    'retry',
    `
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

    export default async function (event) {
      const log = [];
      queueMicrotask(() => log.push('microtask'));
      // Retry with exponential back-off: 5, 10, 20 ms.
      for (let attempt = 1, delay = 5; attempt <= event.attempts; attempt++, delay *= 2) {
        log.push('attempt ' + attempt);
        await sleep(delay);
      }
      // An interval ticks until it is cleared.
      let ticks = 0;
      await new Promise((resolve) => {
        const id = setInterval(() => { if (++ticks === 3) { clearInterval(id); resolve(); } }, 2);
      });
      setTimeout(() => console.log('never printed: cancelled when the handler settles'), 1000);
      return { log, ticks };
    }
  `,
  );
  sandbox.addHandler('forever', 'export default () => new Promise((resolve) => setTimeout(resolve, 60_000));');
  const loaded = await sandbox.getLoadedSandbox();

  // A CPU limit of 50 ms is no obstacle to ~50 ms of sleeping: waiting costs no CPU.
  console.log(JSON.stringify(await loaded.callHandler('retry', { attempts: 3 }, { cpuTimeoutMs: 50 })));
  try {
    await loaded.callHandler('forever', {}, { wallClockTimeoutMs: 100 });
  } catch (e) {
    const error = e as { code: string };
    console.log(`forever: ${error.code}, terminatedBy=${loaded.lastCallStats?.terminatedBy}`);
  }
  await loaded.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
