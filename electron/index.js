// @cmux/preview-proxy/electron: the Electron main-process side of the preview
// proxy, with the names, signatures and behaviour of cmux's
// apps/client/electron/main/task-run-preview-proxy.ts, so that switching to it
// is changing two import sites (index.ts: getProxyCredentialsForWebContents,
// startPreviewProxy; web-contents-view.ts: configurePreviewProxyForView,
// getPreviewPartitionForPersistKey, isTaskRunPreviewPersistKey).
//
// Plain CommonJS (like ../index.js) with a hand-written index.d.ts. It never
// imports `electron` at load time: it works on the `app`, `session` and
// `webContents` objects its callers give it, and reaches for
// `require('electron').app` only when configurePreviewProxyForView must
// install the login handler and no `app` was given before. So it loads (and is
// tested) in plain Node.
//
// Electron members it calls, and nothing else:
//   session.setProxy; session.setCertificateVerifyProc and
//     session.clearAuthCache when the session has them (a test double with
//     setProxy only, like cmux's scripts/test-preview-proxy.ts passes, is
//     configured without them, and the logger is warned once)
//   webContents.id, webContents.session, webContents.once('destroyed')
//   app.on('login'), app.isReady,
//   app.commandLine.getSwitchValue, app.commandLine.appendSwitch
//   (never app.getPath: the module writes to disk only where the app says)
//
// Environment, as cmux reads it (the addon itself reads none: it takes options):
//   CMUX_PREVIEW_TLS_MITM        at load: unset, empty or exactly `1` means TLS
//                                inside loopback (and *.cmux.local,
//                                *.manaflow.local) tunnels is intercepted;
//                                anything else starts the proxy with
//                                `tlsInterception: false` (relayed blind)
//   CMUX_PREVIEW_PROXY_LOG ?? CMUX_PREVIEW_PROXY_LOGGING
//                                at load: whether the proxy's events are
//                                logged, until setPreviewProxyLoggingEnabled
//                                says otherwise (parsed like cmux's
//                                envFlagEnabled(value, false))
//   TEST_CMUX_PROXY_ORIGIN, TEST_ALLOW_INSECURE_UPSTREAM
//                                cmux's test hooks, read when used (its test
//                                script sets them after importing the module):
//                                at the proxy's start (`testCmuxProxyOrigin`,
//                                `testAllowInsecureUpstream`) and when a route
//                                is derived (every route then goes through
//                                that origin)
//
// Sessions and contexts. Chromium caches proxy credentials per session, so
// every WebContents of a session authenticates as whichever context answered
// first. The module therefore keeps one context per session: a second live
// WebContents of the same preview (same morphId, scope, domainSuffix and
// cmuxProxyOrigin) on that session shares it (same credentials; released with
// the last of them), and a preview of another route on it is refused with an
// Error (one partition per preview). Configuring the same WebContents again
// replaces its own context (or, while others share it, stays in it). A shared
// context was created for its first WebContents: the proxy's events carry that
// WebContents' id.
//
// A release (the cleanup, `destroyed`, releasePreviewProxy) fails closed: it
// revokes the credentials and never sets the session back to a direct
// connection. The partition keeps pointing at the proxy, which answers 407 and
// has no credentials to give, until the partition is configured again; so a
// released preview can never reach the network (or the user's localhost) on
// its own.
//
// Trust of the proxy's CA: the verify proc set on each preview session accepts
// a current leaf of the proxy's CA naming the host, for the hosts the proxy
// intercepts (`isInterceptedHost` of the addon: loopback names and addresses,
// *.cmux.local, *.manaflow.local; so also the proxy's own 127.0.0.1 in the
// HTTPS proxy mode), and leaves every other certificate to Chromium.
//
// The HTTPS proxy mode's CA (enablePreviewProxyHttpsMode). Chromium must trust
// the proxy's certificate before `ready`, by --ignore-certificate-errors-spki-list.
// That switch is app-wide, and Chromium accepts any chain that merely contains
// a certificate with an allowlisted key, for any host, without checking the
// chain's signatures: whoever has the CA certificate (not a secret: the proxy
// shows it to every local client) can impersonate any site to the app, in
// every window, for as long as the switch names that key. So by default the CA
// is per launch: generated in memory (valid PER_LAUNCH_CA_VALIDITY_DAYS), its
// hash appended for this process only, and nothing is written to disk. An app
// that wants the same CA across launches passes `caFile` explicitly and
// accepts that a copy of that certificate works against it for the file CA's
// lifetime (CA_FILE_VALIDITY_DAYS at most; a file CA spanning longer than a
// year plus a day, without name constraints, or expiring within
// CA_FILE_RENEW_DAYS is replaced). Either is issued again by the running proxy,
// with the same key (the switch's hash stays right), before it ends.
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
/** Validity of the CA the HTTPS proxy mode generates for one launch (in memory only). */
const PER_LAUNCH_CA_VALIDITY_DAYS = 30
/** Validity of a CA the HTTPS proxy mode writes to the app's `caFile`. */
const CA_FILE_VALIDITY_DAYS = 365
/** A `caFile` CA that expires within this many days is replaced at launch. */
const CA_FILE_RENEW_DAYS = 30
const DAY_MS = 24 * 60 * 60 * 1000
/** The longest notBefore..notAfter span of a usable `caFile` CA (generateCa backdates by a day). */
const CA_FILE_MAX_SPAN_MS = (CA_FILE_VALIDITY_DAYS + 1) * DAY_MS
/** DER of the OID id-ce-nameConstraints (2.5.29.30). */
const NAME_CONSTRAINTS_OID_DER = Buffer.from([0x06, 0x03, 0x55, 0x1d, 0x1e])
/** cmux's test route: a URL whose host contains this, with TEST_CMUX_PROXY_ORIGIN set. */
const TEST_ROUTE_HOST = 'cmux-test-base-8080'
/** Electron's setCertificateVerifyProc verdicts. */
const VERIFY_OK = 0
const VERIFY_USE_CHROMIUM = -3

