// bench-vmm.ts — measures the VMM's latencies on this machine with hand-assembled
// guests: raw exit floor, call round trip (with and without the handoff spins),
// host-call round trip, boot, snapshot, restore and kill latency. Not a test (no
// timing assertions); run: npx tsx test/host/bench-vmm.ts
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as abi from '../../src/engine/abi.generated.js';
import {
  buildImage,
  defaultConfig,
  encodeMessage,
  loadAddon,
  programs,
  type NativeVm,
  type VmConfig,
} from './raw-guest.js';

const addon = loadAddon();

function pct(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}
const fmt = (label: string, us: number[]) =>
  `${label.padEnd(44)} p50 ${pct(us, 50).toFixed(1).padStart(8)} us   p90 ${pct(us, 90).toFixed(1).padStart(8)} us   p99 ${pct(us, 99).toFixed(1).padStart(8)} us`;
const nowUs = () => Number(process.hrtime.bigint()) / 1000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function roundTrips(config: VmConfig, n: number): Promise<number[]> {
  const vm = new addon.Vm(buildImage(programs.echo), config, () => {});
  await vm.boot();
  const req = Buffer.from('x');
  for (let i = 0; i < 200; i++) await vm.send(req);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = nowUs();
    await vm.send(req);
    out.push(nowUs() - t);
  }
  await vm.dispose();
  return out;
}

async function hostCallTrips(config: VmConfig, n: number): Promise<number[]> {
  let vm!: NativeVm;
  vm = new addon.Vm(buildImage(programs.hostCall), config, (o) => vm.hostReturn(o));
  await vm.boot();
  const req = Buffer.from('x');
  const out: number[] = [];
  for (let i = 0; i < n + 200; i++) {
    const t = nowUs();
    await vm.send(req);
    if (i >= 200) out.push(nowUs() - t);
  }
  await vm.dispose();
  return out;
}

async function main() {
  const n = Number(process.argv[2] ?? 5000);
  const floor = await addon.measureExitFloor(n);
  console.log(fmt('raw exit round trip (vCPU thread)', floor));
  const spin = await roundTrips(defaultConfig, n);
  console.log(fmt('call round trip JS->guest->JS (vCPU spin on)', spin));
  console.log(`  ratio to exit floor at p50: ${(pct(spin, 50) / pct(floor, 50)).toFixed(2)}x`);
  console.log(fmt('call round trip (no spin: futex + uv async)', await roundTrips({ ...defaultConfig, vcpuSpinUs: 0 }, n)));
  console.log(fmt('call with one sync host call (2 exits)', await hostCallTrips(defaultConfig, n)));

  const boots: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t = nowUs();
    const vm = new addon.Vm(buildImage(programs.echo), { ...defaultConfig, heapSize: 64 << 20 }, () => {});
    await vm.boot();
    boots.push(nowUs() - t);
    await vm.dispose();
  }
  console.log(fmt('boot to first exit (64 MiB heap)', boots));

  const vm = new addon.Vm(buildImage(programs.counter), { ...defaultConfig, heapSize: 256 << 20 }, () => {});
  await vm.boot();
  await vm.send(Buffer.alloc(0));
  const snaps: number[] = [];
  const restores: number[] = [];
  let snap: object = await vm.snapshot();
  for (let i = 0; i < 500; i++) {
    let t = nowUs();
    snap = await vm.snapshot();
    snaps.push(nowUs() - t);
    await vm.send(Buffer.alloc(0));
    t = nowUs();
    await vm.restore(snap);
    restores.push(nowUs() - t);
  }
  console.log(fmt('snapshot (256 MiB heap, trivial guest)', snaps));
  console.log(fmt('restore after a trivial call', restores));
  await vm.dispose();

  const kills: number[] = [];
  const spinVm = new addon.Vm(buildImage(programs.spin), defaultConfig, () => {});
  await spinVm.boot();
  const base = await spinVm.snapshot();
  for (let i = 0; i < 100; i++) {
    const p = spinVm.send(Buffer.from('x')).catch(() => nowUs());
    await sleep(2);
    const t = nowUs();
    spinVm.kill();
    const settled = await p;
    kills.push((settled as number) - t);
    await spinVm.restore(base);
  }
  console.log(fmt('kill() to rejection, spinning guest', kills));
  await spinVm.dispose();

  const imagePath = join(__dirname, '..', '..', 'out', 'guest', 'kvm', 'airlock-guest.img');
  if (!existsSync(imagePath)) {
    console.log(`(real guest image missing at ${imagePath}: skipped)`);
    return;
  }
  const config = { heapSize: 64 << 20, stackSize: 1 << 20, inputSize: 1 << 20, outputSize: 1 << 20, consoleLimit: 4096 };
  const image = readFileSync(imagePath);
  const realBoots: number[] = [];
  for (let i = 0; i < 20; i++) {
    const t = nowUs();
    const g = new addon.Vm(image, config, () => {});
    await g.boot();
    realBoots.push(nowUs() - t);
    await g.dispose();
  }
  console.log(fmt('real guest: new Vm + boot to READY', realBoots));
  const g = new addon.Vm(image, config, () => {});
  await g.boot();
  await g.send(encodeMessage(abi.AIRLOCK_MSG_LOAD_RUNTIME, 0, []));
  await g.send(encodeMessage(abi.AIRLOCK_MSG_LOAD, 0, ['handler', '', 'h', 'function handler(e) { return e; }']));
  const callMsg = encodeMessage(abi.AIRLOCK_MSG_CALL, 0, ['h', '{"x":1}']);
  const calls: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = nowUs();
    await g.send(callMsg);
    calls.push(nowUs() - t);
  }
  console.log(fmt('real guest: trivial CALL round trip', calls));
  const gs = await g.snapshot();
  const gr: number[] = [];
  for (let i = 0; i < 500; i++) {
    await g.send(callMsg);
    const t = nowUs();
    await g.restore(gs);
    gr.push(nowUs() - t);
  }
  console.log(fmt('real guest: restore after a trivial CALL', gr));
  await g.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
