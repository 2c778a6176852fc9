// poll-window.test.ts — the poll-window rule (host/src/poll_window.h, compiled here with
// the driver in fixtures/) on chosen request arrivals: a hit keeps the window, a
// request that came after the guest parked but within the longest window grows it,
// a back-to-back but late request (a slow turn of the main thread, an answer whose
// exit woke the main thread across cores) stretches it to cover the gap until a hit,
// a run of them (or of answers taken only when the guest parked) closes it, a closed
// window is probed again with a doubling backoff that an answer taken from memory resets, spaced-out
// requests halve it to zero, and nothing is probed while no core is free. This
// machine's timing plays no part.
import { describe, expect, it } from 'vitest';
import { cxxDriver } from '../support/cxx-driver.js';

const driver = cxxDriver('poll-window-driver.cc', 'poll_window.cc');

type Step = [window: number, change: string];

type Last = 'e' | 'm' | 'p'; // the previous answer: by an exit, from memory, at the guest's park
type Request = [hit: 0 | 1, gapUs: number, mayPoll?: 0 | 1, last?: Last];

/** One rule with the longest window `maxUs`; each request as [hit, gapUs, mayPoll, last]. */
function run(maxUs: number, requests: Request[]): Step[] {
  const input = [`new ${maxUs}`, ...requests.map(([h, g, m = 1, l = 'e']) => `req ${h} ${g} ${m} ${l}`)].join('\n') + '\n';
  const out = driver(input).trim().split('\n');
  expect(out[0]).toBe('ok');
  return out.slice(1).map((l) => {
    const [w, c] = l.split(' ');
    return [Number(w), c];
  });
}

const hit: Request = [1, 10];
const hitAfterMemory: Request = [1, 10, 1, 'm']; // the previous answer was taken from memory: the window paid
const late: Request = [0, 120]; // back-to-back, later than a 50 us window: an exit-mode turn
const spaced: Request = [0, 3000]; // a caller that waited on a 2 ms timer

