// setup.test.ts — scripts/setup.sh as people see it, run in a copy of this working tree
// (so the real build is never touched): a run with nothing to do prints one ready line,
// and a failing step shows its log's tail and path on stderr.
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';

const execFileAsync = promisify(execFile);
const root = join(__dirname, '..', '..');

/** Everything setup.sh reads or writes; node_modules is shared through a link. */
const COPIED = ['package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json', 'scripts', 'guest', 'host', 'src', 'dist', 'out/quickjs', 'out/guest'];

let copy: string;

beforeAll(() => {
  copy = mkdtempSync(join(tmpdir(), 'airlock-setup-'));
  mkdirSync(join(copy, 'out'));
  // preserveTimestamps: the steps decide what is current by modification times.
  for (const entry of COPIED) cpSync(join(root, entry), join(copy, entry), { recursive: true, preserveTimestamps: true });
  symlinkSync(join(root, 'node_modules'), join(copy, 'node_modules'));
});

afterAll(() => {
  if (copy) rmSync(copy, { recursive: true, force: true });
});

async function setup(extraEnv: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extraEnv };
  delete env.AIRLOCK_SETUP_QUIET;
  try {
    const { stdout, stderr } = await execFileAsync('bash', [join(copy, 'scripts', 'setup.sh')], { cwd: copy, env, timeout: 300_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof err.code !== 'number') throw e;
    return { code: err.code, stdout: err.stdout ?? '', stderr: err.stderr ?? '' };
  }
}

it('prints only the ready line when nothing changed', async () => {
  const first = await setup();
  expect(first.code).toBe(0);
  expect(first.stdout).toMatch(/\[setup\] ready \(\d+(\.\d|m\d\d)s\)\n$/);
  const second = await setup();
  expect(second.code).toBe(0);
  expect(second.stdout).toMatch(/^\[setup\] ready \(\d+\.\ds\)\n$/);
  expect(second.stderr).toBe('');
});

it('on a failing step prints one progress line, then the log tail and the log path on stderr', async () => {
  // A guest source newer than its objects makes the guest step run; no compiler exists by these names.
  const later = new Date(Date.now() + 5_000);
  utimesSync(join(copy, 'guest', 'runtime', 'console.c'), later, later);
  const bogus = 'airlock-no-such-compiler';
  const r = await setup({ KVM_CC: bogus, NATIVE_CC: bogus, WASM_CC: bogus });
  expect(r.code).not.toBe(0);
  expect(r.stdout).toMatch(/^\[setup\] building guest images .* failed after \d+\.\ds\n$/m);
  expect(r.stdout).not.toContain(bogus);
  const log = join(copy, 'out', 'setup.log');
  expect(r.stderr).toContain(`Last lines of ${log}:`);
  expect(r.stderr).toMatch(new RegExp(`  \\| .*${bogus}.*No such file or directory`));
  expect(r.stderr).toContain(`full log: ${log}`);
  expect(readFileSync(log, 'utf8')).toContain(bogus);
});
