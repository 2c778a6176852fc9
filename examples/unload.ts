// unload.ts — handler lifecycle: unload() drops handlers, modules and their state, and
// a new version loads into the same sandbox.
// Run: npx tsx examples/unload.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const proto = await new SandboxBuilder().build();
  let sandbox = await proto.loadRuntime();

  sandbox.addHandler('counter', 'let n = 0; function handler() { return { version: 1, n: ++n }; }');
  let loaded = await sandbox.getLoadedSandbox();
  console.log(JSON.stringify(await loaded.callHandler('counter', {})));
  console.log(JSON.stringify(await loaded.callHandler('counter', {})));

  sandbox = await loaded.unload();
  sandbox.addHandler('counter', 'let n = 100; function handler() { return { version: 2, n: ++n }; }');
  loaded = await sandbox.getLoadedSandbox();
  console.log(JSON.stringify(await loaded.callHandler('counter', {})));
  await loaded.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
