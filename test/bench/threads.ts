// threads.ts — this process's threads as the bench sees them: their ids and names
// (/proc/self/task), their CPU placement (sched_setaffinity through `taskset -p`, which
// takes thread ids) and one thread's own CPU time.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export function threadIds(): number[] {
  return readdirSync('/proc/self/task').map(Number);
}

/** The thread's name (comm), or '' when it has ended meanwhile. */
export function threadName(tid: number): string {
  try {
    return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

/** The CPUs this process may use now, as taskset's list syntax (e.g. "0-1"). */
export function allowedCpus(): string {
  const line = readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith('Cpus_allowed_list:'));
  return line?.split(':')[1]?.trim() ?? '0';
}

/** The CPUs of a taskset list, in order (e.g. "0-1,4" -> [0, 1, 4]). */
export function cpuList(list: string): number[] {
  const out: number[] = [];
  for (const part of list.split(',')) {
    const [a, b] = part.split('-').map(Number);
    for (let c = a; c <= (b ?? a); c++) out.push(c);
  }
  return out;
}

/**
 * Pins one thread. False when the thread refuses (a kernel worker the kernel attaches
 * to the process, such as KVM's huge-page recovery thread, cannot be moved) or has ended.
 */
export function pinThread(tid: number, cpus: string): boolean {
  try {
    execFileSync('taskset', ['-p', '-c', cpus, String(tid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Pins every thread of this process that can be moved; threads started later inherit their creator's CPUs. */
export function pinProcess(cpus: string): void {
  if (!pinThread(process.pid, cpus)) throw new Error(`cannot pin the main thread to CPU ${cpus}`);
  for (const tid of threadIds()) if (tid !== process.pid) pinThread(tid, cpus);
}

const CLOCK_TICKS_PER_S = 100; // USER_HZ on Linux

/**
 * CPU time of one thread of this process (default: the Node main thread, whose tid is
 * the pid) in nanoseconds: schedstat's run time (ns resolution), else stat's
 * utime + stime (clock ticks).
 */
export function threadCpuNs(tid: number = process.pid): number {
  try {
    return Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
  } catch {
    // comm may hold spaces and parentheses: the fields start after the last ')'.
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    return ((Number(fields[11]) + Number(fields[12])) * 1e9) / CLOCK_TICKS_PER_S;
  }
}
