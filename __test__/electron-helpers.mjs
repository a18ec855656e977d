// Helpers of the tests of @cmux/preview-proxy/electron (electron-*.test.mjs):
// the Electron objects the module is given (app, session, webContents),
// written as plain objects that implement exactly the Electron members the
// module calls and record what it did, a fresh instance of the module per
// test, real requests through its proxy, a module instance in a child process
// with its own environment (the switches it reads at load), and a TypeScript
// project that resolves the package through its exports map.
//
// Every fake is wrapped in a Proxy that records any access to a member it
// does not implement (`unexpected`): the tests assert it stays empty, so the
// module calls nothing beyond these members.
//
// Run as `node electron-helpers.mjs --electron-module-child`, this file is
// that child (see startModuleProcess).

import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import forge from 'node-forge'
import { afterEach, beforeEach, expect } from 'vitest'
import { answerCommands, forkWithCommands } from '../support/child-commands.mjs'
import { basicAuth, openTunnel } from '../support/http-client.mjs'
import { portState } from '../support/ports.mjs'
import { tlsTunnel } from './tls-helpers.mjs'

const require = createRequire(import.meta.url)

export const MODULE_PATH = require.resolve('../electron/index.js')
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
export const FIRST_PORT = 39385
export const LAST_PORT = 39434
/** A cmux preview URL: route { morphId: 'm1', scope: 'base', domainSuffix: 'cmux.app' }. */
export const PREVIEW_URL = 'https://cmux-m1-base-3000.cmux.app/'
/** The proxyRules of a proxy on 127.0.0.1:`port`, scheme `http` or `https` (HTTPS proxy mode). */
export const RULES = (scheme, port) => `http=${scheme}://127.0.0.1:${port};https=${scheme}://127.0.0.1:${port}`
/**
 * The port the proxyRules of a setProxy `config` name (both halves must name the same
 * `scheme://127.0.0.1:PORT`, `scheme` being `http` or `https`): { scheme, port }.
 */
export function rulesTarget(config) {
  const match = /^http=(https?):\/\/127\.0\.0\.1:(\d+);https=\1:\/\/127\.0\.0\.1:\2$/.exec(config?.proxyRules ?? '')
  if (!match) throw new Error(`not the rules of a proxy on 127.0.0.1: ${JSON.stringify(config)}`)
  return { scheme: match[1], port: Number(match[2]) }
}

/**
 * The context's own port a session was pointed at: the port of its first setProxy (`control`
 * of fakeSession, or the `proxies` array of sessionDouble).
 */
export function ownPortOf(control) {
  const proxies = Array.isArray(control) ? control : control.proxies()
  return rulesTarget(proxies[0]).port
}

/** The addon the module runs on (the same instance electron/index.js requires). */
export const addon = require('../index.js')

/** Member accesses of the fakes beyond what they implement: `${fake}.${member}`. */
export const unexpected = []

/** The keys Node, vitest and `await` may probe on any object (never by the module under test). */
const PROBES = new Set(['then', 'toJSON', 'asymmetricMatch', 'nodeType', '$$typeof', '@@__IMMUTABLE_ITERABLE__@@', '@@__IMMUTABLE_RECORD__@@', 'constructor'])

function strict(name, target) {
  return new Proxy(target, {
    get(obj, key, receiver) {
      if (typeof key === 'string' && !(key in obj) && !PROBES.has(key)) unexpected.push(`${name}.${key}`)
      return Reflect.get(obj, key, receiver)
    },
  })
}

/**
 * A fresh instance of electron/index.js (its module state is per instance;
 * the addon under it is the one already loaded).
 */
export function loadModule() {
  delete require.cache[MODULE_PATH]
  return require(MODULE_PATH)
}

/**
 * A fresh module for each test (`onLoad(mod)` receives it), its proxy stopped
 * after the test and then `afterStop()` run; the test fails if the module
 * used an Electron member beyond those the fakes implement.
 */
