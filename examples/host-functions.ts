// host-functions.ts — guest code calling back into Node: sync and async host functions,
// spread arguments, automatic JSON on both sides, and errors that reach the guest.
// Run: npx tsx examples/host-functions.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const proto = await new SandboxBuilder().build();

  // A module with two sync functions: arguments are spread, results JSON-serialised.
  proto
    .hostModule('math')
    .register('add', (a: number, b: number) => a + b)
    .register('multiply', (a: number, b: number) => a * b);

  // An async function: the guest's call blocks until the Promise settles.
  const users: Record<number, { id: number; name: string }> = { 1: { id: 1, name: 'Alice' }, 2: { id: 2, name: 'Bob' } };
  proto.hostModule('db').register('getUser', async (id: number) => {
    await new Promise((resolve) => setTimeout(resolve, 10)); // stands in for real I/O
    const user = users[id];
    if (!user) throw new Error(`no user with id ${id}`);
    return user;
  });

  // The one-line form.
  proto.register('strings', 'upper', (s: string) => s.toUpperCase());

  const sandbox = await proto.loadRuntime();
  sandbox.addHandler(
    'profile',
    `
    import * as math from 'host:math';
    import { getUser } from 'host:db';
    import { upper } from 'host:strings';

    function handler(event) {
      const user = getUser(event.id);          // synchronous from the guest's side
      let error = null;
      try {
        getUser(99);
      } catch (e) {
        error = e.name + ': ' + e.message;     // the host's message, catchable here
      }
      return {
        name: upper(user.name),
        score: math.add(math.multiply(event.points, 10), 5),
        error,
      };
    }
  `,
  );

  const loaded = await sandbox.getLoadedSandbox();
  console.log(JSON.stringify(await loaded.callHandler('profile', { id: 1, points: 4 })));
  console.log(JSON.stringify(await loaded.callHandler('profile', { id: 2, points: 7 })));
  await loaded.dispose();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
