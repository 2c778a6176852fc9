// doctor.ts — `airlock doctor`: which tiers work on this machine and, for each thing
// that stops or slows one, what to change. The tier checks boot a real sandbox and
// cancel a spinning handler, so "ok" means a call and its kill switch work here.
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { SandboxBuilder } from '../builder.js';
import type { Backend } from '../engine/engine.js';
import { kvmUnusableReasons } from '../engine/probe.js';
import { wasmAvailable } from '../engine/wasm/index.js';
import { CancelledError } from '../errors.js';
import { describeError, exitCodes } from './options.js';

export type CheckStatus = 'ok' | 'warn' | 'fail' | 'info';

export interface Check {
  check: string;
  status: CheckStatus;
  detail: string;
  /** What to do about a 'warn' or 'fail'; absent when there is nothing to fix. */
  fix?: string;
}

export interface DoctorReport {
  /** The tiers that booted, ran a call and cancelled a spinning one here. */
  tiers: Backend[];
  checks: Check[];
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Boots a sandbox on `backend`, runs a call, then has a wall-clock monitor cancel a spin. */
async function tryTier(backend: Backend): Promise<Check> {
  const name = backend === 'kvm' ? 'KVM tier' : 'WebAssembly tier';
  let dispose: (() => Promise<void>) | undefined;
  try {
    const proto = await new SandboxBuilder().setBackend(backend).build();
    dispose = () => proto.dispose();
    const js = await proto.loadRuntime();
    dispose = () => js.dispose();
    js.addHandler('echo', 'function handler(e) { return e; }');
    js.addHandler('spin', 'function handler() { for (;;) {} }');
    const loaded = await js.getLoadedSandbox();
    dispose = () => loaded.dispose();
    const echoed = await loaded.callHandler('echo', { ping: 1 });
    if (echoed?.ping !== 1) throw new Error(`a call returned ${JSON.stringify(echoed)} instead of its event`);
    try {
      await loaded.callHandler('spin', null, { wallClockTimeoutMs: 100 });
      throw new Error('a spinning handler was not cancelled by its 100 ms wall-clock limit');
    } catch (e) {
      if (!(e instanceof CancelledError)) throw e;
    }
    const cancel = backend === 'kvm' ? 'the vCPU cancellation signal works' : 'the worker is stopped on time';
    return { check: name, status: 'ok', detail: `boots, runs a call, and cancels a spinning handler (${cancel})` };
  } catch (e) {
    const { code, message } = describeError(e);
    const fix =
      backend === 'kvm'
        ? 'see the KVM checks above; a failure to cancel points at the vCPU cancellation signal (a real-time signal the process must leave unblocked and unhandled)'
        : 'run `npm run setup` to build the guest module, and use Node.js >= 20';
    return { check: name, status: 'fail', detail: `${code}: ${message}`, fix };
  } finally {
    await dispose?.().catch(() => undefined);
  }
}

function kvmChecks(): Check[] {
  const checks: Check[] = [];
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    checks.push({
      check: 'KVM access',
      status: 'fail',
      detail: `KVM micro-VMs need Linux on x86_64; this is ${process.platform}/${process.arch}`,
      fix: 'use the WebAssembly tier here (--backend wasm), or run on Linux x86_64 for hardware isolation',
    });
    return checks;
  }
  if (!existsSync('/dev/kvm')) {
    checks.push({
      check: 'KVM access',
      status: 'fail',
      detail: '/dev/kvm does not exist',
      fix: 'enable virtualisation (VT-x/AMD-V) in firmware, or nested virtualisation in the VM this runs in, and load kvm_intel or kvm_amd; in a container, pass the device (--device /dev/kvm)',
    });
  } else {
    try {
      accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
      checks.push({ check: 'KVM access', status: 'ok', detail: '/dev/kvm is readable and writable' });
    } catch {
      checks.push({
        check: 'KVM access',
        status: 'fail',
        detail: 'no read/write permission on /dev/kvm',
        fix: 'add the user to the kvm group (usermod -aG kvm $USER, then log in again) or grant access with a udev rule',
      });
    }
  }
  const reasons = kvmUnusableReasons();
  checks.push(
    reasons.length === 0
      ? { check: 'KVM probe', status: 'ok', detail: 'the host addon loads, the guest image is built, KVM has every capability Airlock needs' }
      : { check: 'KVM probe', status: 'fail', detail: reasons.join('; '), fix: 'each reason above names its fix' },
  );

  if (existsSync('/sys/module/kvm_pvm')) {
    checks.push({
      check: 'virtualisation',
      status: 'info',
      detail:
        'KVM runs with PVM (paravirtualised nesting inside another VM): guest ring-3 code runs natively, but each VM exit costs tens of microseconds, so a call costs more than on bare-metal KVM',
    });
  } else if (/^flags\s*:.*\bhypervisor\b/m.test(readText('/proc/cpuinfo') ?? '')) {
    checks.push({
      check: 'virtualisation',
      status: 'info',
      detail: 'this machine is itself a VM (nested virtualisation): VM exits cost more than on bare metal',
    });
  } else {
    checks.push({ check: 'virtualisation', status: 'info', detail: 'no outer hypervisor seen: bare-metal KVM' });
  }
  return checks;
}

