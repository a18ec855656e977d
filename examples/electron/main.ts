// Minimal Electron main-process integration of the preview proxy.
//
// - one ProxyServer per app, on the first free port of 39385..39434, used as
//   an https:// proxy (the HTTPS proxy mode): Chromium speaks HTTP/2 to it, so
//   a page of hundreds of modules is not held to 6 connections;
// - its CA is kept in the app's user data and trusted by SPKI before `ready`
//   (Chromium treats a bad proxy certificate as fatal, and no event fires for
//   it: --ignore-certificate-errors-spki-list is the way that works);
// - one session partition per preview, so that Chromium's per-session proxy
//   credential cache never mixes two previews;
// - the preview session sends http:// and https:// (and so ws:// and wss://)
//   to the proxy, loopback included ('<-loopback>' removes Chromium's implicit
//   loopback bypass: the page's localhost:3000 must reach the proxy);
// - the proxy's 407 is answered, in app.on('login'), with the credentials of
//   the WebContents that asked;
// - the proxy's CA is trusted for loopback hosts in the preview sessions only;
// - the context is released when the WebContents goes away.
//
// Type-checked by __test__/electron-example.test.mjs
// (`tsc -p examples/electron/tsconfig.json --noEmit`). Electron is not run there.

import { app, BaseWindow, session, WebContentsView, type Session, type WebContents } from 'electron'
import { createHash, X509Certificate } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { ProxyServer, type CaPem, type ProxyContext, type ProxyRoute } from '../../index.js'

export const PORT_RANGE = { first: 39385, last: 39434 } as const

let proxy: ProxyServer | null = null
let starting: Promise<ProxyServer> | null = null

/**
 * The proxy's CA, created once and kept in the app's user data (readable by
 * the user only): the SPKI switch below must name it before the app is ready,
 * before any proxy runs. Its key can sign certificates this app trusts, and
 * nothing else does.
 */
function loadOrCreateCa(): CaPem {
  const file = join(app.getPath('userData'), 'preview-proxy-ca.json')
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8')) as CaPem
  const ca = ProxyServer.generateCa()
  writeFileSync(file, JSON.stringify(ca), { mode: 0o600 })
  return ca
}

/** base64 SHA-256 of the CA's SubjectPublicKeyInfo, as `caSpkiSha256()` gives it. */
function spkiSha256(certPem: string): string {
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })
  return createHash('sha256').update(spki).digest('base64')
}

const CA = loadOrCreateCa()
// Chromium accepts the proxy's certificate (and intercepted https://localhost leaves) by this key.
app.commandLine.appendSwitch('ignore-certificate-errors-spki-list', spkiSha256(CA.certPem))

/** Starts the proxy once (concurrent callers share the same start), retrying the next port on EADDRINUSE. */
export function startPreviewProxy(): Promise<ProxyServer> {
  if (proxy) return Promise.resolve(proxy)
  starting ??= (async () => {
    for (let port = PORT_RANGE.first; port <= PORT_RANGE.last; port++) {
      try {
        proxy = await ProxyServer.start(`127.0.0.1:${port}`, true, {
          logging: !app.isPackaged,
          caCertPem: CA.certPem,
          caKeyPem: CA.keyPem,
        })
        return proxy
      } catch (error) {
        if (!String(error).includes('EADDRINUSE')) throw error
      }
    }
    throw new Error(`no free port for the preview proxy in ${PORT_RANGE.first}..${PORT_RANGE.last}`)
  })().finally(() => {
    starting = null
  })
  return starting
}

const LOOPBACK_HOST = /^(localhost|[a-z0-9-]+(\.[a-z0-9-]+)*\.localhost|127(\.\d{1,3}){3}|\[?::1\]?)$/i

export function isLoopbackHost(hostname: string): boolean {
  return LOOPBACK_HOST.test(hostname)
}

/** Sessions whose certificate verifier already trusts the proxy CA (a partition outlives its previews). */
const trustingSessions = new WeakSet<Session>()

