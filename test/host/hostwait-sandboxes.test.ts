// hostwait-sandboxes.test.ts — the host-call wait through the public API on KVM: real
// guests whose blocking host functions wait for each other (a barrier all of them
// must reach; a host function that calls another sandbox) complete, however many
// sandboxes wait at once, since a waiting guest holds no runner.
import { afterEach, expect, it } from 'vitest';
import { type LoadedJSSandbox, SandboxBuilder } from '../../src/index.js';
import { describeKvm } from '../support/kvm.js';
import { loadAddon } from './raw-guest.js';

const addon = loadAddon();
const open: { dispose(): Promise<void> }[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.dispose().catch(() => {})));
});

async function loaded(register: (proto: Awaited<ReturnType<SandboxBuilder['build']>>) => void, handler: string): Promise<LoadedJSSandbox> {
  const proto = await new SandboxBuilder().setBackend('kvm').build();
  open.push(proto);
  register(proto);
  const js = await proto.loadRuntime();
  js.addHandler('main', handler);
  return js.getLoadedSandbox();
}

describeKvm('KVM sandboxes: host functions that wait for each other', () => {
  it("completes 40 calls whose blocking host function waits until all 40 have called it", async () => {
    const n = Math.max(40, addon.runnerPool().hardCap + 8);
    const arrived: (() => void)[] = [];
    const barrier = (i: number) =>
      new Promise<number>((resolve) => {
        arrived.push(() => resolve(i * 10));
        if (arrived.length === n) for (const open of arrived) open();
      });
    const sandboxes = await Promise.all(
      Array.from({ length: n }, () =>
        loaded((p) => p.hostModule('sync').register('barrier', barrier), `import { barrier } from 'host:sync';
          export default function (event) { return { got: barrier(event.i) }; }`),
      ),
    );
    const results = await Promise.all(sandboxes.map((s, i) => s.callHandler('main', { i })));
    expect(results).toEqual(sandboxes.map((_, i) => ({ got: i * 10 })));
  }, 120_000);

  it('answers a host function that calls into another sandbox while others wait in host calls', async () => {
    const n = addon.runnerPool().hardCap + 4;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const blocked = await Promise.all(
      Array.from({ length: n }, () =>
        loaded((p) => p.hostModule('gate').register('wait', async () => {
          await gate;
          return 'through';
        }), `import { wait } from 'host:gate';
          export default function () { return wait(); }`),
      ),
    );
    const waiting = blocked.map((s) => s.callHandler('main', {}));

    const b = await loaded(() => {}, `export default function (event) { return 'B saw ' + event.text; }`);
    const a = await loaded((p) => p.hostModule('peer').register('ask', (text: string) => b.callHandler('main', { text })),
      `import { ask } from 'host:peer';
        export default function (event) { return ask(event.text); }`);
    expect(await a.callHandler('main', { text: 'A' })).toBe('B saw A');

    release();
    expect(await Promise.all(waiting)).toEqual(blocked.map(() => 'through'));
  }, 120_000);
});
