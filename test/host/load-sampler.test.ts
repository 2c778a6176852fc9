// load-sampler.test.ts — the busy-wait budget's arithmetic on chosen readings (host/src/
// load_sampler.h, compiled here with the driver in fixtures/): others' load is the CPUs'
// busy time less this process's own, a reading over another CPU set (a thread re-pinned)
// only restarts the baseline, and the cap leaves a core to the main thread and holds
// between its two thresholds. The machine's real load plays no part.
import { describe, expect, it } from 'vitest';
import { cxxDriver } from '../support/cxx-driver.js';

const driver = cxxDriver('load-sampler-driver.cc', 'load_sampler.cc');

/** Runs the commands through one sampler; each answer line split into numbers. */
function run(commands: string[]): number[][] {
  const out = driver(commands.join('\n') + '\n');
  return out.trim().split('\n').map((l) => l.split(' ').map(Number));
}

const MS = 1_000_000;
// 100 ms of one CPU, in the driver's 10 ms ticks.
const ticks = (cpuMs: number) => cpuMs / 10;

describe('others’ load', () => {
  it('is the busy time of the CPUs less this process’s own, in cores', () => {
    // 200 ms: the two CPUs were busy 300 ms, 100 ms of it ours -> others 1 core.
    const [first, second] = run(['add 0,1 1000 5000000 1000000000', `add 0,1 ${1000 + ticks(300)} ${5 * MS + 100 * MS} ${1000 * MS + 200 * MS}`]);
    expect(first).toEqual([0, 0]); // one reading spans no interval: unknown
    expect(second[0]).toBe(1);
    expect(second[1]).toBeCloseTo(1, 6);
  });

  it('never counts the main thread’s busy time as others’ when it is all ours', () => {
    // One CPU fully busy for 200 ms, all of it this process (main thread and runner).
    const [, r] = run(['add 0 500 0 0', `add 0 ${500 + ticks(200)} ${200 * MS} ${200 * MS}`]);
    expect(r[1]).toBeCloseTo(0, 6);
  });

  it('restarts its baseline when the CPU set changes, instead of counting a CPU’s busy time since boot', () => {
    // Pinned to CPU 0, then a runner re-pinned to CPU 1: the sum now includes CPU 1's
    // 1,000,000 busy ticks since boot. That reading only sets the baseline, and the
    // load measured on CPU 0 alone is forgotten: unknown (0) until measured on {0,1}.
    const r = run(['add 0 1000 0 0', 'add 0 1010 0 200000000', 'add 0,1 1001010 0 400000000', `add 0,1 ${1001010 + ticks(40)} 0 ${600 * MS}`]);
    expect(r[1]).toEqual([1, 0.5]); // 100 ms of 200 on CPU 0
    expect(r[2]).toEqual([0, 0]);
    expect(r[3][0]).toBe(1);
    expect(r[3][1]).toBeCloseTo(0.2, 6); // the first sample of the new set stands alone
  });

  it('is clamped to the set’s CPU count when the busy ticks overshoot the interval', () => {
    const [, r] = run(['add 0 0 0 0', `add 0 ${ticks(1000)} 0 ${100 * MS}`]);
    expect(r[1]).toBe(1);
  });

  it('is smoothed over about two readings, so one burst moves it only half way', () => {
    const r = run(['add 0,1 0 0 0', `add 0,1 0 0 ${200 * MS}`, `add 0,1 ${ticks(400)} 0 ${400 * MS}`, `add 0,1 ${ticks(400)} 0 ${600 * MS}`]);
    expect(r.map((x) => x[1])).toEqual([0, 0, 1, 0.5]);
  });
});

describe('the polling cap', () => {
  const cap = (usable: number, others: number, prev: number, floorNs = 30_000, cheapNs = 5_000) =>
    run([`cap ${usable} ${others} ${prev} ${floorNs} ${cheapNs}`])[0][0];

  it('leaves one core to the main thread: none with one CPU, one with two idle CPUs', () => {
    expect(cap(1, 0, 0)).toBe(0);
    expect(cap(2, 0, 0)).toBe(1);
    expect(cap(4, 0, 0)).toBe(3);
  });

  it('is zero where an exit is cheap or its cost unknown', () => {
    expect(cap(2, 0, 0, 2_000)).toBe(0);
    expect(cap(2, 0, 0, 0)).toBe(0);
  });

  it('counts a core free again only once others leave three quarters of it, and busy once they take more than 0.6', () => {
    // From 0: others at 0.3 of a core do not free it; at 0.2 they do.
    expect(cap(2, 0.3, 0)).toBe(0);
    expect(cap(2, 0.2, 0)).toBe(1);
    // From 1: others at 0.5 keep it; above 0.6 they take it.
    expect(cap(2, 0.5, 1)).toBe(1);
    expect(cap(2, 0.7, 1)).toBe(0);
    // Two cores' worth of others on two CPUs: nothing polls.
    expect(cap(2, 2, 1)).toBe(0);
  });

  it('judges a new CPU set as a process’s first: open until measured, then kept up to 0.6 of a core taken', () => {
    // Every thread on CPU 0 (cap 0 in force: one CPU), then a runner pinned to CPU 1,
    // with others taking 0.5 of a core of the two: not below the freeing threshold
    // (0.25), but below the keeping one (0.6).
    const r = run([
      'add 0 0 0 0',
      `add 0 ${ticks(180)} 0 ${200 * MS}`,
      'capnow 1 0 30000 5000',
      `add 0,1 ${ticks(180) + 1_000_000} 0 ${400 * MS}`,
      'capnow 2 0 30000 5000',
      `add 0,1 ${ticks(180) + 1_000_000 + ticks(100)} 0 ${600 * MS}`,
      'capnow 2 0 30000 5000',
      // Measured again on the same set: the cap in force (1) is kept at 0.5 ...
      `add 0,1 ${ticks(180) + 1_000_000 + ticks(200)} 0 ${800 * MS}`,
      'capnow 2 1 30000 5000',
      // ... and a cap of 0 decided on this set stays 0 at the same load.
      'capnow 2 0 30000 5000',
    ]);
    expect(r[2][0]).toBe(0); // one CPU: nothing polls
    expect(r[4][0]).toBe(1); // new set, load not yet measured: open
    expect(r[5][1]).toBeCloseTo(0.5, 6);
    expect(r[6][0]).toBe(1); // first measure on the new set: kept at 0.5 although 0 was in force
    expect(r[8][0]).toBe(1);
    expect(r[9][0]).toBe(0);
  });
});