export function useFreshModule(onLoad, { afterStop = async () => {} } = {}) {
  let mod
  beforeEach(() => {
    mod = loadModule()
    unexpected.length = 0
    onLoad(mod)
  })
  afterEach(async () => {
    await mod.stopPreviewProxy()
    await afterStop()
    expect(unexpected).toEqual([])
  })
}

/**
 * A session: setProxy / setCertificateVerifyProc / clearAuthCache, recording
 * each call in `calls` (in order). `setProxyImpl(config)` may replace what
 * setProxy does (default: resolves).
 */
export function fakeSession(name = 'session', { setProxyImpl } = {}) {
  const calls = []
  const session = {
    setProxy(config) {
      calls.push({ method: 'setProxy', config })
      return setProxyImpl ? setProxyImpl(config) : Promise.resolve()
    },
    setCertificateVerifyProc(proc) {
      calls.push({ method: 'setCertificateVerifyProc', proc })
    },
    clearAuthCache() {
      calls.push({ method: 'clearAuthCache' })
      return Promise.resolve()
    },
  }
  const control = {
    calls,
    session: strict(name, session),
    proxies: () => calls.filter((c) => c.method === 'setProxy').map((c) => c.config),
    /** The verify proc last set, as Electron calls it: (request, callback); resolves the verdict. */
    verify(request) {
      const proc = calls.filter((c) => c.method === 'setCertificateVerifyProc').at(-1)?.proc
      if (!proc) throw new Error('no certificate verify proc was set')
      return new Promise((resolve) => proc(request, resolve))
    },
  }
  return control
}

/** A webContents: id, session, once('destroyed'), isDestroyed(); `destroy()` fires `destroyed` as Electron does. */
export function fakeWebContents(id, session) {
  const listeners = []
  let destroyed = false
  const webContents = {
    id,
    session,
    once(event, listener) {
      listeners.push({ event, listener })
      return this
    },
    isDestroyed: () => destroyed,
  }
  return {
    webContents: strict(`webContents#${id}`, webContents),
    listeners,
    destroy() {
      destroyed = true
      for (const { event, listener } of listeners.splice(0)) if (event === 'destroyed') listener()
    },
  }
}

/**
 * An app: on(), isReady(), getPath(), commandLine.appendSwitch/getSwitchValue.
 * `login(webContents, authInfo)` emits `login` to every listener, as Electron
 * does, and returns what they did: { prevented, answer: [username, password] | null }.
 * `pathsAsked` records every getPath(name).
 */
export function fakeApp({ userData = '/nonexistent', ready = false, switches = {} } = {}) {
  const listeners = []
  const appended = []
  const pathsAsked = []
  const switchValues = { ...switches }
  const commandLine = {
    appendSwitch(name, value) {
      appended.push([name, value])
      switchValues[name] = value ?? ''
    },
    getSwitchValue(name) {
      return switchValues[name] ?? ''
    },
  }
  const app = {
    on(event, listener) {
      listeners.push({ event, listener })
      return this
    },
    isReady: () => ready,
    getPath(name) {
      pathsAsked.push(name)
      if (name !== 'userData') throw new Error(`unexpected app.getPath(${name})`)
      return userData
    },
    commandLine: strict('app.commandLine', commandLine),
  }
  return {
    app: strict('app', app),
    listeners,
    appended,
    pathsAsked,
    switchValues,
    setReady(value) {
      ready = value
    },
    login(webContents, authInfo, { alreadyPrevented = false } = {}) {
      let prevented = alreadyPrevented
      let answer = null
      const event = strict('loginEvent', {
        preventDefault() {
          prevented = true
        },
        get defaultPrevented() {
          return prevented
        },
      })
      const details = { url: 'http://localhost:3000/', pid: 1 }
      const callback = (username, password) => {
        if (answer) throw new Error('login callback called twice')
        answer = [username, password]
      }
      for (const { event: name, listener } of listeners) if (name === 'login') listener(event, webContents, details, authInfo, callback)
      return { prevented, answer }
    },
  }
}

