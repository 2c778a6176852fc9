// web-apis.ts — Web APIs inside a handler: URL parsing, UTF-8 bytes, base64, structuredClone,
// random UUIDs and AbortController, on either tier.
// Run: npx tsx examples/web-apis.ts
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const js = await (await new SandboxBuilder().build()).loadRuntime();
  js.addHandler(
    'inspect',
    `
    function handler(event) {
      const url = new URL(event.link);
      const bytes = new TextEncoder().encode(url.searchParams.get('q'));
      const copy = structuredClone({ when: new Date(0), tags: new Set(['a']) });
      const controller = new AbortController();
      controller.abort('done');
      return {
        host: url.hostname,
        query: url.searchParams.get('q'),
        utf8Bytes: bytes.length,
        base64: btoa(String.fromCharCode(...bytes)),
        cloned: copy.when instanceof Date && copy.tags.has('a'),
        uuidLooksRight: /^[0-9a-f-]{36}$/.test(crypto.randomUUID()),
        aborted: controller.signal.aborted + ':' + controller.signal.reason,
      };
    }
  `,
  );
  const sandbox = await js.getLoadedSandbox();
  console.log(JSON.stringify(await sandbox.callHandler('inspect', { link: 'https://bücher.example/search?q=héllo' })));
  await sandbox.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
