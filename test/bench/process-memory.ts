// process-memory.ts — what the bench reads about its own process: PSS from
// /proc/self/smaps_rollup (pages shared between mappings, such as a template's
// copy-on-write pages in every clone, count once) and the threads in /proc/self/task,
// split into KVM's per-VM kernel threads (named `kvm-*`) and the rest; and the machine's
// unreclaimable kernel memory from /proc/meminfo.
import { readdirSync, readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

// A full V8 collection before each reading: the JavaScript heap otherwise grows and
// shrinks by megabytes between two readings, as much as 100 idle sandboxes change.
setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

/** The process's proportional set size in bytes, read after a full V8 collection. */
export function pssBytes(): number {
  collectGarbage();
  const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'));
  if (!m) throw new Error('no Pss line in /proc/self/smaps_rollup');
  return Number(m[1]) * 1024;
}

/**
 * The machine's unreclaimable kernel memory in bytes (SUnreclaim, PageTables,
 * SecPageTables — KVM's EPT — and KernelStack of /proc/meminfo): what PSS leaves out.
 */
export function kernelBytes(): number {
  const info = readFileSync('/proc/meminfo', 'utf8');
  let kb = 0;
  for (const field of ['SUnreclaim', 'PageTables', 'SecPageTables', 'KernelStack']) {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(info);
    if (m) kb += Number(m[1]);
  }
  return kb * 1024;
}

export interface ThreadCount {
  /** Threads of the process other than KVM's (Node's, the addon's, workers). */
  own: number;
  /** KVM's per-VM kernel threads living in this process (`kvm-nx-lpage-re` and kin). */
  kvm: number;
}

export function threadCount(): ThreadCount {
  let own = 0;
  let kvm = 0;
  for (const tid of readdirSync('/proc/self/task')) {
    let comm: string;
    try {
      comm = readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
    } catch {
      continue; // the thread ended between the listing and the read
    }
    if (comm.startsWith('kvm-')) kvm++;
    else own++;
  }
  return { own, kvm };
}

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;
