// binary-data.ts — bytes across the boundary without base64: a Buffer in the event, bytes from
// a host function, a Uint8Array in the result (setBinaryData; off by default).
// Run: npx tsx examples/binary-data.ts
import { createHash } from 'node:crypto';
import { SandboxBuilder } from 'airlock-vm';

async function main(): Promise<void> {
  const proto = await new SandboxBuilder().setBinaryData().build();
  proto.hostModule('hash').register('sha256', (data: Uint8Array) => createHash('sha256').update(data).digest());
  const js = await proto.loadRuntime();
  js.addHandler(
    'thumbnail',
    `
    import { sha256 } from 'host:hash';
    export function handler(event) {
      const image = event.image; // a Uint8Array, not { type: 'Buffer', data: [...] }
      const digest = sha256(image); // a Uint8Array back from the host
      return { size: image.length, digestBytes: digest.length, header: image.subarray(0, 4) };
    }
  `,
  );
  const sandbox = await js.getLoadedSandbox();
  const image = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 1, 2, 3]);
  const result = (await sandbox.callHandler('thumbnail', { image })) as { size: number; digestBytes: number; header: Uint8Array };
  console.log(`size=${result.size} digestBytes=${result.digestBytes} header=${Buffer.from(result.header).toString('hex')}`);
  await sandbox.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
