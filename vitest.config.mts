// vitest.config.mts — one config for every suite. Files run in forked processes (native
// addon and worker threads stay isolated per file); no timing is asserted anywhere.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
