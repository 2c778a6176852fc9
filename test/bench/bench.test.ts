// bench.test.ts — the bench's own behaviour, not its figures: a quick run of the
// call-path groups, and one of the template, live and guest event-loop groups, finish and
// report every metric for both tiers, isolated-vm's
// absence is reported rather than fatal, the exchange floor refuses bad arguments, and
// the report keeps its hand-written sections. No timing is asserted.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadAddon } from '../../src/engine/native.js';
import { kvmImagePath } from '../../src/engine/paths.js';
import { describeKvm } from '../support/kvm.js';
import { writeReport } from './report.js';
import { allowedCpus, cpuList } from './threads.js';

const root = join(__dirname, '..', '..');

interface Partial {
  results: { contender: string; metric: string; p50: number; p99: number; round?: number }[];
  notes: string[];
  unavailable: { contender: string; metrics: string[]; reason: string }[];
}

function runBench(env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('npx', ['tsx', 'test/bench/run.ts'], { cwd: root, env: { ...process.env, ...env }, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describeKvm('bench: call-path groups', () => {
  it('a quick run reports every call-path metric for both tiers, and isolated-vm as unavailable when it is not installed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-'));
    const out = join(dir, 'partial.json');
    const { code, stdout, stderr } = await runBench({
      AIRLOCK_BENCH_QUICK: '1',
      AIRLOCK_BENCH_ONLY: 'exchange-floor,placement,main-thread,throughput,eventloop,live-heap,isolated-vm',
      AIRLOCK_BENCH_OUT: out,
      AIRLOCK_BENCH_DEPS: join(dir, 'no-deps'),
    });
    expect(code, stderr).toBe(0);
    const run = JSON.parse(readFileSync(out, 'utf8')) as Partial;
    const has = (contender: string, metric: string) =>
      run.results.some((r) => r.contender === contender && r.metric === metric && Number.isFinite(r.p50) && Number.isFinite(r.p99));
    const twoCpus = cpuList(allowedCpus()).length >= 2;
    const missing: string[] = [];
    const want = (contender: string, metric: string) => {
      if (!has(contender, metric)) missing.push(`${contender} ${metric}`);
      else expect(stdout).toContain(metric);
    };
    want('raw-kvm', 'exchange_floor_us');
    for (const contender of ['airlock-kvm', 'airlock-wasm']) {
      for (const m of ['call_roundtrip_same_core_us', 'main_thread_cpu_same_core_us_per_call', 'other_threads_cpu_same_core_us_per_call']) want(contender, m);
      if (twoCpus) for (const m of ['call_roundtrip_split_cores_us', 'main_thread_cpu_split_cores_us_per_call', 'other_threads_cpu_split_cores_us_per_call']) want(contender, m);
      for (const metric of ['main_thread_cpu_us_per_call', 'throughput_1_per_s', 'throughput_2_per_s', 'throughput_8_per_s', 'event_loop_gap_calls_ms', 'event_loop_gap_hostcalls_ms', 'call_roundtrip_live_heap_us']) {
        want(contender, metric);
      }
    }
    for (const metric of ['main_thread_cpu_us_per_call', 'throughput_1_per_s', 'throughput_2_per_s', 'throughput_8_per_s']) want('quickjs-emscripten', metric);
    expect(missing, run.notes.join('\n')).toEqual([]);
    expect(run.results.filter((r) => r.metric.startsWith('throughput_')).every((r) => r.p50 > 0)).toBe(true);
    // isolated-vm is not in AIRLOCK_BENCH_DEPS: said so, in the notes and as unavailable rows.
    expect(run.notes.some((n) => n.includes('isolated-vm unavailable'))).toBe(true);
    expect(run.unavailable.map((u) => u.contender).sort()).toEqual(['isolated-vm-async', 'isolated-vm-sync']);
    expect(stderr).toContain('isolated-vm unavailable');
  }, 240_000);

  it('a quick run of the template, live and guest event-loop groups reports their metrics for both tiers and quickjs-emscripten', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-'));
    const out = join(dir, 'partial.json');
    const { code, stdout, stderr } = await runBench({
      AIRLOCK_BENCH_QUICK: '1',
      AIRLOCK_BENCH_ONLY: 'templates,live-1000,guest-eventloop',
      AIRLOCK_BENCH_OUT: out,
    });
    expect(code, stderr).toBe(0);
    const run = JSON.parse(readFileSync(out, 'utf8')) as Partial;
    const missing: string[] = [];
    const want = (contender: string, metric: string) => {
      const r = run.results.find((x) => x.contender === contender && x.metric === metric);
      if (!r || !Number.isFinite(r.p50) || !Number.isFinite(r.p99)) missing.push(`${contender} ${metric}`);
      else expect(stdout).toContain(metric);
    };
    for (const contender of ['airlock-kvm', 'airlock-wasm']) {
      for (const metric of [
        'create_from_template_ms',
        'create_from_template_to_result_ms',
        'pool_acquire_to_result_ms',
        'pss_per_idle_sandbox_mib',
        'restore_and_call_1mib_us',
        'restore_and_call_128mib_us',
        'snapshot_load_ms',
        'live_100_create_s',
        'live_100_pss_gib',
        'live_100_threads',
        'live_100_kvm_threads',
        'live_100_kernel_mib',
        'concurrent_host_calls_ms',
        'timer_wakeup_us',
        'timer_sleep_cpu_us',
        'timer_sleep_cpu_per_ms_us',
      ]) {
        want(contender, metric);
      }
    }
    for (const metric of ['create_from_template_ms', 'create_from_template_to_result_ms', 'pss_per_idle_sandbox_mib']) want('quickjs-emscripten', metric);
    expect(missing, run.notes.join('\n')).toEqual([]);
    const value = (contender: string, metric: string) => run.results.find((x) => x.contender === contender && x.metric === metric)!.p50;
    // 100 live sandboxes hold at least one thread each; only KVM sandboxes have KVM threads.
    expect(value('airlock-kvm', 'live_100_threads') + value('airlock-kvm', 'live_100_kvm_threads')).toBeGreaterThanOrEqual(100);
    expect(value('airlock-kvm', 'live_100_kvm_threads')).toBeGreaterThan(0);
    expect(value('airlock-wasm', 'live_100_kvm_threads')).toBe(0);
    expect(value('airlock-kvm', 'live_100_pss_gib')).toBeGreaterThan(0);
  }, 300_000);

  it('AIRLOCK_BENCH_ROUNDS repeats the groups, each result naming its round, and a bad count is refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-bench-'));
    const out = join(dir, 'partial.json');
    const { code, stderr } = await runBench({ AIRLOCK_BENCH_QUICK: '1', AIRLOCK_BENCH_ONLY: 'exchange-floor', AIRLOCK_BENCH_ROUNDS: '2', AIRLOCK_BENCH_OUT: out });
    expect(code, stderr).toBe(0);
    const run = JSON.parse(readFileSync(out, 'utf8')) as Partial & { rounds: number };
    expect(run.rounds).toBe(2);
    expect(run.results.filter((r) => r.metric === 'exchange_floor_us').map((r) => r.round)).toEqual([0, 1]);
    const bad = await runBench({ AIRLOCK_BENCH_ONLY: 'exchange-floor', AIRLOCK_BENCH_ROUNDS: '0', AIRLOCK_BENCH_OUT: out });
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('AIRLOCK_BENCH_ROUNDS must be an integer from 1 to 20');
  }, 120_000);

  it('measureExchangeFloor answers with one positive figure per call, and refuses bad arguments and images', async () => {
    const addon = loadAddon().addon as unknown as { measureExchangeFloor(image: unknown, n: unknown): Promise<number[]> };
    const samples = await addon.measureExchangeFloor(readFileSync(kvmImagePath), 5);
    expect(samples).toHaveLength(5);
    expect(samples.every((s) => Number.isFinite(s) && s > 0)).toBe(true);
    expect(() => addon.measureExchangeFloor('not an image', 5)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    expect(() => addon.measureExchangeFloor(new Uint8Array(16), 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    await expect(addon.measureExchangeFloor(new Uint8Array(4096), 1)).rejects.toMatchObject({ code: 'ERR_INTERNAL' });
  });
});

describe('bench: report', () => {
  it('puts the figures of issues #12 and #13 next to their targets', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-report-'));
    mkdirSync(join(dir, 'docs'));
    writeReport(
      dir,
      [
        { contender: 'airlock-kvm', metric: 'create_from_template_ms', p50: 0.25, p99: 2, n: 10 },
        { contender: 'quickjs-emscripten', metric: 'create_from_template_ms', p50: 0.5, p99: 3, n: 10 },
        { contender: 'airlock-kvm', metric: 'restore_and_call_1mib_us', p50: 100, p99: 200, n: 10 },
        { contender: 'airlock-kvm', metric: 'restore_and_call_128mib_us', p50: 150, p99: 300, n: 10 },
        { contender: 'airlock-kvm', metric: 'live_1000_threads', p50: 40, p99: 40, n: 1 },
        { contender: 'airlock-wasm', metric: 'timer_wakeup_us', p50: 120, p99: 400, n: 10 },
      ],
      [],
      [],
      true,
    );
    const md = readFileSync(join(dir, 'docs/BENCHMARKS.md'), 'utf8');
    expect(md).toContain('| airlock-kvm create_from_template (ms) | 0.250 | ≤ 0.5 ms |');
    expect(md).toContain('| airlock-kvm create_from_template / quickjs-emscripten new context | 0.50× | ≤ 1× |');
    expect(md).toContain('| airlock-kvm restore_and_call_128mib / restore_and_call_1mib | 1.50× | ≤ 2× |');
    expect(md).toContain("| airlock-kvm live_1000_threads (Airlock's) | 40 | ≤ 64 |");
    expect(md).toContain('| airlock-wasm timer_wakeup overshoot (µs) | 120.0 | ≤ 200 µs |');
    expect(md).toContain('| airlock-kvm compile_250k_cached / compile_250k_first | n/a | ≤ 0.1× |');
  });

  it('gives each figure of a multi-round run as the median over the rounds with their range', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-report-'));
    mkdirSync(join(dir, 'docs'));
    const floor = [30, 20, 40];
    const split = [33, 30, 36];
    writeReport(
      dir,
      [0, 1, 2].flatMap((round) => [
        { contender: 'raw-kvm', metric: 'exit_floor_us', p50: floor[round], p99: floor[round] * 2, n: 10, round },
        { contender: 'airlock-kvm', metric: 'call_roundtrip_split_cores_us', p50: split[round], p99: 50, n: 10, round },
      ]),
      [],
      [],
      true,
    );
    const md = readFileSync(join(dir, 'docs/BENCHMARKS.md'), 'utf8');
    // Per round: 1.10, 1.50, 0.90; the median is 1.10.
    expect(md).toContain('| airlock-kvm call_roundtrip_split_cores / raw-kvm exit_floor | 1.10× (0.90–1.50) | ≤ 1.2× |');
    // The table: median p50 and p99, every round's samples, the range of the p50s.
    expect(md).toContain('| exit_floor_us | raw-kvm | 30.000 | 60.000 | 30 | 20.000–40.000 |');
    expect(md).toContain('The run made 3 rounds');
    const json = JSON.parse(readFileSync(join(dir, 'docs/benchmarks.json'), 'utf8')) as { rounds: number; results: unknown[]; perRound: unknown[] };
    expect(json.rounds).toBe(3);
    expect(json.results).toHaveLength(2);
    expect(json.perRound).toHaveLength(6);
  });

  it('writes unavailable contenders as rows and keeps the before/after sections of the previous file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'airlock-report-'));
    mkdirSync(join(dir, 'docs'));
    const before = '## Before and after the call-path work\n\n| placement | metric |\n|---|---|\n| spread | call_roundtrip_us |\n';
    writeFileSync(join(dir, 'docs/BENCHMARKS.md'), '# Benchmarks\n\nold table\n\n' + before);
    writeReport(
      dir,
      [
        { contender: 'raw-kvm', metric: 'exit_floor_us', p50: 30, p99: 40, n: 10 },
        { contender: 'airlock-kvm', metric: 'call_roundtrip_split_cores_us', p50: 33, p99: 50, n: 10 },
      ],
      ['a note'],
      [{ contender: 'isolated-vm-async', metrics: ['call_roundtrip_us'], reason: 'not installed' }],
      true,
    );
    const md = readFileSync(join(dir, 'docs/BENCHMARKS.md'), 'utf8');
    expect(md).toContain('| call_roundtrip_us | isolated-vm-async | unavailable | | |');
    expect(md).toContain('| airlock-kvm call_roundtrip_split_cores / raw-kvm exit_floor | 1.10× | ≤ 1.2× |');
    expect(md).toContain('- a note');
    expect(md).not.toContain('old table');
    expect(md.endsWith(before)).toBe(true);
    expect(md.split('## Before and after').length).toBe(2);
    expect(md).toContain('| airlock-kvm create_from_template (ms) | n/a | ≤ 0.5 ms |');
    const json = JSON.parse(readFileSync(join(dir, 'docs/benchmarks.json'), 'utf8')) as { unavailable: unknown[] };
    expect(json.unavailable).toHaveLength(1);
  });
});