// ---------------------------------------------------------------------------
// Switches read from the environment at load

/** cmux's envFlagEnabled: trimmed, lowercased; '' is on; unknown words give the default. */
function envFlagEnabled(value, defaultValue) {
  if (value === undefined) return defaultValue
  const normalized = String(value).trim().toLowerCase()
  if (normalized === '') return true
  if (['1', 'true', 'yes', 'on'].includes(normalized)) return true
  if (['0', 'false', 'no', 'off'].includes(normalized)) return false
  return defaultValue
}

const TLS_MITM_VALUE = process.env.CMUX_PREVIEW_TLS_MITM
const TLS_INTERCEPTION = TLS_MITM_VALUE === undefined || TLS_MITM_VALUE === '' || TLS_MITM_VALUE === '1'
const DEFAULT_LOGGING_ENABLED = envFlagEnabled(process.env.CMUX_PREVIEW_PROXY_LOG ?? process.env.CMUX_PREVIEW_PROXY_LOGGING, false)

/** cmux's test hooks, read when used. */
function testCmuxProxyOrigin() {
  return process.env.TEST_CMUX_PROXY_ORIGIN || null
}

function testAllowInsecureUpstream() {
  return process.env.TEST_ALLOW_INSECURE_UPSTREAM === 'true'
}

