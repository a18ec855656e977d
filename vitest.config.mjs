import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

// The addon built for the tests (`npm test`): the real one plus a test-only panic hook.
const testAddon = fileURLToPath(new URL('./.test-addon/cmux-preview-proxy.node', import.meta.url))

export default defineConfig({
  test: {
    include: ['__test__/**/*.test.mjs'],
    env: existsSync(testAddon) ? { NAPI_RS_NATIVE_LIBRARY_PATH: testAddon } : {},
    testTimeout: 30000,
    hookTimeout: 60000,
    // Each test file loads the native addon in its own child process.
    pool: 'forks',
    fileParallelism: true,
    // The machine has 2 cores; the streaming tests move hundreds of MiB.
    maxWorkers: 2,
  },
})