/**
 * A Logger recording its calls: { logger, calls: [{ level, message, data }] }.
 * `error`: the logger has an `error` member too (cmux's Logger has `log`, `warn` and `error`).
 */
export function recordingLogger({ error = false } = {}) {
  const calls = []
  const record = (level) => (message, data, ...rest) => {
    calls.push({ level, message, data })
    if (rest.length) calls.at(-1).rest = rest
  }
  const logger = { log: record('log'), warn: record('warn') }
  if (error) logger.error = record('error')
  return { calls, logger }
}

/**
 * What cmux's scripts/test-preview-proxy.ts gives the module: a webContents
 * `{ id, session: { setProxy }, once }` whose session has setProxy only (no
 * setCertificateVerifyProc, no clearAuthCache), as plain objects.
 * `proxies` records the setProxy configs.
 */
export function sessionDouble(id) {
  const proxies = []
  const listeners = []
  const webContents = {
    id,
    session: {
      setProxy: async (config) => {
        proxies.push(config)
      },
    },
    once: (event, listener) => {
      listeners.push({ event, listener })
    },
  }
  return { webContents, proxies, listeners }
}

/**
 * Configures a preview with the module `mod`: a fakeSession (or
 * `sessionControl`), a fakeWebContents `id`, the login handler on `app` when
 * given. Resolves { control, wc, cleanup, credentials }.
 */
export async function configureView(mod, id, { app, sessionControl, logger = recordingLogger().logger, url = PREVIEW_URL, persistKey } = {}) {
  const control = sessionControl ?? fakeSession(`session#${id}`)
  const wc = fakeWebContents(id, control.session)
  if (app) mod.installPreviewProxyLoginHandler(app)
  const cleanup = await mod.configurePreviewProxyForView({ webContents: wc.webContents, initialUrl: url, persistKey, logger })
  return { control, wc, cleanup, credentials: mod.getProxyCredentialsForWebContents(id) }
}

/** Runs `fn` with the environment variables of `vars` set (undefined: unset), restoring them after. */
export async function withEnv(vars, fn) {
  const saved = Object.fromEntries(Object.keys(vars).map((name) => [name, process.env[name]]))
  const apply = (values) => {
    for (const [name, value] of Object.entries(values)) {
      if (value === undefined) delete process.env[name]
      else process.env[name] = value
    }
  }
  apply(vars)
  try {
    return await fn()
  } finally {
    apply(saved)
  }
}

/**
 * The status the proxy answers a `CONNECT localhost:3000` (or `authority`)
 * with these credentials (200 for a live context, 407 once released), or with
 * no Proxy-Authorization at all when `credentials` is null (200 on a
 * context's own port, 407 on the shared one).
 * Nothing is connected upstream: the proxy serves a loopback tunnel itself.
 */
export async function connectStatus(port, credentials, authority = 'localhost:3000') {
  const auth = credentials ? basicAuth(credentials.username, credentials.password) : undefined
  const { conn, res } = await openTunnel(port, authority, auth)
  conn.socket.destroy()
  return res.status
}

/** DER (Buffer) to PEM, as Electron gives `request.certificate.data`. */
export function derToPem(der) {
  const lines = der.toString('base64').match(/.{1,64}/g).join('\n')
  return `-----BEGIN CERTIFICATE-----\n${lines}\n-----END CERTIFICATE-----\n`
}

/** The request of a session's certificate verify proc, in Electron's shape, for `hostname` and a leaf PEM. */
export function verifyRequest(hostname, pem) {
  const certificate = {
    data: pem,
    issuer: { commonName: '', organizations: [], organizationUnits: [], locality: '', state: '', country: '' },
    issuerName: '',
    issuerCert: null,
    subject: { commonName: '', organizations: [], organizationUnits: [], locality: '', state: '', country: '' },
    subjectName: '',
    serialNumber: '',
    validStart: 0,
    validExpiry: 0,
    fingerprint: '',
  }
  return {
    hostname,
    certificate,
    validatedCertificate: certificate,
    isIssuedByKnownRoot: false,
    verificationResult: 'net::ERR_CERT_AUTHORITY_INVALID',
    errorCode: -202,
  }
}

