// restore-exact.test.ts — restore() gives back guest memory exactly, whatever pattern
// of pages the guest wrote since the snapshot: a hand-assembled guest (restore-writer.ts) writes a pattern
// into its heap and returns a checksum of the whole heap, so every byte the host failed
// to revert (or reverted wrongly) shows in the checksum.
import { readFileSync } from 'node:fs';
import { afterEach, expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';
import { buildImage, loadAddon, type NativeVm } from './raw-guest.js';
import { HEAP, PAGE, WRITER, checksum, readAt, run, writerConfig as config, type Writes } from './restore-writer.js';

const live: NativeVm[] = [];
afterEach(async () => {
  await Promise.all(live.splice(0).map((vm) => vm.dispose()));
});

async function writer(): Promise<NativeVm> {
  const vm = new (loadAddon().Vm)(buildImage(WRITER), config, () => {});
  live.push(vm);
  await vm.boot();
  return vm;
}

/** KiB of guest memory this process has mapped: its private writable mappings of guest images. */
function guestRssKiB(): number {
  let total = 0;
  let inGuest = false;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inGuest = / rw-p .*airlock-guest/.test(line);
    else if (inGuest && line.startsWith('Rss:')) total += Number.parseInt(line.slice(4), 10);
  }
  return total;
}

// Patterns a guest may write after the snapshot (the snapshot holds the first MiB of
// the heap filled, the rest never touched).
const patterns: Record<string, Writes[]> = {
  'one qword': [{ offset: 123 * 8, count: 1, stride: 0, value: 0x5an }],
  'sparse pages': [{ offset: 8, count: 40, stride: 37 * PAGE + 8, value: 0x1111_2222_3333_4444n }],
  'every page of the heap': [{ offset: 0, count: HEAP / PAGE, stride: PAGE, value: 0x77n }],
  'the same page over and over': [
    { offset: 5 * PAGE, count: 10_000, stride: 0, value: 1n },
    { offset: 5 * PAGE + 64, count: 10_000, stride: 0, value: 2n },
  ],
  'pages above the snapshot extent': [{ offset: 6 << 20, count: 300, stride: PAGE, value: 0xffff_ffff_ffff_ffffn }],
  'a long run (given back to the host, not zeroed)': [{ offset: 2 << 20, count: (512 << 10) / 8, stride: 8, value: 9n }],
  'runs shorter than a release': [
    { offset: (1 << 20) - 2 * PAGE, count: 4, stride: PAGE, value: 3n },
    { offset: 3 << 20, count: 3, stride: PAGE, value: 4n },
  ],
};

describeKvm('restore: memory comes back exactly', () => {
  for (const [name, writes] of Object.entries(patterns)) {
    it(`after ${name}`, async () => {
      const vm = await writer();
      await run(vm, { offset: 0, count: (1 << 20) / 8, stride: 8, value: 0x0102_0304_0506_0708n });
      const snap = await vm.snapshot();
      const before = await checksum(vm);
      let after = before;
      for (const w of writes) after = await run(vm, w);
      expect(after).not.toBe(before);
      await vm.restore(snap);
      expect(await checksum(vm)).toBe(before);
      // Restored twice, with and without a call in between: the same state each time.
      await vm.restore(snap);
      await vm.restore(snap);
      expect(await checksum(vm)).toBe(before);
      for (const w of writes) await run(vm, w);
      await vm.restore(snap);
      expect(await checksum(vm)).toBe(before);
    });
  }

  it('a restore after a restore with nothing run between still reverts what ran before it', async () => {
    const vm = await writer();
    const snap = await vm.snapshot();
    const clean = await checksum(vm);
    await vm.restore(snap);
    await run(vm, { offset: 64 * PAGE, count: 10, stride: PAGE, value: 42n });
    // The restore after the call must not take the "nothing ran since" path.
    await vm.restore(snap);
    await vm.restore(snap);
    expect(await checksum(vm)).toBe(clean);
  });

  it('pages read since a restore, then written beside and over, come back exactly', async () => {
    const vm = await writer();
    await run(vm, { offset: 0, count: (1 << 20) / 8, stride: 8, value: 0x0a0b_0c0d_0e0f_1011n });
    const snap = await vm.snapshot();
    const before = await checksum(vm);
    await vm.restore(snap);
    for (let round = 0; round < 3; round++) {
      // Only the page read is mapped (no fault-around): its neighbours are written
      // from unmapped, the page itself from a mapped image page.
      for (let page = 8; page < 200; page += 16) {
        await readAt(vm, page * PAGE);
        await run(vm, { offset: (page + 1) * PAGE, count: 1, stride: 0, value: BigInt(round + 1) });
        await run(vm, { offset: page * PAGE + 8, count: 1, stride: 0, value: BigInt(round + 7) });
      }
      expect(await checksum(vm)).not.toBe(before);
      await vm.restore(snap);
      expect(await checksum(vm)).toBe(before);
    }
  });

  it('a restored guest maps only the pages it reads, not the pages around them', async () => {
    const vm = await writer();
    await run(vm, { offset: 0, count: (1 << 20) / 8, stride: 8, value: 0x0102_0304_0506_0708n });
    const snap = await vm.snapshot();
    await vm.restore(snap);
    // The program's own pages and the buffers, mapped once (no heap read beyond page 0).
    await readAt(vm, 0);
    const base = guestRssKiB();
    const reads = 16;
    // 64 KiB apart, inside the part of the heap the image holds: with the kernel's
    // fault-around each read would map up to 16 pages.
    for (let i = 1; i <= reads; i++) await readAt(vm, i * 64 * 1024);
    const grown = guestRssKiB() - base;
    expect(grown).toBeGreaterThanOrEqual((reads * PAGE) / 1024);
    expect(grown).toBeLessThan((2 * reads * PAGE) / 1024);
  });

  it('switches between two snapshots of one guest, each exact', async () => {
    const vm = await writer();
    await run(vm, { offset: 0, count: 100, stride: PAGE, value: 1n });
    const first = await vm.snapshot();
    const one = await checksum(vm);
    await run(vm, { offset: 50 * PAGE, count: 200, stride: PAGE, value: 2n });
    const second = await vm.snapshot();
    const two = await checksum(vm);
    expect(two).not.toBe(one);
    await run(vm, { offset: 0, count: HEAP / PAGE, stride: PAGE, value: 3n });
    await vm.restore(first);
    expect(await checksum(vm)).toBe(one);
    await vm.restore(second);
    await vm.restore(second);
    expect(await checksum(vm)).toBe(two);
    await run(vm, { offset: 7 * PAGE, count: 1, stride: 0, value: 4n });
    await vm.restore(first);
    await vm.restore(first);
    expect(await checksum(vm)).toBe(one);
  });
});
