// hostile-generator.test.ts — the seeded random hostile-guest generator (issue 9):
// random programs (hostile-generator.ts) driven through random host operations by
// fixtures/hostile-generator-child.ts in its own process, so a wedged VM cannot hang vitest.
// The host must never hang, crash or leak: every operation settles before its
// deadline with a documented code, idle sandboxes use no CPU, and fds, threads and RSS
// come back to where they started. The seed is printed; AIRLOCK_HOSTILE_SEED replays it.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { describeKvm } from '../support/kvm.js';
import { loadAddon } from './raw-guest.js';

const child = join(__dirname, 'fixtures', 'hostile-generator-child.ts');
const targetSteps = Number(process.env.AIRLOCK_HOSTILE_STEPS ?? 100_000);
// Far above a healthy run (about a minute for 100,000 steps on 2 busy cores, more
// under the sanitizers): only a host that stopped making progress reaches it.
const timeLimitMs = Number(process.env.AIRLOCK_HOSTILE_TIME_LIMIT_MS ?? 300_000);
// Under AddressSanitizer (scripts/test-sanitized.sh) freed memory waits in ASan's
// quarantine on purpose, so RSS says nothing about the host there.
const sanitized = (process.env.LD_PRELOAD ?? '').includes('libasan');
const documented = ['ERR_GUEST_ABORT', 'ERR_CANCELLED', 'ERR_POISONED', 'ERR_INVALID_ARG', 'ERR_BUSY'];

interface Summary {
  seed: number;
  steps: number;
  rejections: Record<string, number>;
  start: { fds: number; threads: number; runners: number; rss: number; v8Heap: number };
  end: { fds: number; threads: number; runners: number; rss: number; v8Heap: number };
  failures: string[];
}

describeKvm('host addon: seeded random hostile guests', () => {
  it(
    `survives ${targetSteps} random guest steps without a hang, a crash or a leak`,
    () => {
      // A fixed young generation: V8 grows it with the driver's allocation rate, which
      // would move RSS by more than the host ever should.
      const v8 = ['--expose-gc', '--min-semi-space-size=8', '--max-semi-space-size=8'];
      const r = spawnSync(process.execPath, [...v8, '--import', 'tsx', child], {
        encoding: 'utf8',
        timeout: timeLimitMs,
        killSignal: 'SIGKILL',
        cwd: join(__dirname, '..', '..'),
        // glibc makes up to 8 malloc arenas per core lazily, as threads contend (every
        // VM brings a vCPU thread), and each keeps memory freed into it: with two, RSS
        // growth measures what the host keeps, not how many arenas a run happened to make.
        env: { ...process.env, AIRLOCK_HOSTILE_STEPS: String(targetSteps), MALLOC_ARENA_MAX: '2' },
        maxBuffer: 16 << 20,
      });
      const out = r.stdout ?? '';
      const report = `child stdout:\n${out.slice(-8000)}\nchild stderr:\n${(r.stderr ?? '').slice(-8000)}`;
      console.log(out.split('\n')[0]); // the seed, for a replay
      expect(out, report).not.toMatch(/^HANG /m);
      expect(r.error, `the generator did not finish within ${timeLimitMs} ms\n${report}`).toBeUndefined();
      expect(r.signal, report).toBeNull();
      expect(r.status, report).toBe(0);

      const last = out.trim().split('\n').pop()!;
      console.log(last); // steps, time, rejections, fds, threads and RSS of this run
      const summary = JSON.parse(last) as Summary;
      expect(summary.failures, report).toEqual([]);
      expect(summary.steps).toBeGreaterThanOrEqual(targetSteps);
      for (const code of Object.keys(summary.rejections)) expect(documented).toContain(code);
      // Every VM is disposed: its VM and vCPU fds closed, no thread left but the
      // runner pool's (bounded, whatever the guests did) ...
      expect(summary.end.fds, report).toBeLessThanOrEqual(summary.start.fds);
      expect(summary.end.threads, report).toBeLessThanOrEqual(summary.start.threads);
      expect(summary.end.runners, report).toBeLessThanOrEqual(loadAddon().runnerPool().hardCap);
      // ... and its memory (guest memory, snapshots) released: RSS apart from V8's own
      // heap ends within 32 MiB of where it started. A leak held per VM (guest memory or
      // a snapshot, MiBs each) over the ~180 VMs of a run is far above that; what moves
      // between samples on its own (the driver's JavaScript: V8's memory beside its heap
      // and malloc arenas, up to 16 MiB between runs) stays below it. A
      // bound of 10% of the start failed on such noise with the process ending lower
      // than it started in other runs.
      const host = (m: { rss: number; v8Heap: number }) => m.rss - m.v8Heap;
      if (!sanitized) expect(host(summary.end), report).toBeLessThanOrEqual(host(summary.start) + 32 * 1024 * 1024);
    },
    timeLimitMs + 30_000,
  );
});
