// Shared helpers for the integration tests of the native proxy addon.
// Everything here talks to real sockets on 127.0.0.1; nothing is mocked.

import crypto from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import { createRequire } from 'node:module'
import forge from 'node-forge'

const require = createRequire(import.meta.url)

export const ADDON_PATH = require.resolve('../index.js')
export const { ProxyServer } = require('../index.js')

export const REALM = 'Basic realm="Cmux Preview Proxy"'

// ---------------------------------------------------------------------------
// Small utilities

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `predicate` until it returns a truthy value; throws after `timeout` ms. */
export async function waitFor(predicate, { timeout = 2000, interval = 20, message } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    last = await predicate()
    if (last) return last
    if (Date.now() >= deadline) {
      throw new Error(`waitFor timed out after ${timeout} ms${message ? `: ${message}` : ''}`)
    }
    await sleep(interval)
  }
}

/** Rejects if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what = 'operation') {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

export function basicAuth(username, password) {
  return 'Basic ' + Buffer.from(`${username}:${password}`).toString('base64')
}

export function authOf(ctx) {
  return basicAuth(ctx.username, ctx.password)
}

/** A port on 127.0.0.1 on which nothing listens (bound, then released). */
export async function closedPort() {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

// ---------------------------------------------------------------------------
// Test CA and leaf certificates (node-forge, RSA 2048)

function randomSerial() {
  // Positive, non-zero: first byte below 0x80.
  return '01' + crypto.randomBytes(15).toString('hex')
}

export function makeCA(commonName = 'cmux preview proxy test CA') {
  const keys = forge.pki.rsa.generateKeyPair(2048)
  const cert = forge.pki.createCertificate()
  cert.publicKey = keys.publicKey
  cert.serialNumber = randomSerial()
  cert.validity.notBefore = new Date(Date.now() - 24 * 3600 * 1000)
  cert.validity.notAfter = new Date(Date.now() + 365 * 24 * 3600 * 1000)
  const attrs = [
    { name: 'commonName', value: commonName },
    { name: 'organizationName', value: 'cmux tests' },
  ]
  cert.setSubject(attrs)
  cert.setIssuer(attrs)
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ])
  cert.sign(keys.privateKey, forge.md.sha256.create())
  return {
    cert,
    key: keys.privateKey,
    certPem: forge.pki.certificateToPem(cert),
    keyPem: forge.pki.privateKeyToPem(keys.privateKey),
  }
}

/** A server certificate for `names` (DNS names or IP literals) signed by `ca`. */
export function makeLeaf(ca, names) {
  const keys = forge.pki.rsa.generateKeyPair(2048)
  const cert = forge.pki.createCertificate()
  cert.publicKey = keys.publicKey
  cert.serialNumber = randomSerial()
  cert.validity.notBefore = new Date(Date.now() - 24 * 3600 * 1000)
  cert.validity.notAfter = new Date(Date.now() + 30 * 24 * 3600 * 1000)
  cert.setSubject([{ name: 'commonName', value: names[0] }])
  cert.setIssuer(ca.cert.subject.attributes)
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    {
      name: 'subjectAltName',
      altNames: names.map((n) => (net.isIP(n) ? { type: 7, ip: n } : { type: 2, value: n })),
    },
    { name: 'subjectKeyIdentifier' },
    { name: 'authorityKeyIdentifier', keyIdentifier: ca.cert.generateSubjectKeyIdentifier().getBytes() },
  ])
  cert.sign(ca.key, forge.md.sha256.create())
  return { cert: forge.pki.certificateToPem(cert), key: forge.pki.privateKeyToPem(keys.privateKey) }
}

// ---------------------------------------------------------------------------
// Servers

