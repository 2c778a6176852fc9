// ticks.ts — how often a 1 ms interval fires while some work runs: the tests' check
// that the event loop keeps turning (a count, never a timing threshold).

/** Runs `work` with a 1 ms interval armed; returns how often the interval fired. */
export async function ticksDuring(work: () => Promise<void>): Promise<number> {
  let ticks = 0;
  const timer = setInterval(() => {
    ticks += 1;
  }, 1);
  try {
    await work();
  } finally {
    clearInterval(timer);
  }
  return ticks;
}
