// Helpers for the HTTPS proxy mode tests: clients that speak TLS to the
// proxy's listener (HTTP/1.1 or HTTP/2 by ALPN), CONNECT over those
// connections, and raw HTTP/2 frames.

import http from 'node:http'
import http2 from 'node:http2'
import { connectOver } from '../support/http-client.mjs'
import { withTimeout } from '../support/wait.mjs'
import { h2request, tlsConnect } from './tls-helpers.mjs'

// ---------------------------------------------------------------------------
// TLS to the proxy's listener

/**
 * tls.connect to the proxy at 127.0.0.1:`port`; resolves the TLSSocket once
 * the client side of the handshake finished, rejects with the TLS error.
 * `opts` go to tls.connect (ca, servername, ALPNProtocols, ...).
 */
export function tlsToProxy(port, opts = {}) {
  return withTimeout(tlsConnect({ host: '127.0.0.1', port, ...opts }), 10000, `TLS handshake with the proxy on port ${port}`)
}

/**
 * An HTTP/2 session to the proxy over TLS (`https://127.0.0.1:PORT`, trusting
 * `ca`); resolves once connected with its first remote SETTINGS recorded in
 * `session.firstSettings`. `goaways` collects the GOAWAY frames received.
 */
export function h2ToProxy(port, ca, opts = {}) {
  const session = http2.connect(`https://127.0.0.1:${port}`, { ca, ...opts })
  session.goaways = []
  session.on('goaway', (code, lastStreamId) => session.goaways.push({ code, lastStreamId }))
  session.on('error', (e) => (session.lastError = e))
  return withTimeout(new Promise((resolve, reject) => {
    session.once('remoteSettings', (settings) => {
      session.firstSettings = { ...settings }
      session.off('error', reject)
      resolve(session)
    })
    session.once('error', reject)
    session.once('close', () => reject(new Error('HTTP/2 session closed before the first SETTINGS')))
  }), 10000, `HTTP/2 session with the proxy on port ${port}`)
}

/** One request on an HTTP/2 session; resolves { status, headers, body, text } or { rstCode } if reset. */
export function h2Fetch(session, headers, body, timeout = 10000) {
  return withTimeout(
    h2request(session, headers, body, { resolveReset: true }),
    timeout,
    `HTTP/2 ${headers[':method']} ${headers[':authority']}${headers[':path'] ?? ''}`,
  )
}

/**
 * A CONNECT stream (`:method CONNECT`, `:authority`) on an HTTP/2 session,
 * or an extended CONNECT when `headers` has `:protocol`. Resolves
 * { stream, headers } once the response head arrived.
 */
export function h2Connect(session, authority, auth, headers = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const stream = session.request({
      ':method': 'CONNECT',
      ':authority': authority,
      ...(auth ? { 'proxy-authorization': auth } : {}),
      ...headers,
    }, { endStream: false })
    stream.once('error', reject)
    stream.once('response', (h) => {
      stream.off('error', reject)
      stream.on('error', () => {})
      resolve({ stream, headers: h })
    })
  }), 10000, `HTTP/2 CONNECT ${authority}`)
}

/** connectOver (support/http-client.mjs), bounded: 10 s. */
export function connectOn(socket, authority, auth) {
  return withTimeout(connectOver(socket, authority, auth), 10000, `CONNECT ${authority}`)
}

/**
 * An http.Agent whose connections are CONNECT tunnels opened over TLS
 * (HTTP/1.1) connections to the HTTPS proxy: what a browser does for ws://
 * through an https:// proxy.
 */
export class HttpsProxyTunnelAgent extends http.Agent {
  constructor({ proxyPort, auth, ca }) {
    super({ keepAlive: false })
    Object.assign(this, { proxyPort, auth, ca })
    this.proxySockets = []
  }