/** The open sockets of `server`, kept current. */
export function trackSockets(server, event = 'connection') {
  const sockets = new Set()
  server.on(event, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  return sockets
}

/** Listens on `host`:0; resolves the port. */
export async function listen(server, host = '127.0.0.1') {
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return server.address().port
}

/** A close() for `server` that also destroys its open `sockets` (and runs `extra` first); idempotent. */
export function closer(server, sockets, extra = () => {}) {
  let closing
  return () => {
    closing ??= new Promise((resolve) => {
      extra()
      server.close(() => resolve())
      for (const socket of sockets) socket.destroy()
    })
    return closing
  }
}

/** An HTTP server on 127.0.0.1:0. Returns { server, port, close }. */
export async function startHttpServer(handler) {
  const server = http.createServer(handler)
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { server, port, close: closer(server, sockets) }
}

/** An HTTPS server on 127.0.0.1:0 with `tls` = { key, cert }. */
export async function startHttpsServer(tls, handler) {
  const server = https.createServer({ key: tls.key, cert: tls.cert }, handler)
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { server, port, close: closer(server, sockets) }
}

/** A raw TCP server; `onSocket(socket)` handles each connection. */
export async function startTcpServer(onSocket, { allowHalfOpen = true } = {}) {
  const server = net.createServer({ allowHalfOpen }, (socket) => {
    socket.on('error', () => {})
    onSocket(socket)
  })
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { server, port, close: closer(server, sockets), sockets }
}

export const ECHO_FINAL = Buffer.from('<echo-server-final-bytes>')

/**
 * A TCP echo server. When a client half-closes, it records the 'end', writes
 * ECHO_FINAL and ends its side too. `events` counts what happened.
 */
export async function startEchoServer() {
  const events = { connections: 0, ended: 0, closed: 0, received: 0 }
  const srv = await startTcpServer((socket) => {
    events.connections++
    socket.on('data', (d) => {
      events.received += d.length
      socket.write(d)
    })
    socket.on('end', () => {
      events.ended++
      socket.end(ECHO_FINAL)
    })
    socket.on('close', () => events.closed++)
  })
  return { ...srv, events }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 over a net socket

function parseHead(text) {
  const lines = text.split('\r\n')
  const m = /^HTTP\/(\d\.\d) (\d{3})(?: (.*))?$/.exec(lines[0])
  if (!m) throw new Error(`not an HTTP status line: ${JSON.stringify(lines[0])}`)
  const headerLines = []
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':')
    if (i <= 0) throw new Error(`bad header line: ${JSON.stringify(line)}`)
    headerLines.push([line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim()])
  }
  const headers = {}
  for (const [k, v] of headerLines) headers[k] = k in headers ? `${headers[k]}, ${v}` : v
  return {
    version: m[1],
    status: Number(m[2]),
    statusText: m[3] ?? '',
    headerLines,
    headers,
    all: (name) => headerLines.filter(([k]) => k === name.toLowerCase()).map(([, v]) => v),
  }
}

/**
 * A client socket with a read buffer and awaitable reads. Every wait fails
 * after `timeout` ms (default 10 s) instead of hanging the test.
 */