const state = {
  /** The one ProxyServer, once started. */
  server: null,
  port: null,
  /** The start in flight, shared by concurrent callers. */
  starting: null,
  /** The Logger of the call that started the proxy (as the old module kept it). */
  logger: null,
  loggingEnabled: DEFAULT_LOGGING_ENABLED,
  /** New previews get a port of their own (setPreviewProxyOwnPorts). */
  ownPorts: true,
  /** The onEvent subscription while logging is on: { unsubscribe }. */
  subscription: null,
  /** The CA given to setPreviewProxyCertificateAuthority: { certPem, keyPem, spkiSha256 }. */
  explicitCa: null,
  /** The CA of the HTTPS proxy mode, once enabled: { certPem, keyPem, spkiSha256 }. */
  httpsCa: null,
  /** The app given to enablePreviewProxyHttpsMode or installPreviewProxyLoginHandler. */
  app: null,
  loginApps: new WeakSet(),
  warnedNoApp: false,
  warnedSessionDouble: false,
  /** webContentsId -> member: { webContentsId, shared, logger, persistKey } */
  contexts: new Map(),
  /**
   * session -> the context its previews use:
   * { contextId, username, password, route, session, server, members: Set<member> }
   */
  sessions: new Map(),
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

/** `error` events to logger.error (warn when the logger has none), requests answered >= 500 to warn, the rest to log. */
function eventLevel(logger, event) {
  if (event.kind === 'error') return logger && typeof logger.error === 'function' ? 'error' : 'warn'
  if (event.kind === 'request' && typeof event.status === 'number' && event.status >= 500) return 'warn'
  return 'log'
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
    emit(logger, eventLevel(logger, event), 'Preview proxy', data)
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
// Persist keys, partitions and routes

function isTaskRunPreviewPersistKey(key) {
  return typeof key === 'string' && key.startsWith(TASK_RUN_PREVIEW_PREFIX)
}

function getPreviewPartitionForPersistKey(key) {
  if (!isTaskRunPreviewPersistKey(key)) return null
  const hash = createHash('sha256').update(key).digest('hex').slice(0, 24)
  return `persist:cmux-preview-${hash}`
}

/** The addon's deriveRoute, with cmux's TEST_CMUX_PROXY_ORIGIN hook on top. */
function deriveRoute(url) {
  const origin = testCmuxProxyOrigin()
  if (origin) {
    let hostname = null
    try {
      hostname = new URL(url).hostname
    } catch {
      hostname = null
    }
    if (hostname !== null && hostname.includes(TEST_ROUTE_HOST)) {
      return { morphId: 'test', scope: 'base', domainSuffix: 'cmux.local', cmuxProxyOrigin: origin }
    }
  }
  const route = addon.deriveRoute(url)
  if (route && origin) route.cmuxProxyOrigin = origin
  return route
}

function sameRoute(a, b) {
  return a.morphId === b.morphId && a.scope === b.scope && a.domainSuffix === b.domainSuffix && (a.cmuxProxyOrigin || null) === (b.cmuxProxyOrigin || null)
}

function describeRoute(route) {
  return `morphId "${route.morphId}", scope "${route.scope}" (${route.domainSuffix})`
}

// ---------------------------------------------------------------------------
// The proxy

function isAddressInUse(error) {
  return (error && error.code === 'EADDRINUSE') || /EADDRINUSE/.test(errorMessage(error))
}

/** The StartOptions of the addon, from the module's state and the environment. */
function startOptions() {
  const options = {}
  const ca = state.httpsCa || state.explicitCa
  options.httpsProxy = Boolean(state.httpsCa)
  if (ca) {
    options.caCertPem = ca.certPem
    options.caKeyPem = ca.keyPem
  }
  if (!TLS_INTERCEPTION) options.tlsInterception = false
  const origin = testCmuxProxyOrigin()
  if (origin) options.testCmuxProxyOrigin = origin
  if (testAllowInsecureUpstream()) options.testAllowInsecureUpstream = true
  return options
}

async function startServer(logger) {
  const options = startOptions()
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
    console.log(`[cmux-preview-proxy] listening on port ${state.port}`)
    emit(logger, 'log', 'Preview proxy listening', { port: state.port, https: options.httpsProxy })
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
  // The own ports close with the proxy, and their numbers may be handed to other listeners later
  // (a next proxy's previews): their sessions go back to the shared port first, as a release does.
  if (server) {
    for (const shared of state.sessions.values()) {
      if (!shared.ownPort || shared.server !== server) continue
      const member = shared.members.values().next().value
      pointAtSharedPort(shared, member ? member.logger : state.logger)
    }
  }
  unsubscribe()
  state.server = null
  state.port = null
  state.contexts.clear()
  state.sessions.clear()
  state.caCache = { pem: null, cert: null }
  if (server) await server.stop()
}

function getProxyCredentialsForWebContents(id) {
  const member = state.contexts.get(id)
  if (!member || !state.server || member.shared.server !== state.server) return null
  return { username: member.shared.username, password: member.shared.password }
}

function getPreviewProxyCertificateAuthorityInfo() {
  if (state.server) {
    try {
      return { certPem: state.server.caCertificatePem(), spkiSha256: state.server.caSpkiSha256() }
    } catch {
      // stopped under us: fall through
    }
  }
  const ca = state.httpsCa || state.explicitCa
  if (ca) return { certPem: ca.certPem, spkiSha256: ca.spkiSha256 }
  return null
}

// ---------------------------------------------------------------------------
// The app's own CA

function spkiSha256(certPem) {
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })
  return createHash('sha256').update(spki).digest('base64')
}

