// The switch of cmux to @cmux/preview-proxy/electron is two import sites; the
// code around them stays as it is. This checks, with tsc against Electron's
// own types and the package resolved through its exports map, that cmux's
// call sites type-check unchanged with the new import:
// - apps/client/electron/main/index.ts: its app.on('login') handler calling
//   getProxyCredentialsForWebContents(webContents.id), and
//   `await startPreviewProxy({ log: mainLog, warn: mainWarn, error: mainError })`
//   with its variadic main-process log functions;
// - apps/client/electron/main/web-contents-view.ts: getPreviewPartitionForPersistKey,
//   isTaskRunPreviewPersistKey, and configurePreviewProxyForView with the
//   Logger of chrome-camouflage.ts ({ log, warn, error }, each (...args: unknown[]) => void).

import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { expectedErrors, reportedErrors, typesProject } from './electron-helpers.mjs'

// Shaped like cmux's code (written for this test), with only the import lines pointing here.
const CHROME_CAMOUFLAGE = `import type { WebContentsView } from 'electron'

export interface Logger {
  log: (...args: unknown[]) => void
  warn: (...args: unknown[]) => void
  error: (...args: unknown[]) => void
}

export function applyChromeCamouflage(view: WebContentsView, logger: Logger): void {
  logger.log('camouflage', view.webContents.id)
}
`

const INDEX = `import { app } from 'electron'
import { format } from 'node:util'
import {
  getProxyCredentialsForWebContents,
  startPreviewProxy,
} from '@cmux/preview-proxy/electron'

export function mainLog(...args: unknown[]) {
  console.log('[MAIN]', format(...args))
}

export function mainWarn(...args: unknown[]) {
  console.warn('[MAIN]', format(...args))
}

export function mainError(...args: unknown[]) {
  console.error('[MAIN]', format(...args))
}

app.on('login', (event, webContents, _request, authInfo, callback) => {
  if (!authInfo.isProxy) {
    return
  }
  const creds = getProxyCredentialsForWebContents(webContents.id)
  if (!creds) {
    return
  }
  event.preventDefault()
  callback(creds.username, creds.password)
})

app.whenReady().then(async () => {
  await startPreviewProxy({
    log: mainLog,
    warn: mainWarn,
    error: mainError,
  })
})
`

const WEB_CONTENTS_VIEW = `import { WebContentsView } from 'electron'
import { applyChromeCamouflage, type Logger } from './chrome-camouflage.mjs'
import {
  configurePreviewProxyForView,
  getPreviewPartitionForPersistKey,
  isTaskRunPreviewPersistKey,
} from '@cmux/preview-proxy/electron'

interface Entry {
  id: number
  view: WebContentsView
  persistKey?: string
  previewProxyCleanup?: () => void
}

export async function createView(
  options: { persistKey?: unknown; url?: unknown },
  logger: Logger
): Promise<Entry> {
  const persistKey =
    typeof options.persistKey === 'string' && options.persistKey.trim().length > 0
      ? options.persistKey.trim()
      : undefined
  const previewPartition = getPreviewPartitionForPersistKey(persistKey)
  const view = previewPartition
    ? new WebContentsView({
        webPreferences: { partition: previewPartition },
      })
    : new WebContentsView()
  applyChromeCamouflage(view, logger)

  const proxySourceUrl = typeof options.url === 'string' ? options.url : undefined
  let previewProxyCleanup: (() => void) | undefined
  if (
    isTaskRunPreviewPersistKey(persistKey) &&
    typeof proxySourceUrl === 'string' &&
    proxySourceUrl.startsWith('http')
  ) {
    try {
      previewProxyCleanup = await configurePreviewProxyForView({
        webContents: view.webContents,
        initialUrl: proxySourceUrl,
        persistKey,
        logger,
      })
    } catch (error) {
      logger.error('Failed to configure preview proxy', error)
    }
  }

  const entry: Entry = { id: view.webContents.id, view, persistKey, previewProxyCleanup }
  view.webContents.once('destroyed', () => {
    if (entry.previewProxyCleanup) {
      entry.previewProxyCleanup()
      entry.previewProxyCleanup = undefined
    }
  })
  return entry
}
`

// The same call sites, wrong: each marked line must fail with that error, and nothing else.
const WRONG = `import { app } from 'electron'
import type { Logger } from './chrome-camouflage.mjs'
import { configurePreviewProxyForView, getProxyCredentialsForWebContents, startPreviewProxy } from '@cmux/preview-proxy/electron'

export function wrong(logger: Logger): void {
  app.on('login', (_event, webContents) => {
    const creds = getProxyCredentialsForWebContents(webContents)  // expect TS2345
    void creds
  })
  void startPreviewProxy({ log: (...args: unknown[]) => void args, error: logger.error }) // expect TS2345
  void startPreviewProxy({ log: logger.log, warn: logger.warn, error: 'mainError' }) // expect TS2322
  void configurePreviewProxyForView({ webContents: app, initialUrl: 'x', logger }) // expect TS2740
}
`

describe("cmux's call sites with the import switched to @cmux/preview-proxy/electron", () => {
  let project
  beforeAll(() => {
    project = typesProject('cmux-electron-app-shape-')
    project.write('chrome-camouflage.mts', CHROME_CAMOUFLAGE)
    project.write('index.mts', INDEX)
    project.write('web-contents-view.mts', WEB_CONTENTS_VIEW)
    project.write('wrong.mts', WRONG)
    const nodenext = { module: 'nodenext', moduleResolution: 'nodenext' }
    project.config('app', nodenext, ['chrome-camouflage.mts', 'index.mts', 'web-contents-view.mts'])
    // cmux's own build resolves like a bundler.
    project.config('app-bundler', { module: 'esnext', moduleResolution: 'bundler', skipLibCheck: true }, ['chrome-camouflage.mts', 'index.mts', 'web-contents-view.mts'])
    project.config('wrong', nodenext, ['chrome-camouflage.mts', 'wrong.mts'])
  })
  afterAll(() => project?.remove())

  for (const name of ['app', 'app-bundler']) {
    test(`index.ts and web-contents-view.ts type-check (${name})`, async () => {
      const { code, output } = await project.tsc(name)
      expect(output).toBe('')
      expect(code).toBe(0)
    }, 120000)
  }

  test('the same call sites used wrongly fail, each with its expected error', async () => {
    const { code, output } = await project.tsc('wrong')
    expect(code).not.toBe(0)
    expect(reportedErrors(output).sort(), output).toEqual(expectedErrors('wrong.mts', WRONG).sort())
  }, 120000)
})