  createConnection(options, callback) {
    const host = options.host.includes(':') ? `[${options.host}]` : options.host
    tlsToProxy(this.proxyPort, { ca: this.ca, servername: 'localhost', ALPNProtocols: ['http/1.1'] })
      .then((socket) => {
        this.proxySockets.push(socket)
        return connectOn(socket, `${host}:${options.port}`, this.auth)
      })
      .then((socket) => callback(null, socket), (err) => callback(err))
    return undefined
  }
}

/** Settles when `session` closes; resolves true, or false after `timeout` ms. */
export function sessionClosed(session, timeout) {
  if (session.closed || session.destroyed) return Promise.resolve(true)
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), timeout)
    session.once('close', () => {
      clearTimeout(t)
      resolve(true)
    })
  })
}

// ---------------------------------------------------------------------------
// Raw HTTP/2 frames (for what Node's client will not send: HEADERS and
// RST_STREAM back to back for hundreds of streams in one write)

export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8 }
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n')

export function h2Frame(type, flags, streamId, payload = Buffer.alloc(0)) {
  const head = Buffer.alloc(9)
  head.writeUIntBE(payload.length, 0, 3)
  head[3] = type
  head[4] = flags
  head.writeUInt32BE(streamId, 5)
  return Buffer.concat([head, payload])
}

function hpackString(s) {
  const bytes = Buffer.from(s, 'latin1')
  const len = []
  if (bytes.length < 127) {
    len.push(bytes.length)
  } else {
    len.push(127)
    let rest = bytes.length - 127
    while (rest >= 128) {
      len.push((rest % 128) + 128)
      rest = Math.floor(rest / 128)
    }
    len.push(rest)
  }
  return Buffer.concat([Buffer.from(len), bytes])
}

/** An HPACK header block of literals without indexing (no Huffman): decodable by any peer. */
export function hpackBlock(headers) {
  return Buffer.concat(Object.entries(headers).map(([k, v]) => Buffer.concat([Buffer.from([0]), hpackString(k), hpackString(String(v))])))
}

/**
 * The same request head many times, small: `first` adds every field to the
 * peer's HPACK dynamic table (literal with incremental indexing), `repeat`
 * refers to them (one byte per field). Valid only on a connection whose
 * dynamic table is still empty when `first` is sent.
 */
export function hpackRepeated(headers) {
  const entries = Object.entries(headers)
  const first = Buffer.concat(entries.map(([k, v]) => Buffer.concat([Buffer.from([0x40]), hpackString(k), hpackString(String(v))])))
  // The newest entry has index 62; the first one inserted ends up at 62 + n - 1.
  const repeat = Buffer.from(entries.map((_, i) => 0x80 | (62 + entries.length - 1 - i)))
  if (62 + entries.length - 1 >= 127) throw new Error('too many fields for one-byte indices')
  return { first, repeat }
}

/**
 * Reads HTTP/2 frames from `socket` into `frames` ({ type, flags, streamId,
 * payload }); acknowledges the peer's SETTINGS.
 */
export class H2FrameReader {
  constructor(socket) {
    this.socket = socket
    this.frames = []
    this.closed = false
    let buf = Buffer.alloc(0)
    socket.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      while (buf.length >= 9) {
        const length = buf.readUIntBE(0, 3)
        if (buf.length < 9 + length) break
        const frame = { type: buf[3], flags: buf[4], streamId: buf.readUInt32BE(5) & 0x7fffffff, payload: Buffer.from(buf.subarray(9, 9 + length)) }
        buf = buf.subarray(9 + length)
        this.frames.push(frame)
        if (frame.type === FRAME.SETTINGS && !(frame.flags & 0x1)) socket.write(h2Frame(FRAME.SETTINGS, 0x1, 0))
      }
    })
    socket.on('close', () => (this.closed = true))
  }

  of(type) {
    return this.frames.filter((f) => f.type === type)
  }

  /** GOAWAY frames as { lastStreamId, code }. */
  goaways() {
    return this.of(FRAME.GOAWAY).map((f) => ({ lastStreamId: f.payload.readUInt32BE(0) & 0x7fffffff, code: f.payload.readUInt32BE(4) }))
  }
}