function transparentHugePages(): Check {
  const text = readText('/sys/kernel/mm/transparent_hugepage/enabled');
  if (text === undefined) {
    return { check: 'transparent huge pages', status: 'info', detail: 'not reported by this kernel' };
  }
  const mode = /\[(\w+)\]/.exec(text)?.[1] ?? text.trim();
  if (mode === 'never') {
    return {
      check: 'transparent huge pages',
      status: 'warn',
      detail: 'disabled (never): guest memory falls back to 4 KiB pages, so boots and first touches of guest pages are slower',
      fix: 'echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (as root)',
    };
  }
  return { check: 'transparent huge pages', status: 'ok', detail: `${mode}: guest memory asks for huge pages with MADV_HUGEPAGE` };
}

/** The soft limit `name` from /proc/self/limits, or undefined. */
function processLimit(limits: string, name: string): string | undefined {
  const line = limits.split('\n').find((l) => l.startsWith(name));
  return line?.slice(name.length).trim().split(/\s+/)[0];
}

/** This process's cgroup v2 folder, or undefined. */
function cgroupDir(): string | undefined {
  const line = (readText('/proc/self/cgroup') ?? '').split('\n').find((l) => l.startsWith('0::'));
  return line === undefined ? undefined : `/sys/fs/cgroup${line.slice(3)}`;
}

function limits(): Check[] {
  const checks: Check[] = [];
  const text = readText('/proc/self/limits');
  if (text !== undefined) {
    const files = processLimit(text, 'Max open files');
    const processes = processLimit(text, 'Max processes');
    // Each KVM sandbox holds its VM and vCPU descriptors and one thread; each
    // WebAssembly sandbox a worker thread.
    const lowFiles = files !== undefined && files !== 'unlimited' && Number(files) < 4096;
    checks.push({
      check: 'open files limit',
      status: lowFiles ? 'warn' : 'ok',
      detail: `soft limit ${files ?? 'unknown'}; every KVM sandbox keeps a few descriptors open`,
      ...(lowFiles ? { fix: 'raise it (ulimit -n 65536, LimitNOFILE= in a systemd unit) to hold thousands of sandboxes' } : {}),
    });
    checks.push({ check: 'processes limit', status: 'info', detail: `soft limit ${processes ?? 'unknown'}; every sandbox runs one thread` });
  }
  const dir = cgroupDir();
  if (dir !== undefined) {
    const memory = readText(`${dir}/memory.max`)?.trim();
    const pids = readText(`${dir}/pids.max`)?.trim();
    if (memory !== undefined) {
      checks.push({
        check: 'cgroup memory.max',
        status: 'info',
        detail: `${memory === 'max' ? 'unlimited' : `${Math.round(Number(memory) / 2 ** 20)} MiB`}; guest memory is committed as the guest touches it, up to the heap size of each sandbox`,
      });
    }
    if (pids !== undefined) {
      const low = pids !== 'max' && Number(pids) < 256;
      checks.push({
        check: 'cgroup pids.max',
        status: low ? 'warn' : 'info',
        detail: `${pids === 'max' ? 'unlimited' : pids}; every sandbox's thread counts against it`,
        ...(low ? { fix: 'raise pids.max (e.g. the pod or unit pids limit) above the number of sandboxes you keep warm' } : {}),
      });
    }
  }
  return checks;
}

function wasmChecks(): Check {
  const wasm = wasmAvailable();
  return wasm.usable
    ? { check: 'WebAssembly prerequisites', status: 'ok', detail: 'WebAssembly, SharedArrayBuffer and Atomics.waitAsync are present; the guest module is built' }
    : { check: 'WebAssembly prerequisites', status: 'fail', detail: wasm.reasons.join('; '), fix: 'each reason above names its fix' };
}

export async function runDoctor(): Promise<DoctorReport> {
  const checks: Check[] = [...kvmChecks(), transparentHugePages(), ...limits(), wasmChecks()];
  const tiers: Backend[] = [];
  for (const backend of ['kvm', 'wasm'] as const) {
    const check = await tryTier(backend);
    checks.push(check);
    if (check.status === 'ok') tiers.push(backend);
  }
  return { tiers, checks };
}

const MARK: Record<CheckStatus, string> = { ok: 'ok  ', warn: 'warn', fail: 'FAIL', info: 'info' };

/** Runs the command; exits 0 when at least one tier works here. */
export async function doctorCommand(options: { json?: boolean }): Promise<number> {
  const report = await runDoctor();
  if (options.json) {
    process.stdout.write(JSON.stringify(report) + '\n');
  } else {
    const out: string[] = [];
    for (const c of report.checks) {
      out.push(`${MARK[c.status]}  ${c.check}: ${c.detail}`);
      if (c.fix) out.push(`      fix: ${c.fix}`);
    }
    out.push(
      report.tiers.length === 0
        ? 'No tier works here.'
        : `Tiers that work here: ${report.tiers.join(', ')}. 'auto' picks ${report.tiers.includes('kvm') ? 'kvm' : 'wasm'}.`,
    );
    process.stdout.write(out.join('\n') + '\n');
  }
  return report.tiers.length > 0 ? exitCodes.ok : exitCodes.callFailed;
}