/**
 * Trusts leaves issued by the proxy's CA, for loopback hosts, in this session
 * only. Everything else keeps Chromium's own verdict (-3).
 */
function trustProxyCa(previewSession: Session, server: ProxyServer): void {
  if (trustingSessions.has(previewSession)) return
  trustingSessions.add(previewSession)
  const ca = new X509Certificate(server.caCertificatePem())
  previewSession.setCertificateVerifyProc((request, callback) => {
    if (!isLoopbackHost(request.hostname)) return callback(-3)
    try {
      const leaf = new X509Certificate(request.certificate.data)
      const now = Date.now()
      const current = Date.parse(leaf.validFrom) <= now && now <= Date.parse(leaf.validTo)
      callback(current && leaf.checkIssued(ca) && leaf.verify(ca.publicKey) ? 0 : -3)
    } catch {
      callback(-3)
    }
  })
}

export interface Preview {
  view: WebContentsView
  context: ProxyContext
}

/**
 * Creates the WebContents of one preview in its own persistent partition,
 * routes it through the proxy, then loads `url` (the page load authenticates
 * before the page can open its HMR WebSocket).
 */
export async function createPreview(previewId: string, route: ProxyRoute, url = 'http://localhost:3000/'): Promise<Preview> {
  const server = await startPreviewProxy()
  const partition = `persist:preview-${previewId}`
  const previewSession = session.fromPartition(partition)
  await previewSession.setProxy({
    mode: 'fixed_servers',
    // http=https://127.0.0.1:PORT;https=https://127.0.0.1:PORT
    proxyRules: server.proxyRules(),
    proxyBypassRules: '<-loopback>',
  })
  // A partition reused by a new preview must not answer with the old preview's cached credentials.
  await previewSession.clearAuthCache()
  trustProxyCa(previewSession, server)

  const view = new WebContentsView({
    webPreferences: { partition, sandbox: true, contextIsolation: true, nodeIntegration: false },
  })
  const webContents: WebContents = view.webContents
  const context = server.createContext(webContents.id, route)
  const contextId = context.id
  webContents.once('destroyed', () => {
    // The proxy may already be stopped when the app quits.
    if (proxy === server) server.releaseContext(contextId)
  })
  await webContents.loadURL(url)
  return { view, context }
}

// Answer the proxy's 407 with the credentials of the WebContents that asked,
// and only for our proxy's challenge.
app.on('login', (event, webContents, _details, authInfo, callback) => {
  if (!authInfo.isProxy || !proxy || !webContents) return
  if (authInfo.host !== '127.0.0.1' || authInfo.port !== proxy.port()) return
  const credentials = proxy.credentialsForWebContents(webContents.id)
  if (!credentials) return
  event.preventDefault()
  callback(credentials.username, credentials.password)
})

app.on('will-quit', (event) => {
  const server = proxy
  if (!server) return
  event.preventDefault()
  proxy = null
  void server.stop().finally(() => app.quit())
})

async function main(): Promise<void> {
  await app.whenReady()
  const win = new BaseWindow({ width: 1280, height: 800, title: 'cmux previews' })
  const routes: ProxyRoute[] = [
    { morphId: 'm1', scope: 'base', domainSuffix: 'cmux.app' },
    { morphId: 'm2', scope: 'base', domainSuffix: 'cmux.app' },
  ]
  const previews = await Promise.all(routes.map((route, i) => createPreview(`${route.morphId}-${i}`, route)))
  previews.forEach(({ view }, i) => {
    win.contentView.addChildView(view)
    view.setBounds({ x: i * 640, y: 0, width: 640, height: 800 })
  })
  win.on('closed', () => {
    for (const { view } of previews) view.webContents.close()
    app.quit()
  })
}

if (require.main === module) {
  main().catch((error: unknown) => {
    console.error(error)
    app.exit(1)
  })
}
