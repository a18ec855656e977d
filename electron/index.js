// @cmux/preview-proxy/electron: the Electron main-process side of the preview
// proxy, with the names, signatures and behaviour of cmux's
// apps/client/electron/main/task-run-preview-proxy.ts, so that switching to it
// is one import line.
//
// Plain CommonJS (like ../index.js) with a hand-written index.d.ts. It never
// imports `electron` at load time: it works on the `app`, `session` and
// `webContents` objects its callers give it, and reaches for
// `require('electron').app` only when configurePreviewProxyForView must
// install the login handler and no `app` was given before. So it loads (and is
// tested) in plain Node.
//
// Electron methods it calls, and nothing else:
//   session.setProxy, session.setCertificateVerifyProc, session.clearAuthCache
//   webContents.id, webContents.session, webContents.once('destroyed')
//   app.on('login'), app.isReady, app.getPath('userData') (only without caFile),
//   app.commandLine.getSwitchValue, app.commandLine.appendSwitch
'use strict'

const { createHash, createPrivateKey, randomBytes, X509Certificate } = require('node:crypto')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')
const addon = require('../index.js')

const FIRST_PORT = 39385
const LAST_PORT = 39434
const PROXY_HOST = '127.0.0.1'
const TASK_RUN_PREVIEW_PREFIX = 'task-run-preview:'
const SPKI_SWITCH = 'ignore-certificate-errors-spki-list'
const CA_FILE_NAME = 'preview-proxy-ca.json'
/** Electron's setCertificateVerifyProc verdicts. */
const VERIFY_OK = 0
const VERIFY_USE_CHROMIUM = -3

const state = {
  /** The one ProxyServer, once started. */
  server: null,
  port: null,
  /** The start in flight, shared by concurrent callers. */
  starting: null,
  /** The Logger of the call that started the proxy (as the old module kept it). */
  logger: null,
  loggingEnabled: false,
  /** The onEvent subscription while logging is on: { unsubscribe }. */
  subscription: null,
  /** The CA of the HTTPS proxy mode, once enabled: { certPem, keyPem, spkiSha256 }. */
  httpsCa: null,
  /** The app given to enablePreviewProxyHttpsMode or installPreviewProxyLoginHandler. */
  app: null,
  loginApps: new WeakSet(),
  warnedNoApp: false,
  /** webContentsId -> { contextId, session, persistKey, logger, server } */
  contexts: new Map(),
  /** Sessions whose certificate verifier already trusts the proxy CA (a partition outlives its previews). */
  trustingSessions: new WeakSet(),
  /** The proxy CA as an X509Certificate, for the PEM it was parsed from. */
  caCache: { pem: null, cert: null },
}

// ---------------------------------------------------------------------------
// Logging

/** Calls logger[level] and never lets a throwing logger break the caller. */
function emit(logger, level, message, data) {
  if (!logger || typeof logger[level] !== 'function') return
  try {
    logger[level](message, data)
  } catch (error) {
    console.error('Failed to log preview proxy', error)
  }
}

function errorMessage(error) {
  return error instanceof Error ? error.message : String(error)
}

function subscribe() {
  const server = state.server
  if (!server || state.subscription) return
  const logger = state.logger
  const subscription = { unsubscribe: null }
  state.subscription = subscription
  subscription.unsubscribe = server.onEvent((event) => {
    // Events already queued when logging was turned off are not logged.
    if (state.subscription !== subscription) return
    const data = { event: event.kind }
    for (const [key, value] of Object.entries(event)) {
      if (key !== 'kind' && value !== undefined && value !== null) data[key] = value
    }
    const failed = event.kind === 'error' || (event.kind === 'request' && typeof event.status === 'number' && event.status >= 500)
    emit(logger, failed ? 'warn' : 'log', 'Preview proxy', data)
  })
}

function unsubscribe() {
  const subscription = state.subscription
  state.subscription = null
  if (!subscription) return
  try {
    subscription.unsubscribe()
  } catch {
    // The proxy is already stopped: nothing more will come.
  }
}

function setPreviewProxyLoggingEnabled(enabled) {
  state.loggingEnabled = Boolean(enabled)
  if (state.loggingEnabled) subscribe()
  else unsubscribe()
}

// ---------------------------------------------------------------------------
// Persist keys and partitions

