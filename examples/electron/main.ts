// Minimal Electron main-process integration of the preview proxy, through
// @cmux/preview-proxy/electron (electron/index.js), which does the work:
//
// - one proxy per app, on the first free port of 39385..39434, used as an
//   https:// proxy (the HTTPS proxy mode): Chromium speaks HTTP/2 to it, so a
//   page of hundreds of modules is not held to 6 connections;
// - its CA is trusted by SPKI before `ready` (Chromium treats a bad proxy
//   certificate as fatal, and no event fires for it:
//   --ignore-certificate-errors-spki-list is the way that works):
//   enablePreviewProxyHttpsMode(app). The CA is new for each launch, kept in
//   memory only (valid 30 days, constrained to loopback names): that switch is
//   app-wide, and Chromium accepts any chain containing the CA's key for any
//   host, so a CA kept on disk would let whoever ever got its (public)
//   certificate impersonate any site to the app in later launches too;
// - one session partition per preview, so that Chromium's per-session proxy
//   credential cache never mixes two previews;
// - configurePreviewProxyForView derives the route from the preview's cmux
//   URL, points the session at the proxy for http:// and https:// (and so
//   ws:// and wss://), loopback included ('<-loopback>': the page's
//   localhost:3000 must reach the proxy), trusts the proxy's CA for loopback
//   hosts in that session, and releases the context when the WebContents goes;
// - the proxy's 407 is answered, in app.on('login'), with the credentials of
//   the WebContents that asked (installPreviewProxyLoginHandler).
//
// Type-checked by __test__/electron-example.test.mjs
// (`tsc -p examples/electron/tsconfig.json --noEmit`), with
// '@cmux/preview-proxy/electron' resolved by the package's own exports map.
// Electron is not run there.

import { app, BaseWindow, WebContentsView } from 'electron'
import {
  configurePreviewProxyForView,
  enablePreviewProxyHttpsMode,
  getPreviewPartitionForPersistKey,
  installPreviewProxyLoginHandler,
  setPreviewProxyLoggingEnabled,
  stopPreviewProxy,
  type Logger,
} from '@cmux/preview-proxy/electron'

const logger: Logger = {
  log: (message, data) => console.log(`[preview] ${message}`, data ?? ''),
  warn: (message, data) => console.warn(`[preview] ${message}`, data ?? ''),
}

// Before `ready`: generates this launch's CA (in memory, nothing written) and
// appends --ignore-certificate-errors-spki-list with its key's hash.
// To keep one CA across launches instead, pass a file explicitly, e.g.
// `{ caFile: path.join(app.getPath('userData'), 'preview-proxy-ca.json') }`
// (mode 0600, a CA of a year, renewed 30 days before it expires), and accept
// that a copy of its certificate works against the app for that year.
enablePreviewProxyHttpsMode(app)
// The proxy's 407 answered with the credentials of the WebContents that asked,
// for this proxy's challenge only (configurePreviewProxyForView would install
// it on first use too).
installPreviewProxyLoginHandler(app)
// The proxy's events (requests, tunnels, WebSockets, errors) in the app's log while developing.
setPreviewProxyLoggingEnabled(!app.isPackaged)

export interface Preview {
  view: WebContentsView
  close: () => void
}

/**
 * Creates the WebContents of one preview in its own persistent partition,
 * routes it through the proxy, then loads `url` (the page load authenticates
 * before the page can open its HMR WebSocket).
 */
export async function createPreview(taskRunId: string, url: string): Promise<Preview> {
  const persistKey = `task-run-preview:${taskRunId}`
  const partition = getPreviewPartitionForPersistKey(persistKey) ?? undefined
  const view = new WebContentsView({
    webPreferences: { partition, sandbox: true, contextIsolation: true, nodeIntegration: false },
  })
  const release = await configurePreviewProxyForView({ webContents: view.webContents, initialUrl: url, persistKey, logger })
  await view.webContents.loadURL(url)
  return {
    view,
    close: () => {
      release()
      view.webContents.close()
    },
  }
}

// Stop the proxy before quitting (its port is freed), once.
let stopped = false
app.on('will-quit', (event) => {
  if (stopped) return
  stopped = true
  event.preventDefault()
  void stopPreviewProxy().finally(() => app.quit())
})

async function main(): Promise<void> {
  await app.whenReady()
  const win = new BaseWindow({ width: 1280, height: 800, title: 'cmux previews' })
  const urls = ['https://cmux-m1-base-3000.cmux.app/', 'https://cmux-m2-base-5173.cmux.app/']
  const previews = await Promise.all(urls.map((url, i) => createPreview(`run-${i}`, url)))
  previews.forEach(({ view }, i) => {
    win.contentView.addChildView(view)
    view.setBounds({ x: i * 640, y: 0, width: 640, height: 800 })
  })
  win.on('closed', () => {
    for (const preview of previews) preview.close()
    app.quit()
  })
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error)
    app.exit(1)
  })
}