/**
 * Records every ProxyServer.start the module makes, until `restore()`:
 * `attempts` of { addr, outcome: 'ok' | 'EADDRINUSE' | 'error', server }, and
 * every ProxyServer.generateCa: `generated` of { args, ca } (the CA with its key). The
 * real start runs; the addon's exports object gets a ProxyServer whose start
 * records (its own static members are not writable). Other test files start
 * proxies in 39385..39434 at the same time, so the port a start picks is
 * checked by what it tried, not by what listens in the range.
 */
export function recordProxyStarts() {
  const real = addon.ProxyServer
  const attempts = []
  const generated = []
  addon.ProxyServer = {
    generateCa(...args) {
      const ca = real.generateCa(...args)
      generated.push({ args, ca })
      return ca
    },
    async start(addr, ...rest) {
      const attempt = { addr, outcome: 'error', server: null }
      attempts.push(attempt)
      try {
        attempt.server = await real.start(addr, ...rest)
        attempt.outcome = 'ok'
        return attempt.server
      } catch (error) {
        if (/EADDRINUSE/.test(String(error?.message))) attempt.outcome = 'EADDRINUSE'
        throw error
      }
    },
  }
  return {
    attempts,
    generated,
    restore() {
      addon.ProxyServer = real
    },
  }
}

/** The ports of FIRST_PORT..LAST_PORT on which something accepts connections on 127.0.0.1. */
export async function listeningPorts() {
  const ports = []
  for (let port = FIRST_PORT; port <= LAST_PORT; port++) ports.push(port)
  const states = await Promise.all(ports.map(portState))
  return ports.filter((_, i) => states[i] === 'open')
}

/** Listens on 127.0.0.1:`port`; resolves the server, or null if the port is taken. */
export function occupy(port) {
  return new Promise((resolve, reject) => {
    const server = net.createServer((socket) => socket.destroy())
    server.once('error', (error) => (error.code === 'EADDRINUSE' ? resolve(null) : reject(error)))
    server.listen(port, '127.0.0.1', () => resolve(server))
  })
}

function derElement(buf, offset) {
  let length = buf[offset + 1]
  let header = 2
  if (length & 0x80) {
    const n = length & 0x7f
    length = 0
    for (let i = 0; i < n; i++) length = length * 256 + buf[offset + 2 + i]
    header += n
  }
  return { start: offset, contentStart: offset + header, end: offset + header + length }
}

