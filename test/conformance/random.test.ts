// random.test.ts — host entropy on both tiers: a restored sandbox draws new random numbers
// (Math.random and crypto), while setDeterministicRandom() replays Math.random only.
import { expect, it } from 'vitest';
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