describe('poll-window rule', () => {
  it('keeps the window on a hit, whatever the gap', () => {
    expect(run(50, [hit, [1, 40], [1, 5000]])).toEqual([[50, 'kept'], [50, 'kept'], [50, 'kept']]);
  });

  it('grows a short window to cover a gap the longest window would have caught', () => {
    // Halved twice by spaced requests (50 -> 25 -> 12.5), then a request 20 us after the
    // answer, after the guest parked: at least double, at least the gap and a quarter.
    const r = run(50, [spaced, spaced, [0, 20], [0, 30]]);
    expect(r.map(([, c]) => c)).toEqual(['halved', 'halved', 'grown', 'grown']);
    expect(r[2][0]).toBe(25);
    expect(r[3][0]).toBe(50);
  });

  it('stretches the window to cover a late back-to-back request, and a hit brings it back to the longest', () => {
    // The stable bad state of the old rule: it halved on every gap over the longest
    // window, and an exit-mode gap always is one, so it settled at zero. Now the answer
    // to a late request (an exit) gets a window that covers the gap, 120 us and a quarter.
    expect(run(50, [late, hit, late, hit, late, late, hit])).toEqual([
      [150, 'late-kept'], [50, 'kept'], [150, 'late-kept'], [50, 'kept'], [150, 'late-kept'], [150, 'late-kept'], [50, 'kept'],
    ]);
    // Never more than four longest windows.
    expect(run(50, [[0, 900]])).toEqual([[200, 'late-kept']]);
  });

  it('closes the window after a run of late requests, and probes it again with a doubling backoff', () => {
    const r = run(50, [late, late, late, late, late, late, late, late, late, late, late]);
    expect(r.slice(0, 3)).toEqual([[150, 'late-kept'], [150, 'late-kept'], [0, 'closed']]);
    // Backoff 2: one request at zero, then a probe covering the gap; the probe misses:
    // closed at once, backoff 4 (three at zero, then a probe).
    expect(r.slice(3)).toEqual([
      [0, 'unjudged'], [150, 'probed'], [0, 'closed'],
      [0, 'unjudged'], [0, 'unjudged'], [0, 'unjudged'], [150, 'probed'], [0, 'closed'],
    ]);
  });

  it('stays with a probe that hits, and an answer taken from memory resets the backoff', () => {
    const r = run(50, [late, late, late, late, late, hit, hitAfterMemory, late, late, late, late]);
    expect(r.slice(3, 7)).toEqual([[0, 'unjudged'], [150, 'probed'], [50, 'kept'], [50, 'kept']]);
    // Closed again after three late ones: the backoff starts over at 2.
    expect(r.slice(7)).toEqual([[150, 'late-kept'], [150, 'late-kept'], [0, 'closed'], [0, 'unjudged']]);
  });

  it('never probes while no core is free for a window', () => {
    const r = run(50, [late, late, late, ...Array.from({ length: 20 }, (): Request => [0, 120, 0])]);
    expect(r[2]).toEqual([0, 'closed']);
    expect(r.slice(3).every(([w]) => w === 0)).toBe(true);
  });

  it('halves on spaced-out requests down to zero, so an idle guest stops spinning', () => {
    const r = run(50, [spaced, spaced, spaced, spaced, spaced, spaced]);
    expect(r.map(([w]) => w)).toEqual([25, 12.5, 6.25, 3.125, 0, 0]);
    // Spaced requests at zero never probe.
    expect(run(50, [...Array.from({ length: 6 }, () => spaced), ...Array.from({ length: 100 }, () => spaced)]).every(([, c]) => c !== 'probed')).toBe(true);
  });

  it('counts a longer wait (a V8 scavenge on the main thread, up to 1 ms) as back-to-back, not spaced out', () => {
    expect(run(50, [[0, 900]])).toEqual([[200, 'late-kept']]);
    expect(run(50, [[0, 1100]])).toEqual([[25, 'halved']]);
    // A stretched window halves from the longest.
    expect(run(50, [late, spaced])).toEqual([[150, 'late-kept'], [25, 'halved']]);
  });

  it('stretches a window halved by spaced requests once requests come back-to-back, late', () => {
    const r = run(50, [spaced, late, hit, spaced, spaced, [0, 20], hit]);
    expect(r).toEqual([[25, 'halved'], [150, 'late-kept'], [50, 'kept'], [25, 'halved'], [12.5, 'halved'], [25, 'grown'], [25, 'kept']]);
  });

  it('closes a window whose answers wait for the guest to park (a starved watcher), and keeps a probe only once an answer is taken from memory', () => {
    // Requests alternate: one handed over in memory whose answer is taken only at the
    // park, then one by the mailbox (the guest parked), late.
    const parked: Request = [0, 120, 1, 'p'];
    const r = run(50, [hit, parked, hit, parked, hit, parked]);
    expect(r).toEqual([[50, 'kept'], [150, 'late-kept'], [50, 'kept'], [150, 'late-kept'], [50, 'kept'], [0, 'closed']]);
    // Backoff 2, a probe, a hit whose answer is again taken at the park: closed at once.
    const after = run(50, [hit, parked, hit, parked, hit, parked, late, late, hit, parked]);
    expect(after.slice(6)).toEqual([[0, 'unjudged'], [150, 'probed'], [50, 'kept'], [0, 'closed']]);
    // After a probe, an answer taken from memory makes it stay: a later park counts anew.
    const good = run(50, [hit, parked, hit, parked, hit, parked, late, late, hit, hitAfterMemory, parked]);
    expect(good.slice(8)).toEqual([[50, 'kept'], [50, 'kept'], [150, 'late-kept']]);
  });

  it('stays at zero with no longest window (guestPollUs 0)', () => {
    expect(run(0, [late, late, hit, [0, 10], spaced])).toEqual([[0, 'unjudged'], [0, 'unjudged'], [0, 'kept'], [0, 'unjudged'], [0, 'unjudged']]);
  });
});
