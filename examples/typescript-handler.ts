// typescript-handler.ts — a handler and a module written in TypeScript: types are stripped on
// the host, so a guest stack trace still names the line and column of the TypeScript source.
// Run: npx tsx examples/typescript-handler.ts
import { SandboxBuilder } from 'airlock-vm';

const pricing = `
export interface Item { name: string; cents: number; quantity: number }
export function total(items: readonly Item[]): number {
  return items.reduce((sum: number, item: Item) => sum + item.cents * item.quantity, 0);
}
`;

const checkout = `
import { total, type Item } from 'user:pricing';
type Order = { items: Item[] };

export function handler(order: Order): { cents: number } {
  if (order.items.length === 0) throw new RangeError('empty order');
  return { cents: total(order.items) };
}
`;

async function main(): Promise<void> {
  const js = await (await new SandboxBuilder().build()).loadRuntime();
  js.addModule('pricing', pricing, 'user', { typescript: true });
  js.addHandler('checkout', checkout, { typescript: true });
  const sandbox = await js.getLoadedSandbox();
  console.log(JSON.stringify(await sandbox.callHandler('checkout', { items: [{ name: 'tea', cents: 350, quantity: 2 }] })));
  try {
    await sandbox.callHandler('checkout', { items: [] });
  } catch (e) {
    const err = e as { code: string; guestStack: string };
    // Line 6 of the TypeScript source, where the throw is.
    console.log(`${err.code} at ${/handler:checkout:\d+:\d+/.exec(err.guestStack)?.[0]}`);
  }
  await sandbox.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
