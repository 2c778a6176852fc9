// others-load.ts — the CPU other processes used while a piece of a test ran, in cores:
// the busy time of every CPU (/proc/stat) less this process's own CPU time (every
// thread: runners, watcher, workers), over the wall time between. A test whose
// assertion premises a free core checks it over the very interval it measured, not
// at its edges: a neighbour's burst inside a 50 ms loop is invisible to samples taken
// before and after it.
import { readFileSync } from 'node:fs';

// USER_HZ, the unit of /proc/stat, is 100 on every Linux ABI Node runs on.
const TICK_US = 10_000;

function busyTicks(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
  // cpu user nice system idle iowait irq softirq steal ...
  const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
  return user + nice + system + irq + softirq + steal;
}

function ownUs(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** Starts measuring; the function returned gives others' load since, in cores. Its
 *  error is about two ticks (20 ms of CPU) over the interval, so intervals of a few
 *  hundred milliseconds give it to a few hundredths of a core. */
export function othersLoadSince(): () => number {
  const t0 = process.hrtime.bigint();
  const busy0 = busyTicks();
  const own0 = ownUs();
  return () => {
    const wallUs = Number(process.hrtime.bigint() - t0) / 1e3;
    const othersUs = (busyTicks() - busy0) * TICK_US - (ownUs() - own0);
    return wallUs > 0 ? Math.max(0, othersUs / wallUs) : 0;
  };
}
