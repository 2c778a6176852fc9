// wake-socket-lost.test.ts — a WebAssembly call whose wake socket fails while it waits
// (wake-socket.ts) falls back to waiting on the State word: it still settles with its
// own outcome, and later calls run without the socket. In a file of its own, since the
// socket is given up for the whole module instance.
import { afterEach, expect, it } from 'vitest';
import { SandboxBuilder, type LoadedJSSandbox } from '../../src/index.js';
import { abandonWakeSocket, startWakeSocket, wakeFd, wakeSocketWakes } from '../../src/engine/wasm/wake-socket.js';

const sandboxes: LoadedJSSandbox[] = [];
afterEach(async () => {
  await Promise.all(sandboxes.splice(0).map((s) => s.dispose()));
});

it.runIf(process.platform !== 'win32')('settles a call waiting on a wake socket that fails, and serves later calls without it', async () => {
  expect(await startWakeSocket()).toBe(true);
  const proto = await new SandboxBuilder().setBackend('wasm').build();
  const js = await proto.loadRuntime();
  js.addHandler('spin', 'function handler() { for (;;) {} }');
  js.addHandler('echo', 'function handler(e) { return e; }');
  const s = await js.getLoadedSandbox();
  sandboxes.push(s);
  const snap = await s.snapshot();
  expect(await s.callHandler('echo', { before: 1 })).toEqual({ before: 1 });

  const before = wakeSocketWakes();
  const spinning = s.callHandler('spin', {}).then(
    () => undefined,
    (e: { code?: string }) => e.code,
  );
  await new Promise((r) => setTimeout(r, 20));
  abandonWakeSocket();
  expect(wakeFd()).toBe(0);
  s.interruptHandle.kill();
  expect(await spinning).toBe('ERR_CANCELLED');
  // Settled through the fallback wait, not a socket wake-up.
  expect(wakeSocketWakes()).toBe(before);

  await s.restore(snap);
  for (let i = 0; i < 50; i++) expect(await s.callHandler('echo', { i })).toEqual({ i });
  expect(wakeSocketWakes()).toBe(before);
});
