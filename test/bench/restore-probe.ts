// restore-probe.ts — a small probe of restore and the call after it: a sandbox keeping
// 1 or 128 MiB alive (as restore_and_call_<n>mib_us) times restore() and the next call
// apart, and restore() in a row (restore_idle_us), with the call-path counters per
// sample, so the path the call after a restore took is seen, not guessed from latency.
//   npx tsx test/bench/restore-probe.ts [mib=128] [samples=300]
import { SandboxBuilder } from '../../src/index.js';
import { loadAddon } from '../../src/engine/native.js';

const [mibText = '128', samplesText = '300'] = process.argv.slice(2);
const mib = Number(mibText);
const samples = Number(samplesText);
type Counters = Record<string, number>;
const counters = (): Counters =>
  (loadAddon().addon?.pollingBudget() as unknown as { counters?: Counters } | undefined)?.counters ?? {};
const us = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e3;
const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main(): Promise<void> {
  const touch = `const keep = []; for (let i = 0; i < ${mib}; i++) keep.push(new Uint8Array(${1 << 20}).fill(i + 1));
    let n = 0; const notes = {};
    function handler(e) { n++; notes[n % 8] = { n, e }; return keep.length; }`;
  const js = await (await new SandboxBuilder().setBackend('kvm').setHeapSize(512 << 20).build()).loadRuntime();
  js.addHandler('touch', touch);
  const s = await js.getLoadedSandbox();
  const snap = await s.snapshot();
  for (let i = 0; i < 20; i++) {
    await s.callHandler('touch', { warm: true });
    await s.restore(snap);
  }
  const restore: number[] = [];
  const call: number[] = [];
  const both: number[] = [];
  const before = counters();
  for (let i = 0; i < samples; i++) {
    await s.callHandler('touch', { before: true });
    const t = process.hrtime.bigint();
    await s.restore(snap);
    const r = us(t);
    const t2 = process.hrtime.bigint();
    await s.callHandler('touch', { after: true });
    call.push(us(t2));
    restore.push(r);
    both.push(us(t));
  }
  const after = counters();
  const idle: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t = process.hrtime.bigint();
    await s.restore(snap);
    idle.push(us(t));
  }
  await s.dispose();
  const moved = Object.entries(after)
    .map(([k, v]) => [k, (v - (before[k] ?? 0)) / samples] as const)
    .filter(([, v]) => v !== 0)
    .map(([k, v]) => `${k} ${v.toFixed(2)}`);
  console.log(
    `${mib} MiB: restore+call p50 ${p50(both).toFixed(1)} us (restore ${p50(restore).toFixed(1)}, call ${p50(call).toFixed(1)}); restore_idle ${p50(idle).toFixed(1)} us`,
  );
  console.log(`  per sample: ${moved.join(', ')}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
