// Helpers of electron-module.test.mjs: the Electron objects the module is
// given (app, session, webContents), written as plain objects that implement
// exactly the Electron members the module calls and record what it did, a
// fresh instance of the module per test, and real requests through its proxy.
//
// Every fake is wrapped in a Proxy that records any access to a member it
// does not implement (`unexpected`): the tests assert it stays empty, so the
// module calls nothing beyond these members.

import crypto from 'node:crypto'
import net from 'node:net'
import { createRequire } from 'node:module'
import { basicAuth, openTunnel } from './helpers.mjs'

const require = createRequire(import.meta.url)

export const MODULE_PATH = require.resolve('../electron/index.js')
export const FIRST_PORT = 39385
export const LAST_PORT = 39434

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

/** A webContents: id, session, once('destroyed'); `destroy()` fires `destroyed` as Electron does. */
export function fakeWebContents(id, session) {
  const listeners = []
  const webContents = {
    id,
    session,
    once(event, listener) {
      listeners.push({ event, listener })
      return this
    },
  }
  return {
    webContents: strict(`webContents#${id}`, webContents),
    listeners,
    destroy() {
      for (const { event, listener } of listeners.splice(0)) if (event === 'destroyed') listener()
    },
  }
}

/**
 * An app: on(), isReady(), getPath(), commandLine.appendSwitch/getSwitchValue.
 * `login(webContents, authInfo)` emits `login` to every listener, as Electron
 * does, and returns what they did: { prevented, answer: [username, password] | null }.
 */
export function fakeApp({ userData = '/nonexistent', ready = false, switches = {} } = {}) {
  const listeners = []
  const appended = []
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
      if (name !== 'userData') throw new Error(`unexpected app.getPath(${name})`)
      return userData
    },
    commandLine: strict('app.commandLine', commandLine),
  }
  return {
    app: strict('app', app),
    listeners,
    appended,
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

/** A Logger recording its calls: { logger, calls: [{ level, message, data }] }. */
export function recordingLogger() {
  const calls = []
  return {
    calls,
    logger: {
      log: (message, data) => calls.push({ level: 'log', message, data }),
      warn: (message, data) => calls.push({ level: 'warn', message, data }),
    },
  }
}

/**
 * The status the proxy answers a `CONNECT localhost:3000` with these
 * credentials (200 for a live context, 407 once released). Nothing is
 * connected upstream: the proxy serves a loopback tunnel itself.
 */
export async function connectStatus(port, credentials) {
  const auth = credentials ? basicAuth(credentials.username, credentials.password) : undefined
  const { conn, res } = await openTunnel(port, 'localhost:3000', auth)
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

/** The ports of FIRST_PORT..LAST_PORT on which something accepts connections on 127.0.0.1. */
export async function listeningPorts() {
  const ports = []
  for (let port = FIRST_PORT; port <= LAST_PORT; port++) ports.push(port)
  const open = await Promise.all(ports.map((port) => new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })))
  return ports.filter((_, i) => open[i])
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