function derLength(n) {
  if (n < 0x80) return Buffer.from([n])
  const bytes = []
  for (; n > 0; n >>= 8) bytes.unshift(n & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

/**
 * A certificate like `leafDer` (DER, signed by the CA whose key is
 * `caKeyPem`), with every occurrence of `from` in its to-be-signed part
 * replaced by `to` (same length, so that no DER length changes), signed
 * again with the CA key: what only a holder of the CA key can make, e.g. a
 * leaf of the proxy's CA for a name the proxy never issues one for.
 */
export function resignLeaf(leafDer, caKeyPem, from = '', to = '') {
  if (from.length !== to.length) throw new Error('resignLeaf replaces names of the same length only')
  const outer = derElement(leafDer, 0)
  const tbsElement = derElement(leafDer, outer.contentStart)
  const algorithm = derElement(leafDer, tbsElement.end)
  let tbs = Buffer.from(leafDer.subarray(tbsElement.start, tbsElement.end))
  if (from) tbs = Buffer.from(tbs.toString('latin1').replaceAll(from, to), 'latin1')
  const signature = crypto.sign('sha256', tbs, caKeyPem)
  const bitString = Buffer.concat([Buffer.from([0x03]), derLength(signature.length + 1), Buffer.from([0]), signature])
  const body = Buffer.concat([tbs, leafDer.subarray(algorithm.start, algorithm.end), bitString])
  return Buffer.concat([Buffer.from([0x30]), derLength(body.length), body])
}

/**
 * The leaf the proxy shows inside a TLS tunnel to `authority` (CONNECT with
 * these credentials, or with no Proxy-Authorization when they are null (a
 * context's own port), then TLS with `tlsOptions`, not verified unless they
 * say so): { pem, alpn, subjectaltname }.
 */
export async function tunnelLeaf(port, credentials, authority, tlsOptions = {}) {
  const auth = credentials ? basicAuth(credentials.username, credentials.password) : undefined
  const socket = await tlsTunnel(port, authority, auth, {
    rejectUnauthorized: false,
    ALPNProtocols: ['h2', 'http/1.1'],
    ...tlsOptions,
  })
  const peer = socket.getPeerCertificate(true)
  const leaf = { pem: derToPem(peer.raw), alpn: socket.alpnProtocol, subjectaltname: peer.subjectaltname }
  socket.destroy()
  return leaf
}

// ---------------------------------------------------------------------------
// Certificates made the way cmux makes them

/**
 * A CA made the way cmux's CertificateManager (preview-proxy-certs.ts) makes
 * the one it keeps in ~/.cmux/certs: node-forge, RSA 2048, serial 01, valid
 * from now for ten years, "Cmux Preview Proxy CA", basicConstraints CA
 * (critical) and keyUsage, no key identifiers; the key as forge writes it
 * (PKCS#1, "BEGIN RSA PRIVATE KEY").
 */
export function cmuxStyleCa() {
  const keys = forge.pki.rsa.generateKeyPair(2048)
  const cert = forge.pki.createCertificate()
  const notBefore = new Date()
  const notAfter = new Date(notBefore)
  notAfter.setFullYear(notBefore.getFullYear() + 10)
  const name = [
    ['commonName', 'Cmux Preview Proxy CA'],
    ['countryName', 'US'],
    ['ST', 'California'],
    ['localityName', 'San Francisco'],
    ['organizationName', 'Cmux'],
    ['OU', 'Preview Proxy'],
  ].map(([key, value]) => (key.length <= 2 ? { shortName: key, value } : { name: key, value }))
  Object.assign(cert, { publicKey: keys.publicKey, serialNumber: '01' })
  Object.assign(cert.validity, { notBefore, notAfter })
  cert.setSubject(name)
  cert.setIssuer(name)
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, digitalSignature: true, nonRepudiation: true, keyEncipherment: true, dataEncipherment: true },
  ])
  cert.sign(keys.privateKey, forge.md.sha256.create())
  return { certPem: forge.pki.certificateToPem(cert), keyPem: forge.pki.privateKeyToPem(keys.privateKey) }
}

/** DER of NameConstraints permitting the DNS name `localhost` only (what `forgeCa` puts in). */
const LOCALHOST_NAME_CONSTRAINTS = Buffer.from([0x30, 0x0f, 0xa0, 0x0d, 0x30, 0x0b, 0x82, 0x09, ...Buffer.from('localhost')])

/**
 * A self-signed CA made with node-forge (RSA 2048, key generated by Node for
 * speed, written PKCS#1 as forge writes it), valid from `notBefore` to
 * `notAfter` (Dates), with the nameConstraints extension (critical,
 * permitting `localhost`) when `nameConstraints`, basicConstraints CA:`ca`:
 * { certPem, keyPem }. For the
 * CA files of older versions (ten years, no constraints) and their edge cases.
 */
