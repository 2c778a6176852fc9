// simple.ts — the quick start: one handler in a fresh sandbox, called from TypeScript.
// Run: npx tsx examples/simple.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const builder = new SandboxBuilder();
  const protoSandbox = await builder.build();

  const jsSandbox = await protoSandbox.loadRuntime();

  // The routing key is 'greet'; the guest code defines a function named `handler`.
  jsSandbox.addHandler(
    'greet',
    `
    function handler(event) {
      event.message = 'Hello, ' + event.name + '!';
      return event;
    }
  `,
  );

  const loadedSandbox = await jsSandbox.getLoadedSandbox();

  const result = await loadedSandbox.callHandler('greet', { name: 'World' });
  console.log(result); // { name: 'World', message: 'Hello, World!' }
  console.log(`backend: ${loadedSandbox.backend}, call took ${loadedSandbox.lastCallStats?.wallClockMs.toFixed(3)} ms`);

  await loadedSandbox.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
