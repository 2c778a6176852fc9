// cxx-driver.ts — a C++ test driver compiled with g++ against one host source file, for
// tests of host arithmetic that must not depend on a VM or the machine's load. The
// binary lives in a temporary directory for the test file's life.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';

const root = join(__dirname, '..', '..');

/** Compiles test/host/fixtures/<fixture> with host/src/<hostSource> before the file's
 *  tests; the returned function feeds `input` to the driver and gives its stdout. */
export function cxxDriver(fixture: string, hostSource: string): (input: string) => string {
  let dir = '';
  let driver = '';
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'airlock-driver-'));
    driver = join(dir, 'driver');
    const sources = [join(root, 'test', 'host', 'fixtures', fixture), join(root, 'host', 'src', hostSource)];
    execFileSync('g++', ['-std=c++17', '-O1', '-Wall', '-Werror', '-o', driver, ...sources]);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return (input) => execFileSync(driver, { input, encoding: 'utf8' });
}
