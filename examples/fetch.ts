// fetch.ts — granting a sandbox fetch() under an allow-list. Without setFetchPolicy()
// the guest has no network at all; with it, each request (and each redirect) must match
// the allowed origins and methods, within the size and time limits, and loopback or
// private addresses are refused unless the policy names them, as here for a local server.
// Run: npx tsx examples/fetch.ts
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const server = createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ path: req.url, weather: 'sunny' }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  const proto = await new SandboxBuilder()
    .setFetchPolicy({
      origins: [origin],
      methods: ['GET'],
      allowAddresses: ['127.0.0.1'], // loopback is refused unless named
      maxResponseBodyBytes: 64 * 1024,
      timeoutMs: 2_000,
    })
    .build();
  const sandbox = await proto.loadRuntime();
  sandbox.addHandler(
    'weather',
    `
    export default async function (event) {
      const response = await fetch(event.origin + '/today');
      const body = await response.json();
      let denied;
      try {
        await fetch('http://169.254.169.254/latest/meta-data/');
      } catch (e) {
        denied = e.name + ': ' + e.message;
      }
      return { status: response.status, weather: body.weather, denied };
    }
  `,
  );
  const loaded = await sandbox.getLoadedSandbox();
  console.log(JSON.stringify(await loaded.callHandler('weather', { origin })));
  await loaded.dispose();
  server.close();
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
