// The client side of the proxy's HTTP/1.1 for the tests, the bench and the
// scripts: Basic credentials, a raw socket with awaitable reads (Conn), request
// heads written byte for byte, CONNECT tunnels, and Node's http client through
// the proxy.

import http from 'node:http'
import net from 'node:net'

export function basicAuth(username, password) {
  return 'Basic ' + Buffer.from(`${username}:${password}`).toString('base64')
}

export function authOf(ctx) {
  return basicAuth(ctx.username, ctx.password)
}

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

  /** Resolves at the next data, end, close or error on the socket, or after `ms`. */
  _nextEvent(ms) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms)
      this.waiters.push(() => {
        clearTimeout(t)
        resolve()
      })
    })
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
      await this._nextEvent(left)
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
      await this._nextEvent(Math.max(1, deadline - Date.now()))
    }
    return this.take(this.buf.length)
  }

  /** Resolves when the socket has closed; rejects after `timeout`. */
  async waitClosed(timeout = 2000) {
    const deadline = Date.now() + timeout
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error(`socket not closed within ${timeout} ms`)
      await this._nextEvent(Math.max(1, deadline - Date.now()))
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

/** The whole of a response of Node's http client: { status, headers, rawHeaders, body, text }. */
export function readResponseBody(res) {
  return new Promise((resolve, reject) => {
    const chunks = []
    res.on('data', (c) => chunks.push(c))
    res.on('error', reject)
    res.on('end', () => {
      const body = Buffer.concat(chunks)
      resolve({ status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, body, text: body.toString('utf8') })
    })
  })
}

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
    }, (res) => readResponseBody(res).then((read) => resolve({ ...read, socket: req.socket }), reject))
    req.on('error', reject)
    if (body !== undefined) req.end(body)
    else req.end()
  })
}

/**
 * GET `target` on an open keep-alive Conn, without reading the answer:
 * absolute-form (Host from the URL) or origin-form (Host `host`, by default
 * localhost:3000); `auth` adds Proxy-Authorization after `headers`.
 */
export function sendGet(conn, target, { auth, host, headers = [] } = {}) {
  const list = [['Host', host ?? (target.startsWith('/') ? 'localhost:3000' : new URL(target).host)], ...headers]
  if (auth) list.push(['Proxy-Authorization', auth])
  conn.write(buildRequest('GET', target, list))
}

/** sendGet, then the response; a JSON body is parsed into `json`. */
export async function getOn(conn, target, options) {
  sendGet(conn, target, options)
  const res = await conn.readResponse()
  res.json = /json/.test(res.headers['content-type'] ?? '') ? JSON.parse(res.text) : undefined
  return res
}

/**
 * Sends CONNECT `authority` on an open socket (plain or TLS) to the proxy and
 * resolves the same socket once the proxy answered 200, with the bytes after
 * the head unshifted back and no listener of its own left on it. Rejects
 * otherwise; an answer other than 200 sets the Error's `status` and `head`.
 */
export function connectOver(socket, authority, auth, { extraHeaders = [] } = {}) {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0)
    const cleanup = () => {
      socket.off('data', onData)
      socket.off('error', onError)
      socket.off('end', onEnd)
    }
    const onError = (e) => {
      cleanup()
      reject(e)
    }
    const onEnd = () => {
      cleanup()
      reject(new Error(`CONNECT ${authority}: connection ended before an answer`))
    }
    const onData = (d) => {
      buf = Buffer.concat([buf, d])
      const i = buf.indexOf('\r\n\r\n')
      if (i < 0) return
      cleanup()
      const head = buf.subarray(0, i).toString('latin1')
      const rest = buf.subarray(i + 4)
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1])
      if (status !== 200) {
        const err = new Error(`CONNECT ${authority} failed: ${head.split('\r\n')[0]}`)
        err.status = status
        err.head = head
        return reject(err)
      }
      if (rest.length) socket.unshift(rest)
      resolve(socket)
    }
    socket.on('data', onData)
    socket.on('error', onError)
    socket.on('end', onEnd)
    let head = `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n`
    if (auth) head += `Proxy-Authorization: ${auth}\r\n`
    for (const [k, v] of extraHeaders) head += `${k}: ${v}\r\n`
    socket.write(head + '\r\n')
  })
}

/** A new connection to the proxy on which CONNECT `authority` was answered 200 (see connectOver); destroyed otherwise. */
export async function connectTunnel(proxyPort, authority, auth, options) {
  const socket = net.connect(proxyPort, '127.0.0.1')
  try {
    return await connectOver(socket, authority, auth, options)
  } catch (e) {
    socket.destroy()
    throw e
  }
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
    connectTunnel(this.proxyPort, `${host}:${options.port}`, this.auth).then(
      (socket) => callback(null, socket),
      (err) => callback(err),
    )
    return undefined
  }
}