export class Conn {
  static connect(port, { host = '127.0.0.1', allowHalfOpen = false, timeout } = {}) {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host, allowHalfOpen })
      socket.once('error', reject)
      socket.once('connect', () => {
        socket.off('error', reject)
        resolve(new Conn(socket, { timeout }))
      })
    })
  }

  constructor(socket, { timeout = 10000 } = {}) {
    this.socket = socket
    this.timeout = timeout
    this.buf = Buffer.alloc(0)
    this.ended = false
    this.closed = false
    this.error = null
    this.waiters = []
    socket.on('data', (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d
      this._wake()
    })
    socket.on('end', () => {
      this.ended = true
      this._wake()
    })
    socket.on('close', () => {
      this.closed = true
      this._wake()
    })
    socket.on('error', (e) => {
      this.error = e
      this._wake()
    })
  }

  _wake() {
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w()
  }

  /** Waits until `check()` returns something other than undefined. */
  async until(check, what = 'data', timeout = this.timeout) {
    const deadline = Date.now() + timeout
    for (;;) {
      const v = check()
      if (v !== undefined) return v
      if (this.ended || this.closed) {
        throw new Error(`connection ${this.closed ? 'closed' : 'ended'} while waiting for ${what}` +
          (this.error ? ` (${this.error.message})` : '') +
          `; buffered: ${JSON.stringify(this.buf.subarray(0, 200).toString('latin1'))}`)
      }
      const left = deadline - Date.now()
      if (left <= 0) {
        throw new Error(`timed out after ${timeout} ms waiting for ${what}; buffered: ` +
          JSON.stringify(this.buf.subarray(0, 200).toString('latin1')))
      }
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  }

  write(data) {
    this.socket.write(data)
  }

  end(data) {
    this.socket.end(data)
  }

  destroy() {
    this.socket.destroy()
  }

  take(n) {
    const out = this.buf.subarray(0, n)
    this.buf = this.buf.subarray(n)
    return out
  }

  readBytes(n, timeout) {
    return this.until(() => (this.buf.length >= n ? this.take(n) : undefined), `${n} bytes`, timeout)
  }

  /** Whatever is buffered once at least `n` bytes are. */
  readAtLeast(n = 1, timeout) {
    return this.until(() => (this.buf.length >= n ? this.take(this.buf.length) : undefined), `${n}+ bytes`, timeout)
  }

  readLine(timeout) {
    return this.until(() => {
      const i = this.buf.indexOf('\r\n')
      if (i < 0) return undefined
      const line = this.take(i).toString('latin1')
      this.take(2)
      return line
    }, 'a line', timeout)
  }

  /** Reads until the peer ends its side; returns everything buffered. */
  async readToEnd(timeout = this.timeout) {
    const deadline = Date.now() + timeout
    while (!this.ended && !this.closed) {
      if (Date.now() > deadline) throw new Error(`peer did not end within ${timeout} ms`)
      await new Promise((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()))
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
    return this.take(this.buf.length)
  }

  /** Resolves when the socket has closed; rejects after `timeout`. */
  async waitClosed(timeout = 2000) {
    const deadline = Date.now() + timeout
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error(`socket not closed within ${timeout} ms`)
      await new Promise((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()))
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  }

  async readHead(timeout) {
    const text = await this.until(() => {
      const i = this.buf.indexOf('\r\n\r\n')
      if (i < 0) return undefined
      const head = this.take(i).toString('latin1')
      this.take(4)
      return head
    }, 'a response head', timeout)
    return parseHead(text)
  }

  /**
   * Reads one response. `connect`: the request was a CONNECT (a 2xx has no
   * body); `head`: the request was a HEAD.
   */
  async readResponse({ connect = false, head = false, timeout } = {}) {
    const res = await this.readHead(timeout)
    const noBody = head || (res.status >= 100 && res.status < 200) || res.status === 204 || res.status === 304 ||
      (connect && res.status >= 200 && res.status < 300)
    if (noBody) {
      res.body = Buffer.alloc(0)
    } else if (/\bchunked\b/i.test(res.headers['transfer-encoding'] ?? '')) {
      const parts = []
      for (;;) {
        const sizeLine = await this.readLine(timeout)
        const size = parseInt(sizeLine.split(';')[0], 16)
        if (Number.isNaN(size)) throw new Error(`bad chunk size line ${JSON.stringify(sizeLine)}`)
        if (size === 0) {
          // Trailers, then an empty line.
          while ((await this.readLine(timeout)) !== '');
          break
        }
        parts.push(await this.readBytes(size, timeout))
        const crlf = await this.readBytes(2, timeout)
        if (crlf.toString() !== '\r\n') throw new Error('chunk not followed by CRLF')
      }
      res.body = Buffer.concat(parts)
    } else if (res.headers['content-length'] !== undefined) {
      res.body = await this.readBytes(Number(res.headers['content-length']), timeout)
    } else {
      res.body = await this.readToEnd(timeout)
    }
    res.text = res.body.toString('utf8')
    return res
  }
}

/** Serialises a request head (plus optional body). `headers` is [[name, value], ...] or an object. */
export function buildRequest(method, target, headers = [], body) {
  const list = Array.isArray(headers) ? headers : Object.entries(headers)
  let out = `${method} ${target} HTTP/1.1\r\n`
  for (const [k, v] of list) out += `${k}: ${v}\r\n`
  out += '\r\n'
  return body === undefined ? Buffer.from(out, 'latin1') : Buffer.concat([Buffer.from(out, 'latin1'), Buffer.from(body)])
}

/** Opens a raw connection, sends one request, reads one response, returns { conn, res }. */
export async function rawRequest(port, method, target, headers, body, opts = {}) {
  const conn = await Conn.connect(port)
  conn.write(buildRequest(method, target, headers, body))
  const res = await conn.readResponse({ connect: method === 'CONNECT', head: method === 'HEAD', ...opts })
  return { conn, res }
}

/** Sends CONNECT `authority` through the proxy; returns { conn, res }. Tunnel bytes follow in conn. */
export async function openTunnel(proxyPort, authority, auth, { allowHalfOpen = false, extraHeaders = [] } = {}) {
  const conn = await Conn.connect(proxyPort, { allowHalfOpen })
  const headers = [['Host', authority], ...extraHeaders]
  if (auth) headers.push(['Proxy-Authorization', auth])
  conn.write(buildRequest('CONNECT', authority, headers))
  const res = await conn.readResponse({ connect: true })
  return { conn, res }
}

// ---------------------------------------------------------------------------
// Node http client through the proxy

/**
 * One request through the proxy with Node's http client, absolute-form target.
 * Resolves { status, headers, rawHeaders, body, socket }.
 */
export function proxyRequest(proxyPort, url, { method = 'GET', headers = {}, auth, body, agent } = {}) {
  const u = new URL(url)
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: proxyPort,
      method,
      path: url,
      agent: agent ?? false,
      headers: { host: u.host, ...(auth ? { 'proxy-authorization': auth } : {}), ...headers },
    }, (res) => {
      const chunks = []
      res.on('data', (c) => chunks.push(c))
      res.on('error', reject)
      res.on('end', () => {
        const buf = Buffer.concat(chunks)
        resolve({
          status: res.statusCode,
          headers: res.headers,
          rawHeaders: res.rawHeaders,
          body: buf,
          text: buf.toString('utf8'),
          socket: req.socket,
        })
      })
    })
    req.on('error', reject)
    if (body !== undefined) req.end(body)
    else req.end()
  })
}