function isTaskRunPreviewPersistKey(key) {
  return typeof key === 'string' && key.startsWith(TASK_RUN_PREVIEW_PREFIX)
}

function getPreviewPartitionForPersistKey(key) {
  if (!isTaskRunPreviewPersistKey(key)) return null
  const hash = createHash('sha256').update(key).digest('hex').slice(0, 24)
  return `persist:cmux-preview-${hash}`
}

// ---------------------------------------------------------------------------
// The proxy

function isAddressInUse(error) {
  return (error && error.code === 'EADDRINUSE') || /EADDRINUSE/.test(errorMessage(error))
}

async function startServer(logger) {
  const ca = state.httpsCa
  const options = ca ? { httpsProxy: true, caCertPem: ca.certPem, caKeyPem: ca.keyPem } : { httpsProxy: false }
  for (let port = FIRST_PORT; port <= LAST_PORT; port++) {
    let server
    try {
      server = await addon.ProxyServer.start(`${PROXY_HOST}:${port}`, true, options)
    } catch (error) {
      if (isAddressInUse(error)) continue
      throw error
    }
    state.server = server
    state.port = server.port()
    state.logger = logger
    state.caCache = { pem: null, cert: null }
    if (state.loggingEnabled) subscribe()
    emit(logger, 'log', 'Preview proxy listening', { port: state.port, https: Boolean(ca) })
    return state.port
  }
  throw new Error(`Unable to bind preview proxy port: ${FIRST_PORT}..${LAST_PORT} are all in use`)
}

function startPreviewProxy(logger) {
  if (state.server) return Promise.resolve(state.port)
  if (!state.starting) {
    const starting = startServer(logger).finally(() => {
      if (state.starting === starting) state.starting = null
    })
    state.starting = starting
  }
  return state.starting
}

async function stopPreviewProxy() {
  if (state.starting) {
    try {
      await state.starting
    } catch {
      // A failed start left nothing to stop.
    }
  }
  const server = state.server
  unsubscribe()
  state.server = null
  state.port = null
  state.contexts.clear()
  state.caCache = { pem: null, cert: null }
  if (server) await server.stop()
}

function getProxyCredentialsForWebContents(id) {
  const server = state.server
  if (!server || !state.contexts.has(id)) return null
  try {
    return server.credentialsForWebContents(id)
  } catch {
    return null
  }
}

function getPreviewProxyCertificateAuthorityInfo() {
  if (state.server) {
    try {
      return { certPem: state.server.caCertificatePem(), spkiSha256: state.server.caSpkiSha256() }
    } catch {
      // stopped under us: fall through
    }
  }
  if (state.httpsCa) return { certPem: state.httpsCa.certPem, spkiSha256: state.httpsCa.spkiSha256 }
  return null
}

// ---------------------------------------------------------------------------
// Trust of the proxy's CA in preview sessions

/** localhost, *.localhost, 127.0.0.0/8, ::1 and 0.0.0.0: the hosts the proxy intercepts (and its own 127.0.0.1). */
function isLoopbackHost(hostname) {
  const host = hostname.toLowerCase()
  if (host === 'localhost' || host.endsWith('.localhost')) return true
  if (host === '::1' || host === '0.0.0.0') return true
  return net.isIPv4(host) && host.startsWith('127.')
}

function currentCa() {
  let pem = null
  if (state.server) {
    try {
      pem = state.server.caCertificatePem()
    } catch {
      pem = null
    }
  }
  if (!pem && state.httpsCa) pem = state.httpsCa.certPem
  if (!pem) return null
  if (state.caCache.pem !== pem) state.caCache = { pem, cert: new X509Certificate(pem) }
  return state.caCache.cert
}

/**
 * The verdict for one server certificate in a preview session: 0 for a
 * current leaf issued by the proxy's CA for this loopback host, else -3
 * (Chromium's own verdict stands).
 */
function verifyCertificate(request) {
  try {
    const hostname = String(request.hostname).replace(/^\[(.*)\]$/, '$1')
    if (!isLoopbackHost(hostname)) return VERIFY_USE_CHROMIUM
    const ca = currentCa()
    if (!ca) return VERIFY_USE_CHROMIUM
    const leaf = new X509Certificate(request.certificate.data)
    const now = Date.now()
    if (!(Date.parse(leaf.validFrom) <= now && now <= Date.parse(leaf.validTo))) return VERIFY_USE_CHROMIUM
    if (!leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) return VERIFY_USE_CHROMIUM
    const named = net.isIP(hostname) ? leaf.checkIP(hostname) : leaf.checkHost(hostname)
    return named ? VERIFY_OK : VERIFY_USE_CHROMIUM
  } catch {
    return VERIFY_USE_CHROMIUM
  }
}

