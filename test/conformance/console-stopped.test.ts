// console-stopped.test.ts — console output of a call that is stopped (kill, wall-clock or
// CPU limit: ERR_CANCELLED; heap exhaustion: ERR_OUT_OF_MEMORY) reaches the console
// handler before the call rejects, once per line (lines that went out with a host call
// are not repeated), and within the host's console budget.
import { afterEach, expect, it } from 'vitest';
import { CancelledError } from '../../src/errors.js';
import type { LoadedJSSandbox } from '../../src/index.js';
import { describeEachBackend, type BackendHarness } from './backends.js';

type Line = [string, string];

const HANDLERS = {
  loop: 'function handler(e) { for (let i = 0; i < e.lines; i++) console.log("line " + i); console.warn("about to loop"); for (;;) {} }',
  afterHost:
    'import { note } from "host:test";\nfunction handler() { console.log("before the host call"); note(); console.log("after the host call"); for (;;) {} }',
  killed: 'import { note } from "host:test";\nfunction handler() { note(); console.log("running"); console.warn("about to loop"); for (;;) {} }',
  bomb: 'function handler() { console.log("before the bomb"); const a = []; for (;;) a.push("x".repeat(1000) + a.length); }',
  inHost: 'import { hang } from "host:test";\nfunction handler() { console.log("before the hanging host call"); hang(); }',
};

describeEachBackend('console output of a stopped call', (h: BackendHarness) => {
  const sandboxes: LoadedJSSandbox[] = [];
  let started: () => void = () => undefined;
  afterEach(async () => {
    started = () => undefined;
    await Promise.all(sandboxes.splice(0).map((s) => s.dispose()));
  });

  async function load(lines: Line[], consoleLimit?: number, heapSize?: number): Promise<LoadedJSSandbox> {
    const builder = h.builder().setConsoleHandler((level, message) => lines.push([level, message]));
    if (heapSize !== undefined) builder.setHeapSize(heapSize);
    if (consoleLimit !== undefined) builder.setConsoleLimit(consoleLimit);
    const proto = await builder.build();
    proto.register('test', 'note', () => {
      started();
      return 1;
    });
    proto.register('test', 'hang', () => new Promise(() => undefined));
    const js = await proto.loadRuntime();
    for (const [name, code] of Object.entries(HANDLERS)) js.addHandler(name, code);
    const s = await js.getLoadedSandbox();
    sandboxes.push(s);
    return s;
  }

  async function cancelled(p: Promise<unknown>): Promise<CancelledError> {
    const e = await p.then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(CancelledError);
    return e as CancelledError;
  }

  it('delivers the lines written before a wall-clock timeout', async () => {
    const lines: Line[] = [];
    const s = await load(lines);
    const e = await cancelled(s.callHandler('loop', { lines: 2 }, { wallClockTimeoutMs: 50 }));
    expect(e.code).toBe('ERR_CANCELLED');
    expect(e.terminatedBy).toBe('wall-clock');
    expect(lines).toEqual([
      ['log', 'line 0'],
      ['log', 'line 1'],
      ['warn', 'about to loop'],
    ]);
  });

  it('delivers the lines written before kill()', async () => {
    const lines: Line[] = [];
    const s = await load(lines);
    // The guest reports (through a host call) that it runs; the kill comes 20 ms later,
    // long after it wrote its lines and entered the loop.
    started = () => setTimeout(() => s.interruptHandle.kill(), 20);
    const e = await cancelled(s.callHandler('killed', undefined));
    expect(e.terminatedBy).toBe('kill');
    expect(lines).toEqual([
      ['log', 'running'],
      ['warn', 'about to loop'],
    ]);
  });

  it('delivers the lines written before a CPU limit', async () => {
    const lines: Line[] = [];
    const s = await load(lines);
    const e = await cancelled(s.callHandler('loop', { lines: 0 }, { cpuTimeoutMs: 30 }));
    expect(e.terminatedBy).toBe('cpu-time');
    expect(lines).toEqual([['warn', 'about to loop']]);
  });

  it('delivers each line once around a host call', async () => {
    const lines: Line[] = [];
    const s = await load(lines);
    await cancelled(s.callHandler('afterHost', undefined, { wallClockTimeoutMs: 50 }));
    expect(lines).toEqual([
      ['log', 'before the host call'],
      ['log', 'after the host call'],
    ]);
  });

  it('delivers the lines of a call stopped inside a host function once', async () => {
    const lines: Line[] = [];
    const s = await load(lines);
    await cancelled(s.callHandler('inHost', undefined, { wallClockTimeoutMs: 50 }));
    expect(lines).toEqual([['log', 'before the hanging host call']]);
  });

  it('delivers the lines written before the heap ran out', async () => {
    const lines: Line[] = [];
    const s = await load(lines, undefined, 4 << 20);
    const e = await s.callHandler('bomb', undefined).then(
      () => undefined,
      (err: unknown) => err as { code?: string },
    );
    expect(e?.code).toBe('ERR_OUT_OF_MEMORY');
    expect(lines).toEqual([['log', 'before the bomb']]);
  });

  it('keeps a stopped call within the console budget', async () => {
    const lines: Line[] = [];
    // 20 lines of 7 bytes (plus one each for the line end) against a 64-byte budget.
    const s = await load(lines, 64);
    await cancelled(s.callHandler('loop', { lines: 20 }, { wallClockTimeoutMs: 50 }));
    const kept = lines.filter(([level]) => level === 'log');
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.reduce((n, [, text]) => n + Buffer.byteLength(text) + 1, 0)).toBeLessThanOrEqual(64);
    expect(lines.at(-1)?.[0]).toBe('warn');
    expect(lines.at(-1)?.[1]).toMatch(/^\[airlock\] \d+ bytes of console output dropped$/);
  });
});