/**
 * A net.Socket on which CONNECT `authority` through the proxy has been
 * answered with 200; no listeners are left on it. Rejects on any other answer.
 */
export function connectThrough(proxyPort, authority, auth) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(proxyPort, '127.0.0.1')
    let buf = Buffer.alloc(0)
    let done = false
    const finish = (err) => {
      if (done) return
      done = true
      socket.off('data', onData)
      socket.off('error', finish)
      socket.off('end', onEnd)
      if (err) {
        socket.destroy()
        reject(err)
      } else {
        resolve(socket)
      }
    }
    const onEnd = () => finish(new Error(`CONNECT ${authority}: connection ended before an answer`))
    const onData = (d) => {
      buf = Buffer.concat([buf, d])
      const i = buf.indexOf('\r\n\r\n')
      if (i < 0) return
      const head = buf.subarray(0, i).toString('latin1')
      const rest = buf.subarray(i + 4)
      if (!/^HTTP\/1\.[01] 200/.test(head)) return finish(new Error(`CONNECT ${authority} failed: ${head.split('\r\n')[0]}`))
      if (rest.length) socket.unshift(rest)
      finish()
    }
    socket.on('data', onData)
    socket.on('error', finish)
    socket.on('end', onEnd)
    socket.on('connect', () => {
      socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\nProxy-Authorization: ${auth}\r\n\r\n`)
    })
  })
}

/**
 * An http.Agent whose connections are CONNECT tunnels through the proxy, so
 * that a client (http, ws) speaks plain HTTP to `host:port` inside the tunnel.
 */
export class TunnelAgent extends http.Agent {
  constructor({ proxyPort, auth }) {
    super({ keepAlive: false })
    this.proxyPort = proxyPort
    this.auth = auth
  }

  createConnection(options, callback) {
    const host = options.host.includes(':') ? `[${options.host}]` : options.host
    connectThrough(this.proxyPort, `${host}:${options.port}`, this.auth).then(
      (socket) => callback(null, socket),
      (err) => callback(err),
    )
    return undefined
  }
}

// ---------------------------------------------------------------------------
// WebSocket frames (RFC 6455), for raw-socket tests

export const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

export function wsAccept(key) {
  return crypto.createHash('sha1').update(key + WS_GUID).digest('base64')
}

export function wsKey() {
  return crypto.randomBytes(16).toString('base64')
}

/** Encodes one frame; client frames are masked. */
export function encodeFrame(opcode, payload = Buffer.alloc(0), { mask = true, fin = true } = {}) {
  payload = Buffer.from(payload)
  const len = payload.length
  let header
  if (len < 126) {
    header = Buffer.alloc(2)
    header[1] = len
  } else if (len < 65536) {
    header = Buffer.alloc(4)
    header[1] = 126
    header.writeUInt16BE(len, 2)
  } else {
    header = Buffer.alloc(10)
    header[1] = 127
    header.writeBigUInt64BE(BigInt(len), 2)
  }
  header[0] = (fin ? 0x80 : 0) | opcode
  if (!mask) return Buffer.concat([header, payload])
  header[1] |= 0x80
  const key = crypto.randomBytes(4)
  const masked = Buffer.alloc(len)
  for (let i = 0; i < len; i++) masked[i] = payload[i] ^ key[i % 4]
  return Buffer.concat([header, key, masked])
}

export function closeFrame(code = 1000, reason = '', opts) {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason))
  payload.writeUInt16BE(code, 0)
  payload.write(reason, 2)
  return encodeFrame(0x8, payload, opts)
}

/** Reads one frame from a Conn: { fin, opcode, masked, payload }. */
export async function readFrame(conn, timeout) {
  const h = await conn.readBytes(2, timeout)
  const fin = (h[0] & 0x80) !== 0
  const opcode = h[0] & 0x0f
  const masked = (h[1] & 0x80) !== 0
  let len = h[1] & 0x7f
  if (len === 126) len = (await conn.readBytes(2, timeout)).readUInt16BE(0)
  else if (len === 127) len = Number((await conn.readBytes(8, timeout)).readBigUInt64BE(0))
  const key = masked ? await conn.readBytes(4, timeout) : null
  const payload = Buffer.from(await conn.readBytes(len, timeout))
  if (key) for (let i = 0; i < len; i++) payload[i] ^= key[i % 4]
  return { fin, opcode, masked, payload }
}

/** The head of a WebSocket handshake through the proxy, absolute-form. */
export function wsUpgradeRequest(url, { auth, key, extraHeaders = [] } = {}) {
  const u = new URL(url)
  const headers = [
    ['Host', u.host],
    ['Upgrade', 'websocket'],
    ['Connection', 'Upgrade'],
    ['Sec-WebSocket-Key', key],
    ['Sec-WebSocket-Version', '13'],
    ...extraHeaders,
  ]
  if (auth) headers.push(['Proxy-Authorization', auth])
  return buildRequest('GET', url, headers)
}

// ---------------------------------------------------------------------------
// Streaming payloads

/** A deterministic byte stream of `total` bytes in `chunkSize` pieces; chunk i starts with its index. */
export function* patternChunks(total, chunkSize = 1 << 20) {
  const base = Buffer.alloc(chunkSize)
  for (let i = 0; i < chunkSize; i++) base[i] = (i * 31 + 7) & 0xff
  let sent = 0
  let index = 0
  while (sent < total) {
    const n = Math.min(chunkSize, total - sent)
    const chunk = Buffer.from(base.subarray(0, n))
    if (n >= 4) chunk.writeUInt32BE(index, 0)
    sent += n
    index++
    yield chunk
  }
}

export function patternDigest(total, chunkSize) {
  const hash = crypto.createHash('sha1')
  for (const c of patternChunks(total, chunkSize)) hash.update(c)
  return hash.digest('hex')
}