export function forgeCa({ notBefore, notAfter, nameConstraints = true, commonName = 'Forge Test CA', ca = true }) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
  const key = forge.pki.privateKeyFromPem(privateKey.export({ type: 'pkcs1', format: 'pem' }))
  const cert = forge.pki.createCertificate()
  cert.publicKey = forge.pki.setRsaPublicKey(key.n, key.e)
  cert.serialNumber = '01' + crypto.randomBytes(8).toString('hex')
  Object.assign(cert.validity, { notBefore, notAfter })
  const name = [{ name: 'commonName', value: commonName }]
  cert.setSubject(name)
  cert.setIssuer(name)
  const extensions = [
    { name: 'basicConstraints', cA: ca, critical: true },
    { name: 'keyUsage', keyCertSign: ca, cRLSign: ca, digitalSignature: true, critical: true },
  ]
  if (nameConstraints) extensions.push({ id: '2.5.29.30', critical: true, value: LOCALHOST_NAME_CONSTRAINTS.toString('latin1') })
  cert.setExtensions(extensions)
  cert.sign(key, forge.md.sha256.create())
  return { certPem: forge.pki.certificateToPem(cert), keyPem: forge.pki.privateKeyToPem(key) }
}

/** A self-signed server certificate for `names` (DNS names or IP literals): { cert, key } PEM. */
export function selfSigned(names) {
  const keys = forge.pki.rsa.generateKeyPair(2048)
  const cert = forge.pki.createCertificate()
  cert.publicKey = keys.publicKey
  cert.serialNumber = '01' + crypto.randomBytes(8).toString('hex')
  cert.validity.notBefore = new Date(Date.now() - 3600 * 1000)
  cert.validity.notAfter = new Date(Date.now() + 30 * 24 * 3600 * 1000)
  const subject = [{ name: 'commonName', value: names[0] }]
  cert.setSubject(subject)
  cert.setIssuer(subject)
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'subjectAltName', altNames: names.map((n) => (net.isIP(n) ? { type: 7, ip: n } : { type: 2, value: n })) },
  ])
  cert.sign(keys.privateKey, forge.md.sha256.create())
  return { cert: forge.pki.certificateToPem(cert), key: forge.pki.privateKeyToPem(keys.privateKey) }
}

// ---------------------------------------------------------------------------
// Types: a project that installed the package and electron

const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')

/** compilerOptions every project of typesProject starts from. */
const TYPES_COMPILER_OPTIONS = {
  target: 'ES2022',
  strict: true,
  noEmit: true,
  noUnusedLocals: true,
  // electron/index.d.ts (and electron.d.ts) checked too.
  skipLibCheck: false,
  typeRoots: [join(ROOT, 'node_modules', '@types')],
  types: ['node'],
}

/**
 * A temporary project with @cmux/preview-proxy (a link to this repository,
 * so that it resolves through the package's exports map) and electron in its
 * node_modules. `write(name, text)`, `config(name, compilerOptions, files)`
 * (tsconfig.<name>.json on top of strict defaults), `tsc(name)` resolves
 * { code, output }, `remove()`.
 */
