// The Electron integration example (examples/electron/main.ts) type-checks
// against the package's own types (index.d.ts, and electron/index.d.ts of
// '@cmux/preview-proxy/electron', resolved through the package's exports map)
// and Electron's type definitions, and the check is real: deliberately wrong
// uses of the three APIs fail it.

import { execFile } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, test } from 'vitest'

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const EXAMPLE_DIR = join(ROOT, 'examples', 'electron')
const TSC = join(ROOT, 'node_modules', '.bin', 'tsc')

function tsc(project) {
  return new Promise((resolve) => {
    execFile(TSC, ['-p', project, '--noEmit', '--pretty', 'false'], { cwd: ROOT, timeout: 120000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, output: `${stdout}${stderr}` })
    })
  })
}

// Each line marked `// expect TSnnnn` must produce exactly that error, and no other line any.
const BAD_SNIPPET = `import { app, session } from 'electron'
import { ProxyServer } from '../../../index.js'
import { configurePreviewProxyForView, enablePreviewProxyHttpsMode, startPreviewProxy } from '@cmux/preview-proxy/electron'

export async function wrong(): Promise<void> {
  const server = await ProxyServer.start('127.0.0.1:0', true)
  server.createContext('x') // expect TS2345
  await ProxyServer.start(39385) // expect TS2345
  server.createContext(1, { morphId: 'm1', scope: 'base' }) // expect TS2345
  const user: string = server.credentialsForWebContents(1).username // expect TS2531
  const port: string = server.port() // expect TS2322
  await session.fromPartition('persist:preview-x').setProxy({ proxyRules: 1 }) // expect TS2322
  app.on('login', (_event, _webContents, _details, authInfo) => {
    const proxyPort: string = authInfo.port // expect TS2322
    void proxyPort
  })
  await configurePreviewProxyForView({ webContents: 7, initialUrl: 'https://cmux-m1-base-3000.cmux.app/', logger: console }) // expect TS2322
  const previewPort: string = await startPreviewProxy(console) // expect TS2322
  enablePreviewProxyHttpsMode(session.defaultSession) // expect TS2345
  void previewPort
  void user
  void port
}
`

describe('examples/electron', () => {
  test('main.ts type-checks (tsc -p examples/electron/tsconfig.json --noEmit)', async () => {
    const { code, output } = await tsc(join(EXAMPLE_DIR, 'tsconfig.json'))
    expect(output).toBe('')
    expect(code).toBe(0)
  }, 120000)

  test('the same configuration rejects wrong uses of the addon and Electron APIs', async () => {
    // Next to main.ts, so that '../../../index.js' and 'electron' resolve exactly as they do for it.
    const dir = mkdtempSync(join(EXAMPLE_DIR, '.typecheck-fail-'))
    try {
      writeFileSync(join(dir, 'bad.ts'), BAD_SNIPPET)
      writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ extends: '../tsconfig.json', files: ['bad.ts'] }))
      const { code, output } = await tsc(join(dir, 'tsconfig.json'))
      expect(code).not.toBe(0)

      const expected = BAD_SNIPPET.split('\n')
        .map((line, i) => ({ line: i + 1, code: /\/\/ expect (TS\d+)/.exec(line)?.[1] }))
        .filter((e) => e.code)
        .map((e) => `${e.line} ${e.code}`)
      const file = relative(ROOT, join(dir, 'bad.ts')).replaceAll('\\', '/')
      const errors = [...output.matchAll(/^(.+?)\((\d+),\d+\): error (TS\d+):/gm)]
      expect(errors.length, output).toBeGreaterThan(0)
      for (const [, path] of errors) expect(path, output).toBe(file)
      expect(errors.map(([, , line, tsCode]) => `${line} ${tsCode}`).sort(), output).toEqual(expected.sort())
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 120000)
})