function trustProxyCa(session) {
  if (state.trustingSessions.has(session)) return
  session.setCertificateVerifyProc((request, callback) => callback(verifyCertificate(request)))
  state.trustingSessions.add(session)
}

// ---------------------------------------------------------------------------
// Contexts

/**
 * Forgets `entry` (if it is still the context of `webContentsId`), releases
 * it in the proxy and, with `resetSession`, sets its session back to a direct
 * connection unless another live preview uses the same session.
 */
function releaseEntry(webContentsId, entry, resetSession) {
  if (state.contexts.get(webContentsId) !== entry) return
  state.contexts.delete(webContentsId)
  if (entry.server === state.server) {
    try {
      entry.server.releaseContext(entry.contextId)
    } catch (error) {
      emit(entry.logger, 'warn', 'Failed to release preview proxy context', { webContentsId, error: errorMessage(error) })
    }
  }
  if (!resetSession) return
  for (const other of state.contexts.values()) if (other.session === entry.session) return
  try {
    Promise.resolve(entry.session.setProxy({ mode: 'direct' })).catch((error) => {
      emit(entry.logger, 'warn', 'Failed to reset preview proxy', { webContentsId, persistKey: entry.persistKey, error: errorMessage(error) })
    })
  } catch (error) {
    emit(entry.logger, 'warn', 'Failed to reset preview proxy', { webContentsId, persistKey: entry.persistKey, error: errorMessage(error) })
  }
}

function releasePreviewProxy(webContentsId) {
  const entry = state.contexts.get(webContentsId)
  if (entry) releaseEntry(webContentsId, entry, true)
}

/** Electron's `app` in the main process; null elsewhere (in plain Node `require('electron')` is a path or throws). */
function electronApp() {
  try {
    const electron = require('electron')
    return electron && typeof electron === 'object' && electron.app ? electron.app : null
  } catch {
    return null
  }
}

async function configurePreviewProxyForView(options) {
  const { webContents, initialUrl, persistKey, logger } = options
  const route = typeof initialUrl === 'string' ? addon.deriveRoute(initialUrl) : null
  if (!route) {
    emit(logger, 'warn', 'Preview proxy skipped; unable to parse cmux host', { url: initialUrl, persistKey })
    return () => {}
  }

  await startPreviewProxy(logger)
  const server = state.server
  if (!server) throw new Error('Preview proxy stopped while a preview was being configured')

  const app = state.app || electronApp()
  if (app) installPreviewProxyLoginHandler(app)
  else if (!state.warnedNoApp) {
    state.warnedNoApp = true
    emit(logger, 'warn', 'Preview proxy login handler not installed: call installPreviewProxyLoginHandler(app)', {})
  }

  const webContentsId = webContents.id
  const session = webContents.session
  const context = server.createContext(webContentsId, route)
  const entry = { contextId: context.id, session, persistKey, logger, server }
  state.contexts.set(webContentsId, entry)

  let cleanedUp = false
  const cleanup = () => {
    if (cleanedUp) return
    cleanedUp = true
    releaseEntry(webContentsId, entry, true)
  }
  // Before any await: a WebContents destroyed meanwhile still releases its context.
  webContents.once('destroyed', cleanup)

  try {
    await session.setProxy({
      mode: 'fixed_servers',
      // http=http://127.0.0.1:PORT;https=http://127.0.0.1:PORT, or https:// in the HTTPS proxy mode
      proxyRules: server.proxyRules(),
      // Chromium bypasses loopback by default: the page's localhost must reach the proxy too.
      proxyBypassRules: '<-loopback>',
    })
    trustProxyCa(session)
    // A reused partition must not answer the 407 with an earlier preview's cached credentials.
    await session.clearAuthCache()
  } catch (error) {
    cleanedUp = true
    releaseEntry(webContentsId, entry, false)
    emit(logger, 'warn', 'Failed to configure preview proxy', { webContentsId, persistKey, error: errorMessage(error) })
    throw error
  }
  return cleanup
}