export function typesProject(prefix = 'cmux-electron-types-') {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  mkdirSync(join(dir, 'node_modules', '@cmux'), { recursive: true })
  symlinkSync(ROOT, join(dir, 'node_modules', '@cmux', 'preview-proxy'), 'junction')
  symlinkSync(join(ROOT, 'node_modules', 'electron'), join(dir, 'node_modules', 'electron'), 'junction')
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'electron-user', private: true }))
  return {
    dir,
    write(name, text) {
      writeFileSync(join(dir, name), text)
    },
    config(name, compilerOptions, files) {
      writeFileSync(join(dir, `tsconfig.${name}.json`), JSON.stringify({ compilerOptions: { ...TYPES_COMPILER_OPTIONS, ...compilerOptions }, files }))
    },
    tsc(name) {
      return new Promise((resolve) => {
        execFile(process.execPath, [TSC, '-p', `tsconfig.${name}.json`, '--pretty', 'false'], { cwd: dir, timeout: 120000 }, (error, stdout, stderr) => {
          resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, output: `${stdout}${stderr}` })
        })
      })
    },
    remove() {
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** `file line TSnnnn` of every line of `source` marked `// expect TSnnnn`. */
export function expectedErrors(file, source) {
  return source
    .split('\n')
    .map((line, i) => ({ line: i + 1, code: /\/\/ expect (TS\d+)/.exec(line)?.[1] }))
    .filter((e) => e.code)
    .map((e) => `${file} ${e.line} ${e.code}`)
}

/** `file line TSnnnn` of every error in tsc's output. */
export function reportedErrors(output) {
  return [...output.matchAll(/^(.+?)\((\d+),\d+\): error (TS\d+):/gm)].map(([, file, line, tsCode]) => `${file} ${line} ${tsCode}`)
}

// ---------------------------------------------------------------------------
// The module in a child process, with its own environment

const CHILD_FLAG = '--electron-module-child'
/** The variables the module reads; unset in the child unless the test gives them. */
export const MODULE_ENV = ['CMUX_PREVIEW_TLS_MITM', 'CMUX_PREVIEW_PROXY_LOG', 'CMUX_PREVIEW_PROXY_LOGGING', 'TEST_CMUX_PROXY_ORIGIN', 'TEST_ALLOW_INSECURE_UPSTREAM']

/**
 * Forks this file as a process that loads electron/index.js with `env` on
 * top of this process's environment (the test addon included; MODULE_ENV
 * unset unless given; a value of undefined unsets). Returns
 * { child, call(command, ...args), stdout(), stop() }; commands:
 * - `features()`: { isLoopbackHost, isInterceptedHost } (typeof each addon function)
 * - `setEnv(name, value)`: sets (or, with null, deletes) process.env[name], after the module loaded
 * - `setLogging(enabled)`: setPreviewProxyLoggingEnabled
 * - `start()`: startPreviewProxy with a recording Logger (log, warn, error): the port
 * - `configure(id, url, { double })`: configurePreviewProxyForView of a fake WebContents `id` on its
 *   own fake session (`double`: cmux's test double, a session with setProxy only); its credentials
 * - `ca()`: getPreviewProxyCertificateAuthorityInfo()
 * - `logs()`: the Logger's calls [{ level, message, data }]
 * - `unexpected()`: Electron members the module used beyond the fakes'
 * - `stop()`: stopPreviewProxy, then the child exits
 */
export async function startModuleProcess(env = {}) {
  const childEnv = { ...process.env }
  for (const name of MODULE_ENV) delete childEnv[name]
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined) delete childEnv[name]
    else childEnv[name] = value
  }
  let stdout = ''
  let stderr = ''
  const moduleProcess = await forkWithCommands(fileURLToPath(import.meta.url), [CHILD_FLAG], {
    name: 'the electron module child',
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    timeout: 15000,
    exitDetail: () => `; stderr:\n${stderr}`,
    onSpawn: (child) => {
      child.stdout.on('data', (d) => (stdout += d))
      child.stderr.on('data', (d) => (stderr += d))
    },
  })
  return { ...moduleProcess, stdout: () => stdout }
}

async function childMain() {
  // Loaded here, after the environment was set: its switches are read now.
  const mod = require(MODULE_PATH)
  const { logger, calls } = recordingLogger({ error: true })
  const commands = {
    features: () => ({ isLoopbackHost: typeof addon.isLoopbackHost, isInterceptedHost: typeof addon.isInterceptedHost }),
    setEnv(name, value) {
      if (value === null) delete process.env[name]
      else process.env[name] = value
      return true
    },
    setLogging(enabled) {
      mod.setPreviewProxyLoggingEnabled(enabled)
      return true
    },
    start: () => mod.startPreviewProxy(logger),
    async configure(id, url, { double = false } = {}) {
      const webContents = double ? sessionDouble(id).webContents : fakeWebContents(id, fakeSession(`session#${id}`).session).webContents
      await mod.configurePreviewProxyForView({ webContents, initialUrl: url, persistKey: `task-run-preview:${id}`, logger })
      return mod.getProxyCredentialsForWebContents(id)
    },
    ca: () => mod.getPreviewProxyCertificateAuthorityInfo(),
    logs: () => calls,
    unexpected: () => unexpected,
    async stop() {
      await mod.stopPreviewProxy()
      return true
    },
  }
  answerCommands(commands)
}

if (process.argv[2] === CHILD_FLAG && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await childMain()
}
