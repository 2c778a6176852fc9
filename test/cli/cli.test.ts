// cli.test.ts — the `airlock` command as users run it: the built binary at package.json's
// bin path, spawned with plain Node, on both tiers: results, --json shapes, exit codes
// and error codes, modules, limits, the REPL's state rules, and doctor's verdicts.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';

const execFileAsync = promisify(execFile);
const root = join(__dirname, '..', '..');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { bin: { airlock: string } };
const bin = join(root, pkg.bin.airlock);

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

function env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const e: NodeJS.ProcessEnv = { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1', ...extra };
  if (!('AIRLOCK_DISABLE_KVM' in extra)) delete e.AIRLOCK_DISABLE_KVM;
  return e;
}

async function airlock(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<Outcome> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [bin, ...args], { cwd: root, env: env(extraEnv), timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof err.code !== 'number') throw e;
    return { code: err.code, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

/** Runs `airlock repl` with `lines` piped to it. */
function repl(args: string[], lines: string[]): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [bin, 'repl', ...args], { cwd: root, env: env({ AIRLOCK_REPL_HISTORY: '' }) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(lines.join('\n') + '\n');
  });
}

let dir: string;
function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'airlock-cli-'));
});

it('package.json points bin at the built CLI, and npm pack ships it', async () => {
  expect(pkg.bin.airlock).toBe('./dist/cli/main.js');
  expect(readFileSync(bin, 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
  const { stdout } = await execFileAsync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root });
  const files = (JSON.parse(stdout) as { files: { path: string }[] }[])[0].files.map((f) => f.path);
  expect(files).toContain('dist/cli/main.js');
  expect(files).toContain('dist/cli/run.js');
});

