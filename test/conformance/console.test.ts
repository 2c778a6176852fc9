// console.test.ts — the guest console reaches the host: to stdout/stderr by default, to a
// builder callback when set, formatted like Node's, and bounded per call.
import { afterEach, expect, it, vi } from 'vitest';
import { describeEachBackend } from './backends.js';

type Line = [string, string];

describeEachBackend('guest console', (h) => {
  const open: { dispose(): Promise<void> }[] = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    await Promise.all(open.splice(0).map((s) => s.dispose()));
  });

  it('sends every level to the console handler with formatted arguments', async () => {
    const lines: Line[] = [];
    const loaded = await h.load(
      {
        h: `function handler() {
          console.log("log", 1, true, null, undefined);
          console.info({ a: [1, 2] }, [3]);
          console.warn("warn");
          console.error(new RangeError("bad"));
          console.debug("debug", 1.5);
          return "done";
        }`,
      },
      { builder: h.builder().setConsoleHandler((level, message) => lines.push([level, message])) },
    );
    open.push(loaded);
    expect(await loaded.callHandler('h', {})).toBe('done');
    expect(lines[0]).toEqual(['log', 'log 1 true null undefined']);
    expect(lines[1][0]).toBe('info');
    expect(lines[1][1]).toMatch(/a.*1.*2.*3/);
    expect(lines[2]).toEqual(['warn', 'warn']);
    expect(lines[3][0]).toBe('error');
    expect(lines[3][1]).toContain('RangeError: bad');
    expect(lines[4]).toEqual(['debug', 'debug 1.5']);
    expect(lines).toHaveLength(5);
  });

  it('delivers console output written before and between host calls, in order', async () => {
    const lines: string[] = [];
    const proto = await h.builder().setConsoleHandler((_l, m) => lines.push(m)).build();
    open.push(proto);
    proto.register('host', 'ping', (n: number) => {
      lines.push(`host ${n}`);
      return n;
    });
    const js = await proto.loadRuntime();
    js.addHandler('h', 'import { ping } from "host:host"; function handler() { console.log("a"); ping(1); console.log("b"); ping(2); console.log("c"); return 0; }');
    const loaded = await js.getLoadedSandbox();
    await loaded.callHandler('h', {});
    expect(lines).toEqual(['a', 'host 1', 'b', 'host 2', 'c']);
  });

  it('prints to stdout and stderr with the sandbox prefix by default', async () => {
    const out: string[] = [];
    const err: string[] = [];
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => (out.push(String(chunk)), true));
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => (err.push(String(chunk)), true));
    const loaded = await h.load({ h: 'function handler() { console.log("to out"); console.error("to err"); return 1; }' });
    open.push(loaded);
    await loaded.callHandler('h', {});
    vi.restoreAllMocks();
    expect(out.join('')).toMatch(/^\[airlock:\d+\] to out\n/m);
    expect(err.join('')).toMatch(/^\[airlock:\d+\] to err\n/m);
  });

  it('bounds console output per call and says how much was dropped', async () => {
    const lines: Line[] = [];
    const loaded = await h.load(
      { flood: 'function handler(e) { for (let i = 0; i < e.n; i++) console.log("line " + i + " " + "x".repeat(100)); return e.n; }' },
      { builder: h.builder().setConsoleLimit(4096).setConsoleHandler((l, m) => lines.push([l, m])) },
    );
    open.push(loaded);
    expect(await loaded.callHandler('flood', { n: 10_000 })).toBe(10_000);
    const kept = lines.filter(([, m]) => m.startsWith('line '));
    expect(kept.length).toBeGreaterThan(10);
    expect(kept.reduce((n, [, m]) => n + m.length, 0)).toBeLessThanOrEqual(4096);
    const note = lines.at(-1)!;
    expect(note[0]).toBe('warn');
    expect(note[1]).toMatch(/\d+ bytes of console output dropped/);
    // The bound is per call: the next call starts with a fresh allowance.
    lines.length = 0;
    expect(await loaded.callHandler('flood', { n: 2 })).toBe(2);
    expect(lines.map(([, m]) => m.slice(0, 6))).toEqual(['line 0', 'line 1']);
  });

  it('ignores a console handler that throws', async () => {
    const loaded = await h.load(
      { h: 'function handler() { console.log("boom"); return "fine"; }' },
      {
        builder: h.builder().setConsoleHandler(() => {
          throw new Error('sink failed');
        }),
      },
    );
    open.push(loaded);
    expect(await loaded.callHandler('h', {})).toBe('fine');
  });

  it('rejects a console handler that is not a function and a bad limit', () => {
    expect(() => h.builder().setConsoleHandler('nope' as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => h.builder().setConsoleLimit(0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
  });
});
