// user-modules.ts — reusable ES modules inside the guest: dependencies registered in
// any order, a custom namespace, and one module instance shared by two handlers.
// Run: npx tsx examples/user-modules.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const proto = await new SandboxBuilder().build();
  const sandbox = await proto.loadRuntime();

  // 'geometry' imports 'constants', which is registered after it: modules compile lazily.
  sandbox.addModule('geometry', `
    import { PI } from 'user:constants';
    export function circleArea(r) { return PI * r * r; }
  `);
  sandbox.addModule('constants', 'export const PI = 3.14159;');

  // A custom namespace: imported as 'mylib:format'.
  sandbox.addModule('format', 'export const fixed = (x) => x.toFixed(2);', 'mylib');

  // One module, one instance: its state is shared by every handler that imports it.
  sandbox.addModule('counter', `
    let count = 0;
    export function increment() { return ++count; }
    export function getCount() { return count; }
  `);

  sandbox.addHandler('area', `
    import { circleArea } from 'user:geometry';
    import { fixed } from 'mylib:format';
    function handler(event) { return { r: event.r, area: fixed(circleArea(event.r)) }; }
  `);
  sandbox.addHandler('writer', `
    import { increment } from 'user:counter';
    function handler() { return { count: increment() }; }
  `);
  sandbox.addHandler('reader', `
    import { getCount } from 'user:counter';
    function handler() { return { count: getCount() }; }
  `);

  const loaded = await sandbox.getLoadedSandbox();
  console.log('area', JSON.stringify(await loaded.callHandler('area', { r: 2 })));
  console.log('writer', JSON.stringify(await loaded.callHandler('writer', {})));
  console.log('reader', JSON.stringify(await loaded.callHandler('reader', {})));
  console.log('writer', JSON.stringify(await loaded.callHandler('writer', {})));
  console.log('reader', JSON.stringify(await loaded.callHandler('reader', {})));
  await loaded.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
