// Helpers for the TLS-interception, HTTP/2 and cmux-origin tests: TLS on top
// of CONNECT tunnels, HTTPS "dev box" stand-ins with a test CA, small HTTP/2
// utilities, and a Node TLS client's first bytes captured two ways.

import crypto from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import http2 from 'node:http2'
import net from 'node:net'
import tls from 'node:tls'
import { makeCA, makeLeaf } from '../support/certs.mjs'
import { connectTunnel, readResponseBody } from '../support/http-client.mjs'
import { closer, listen, trackSockets } from '../support/servers.mjs'
import { waitFor } from '../support/wait.mjs'

export const DEV_HOST = 'cmux-m1-base-3000.test.local'
export const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' }

// RSA key generation in node-forge is slow; share one test CA per process.
let sharedCA
export function testCA() {
  sharedCA ??= makeCA('cmux tls tests CA')
  return sharedCA
}

/** A PKCS#8 ("BEGIN PRIVATE KEY") rendering of any PEM private key. */
export function pkcs8(keyPem) {
  return crypto.createPrivateKey(keyPem).export({ type: 'pkcs8', format: 'pem' })
}

export function fingerprint(pem) {
  return new crypto.X509Certificate(pem).fingerprint256
}

/**
 * An HTTPS server with a leaf for `names` signed by `ca` (default: the shared
 * test CA). `h2`: an http2 secure server with allowHTTP1. Counts TCP
 * connections; `requests` records { method, url, host, httpVersion, headers, socket, session }.
 */
export async function startTlsServer(handler, { names = [DEV_HOST], ca = testCA(), h2 = false } = {}) {
  const leaf = makeLeaf(ca, names)
  const server = h2
    ? http2.createSecureServer({ key: leaf.key, cert: leaf.cert, allowHTTP1: true })
    : https.createServer({ key: leaf.key, cert: leaf.cert })
  const stats = { connections: 0, secureConnections: 0 }
  const requests = []
  const sessions = new Set()
  server.on('connection', () => stats.connections++)
  server.on('secureConnection', () => stats.secureConnections++)
  if (h2) {
    server.on('session', (s) => {
      sessions.add(s)
      s.on('close', () => sessions.delete(s))
      s.on('error', () => {})
    })
  }
  server.on('request', (req, res) => {
    requests.push({
      method: req.method,
      url: req.url,
      host: req.headers.host ?? req.headers[':authority'],
      httpVersion: req.httpVersion,
      headers: req.headers,
      socket: req.socket,
      // HTTP/2 only: the session (one per TCP connection) the stream came on.
      session: req.stream?.session,
    })
    handler(req, res)
  })
  server.on('tlsClientError', () => {})
  const sockets = trackSockets(server)
  const port = await listen(server)
  const close = closer(server, sockets, () => {
    for (const s of sessions) s.destroy()
  })
  return { server, port, close, stats, requests, sessions, leaf }
}

/**
 * tls.connect with `opts` (host and port, or a `socket` to run over); resolves
 * with the TLSSocket after the handshake, rejects on any TLS error.
 */
export function tlsConnect(opts) {
  return new Promise((resolve, reject) => {
    const t = tls.connect(opts)
    const onError = (err) => {
      t.destroy()
      reject(err)
    }
    t.once('error', onError)
    t.once('secureConnect', () => {
      t.off('error', onError)
      t.on('error', () => {})
      resolve(t)
    })
  })
}

/**
 * TLS over an already open socket; resolves with the TLSSocket after the
 * handshake, rejects on any TLS error. `opts` go to tls.connect.
 */
export function tlsOver(socket, opts) {
  return tlsConnect({ socket, ...opts })
}

/** CONNECT `authority` then TLS with `opts`; resolves the TLSSocket. */
export async function tlsTunnel(proxyPort, authority, auth, opts) {
  const raw = await connectTunnel(proxyPort, authority, auth)
  try {
    return await tlsOver(raw, opts)
  } catch (e) {
    raw.destroy()
    throw e
  }
}

/**
 * One HTTP/1.1 request on an existing (TLS) socket with Node's http client.
 * Resolves { status, headers, rawHeaders, body, text }. `body` may be a
 * Buffer/string or an async iterable of chunks.
 */
export function requestOver(socket, { method = 'GET', path = '/', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({
      method,
      path,
      headers: { host: 'localhost:3000', ...headers },
      createConnection: () => socket,
    }, (res) => readResponseBody(res).then(resolve, reject))
    req.on('error', reject)
    if (body === undefined || typeof body === 'string' || Buffer.isBuffer(body)) {
      req.end(body)
    } else {
      ;(async () => {
        for await (const chunk of body) {
          if (!req.write(chunk)) await new Promise((r) => req.once('drain', r))
        }
        req.end()
      })().catch(reject)
    }
  })
}

