import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['__test__/**/*.test.mjs'],
    testTimeout: 30000,
    hookTimeout: 60000,
    // Each test file loads the native addon in its own child process.
    pool: 'forks',
    fileParallelism: true,
    // The machine has 2 cores; the streaming tests move hundreds of MiB.
    maxWorkers: 2,
  },
})