/**
 * Hands in the CA the proxy issues its leaves (and, in the HTTPS proxy mode,
 * its own certificate) from, instead of one it generates: e.g. cmux's
 * ~/.cmux/certs (RSA, PKCS#1, from node-forge). Before the proxy starts only.
 *
 * With the HTTPS proxy mode, the explicit CA wins: call this first, then
 * enablePreviewProxyHttpsMode uses this CA (no CA file is read or written)
 * and the SPKI switch names it. Called after enablePreviewProxyHttpsMode it
 * throws: the switch already names that mode's CA, and Chromium reads it once.
 */
function setPreviewProxyCertificateAuthority(ca) {
  if (state.server || state.starting) {
    throw new Error('setPreviewProxyCertificateAuthority must be called before the preview proxy starts')
  }
  if (state.httpsCa) {
    throw new Error('setPreviewProxyCertificateAuthority must be called before enablePreviewProxyHttpsMode: the SPKI switch already names another CA')
  }
  const { certPem, keyPem } = ca || {}
  if (typeof certPem !== 'string' || typeof keyPem !== 'string') {
    throw new TypeError('setPreviewProxyCertificateAuthority expects { certPem: string, keyPem: string }')
  }
  let cert
  try {
    cert = new X509Certificate(certPem)
  } catch (error) {
    throw new Error(`setPreviewProxyCertificateAuthority: certPem is not a PEM certificate (${errorMessage(error)})`)
  }
  if (!cert.ca) throw new Error('setPreviewProxyCertificateAuthority: certPem is not a CA certificate (basicConstraints CA:TRUE)')
  const now = Date.now()
  if (Date.parse(cert.validFrom) > now || now >= Date.parse(cert.validTo)) {
    throw new Error(`setPreviewProxyCertificateAuthority: the CA is not valid now (${cert.validFrom} .. ${cert.validTo})`)
  }
  let key
  try {
    key = createPrivateKey(keyPem)
  } catch (error) {
    throw new Error(`setPreviewProxyCertificateAuthority: keyPem is not a PEM private key (${errorMessage(error)})`)
  }
  if (!cert.checkPrivateKey(key)) throw new Error('setPreviewProxyCertificateAuthority: keyPem is not the key of certPem')
  state.explicitCa = { certPem, keyPem, spkiSha256: spkiSha256(certPem) }
}

// ---------------------------------------------------------------------------
// Trust of the proxy's CA in preview sessions

function currentCa() {
  let pem = null
  if (state.server) {
    try {
      pem = state.server.caCertificatePem()
    } catch {
      pem = null
    }
  }
  if (!pem) pem = (state.httpsCa || state.explicitCa || {}).certPem || null
  if (!pem) return null
  if (state.caCache.pem !== pem) state.caCache = { pem, cert: new X509Certificate(pem) }
  return state.caCache.cert
}

/**
 * The verdict for one server certificate in a preview session: 0 for a
 * current leaf issued by the proxy's CA naming this host, for a host the
 * proxy intercepts; else -3 (Chromium's own verdict stands).
 */