// ---------------------------------------------------------------------------
// The 407 answered in app.on('login')

function installPreviewProxyLoginHandler(app) {
  if (!state.app) state.app = app
  if (state.loginApps.has(app)) return
  state.loginApps.add(app)
  app.on('login', (event, webContents, _details, authInfo, callback) => {
    // Another listener (the app's own) already answered.
    if (event.defaultPrevented) return
    if (!authInfo || !authInfo.isProxy) return
    if (!state.server || authInfo.host !== PROXY_HOST || authInfo.port !== state.port) return
    if (!webContents) return
    const credentials = getProxyCredentialsForWebContents(webContents.id)
    if (!credentials) return
    event.preventDefault()
    callback(credentials.username, credentials.password)
  })
}

// ---------------------------------------------------------------------------
// The HTTPS proxy mode

function spkiSha256(certPem) {
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })
  return createHash('sha256').update(spki).digest('base64')
}

/** The CA kept in `file`, or null when there is none or it is unusable (bad JSON or PEM, not a CA, expired, key not its own). */
function readCa(file) {
  let text
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch (error) {
    if (error.code === 'ENOENT') return null
    throw error
  }
  try {
    const { certPem, keyPem } = JSON.parse(text)
    if (typeof certPem !== 'string' || typeof keyPem !== 'string') return null
    const cert = new X509Certificate(certPem)
    const now = Date.now()
    if (!cert.ca || Date.parse(cert.validFrom) > now || now >= Date.parse(cert.validTo)) return null
    if (!cert.checkPrivateKey(createPrivateKey(keyPem))) return null
    return { certPem, keyPem }
  } catch {
    return null
  }
}

/** Writes the CA readable by the user only (0600, in a 0700 directory when it creates it), atomically. */
function writeCa(file, ca) {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
  const temp = `${file}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`
  try {
    fs.writeFileSync(temp, JSON.stringify({ certPem: ca.certPem, keyPem: ca.keyPem }), { mode: 0o600, flag: 'wx' })
    fs.renameSync(temp, file)
  } catch (error) {
    fs.rmSync(temp, { force: true })
    throw error
  }
}

function enablePreviewProxyHttpsMode(app, options = {}) {
  if (state.server || state.starting) {
    throw new Error('enablePreviewProxyHttpsMode must be called before the preview proxy starts')
  }
  if (app.isReady()) {
    throw new Error("enablePreviewProxyHttpsMode must be called before the app is ready: Chromium reads --ignore-certificate-errors-spki-list at startup")
  }
  const caFile = options.caFile || path.join(app.getPath('userData'), CA_FILE_NAME)
  let ca = readCa(caFile)
  if (ca) {
    if (process.platform !== 'win32') fs.chmodSync(caFile, 0o600)
  } else {
    ca = addon.ProxyServer.generateCa()
    writeCa(caFile, ca)
  }
  const spki = spkiSha256(ca.certPem)
  // Other hashes the app trusts by the same switch are kept.
  const existing = app.commandLine.getSwitchValue(SPKI_SWITCH)
  const hashes = existing ? existing.split(',').map((h) => h.trim()).filter(Boolean) : []
  if (!hashes.includes(spki)) app.commandLine.appendSwitch(SPKI_SWITCH, [...hashes, spki].join(','))
  state.httpsCa = { certPem: ca.certPem, keyPem: ca.keyPem, spkiSha256: spki }
  if (!state.app) state.app = app
  return { certPem: ca.certPem, spkiSha256: spki }
}

exports.startPreviewProxy = startPreviewProxy
exports.stopPreviewProxy = stopPreviewProxy
exports.configurePreviewProxyForView = configurePreviewProxyForView
exports.getProxyCredentialsForWebContents = getProxyCredentialsForWebContents
exports.releasePreviewProxy = releasePreviewProxy
exports.setPreviewProxyLoggingEnabled = setPreviewProxyLoggingEnabled
exports.isTaskRunPreviewPersistKey = isTaskRunPreviewPersistKey
exports.getPreviewPartitionForPersistKey = getPreviewPartitionForPersistKey
exports.getPreviewProxyCertificateAuthorityInfo = getPreviewProxyCertificateAuthorityInfo
exports.installPreviewProxyLoginHandler = installPreviewProxyLoginHandler
exports.enablePreviewProxyHttpsMode = enablePreviewProxyHttpsMode