describe('usage errors exit 2 before any sandbox boots', () => {
  it('refuses TypeScript handlers, saying how to get JavaScript', async () => {
    const ts = file('typed.ts', 'export function handler(e: number): number { return e; }');
    const r = await airlock(['run', ts]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('ERR_USAGE');
    expect(r.stderr).toContain('TypeScript');
    expect(r.stdout).toBe('');
  });

  it('refuses a TypeScript module too, with the --json shape', async () => {
    const h = file('plain.js', 'export function handler() { return 1; }');
    const ts = file('mod.ts', 'export const x: number = 1;');
    const r = await airlock(['run', h, '--module', `m=${ts}`, '--json']);
    expect(r.code).toBe(2);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ ok: false, backend: null, stats: null, error: { code: 'ERR_USAGE' } });
  });

  it.each([
    [['run', 'missing-file.js'], 'cannot read handler'],
    [['run', 'x.js', '--backend', 'xen'], "must be 'kvm', 'wasm' or 'auto'"],
    [['run', 'x.js', '--wall-ms', '-5'], 'positive whole number'],
    [['run', 'x.js', '--module', 'noequals'], 'name=file'],
    [['frobnicate'], 'unknown command'],
  ])('airlock %j', async (args, message) => {
    const r = await airlock(args);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(message);
  });

  it('refuses an event that is not JSON, and two event sources at once', async () => {
    const h = file('echo.js', 'export function handler(e) { return e; }');
    const bad = await airlock(['run', h, '--event', '{nope']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--event is not JSON');
    const ev = file('ev.json', '{}');
    const both = await airlock(['run', h, '--event', '{}', '--event-file', ev]);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('not both');
  });

  it('reports a heap size out of range as ERR_INVALID_ARG with exit 2', async () => {
    const h = file('echo2.js', 'export function handler(e) { return e; }');
    const r = await airlock(['run', h, '--heap', '1', '--backend', 'wasm']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('ERR_INVALID_ARG');
  });
});

function tierSuite(tier: 'kvm' | 'wasm'): void {
  const backend = ['--backend', tier];

  it('prints the result as JSON', async () => {
    const h = file(`sum-${tier}.js`, 'export function handler(e) { return { sum: e.a + e.b }; }');
    const r = await airlock(['run', h, '--event', '{"a":2,"b":3}', ...backend]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ sum: 5 });
  });

  it('--json prints ok, backend, result, CallStats and the console as one object', async () => {
    const h = file(`log-${tier}.js`, "export default function (e) { console.log('got', e.n); return e.n * 2; }");
    const ev = file(`ev-${tier}.json`, '{"n":21}');
    const r = await airlock(['run', h, '--event-file', ev, '--json', ...backend]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report).toMatchObject({ ok: true, backend: tier, result: 42, console: [{ level: 'log', message: 'got 21' }] });
    expect(Object.keys(report.stats).sort()).toEqual(['cpuTimeMs', 'terminatedBy', 'wallClockMs']);
    expect(report.stats.wallClockMs).toBeGreaterThan(0);
    expect(report.stats.terminatedBy).toBeNull();
    expect(report.error).toBeUndefined();
  });

  it('imports --module files by name and by namespace', async () => {
    const a = file(`a-${tier}.js`, 'export const a = 10;');
    const b = file(`b-${tier}.js`, 'export const b = 5;');
    const h = file(`imp-${tier}.js`, "import { a } from 'user:a'; import { b } from 'lib:b'; export function handler(e) { return a * b + e; }");
    const r = await airlock(['run', h, '--module', `a=${a}`, '--module', `lib:b=${b}`, '--event', '1', ...backend]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('51');
  });

  it('exits 1 with the guest exception code and keeps its name and message', async () => {
    const h = file(`throw-${tier}.js`, "export function handler() { throw new RangeError('out of range'); }");
    const plain = await airlock(['run', h, ...backend]);
    expect(plain.code).toBe(1);
    expect(plain.stderr).toContain('ERR_GUEST_EXCEPTION: RangeError: out of range');
    const json = await airlock(['run', h, '--json', ...backend]);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.stdout)).toMatchObject({
      ok: false,
      backend: tier,
      error: { code: 'ERR_GUEST_EXCEPTION', name: 'RangeError', message: 'out of range' },
    });
  });

  it('exits 1 with ERR_COMPILE for a handler that does not compile', async () => {
    const h = file(`broken-${tier}.js`, 'export function handler( {');
    const r = await airlock(['run', h, ...backend]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('ERR_COMPILE');
  });

  it('--wall-ms and --cpu-ms cancel a spinning handler, and CallStats say which', async () => {
    const h = file(`spin-${tier}.js`, 'export function handler() { for (;;) {} }');
    for (const [flag, by] of [['--wall-ms', 'wall-clock'], ['--cpu-ms', 'cpu-time']] as const) {
      const r = await airlock(['run', h, flag, '100', '--json', ...backend]);
      expect(r.code).toBe(1);
      expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, error: { code: 'ERR_CANCELLED' }, stats: { terminatedBy: by } });
    }
  });

  it('--heap bounds the guest heap', async () => {
    const h = file(`hog-${tier}.js`, "export function handler() { const a = []; for (;;) a.push('x'.repeat(1000) + a.length); }");
    const r = await airlock(['run', h, '--heap', '2', '--json', ...backend]);
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout).error.code).toBe('ERR_OUT_OF_MEMORY');
  });

  it('repl: var and functions persist between lines, let does not, promises are awaited', async () => {
    const r = await repl(backend, ['var x = 40', 'function twice(a) { return a * 2; }', 'twice(x + 1)', 'let y = 1', 'y', 'Promise.resolve({ k: [1] })']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`airlock(${tier})> `);
    expect(r.stdout).toContain('82');
    expect(r.stdout).toContain("Uncaught ReferenceError: 'y' is not defined");
    expect(r.stdout).toMatch(/"k": \[\s*1\s*\]/);
  });

  it('repl: an unfinished line continues on the next, a broken one is reported', async () => {
    const r = await repl(backend, ['function add(a, b) {', '  return a + b;', '}', 'add(2,', '3)', '`x', 'y`.length', '"open', '1 + 1']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/\.\.\. 5\n/);
    expect(r.stdout).toMatch(/\.\.\. 3\n/);
    expect(r.stdout).toContain('Uncaught SyntaxError: unexpected end of string');
    expect(r.stdout).toMatch(/> 2\n/);
  });

  it('repl: a poisoning line resets the sandbox, and so does .clear', async () => {
    const r = await repl(['--wall-ms', '100', ...backend], ['var a = 1', 'for (;;) {}', 'a', 'var b = 2', 'b + 1', '.clear', 'typeof b']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('ERR_CANCELLED');
    expect(r.stdout).toContain('the sandbox was poisoned and has been reset');
    expect(r.stdout).toContain("Uncaught ReferenceError: 'a' is not defined");
    expect(r.stdout).toMatch(/> 3\n/);
    expect(r.stdout).toContain('(sandbox reset)');
    expect(r.stdout.trimEnd().split('\n').filter((l) => l.includes('"undefined"')).length).toBe(1);
  });
}

describeKvm('airlock CLI on KVM', () => tierSuite('kvm'));
describe('airlock CLI on WebAssembly', () => tierSuite('wasm'));

describeKvm('airlock doctor', () => {
  it('finds both tiers working here, each proven by a call and a cancellation', async () => {
    const r = await airlock(['doctor', '--json']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as { tiers: string[]; checks: { check: string; status: string; detail: string; fix?: string }[] };
    expect(report.tiers).toEqual(['kvm', 'wasm']);
    const names = report.checks.map((c) => c.check);
    for (const name of ['KVM access', 'KVM probe', 'virtualisation', 'transparent huge pages', 'open files limit', 'KVM tier', 'WebAssembly tier']) {
      expect(names).toContain(name);
    }
    for (const c of report.checks) {
      if (c.status === 'warn' || c.status === 'fail') expect(c.fix).toBeTruthy();
    }
  });

  it('says why KVM is not used and how to fix it, and still passes on WebAssembly', async () => {
    const r = await airlock(['doctor'], { AIRLOCK_DISABLE_KVM: '1' });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/FAIL {2}KVM probe: KVM is disabled by AIRLOCK_DISABLE_KVM=1 \(unset it to use KVM\)/);
    expect(r.stdout).toMatch(/FAIL {2}KVM tier: ERR_UNAVAILABLE/);
    expect(r.stdout).toMatch(/ok {4}WebAssembly tier/);
    expect(r.stdout).toContain("Tiers that work here: wasm. 'auto' picks wasm.");
  });
});