function verifyCertificate(request) {
  try {
    const hostname = String(request.hostname).replace(/^\[(.*)\]$/, '$1')
    if (!addon.isInterceptedHost(hostname)) return VERIFY_USE_CHROMIUM
    const ca = currentCa()
    if (!ca) return VERIFY_USE_CHROMIUM
    const leaf = new X509Certificate(request.certificate.data)
    const now = Date.now()
    if (!(Date.parse(leaf.validFrom) <= now && now <= Date.parse(leaf.validTo))) return VERIFY_USE_CHROMIUM
    if (!leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) return VERIFY_USE_CHROMIUM
    const name = hostname.replace(/\.$/, '')
    const named = net.isIP(name) ? leaf.checkIP(name) : leaf.checkHost(name)
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

/** A session without setCertificateVerifyProc / clearAuthCache (a test double): warned once. */
function sessionLacks(session, logger) {
  const missing = ['setCertificateVerifyProc', 'clearAuthCache'].filter((name) => typeof session[name] !== 'function')
  if (missing.length && !state.warnedSessionDouble) {
    state.warnedSessionDouble = true
    emit(logger, 'warn', 'Preview proxy: the session has no ' + missing.join(' or ') + ' (a test double?); skipped', { missing })
  }
  return new Set(missing)
}

// ---------------------------------------------------------------------------
// Contexts

/**
 * Forgets `member` (if it is still the one of `webContentsId`) and, with the
 * last member of its session's context, releases that context in the proxy.
 * The session keeps pointing at the proxy (fails closed): a context with a
 * port of its own points it back at the shared port, never at a direct
 * connection; a context on the shared port leaves it alone.
 */
function releaseMember(webContentsId, member) {
  if (state.contexts.get(webContentsId) !== member) return
  state.contexts.delete(webContentsId)
  const shared = member.shared
  shared.members.delete(member)
  if (shared.members.size > 0) return
  if (state.sessions.get(shared.session) === shared) state.sessions.delete(shared.session)
  if (shared.server === state.server) {
    try {
      shared.server.releaseContext(shared.contextId)
    } catch (error) {
      emit(member.logger, 'warn', 'Failed to release preview proxy context', { webContentsId, error: errorMessage(error) })
    }
    // The context's own port is closed now, and its number may be handed to another listener later:
    // the session goes back to the shared port, which answers 407 with nothing to give.
    if (shared.ownPort) pointAtSharedPort(shared, member.logger)
  }
}

function pointAtSharedPort(shared, logger) {
  const failed = (error) => emit(logger, 'warn', 'Failed to point a released preview at the shared port', { error: errorMessage(error) })
  try {
    const rules = { mode: 'fixed_servers', proxyRules: shared.server.proxyRules(), proxyBypassRules: '<-loopback>' }
    Promise.resolve(shared.session.setProxy(rules)).catch(failed)
  } catch (error) {
    failed(error)
  }
}

/**
 * Whether new previews get a port of their own (the default): every connection
 * there is the preview's, with no 407, so a first request Chromium will not
 * authenticate (a WebSocket, a service worker's fetch after a restart) works.
 * `false`: the shared port with Basic credentials answered in app.on('login').
 */
function setPreviewProxyOwnPorts(enabled) {
  state.ownPorts = Boolean(enabled)
}

function releasePreviewProxy(webContentsId) {
  const member = state.contexts.get(webContentsId)
  if (member) releaseMember(webContentsId, member)
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

/**
 * The membership of `webContentsId` in its session's context for `route`:
 * joins the live context of the same route, or creates one. Throws (changing
 * nothing) when another live WebContents of the session uses another route.
 */
function joinSessionContext(server, webContentsId, session, route, logger, persistKey) {
  const previous = state.contexts.get(webContentsId)
  let shared = state.sessions.get(session) || null
  if (shared) {
    const others = [...shared.members].filter((m) => m !== previous)
    if (others.length === 0) {
      shared = null
    } else if (!sameRoute(shared.route, route)) {
      throw new Error(
        `Preview proxy: this session already carries the preview of ${describeRoute(shared.route)} ` +
          `(webContents ${others.map((m) => m.webContentsId).join(', ')}); the preview of ${describeRoute(route)} ` +
          `(webContents ${webContentsId}) cannot use it, because Chromium caches proxy credentials per session. ` +
          'Use one partition per preview (getPreviewPartitionForPersistKey).',
      )
    }
  }
  // Configuring a WebContents again replaces its own membership.
  if (previous) releaseMember(webContentsId, previous)
  let created = false
  if (!shared) {
    const context = createContext(server, webContentsId, route, logger)
    shared = {
      contextId: context.id,
      username: context.username,
      password: context.password,
      ownPort: context.port ?? null,
      route,
      session,
      server,
      members: new Set(),
    }
    state.sessions.set(session, shared)
    created = true
  }
  const member = { webContentsId, shared, logger, persistKey }
  shared.members.add(member)
  state.contexts.set(webContentsId, member)
  return { member, created }
}

/**
 * A new context, with a port of its own when own ports are on. When no port can
 * be opened (maxContextPorts reached, or the bind failed) the preview uses the
 * shared port, with a warning, rather than failing: an app that loads the page
 * after a failed configure would load it without any proxy.
 */
function createContext(server, webContentsId, route, logger) {
  if (state.ownPorts) {
    try {
      return server.createContext(webContentsId, route, { ownPort: true })
    } catch (error) {
      // Only a port that could not be had falls back; any other error is the configure's.
      if (!/\bownPort\b/.test(errorMessage(error))) throw error
      emit(logger, 'warn', 'Preview proxy: no port of its own for this preview; it uses the shared port', {
        webContentsId,
        error: errorMessage(error),
      })
    }
  }
  return server.createContext(webContentsId, route, { ownPort: false })
}

async function configurePreviewProxyForView(options) {
  const { webContents, initialUrl, persistKey, logger } = options
  const route = typeof initialUrl === 'string' ? deriveRoute(initialUrl) : null
  if (!route) {
    emit(logger, 'warn', 'Preview proxy skipped; unable to parse cmux host', { url: initialUrl, persistKey })
    return () => {}
  }

  await startPreviewProxy(logger)
  const server = state.server
  if (!server) throw new Error('Preview proxy stopped while a preview was being configured')
  // Destroyed while the proxy started: its 'destroyed' has fired already, so nothing would release a context.
  if (typeof webContents.isDestroyed === 'function' && webContents.isDestroyed()) return () => {}

  const app = state.app || electronApp()
  if (app) installPreviewProxyLoginHandler(app)
  else if (!state.warnedNoApp) {
    state.warnedNoApp = true
    emit(logger, 'warn', 'Preview proxy login handler not installed: call installPreviewProxyLoginHandler(app)', {})
  }

  const webContentsId = webContents.id
  const session = webContents.session
  let joined
  try {
    joined = joinSessionContext(server, webContentsId, session, route, logger, persistKey)
  } catch (error) {
    emit(logger, 'warn', 'Failed to configure preview proxy', { webContentsId, persistKey, error: errorMessage(error) })
    throw error
  }
  const { member, created } = joined

  let cleanedUp = false
  const cleanup = () => {
    if (cleanedUp) return
    cleanedUp = true
    releaseMember(webContentsId, member)
  }
  try {
    // Before any await: a WebContents destroyed meanwhile still releases its context.
    webContents.once('destroyed', cleanup)
    const missing = sessionLacks(session, logger)
    const { shared } = member
    await session.setProxy({
      mode: 'fixed_servers',
      // http=http://127.0.0.1:PORT;https=http://127.0.0.1:PORT (https:// in the HTTPS proxy mode), PORT
      // being the context's own port (or the shared one, with setPreviewProxyOwnPorts(false)).
      proxyRules: shared.ownPort ? server.proxyRules({ contextId: shared.contextId }) : server.proxyRules(),
      // Chromium bypasses loopback by default: the page's localhost must reach the proxy too.
      proxyBypassRules: '<-loopback>',
    })
    if (!missing.has('setCertificateVerifyProc')) trustProxyCa(session)
    // A reused partition must not answer the 407 with an earlier context's cached credentials.
    // (A WebContents joining its session's live context keeps the credentials already cached.)
    if (created && !missing.has('clearAuthCache')) await session.clearAuthCache()
  } catch (error) {
    cleanedUp = true
    releaseMember(webContentsId, member)
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

/** The DER element at `offset` of `der`: { tag, contentStart, end }; throws when it does not fit. */
function derElement(der, offset, limit = der.length) {
  if (offset + 2 > limit) throw new Error('truncated DER')
  const tag = der[offset]
  let length = der[offset + 1]
  let contentStart = offset + 2
  if (length & 0x80) {
    const count = length & 0x7f
    if (count === 0 || count > 4 || contentStart + count > limit) throw new Error('unsupported DER length')
    length = 0
    for (let i = 0; i < count; i++) length = length * 256 + der[contentStart + i]
    contentStart += count
  }
  const end = contentStart + length
  if (end > limit) throw new Error('truncated DER')
  return { tag, contentStart, end }
}

/**
 * Whether the certificate carries the X.509 nameConstraints extension
 * (2.5.29.30): the extensions ([3] of the TBSCertificate) are walked, so the
 * OID's bytes elsewhere (in a name, say) do not count.
 */
function hasNameConstraints(cert) {
  const der = cert.raw
  const certificate = derElement(der, 0)
  const tbs = derElement(der, certificate.contentStart, certificate.end)
  for (let offset = tbs.contentStart; offset < tbs.end; ) {
    const field = derElement(der, offset, tbs.end)
    if (field.tag === 0xa3) {
      const extensions = derElement(der, field.contentStart, field.end)
      for (let at = extensions.contentStart; at < extensions.end; ) {
        const extension = derElement(der, at, extensions.end)
        const oid = derElement(der, extension.contentStart, extension.end)
        if (der.subarray(extension.contentStart, oid.end).equals(NAME_CONSTRAINTS_OID_DER)) return true
        at = extension.end
      }
      return false
    }
    offset = field.end
  }
  return false
}

/**
 * The CA kept in `file`, or null when there is none or it is unusable: bad
 * JSON or PEM, not a CA, not valid now or expiring within CA_FILE_RENEW_DAYS,
 * valid for longer than a year (notAfter - notBefore over 366 days: older
 * versions wrote ten-year CAs), without name constraints, key not its own.
 */
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
    if (!cert.ca) return null
    const now = Date.now()
    const notBefore = Date.parse(cert.validFrom)
    const notAfter = Date.parse(cert.validTo)
    if (!(notBefore <= now) || !(now + CA_FILE_RENEW_DAYS * DAY_MS < notAfter)) return null
    if (notAfter - notBefore > CA_FILE_MAX_SPAN_MS) return null
    if (!hasNameConstraints(cert)) return null
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
  const caFile = (options || {}).caFile
  if (caFile !== undefined && (typeof caFile !== 'string' || caFile === '')) {
    throw new TypeError('enablePreviewProxyHttpsMode: caFile must be a non-empty path (or left out: a CA for this launch only)')
  }
  let ca
  if (state.explicitCa) {
    // The CA given to setPreviewProxyCertificateAuthority wins: no CA file.
    ca = { certPem: state.explicitCa.certPem, keyPem: state.explicitCa.keyPem }
  } else if (state.httpsCa) {
    // Enabled again in this launch: the switch already names this CA (Chromium reads it once).
    if (state.httpsCa.caFile !== caFile) {
      throw new Error(
        `enablePreviewProxyHttpsMode was already called ${state.httpsCa.caFile === undefined ? 'without caFile' : `with caFile ${JSON.stringify(state.httpsCa.caFile)}`}: ` +
          'the SPKI switch names that CA, and Chromium reads it once',
      )
    }
    ca = { certPem: state.httpsCa.certPem, keyPem: state.httpsCa.keyPem }
  } else if (caFile === undefined) {
    // The default: a CA for this launch only, in memory. Nothing is read or written.
    ca = addon.ProxyServer.generateCa({ validityDays: PER_LAUNCH_CA_VALIDITY_DAYS })
  } else {
    // The app chose to keep its CA across launches, in this file.
    ca = readCa(caFile)
    if (ca) {
      if (process.platform !== 'win32') fs.chmodSync(caFile, 0o600)
    } else {
      ca = addon.ProxyServer.generateCa({ validityDays: CA_FILE_VALIDITY_DAYS })
      writeCa(caFile, ca)
    }
  }
  const spki = spkiSha256(ca.certPem)
  // Other hashes the app trusts by the same switch are kept.
  const existing = app.commandLine.getSwitchValue(SPKI_SWITCH)
  const hashes = existing ? existing.split(',').map((h) => h.trim()).filter(Boolean) : []
  if (!hashes.includes(spki)) app.commandLine.appendSwitch(SPKI_SWITCH, [...hashes, spki].join(','))
  state.httpsCa = { certPem: ca.certPem, keyPem: ca.keyPem, spkiSha256: spki, caFile: state.explicitCa ? undefined : caFile }
  if (!state.app) state.app = app
  return { certPem: ca.certPem, spkiSha256: spki }
}

exports.startPreviewProxy = startPreviewProxy
exports.stopPreviewProxy = stopPreviewProxy
exports.configurePreviewProxyForView = configurePreviewProxyForView
exports.getProxyCredentialsForWebContents = getProxyCredentialsForWebContents
exports.releasePreviewProxy = releasePreviewProxy
exports.setPreviewProxyLoggingEnabled = setPreviewProxyLoggingEnabled
exports.setPreviewProxyOwnPorts = setPreviewProxyOwnPorts
exports.isTaskRunPreviewPersistKey = isTaskRunPreviewPersistKey
exports.getPreviewPartitionForPersistKey = getPreviewPartitionForPersistKey
exports.getPreviewProxyCertificateAuthorityInfo = getPreviewProxyCertificateAuthorityInfo
exports.installPreviewProxyLoginHandler = installPreviewProxyLoginHandler
exports.enablePreviewProxyHttpsMode = enablePreviewProxyHttpsMode
exports.setPreviewProxyCertificateAuthority = setPreviewProxyCertificateAuthority
exports.PER_LAUNCH_CA_VALIDITY_DAYS = PER_LAUNCH_CA_VALIDITY_DAYS
exports.CA_FILE_VALIDITY_DAYS = CA_FILE_VALIDITY_DAYS
exports.CA_FILE_RENEW_DAYS = CA_FILE_RENEW_DAYS
