// random.test.ts — host entropy on both tiers: a restored sandbox draws new random numbers
// (Math.random and crypto), while setDeterministicRandom() replays Math.random only.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { SandboxBuilder, Snapshot } from '../../src/index.js';
import { describeEachBackend } from './backends.js';

const DRAW = `function handler() { return { math: [Math.random(), Math.random()], uuid: crypto.randomUUID(), bytes: Array.from(crypto.getRandomValues(new Uint8Array(16))) }; }`;

describeEachBackend('random numbers', (h) => {
  it('differ after every restore of the same snapshot', async () => {
    const sandbox = await h.load({ draw: DRAW });
    try {
      const snap = await sandbox.snapshot();
      const seen: string[] = [];
      for (let i = 0; i < 3; i++) {
        await sandbox.restore(snap);
        seen.push(JSON.stringify(await sandbox.callHandler('draw', {})));
      }
      const draws = seen.map((s) => JSON.parse(s) as { math: number[]; uuid: string; bytes: number[] });
      expect(new Set(draws.map((d) => d.math[0])).size).toBe(3);
      expect(new Set(draws.map((d) => d.uuid)).size).toBe(3);
      expect(new Set(draws.map((d) => JSON.stringify(d.bytes))).size).toBe(3);
    } finally {
      await sandbox.dispose();
    }
  });

  it('differ between two sandboxes built alike', async () => {
    const a = await h.load({ draw: DRAW });
    const b = await h.load({ draw: DRAW });
    try {
      expect(await a.callHandler('draw', {})).not.toEqual(await b.callHandler('draw', {}));
    } finally {
      await a.dispose();
      await b.dispose();
    }
  });

  it('replay Math.random from a seed, never crypto', async () => {
    const a = await h.load({ draw: DRAW }, { builder: h.builder().setDeterministicRandom(42) });
    const b = await h.load({ draw: DRAW }, { builder: h.builder().setDeterministicRandom(42n) });
    const c = await h.load({ draw: DRAW }, { builder: h.builder().setDeterministicRandom(43) });
    try {
      const snap = await a.snapshot();
      const first = (await a.callHandler('draw', {})) as { math: number[]; uuid: string };
      await a.restore(snap);
      const replay = (await a.callHandler('draw', {})) as { math: number[]; uuid: string };
      const other = (await b.callHandler('draw', {})) as { math: number[]; uuid: string };
      const seeded43 = (await c.callHandler('draw', {})) as { math: number[] };
      expect(replay.math).toEqual(first.math);
      expect(other.math).toEqual(first.math);
      expect(seeded43.math).not.toEqual(first.math);
      expect(replay.uuid).not.toBe(first.uuid);
      expect(other.uuid).not.toBe(first.uuid);
    } finally {
      await a.dispose();
      await b.dispose();
      await c.dispose();
    }
  });

  it('refuses a seed that is not a 64-bit unsigned integer', () => {
    for (const bad of [-1, 1.5, Number.NaN, 2n ** 64n, '1' as unknown as number]) {
      expect(() => h.builder().setDeterministicRandom(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    }
  });
});

describeEachBackend('random numbers in sandboxes restored from snapshots', (h) => {
  async function drawsOfClones(snapshot: Snapshot, n: number): Promise<{ math: number[]; uuid: string }[]> {
    const out: { math: number[]; uuid: string }[] = [];
    for (let i = 0; i < n; i++) {
      const clone = await (await new SandboxBuilder().buildFromSnapshot(snapshot)).restoreLoadedSandbox();
      try {
        out.push(await clone.callHandler('draw', {}));
      } finally {
        await clone.dispose();
      }
    }
    return out;
  }

  it('differ between clones of one snapshot', async () => {
    const source = await h.load({ draw: DRAW });
    try {
      const draws = await drawsOfClones(await source.snapshot(), 3);
      expect(new Set(draws.map((d) => d.math[0])).size).toBe(3);
      expect(new Set(draws.map((d) => d.uuid)).size).toBe(3);
    } finally {
      await source.dispose();
    }
  });

  it('continue a seeded sequence in every clone, in memory and from a file, but never crypto', async () => {
    const source = await h.load({ draw: DRAW }, { builder: h.builder().setDeterministicRandom(7) });
    const dir = await mkdtemp(join(tmpdir(), 'airlock-random-'));
    try {
      const snapshot = await source.snapshot();
      const expected = await source.callHandler('draw', {});
      await snapshot.save(dir, 'seeded');
      const draws = [...(await drawsOfClones(snapshot, 2)), ...(await drawsOfClones(await Snapshot.load(dir, 'seeded'), 1))];
      for (const d of draws) expect(d.math).toEqual(expected.math);
      expect(new Set([expected.uuid, ...draws.map((d) => d.uuid)]).size).toBe(4);
    } finally {
      await source.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('takes the guest runtime options from the snapshot, refusing a builder that sets them', async () => {
    const source = await h.load({ draw: DRAW });
    try {
      const snapshot = await source.snapshot();
      await expect(new SandboxBuilder().setDeterministicRandom(1).buildFromSnapshot(snapshot)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
      await expect(new SandboxBuilder().setHardened().buildFromSnapshot(snapshot)).rejects.toMatchObject({ code: 'ERR_INVALID_ARG' });
    } finally {
      await source.dispose();
    }
  });
});