/**
 * An https.Agent whose connections are CONNECT tunnels through the proxy
 * with TLS on top (`tlsOptions`, e.g. { ca, servername }): what a browser
 * does for https:// and wss:// URLs through a proxy.
 */
export class TlsTunnelAgent extends https.Agent {
  constructor({ proxyPort, auth, tlsOptions }) {
    super({ keepAlive: false })
    this.proxyPort = proxyPort
    this.auth = auth
    this.tlsOptions = tlsOptions
  }

  createConnection(options, callback) {
    const host = options.host.includes(':') ? `[${options.host}]` : options.host
    tlsTunnel(this.proxyPort, `${host}:${options.port}`, this.auth, {
      servername: net.isIP(options.host) ? undefined : options.host,
      ALPNProtocols: ['http/1.1'],
      ...this.tlsOptions,
    }).then((socket) => callback(null, socket), (err) => callback(err))
    return undefined
  }
}

/** http2.connect over an already negotiated TLS socket (ALPN h2). */
export function h2Over(tlsSocket, authority = 'https://localhost:3000') {
  const session = http2.connect(authority, { createConnection: () => tlsSocket })
  session.on('error', () => {})
  return session
}

/**
 * One request on an HTTP/2 session; resolves { status, headers, body, text }.
 * `resolveReset`: a stream closed without a response (reset without an error)
 * resolves { status: undefined, rstCode } instead of leaving it pending.
 */
export function h2request(session, headers, body, { resolveReset = false } = {}) {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: body === undefined })
    const chunks = []
    let responseHeaders
    stream.on('response', (h) => (responseHeaders = h))
    stream.on('data', (c) => chunks.push(c))
    stream.on('end', () => {
      const buf = Buffer.concat(chunks)
      resolve({ status: responseHeaders?.[':status'], headers: responseHeaders, body: buf, text: buf.toString() })
    })
    if (resolveReset) {
      stream.on('close', () => {
        if (!responseHeaders) resolve({ status: undefined, rstCode: stream.rstCode })
      })
    }
    stream.on('error', reject)
    if (body !== undefined) stream.end(body)
  })
}

/**
 * The head of a WebSocket over HTTP/2 (an RFC 8441 extended CONNECT) to
 * `authority` + `path`; `extra` fields (credentials, cookies...) come last.
 */
export function wsOverH2(authority, path, { scheme = 'http', ...extra } = {}) {
  return {
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':scheme': scheme,
    ':authority': authority,
    ':path': path,
    'sec-websocket-version': '13',
    ...extra,
  }
}

/**
 * Resolves with the first remote SETTINGS of an HTTP/2 session; call it
 * right after creating the session.
 */
export function remoteSettings(session) {
  return new Promise((resolve, reject) => {
    session.once('remoteSettings', resolve)
    session.once('error', reject)
    session.once('close', () => reject(new Error('session closed before its SETTINGS arrived')))
  })
}

// ---------------------------------------------------------------------------
// A Node TLS client's first bytes, captured by a local TCP server that never answers

/**
 * Exactly the first TLS record a Node client sends (its ClientHello) for
 * `servername`, reassembled from however many reads it took.
 */
export async function captureClientHelloRecord({ servername = 'localhost', ALPNProtocols = ['h2', 'http/1.1'] } = {}) {
  let resolveHello
  const hello = new Promise((resolve) => (resolveHello = resolve))
  const server = net.createServer((socket) => {
    let buf = Buffer.alloc(0)
    socket.on('error', () => {})
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      if (buf.length >= 5 && buf.length >= 5 + buf.readUInt16BE(3)) {
        resolveHello(buf.subarray(0, 5 + buf.readUInt16BE(3)))
        socket.destroy()
      }
    })
  })
  const port = await listen(server)
  const client = tls.connect({ port, host: '127.0.0.1', servername, ALPNProtocols, rejectUnauthorized: false })
  client.on('error', () => {})
  try {
    return await Promise.race([
      hello,
      new Promise((_, reject) => setTimeout(() => reject(new Error('no ClientHello captured')), 5000)),
    ])
  } finally {
    client.destroy()
    server.close()
  }
}

/**
 * The first chunk a Node TLS client writes (a real first-flight ClientHello),
 * as one read received it; `opts` go to tls.connect.
 */
export async function captureFirstFlight(opts = {}) {
  let captured
  const server = net.createServer((socket) => {
    socket.on('error', () => {})
    socket.once('data', (d) => {
      captured = d
      socket.destroy()
    })
  })
  const sockets = trackSockets(server)
  const port = await listen(server)
  const client = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ALPNProtocols: ['h2', 'http/1.1'], ...opts })
  client.on('error', () => {})
  try {
    await waitFor(() => captured, { timeout: 5000, message: 'ClientHello captured' })
  } finally {
    client.destroy()
    await closer(server, sockets)()
  }
  return captured
}
