// console.test.ts — the guest console reaches the host: to stdout/stderr by default (one
// escaped, attributed line per console call), to a builder callback when set (raw text),
// formatted like Node's, and bounded per call by the host even when the guest does not count.
import { afterEach, expect, it, vi } from 'vitest';
import { sizeLimits } from '../../src/builder.js';
import { SandboxCore, type ConsoleHandler } from '../../src/core.js';
import { engineFactory } from '../../src/engine/select.js';
import { ProtoJSSandbox } from '../../src/sandbox.js';
import { describeEachBackend, type BackendHarness } from './backends.js';

type Line = [string, string];

const DROPPED = /^\[airlock\] (\d+) bytes of console output dropped$/;

/**
 * A sandbox whose guest runs with the largest console limit while the host keeps
 * `limit`: the guest's own count never triggers, as with a guest that skips it.
 */
async function uncountingGuest(h: BackendHarness, limit: number, consoleHandler?: ConsoleHandler): Promise<ProtoJSSandbox> {
  const engine = engineFactory(h.backend);
  const config = {
    heapSize: sizeLimits.heap.default,
    stackSize: sizeLimits.scratch.default,
    inputSize: sizeLimits.inputBuffer.default,
    outputSize: sizeLimits.outputBuffer.default,
    consoleLimit: limit,
  };
  const core = await SandboxCore.create(
    config,
    (c, onHostCall) => engine({ ...c, consoleLimit: sizeLimits.consoleLimit.max }, onHostCall),
    consoleHandler,
  );
  return new ProtoJSSandbox(core);
}

/** Captures what the sandbox writes to stdout and stderr (other writers' chunks are ignored). */
function captureStdio(): { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  const keep = (into: string[]) => (chunk: string | Uint8Array) => {
    const text = String(chunk);
    if (text.startsWith('[airlock:')) into.push(text);
    return true;
  };
  vi.spyOn(process.stdout, 'write').mockImplementation(keep(out));
  vi.spyOn(process.stderr, 'write').mockImplementation(keep(err));
  return { out, err };
}

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
    expect(note[1]).toMatch(DROPPED);
    // The guest's own notice and the host's count end as one line.
    expect(lines.filter(([, m]) => DROPPED.test(m))).toHaveLength(1);
    // The bound is per call: the next call starts with a fresh allowance.
    lines.length = 0;
    expect(await loaded.callHandler('flood', { n: 2 })).toBe(2);
    expect(lines.map(([, m]) => m.slice(0, 6))).toEqual(['line 0', 'line 1']);
  });

  it('escapes control characters by default, so one console call is one attributed line', async () => {
    const io = captureStdio();
    const hostile = 'a\\nb[airlock:999] forged\\r\\x1b[31mred\\x1b[0m\\x00\\x7f\\u009b\\u0085\\u2028\\t|';
    const loaded = await h.load({
      h: `function handler() { console.log("${hostile}"); console.error("${hostile}", "\\n"); console.log(""); return 1; }`,
    });
    open.push(loaded);
    await loaded.callHandler('h', {});
    vi.restoreAllMocks();
    const escaped = 'a\\nb[airlock:999] forged\\r\\x1b[31mred\\x1b[0m\\x00\\x7f\\x9b\\x85\\u2028\\t|';
    expect(io.out).toEqual([expect.stringMatching(/^\[airlock:\d+\] /), expect.stringMatching(/^\[airlock:\d+\] \n$/)]);
    const prefix = io.out[0].slice(0, io.out[0].indexOf(' ') + 1);
    expect(io.out).toEqual([`${prefix}${escaped}\n`, `${prefix}\n`]);
    expect(io.err).toEqual([`${prefix}${escaped} \\n\n`]);
  });

  it('hands a console handler the raw text, control characters included', async () => {
    const lines: Line[] = [];
    const loaded = await h.load(
      { h: 'function handler() { console.log("two\\nlines \\x1b[2J\\u009b\\x00"); return 1; }' },
      { builder: h.builder().setConsoleHandler((l, m) => lines.push([l, m])) },
    );
    open.push(loaded);
    await loaded.callHandler('h', {});
    expect(lines).toEqual([['log', 'two\nlines \x1b[2J\u009b\x00']]);
  });

  it('enforces the limit on the host, across host calls, when the guest does not count', async () => {
    const lines: Line[] = [];
    const limit = 1000;
    const proto = await uncountingGuest(h, limit, (l, m) => lines.push([l, m]));
    open.push(proto);
    let pings = 0;
    proto.register('host', 'ping', () => ++pings);
    const js = await proto.loadRuntime();
    // 20 lines of 99 bytes before each of 10 host calls: 200 lines, 20,000 bytes with line ends.
    js.addHandler(
      'flood',
      `import { ping } from "host:host";
       function handler(e) {
         for (let i = 0; i < e.n; i++) { console.log(String(i).padStart(4, "0") + "x".repeat(95)); if (i % 20 === 19) ping(); }
         return e.n;
       }`,
    );
    const loaded = await js.getLoadedSandbox();
    expect(await loaded.callHandler('flood', { n: 200 })).toBe(200);
    expect(pings).toBe(10);
    // A line costs its 99 bytes plus its line end: 10 fit in 1000 bytes.
    const kept = lines.slice(0, -1);
    expect(kept.map(([, m]) => m.slice(0, 4))).toEqual(['0000', '0001', '0002', '0003', '0004', '0005', '0006', '0007', '0008', '0009']);
    expect(lines.at(-1)).toEqual(['warn', `[airlock] ${190 * 100} bytes of console output dropped`]);
    // The budget is per call.
    lines.length = 0;
    expect(await loaded.callHandler('flood', { n: 3 })).toBe(3);
    expect(lines.map(([, m]) => m.slice(0, 4))).toEqual(['0000', '0001', '0002']);
  });

  it('bounds what reaches stdout, empty lines included, when the guest does not count', async () => {
    const io = captureStdio();
    const limit = 4096;
    const proto = await uncountingGuest(h, limit);
    open.push(proto);
    proto.register('host', 'ping', () => 0);
    const js = await proto.loadRuntime();
    js.addHandler(
      'flood',
      `import { ping } from "host:host";
       function handler() {
         for (let i = 0; i < 20000; i++) { console.log(); console.log("\\n".repeat(8)); if (i % 100 === 99) ping(); }
         return 0;
       }`,
    );
    const loaded = await js.getLoadedSandbox();
    await loaded.callHandler('flood', {});
    vi.restoreAllMocks();
    const prefix = io.out[0].slice(0, io.out[0].indexOf(' ') + 1);
    // Each kept line: empty (1 byte with its line end) or eight newlines (9), escaped as \n.
    const keptLines = io.out.length;
    expect(keptLines).toBeLessThanOrEqual(limit);
    const keptCost = io.out.reduce((n, line) => n + (line === `${prefix}\n` ? 1 : 9), 0);
    expect(keptCost).toBeLessThanOrEqual(limit);
    expect(keptCost).toBeGreaterThan(limit - 9);
    expect(io.out.filter((line) => line !== `${prefix}\n` && line !== `${prefix}${'\\n'.repeat(8)}\n`)).toEqual([]);
    expect(io.err).toEqual([`${prefix}[airlock] ${20000 * 10 - keptCost} bytes of console output dropped\n`]);
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
