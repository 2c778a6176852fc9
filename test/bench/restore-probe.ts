// restore-probe.ts — a small probe of restore and the call after it: a sandbox keeping
// 1 or 128 MiB alive (as restore_and_call_<n>mib_us) times restore() and the next call
// apart, and restore() in a row (restore_idle_us), with the call-path counters per
// sample, so the path the call after a restore took is seen, not guessed from latency.
// With `echo` instead of a size it measures restore_us and restore_idle_us as run.ts
// does (a default sandbox, restore() right after a trivial call), with the counters.
//   npx tsx test/bench/restore-probe.ts [mib=128|echo] [samples=300]
import { SandboxBuilder } from '../../src/index.js';
import { loadAddon } from '../../src/engine/native.js';

const [mibText = '128', samplesText = '300'] = process.argv.slice(2);
const mib = Number(mibText);
const samples = Number(samplesText);
type Counters = Record<string, number>;
// An addon older than the counters (the pre-#9 release) has no pollingBudget.
const counters = (): Counters => {
  const addon = loadAddon().addon as { pollingBudget?: () => { counters?: Counters } } | undefined;
  return (typeof addon?.pollingBudget === 'function' ? addon.pollingBudget().counters : undefined) ?? {};
};
const us = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e3;
const p50 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// restore_us and restore_idle_us exactly as run.ts times them, plus the counters.
async function echoMode(): Promise<void> {
  const js = await (await new SandboxBuilder().setBackend('kvm').build()).loadRuntime();
  js.addHandler('echo', 'function handler(e) { return e; }');
  const s = await js.getLoadedSandbox();
  const event = { id: 1, name: 'bench' };
  const snap = await s.snapshot();
  const run = async (after: boolean) => {
    const xs: number[] = [];
    const before = counters();
    for (let i = 0; i < samples + 20; i++) {
      if (after) await s.callHandler('echo', event);
      const t = process.hrtime.bigint();
      await s.restore(snap);
      if (i >= 20) xs.push(us(t));
    }
    return { p50: p50(xs), moved: perSample(before, counters(), samples + 20) };
  };
  const restore = await run(true);
  const idle = await run(false);
  await s.dispose();
  console.log(`echo: restore_us p50 ${restore.p50.toFixed(1)} us; restore_idle_us p50 ${idle.p50.toFixed(1)} us`);
  console.log(`  restore_us per sample: ${restore.moved}`);
  console.log(`  restore_idle_us per sample: ${idle.moved}`);
}

const perSample = (before: Counters, after: Counters, n: number) =>
  Object.entries(after)
    .map(([k, v]) => [k, (v - (before[k] ?? 0)) / n] as const)
    .filter(([, v]) => v !== 0)
    .map(([k, v]) => `${k} ${v.toFixed(2)}`)
    .join(', ');

async function main(): Promise<void> {
  if (mibText === 'echo') return echoMode();
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
