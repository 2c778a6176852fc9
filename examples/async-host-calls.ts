// async-host-calls.ts — host functions that do not block the guest: importing
// 'host:<module>?async' gives the same functions returning Promises, so several run at
// once on the host. The plain 'host:<module>' import keeps the blocking behaviour.
// Run: npx tsx examples/async-host-calls.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  // At most 8 async calls in flight per call (the default is 64).
  const proto = await new SandboxBuilder().setAsyncHostCallLimit(8).build();
  const prices: Record<string, number> = { apple: 3, pear: 4, plum: 2 };
  proto.hostModule('db').register('price', async (item: string) => {
    await new Promise((resolve) => setTimeout(resolve, 50)); // stands in for real I/O
    if (!(item in prices)) throw new Error(`no price for ${item}`);
    return prices[item];
  });

  const sandbox = await proto.loadRuntime();
  sandbox.addHandler(
    'basket',
    `
    import { price } from 'host:db?async';

    export default async function (event) {
      // Three lookups at once: about 50 ms in all, not 150.
      const results = await Promise.allSettled(event.items.map((item) => price(item)));
      return results.map((r, i) => r.status === 'fulfilled' ? event.items[i] + '=' + r.value : r.reason.name + ': ' + r.reason.message);
    }
  `,
  );
  const loaded = await sandbox.getLoadedSandbox();
  console.log(JSON.stringify(await loaded.callHandler('basket', { items: ['apple', 'pear', 'kiwi'] })));
  await loaded.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
