// hardened.ts — the hardened profile for untrusted code: no eval or Function, frozen
// intrinsics, a fixed clock and a seeded Math.random, so a run can be replayed exactly.
// Run: npx tsx examples/hardened.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const builder = new SandboxBuilder().setHardened({ fixedTime: new Date('2024-01-01T00:00:00Z') }).setDeterministicRandom(7);
  const js = await (await builder.build()).loadRuntime();
  js.addHandler(
    'probe',
    `
    function attempt(f) { try { f(); return 'allowed'; } catch (e) { return e.name; } }
    function handler() {
      return {
        eval: attempt(() => eval('1')),
        pollute: attempt(() => { Object.prototype.admin = true; }),
        now: new Date().toISOString(),
        dice: Math.floor(Math.random() * 6) + 1,
      };
    }
  `,
  );
  const sandbox = await js.getLoadedSandbox();
  const snapshot = await sandbox.snapshot();
  const first = JSON.stringify(await sandbox.callHandler('probe', {}));
  await sandbox.restore(snapshot);
  const replay = JSON.stringify(await sandbox.callHandler('probe', {}));
  console.log(first);
  console.log(`replayed identically: ${first === replay}`);
  await sandbox.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
