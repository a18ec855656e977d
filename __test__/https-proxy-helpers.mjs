// Helpers for the HTTPS proxy mode tests: clients that speak TLS to the
// proxy's listener (HTTP/1.1 or HTTP/2 by ALPN), CONNECT over those
// connections, a first-flight ClientHello to cut in half, and for the browser
// tests: proxy login answered through CDP and a generated module waterfall.

import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import tls from 'node:tls'
import { closer, listen, trackSockets, waitFor, withTimeout } from './helpers.mjs'
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

/**
 * Sends CONNECT `authority` on an open socket (plain or TLS) to the proxy and
 * resolves the same socket once it answered 200 (extra bytes unshifted);
 * rejects with the status line otherwise.
 */
export function connectOn(socket, authority, auth) {
  return withTimeout(new Promise((resolve, reject) => {
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
      reject(new Error(`CONNECT ${authority}: the proxy closed before answering`))
    }
    const onData = (d) => {
      buf = Buffer.concat([buf, d])
      const i = buf.indexOf('\r\n\r\n')
      if (i < 0) return
      cleanup()
      const head = buf.subarray(0, i).toString('latin1')
      const rest = buf.subarray(i + 4)
      if (!/^HTTP\/1\.1 200/.test(head)) return reject(new Error(`CONNECT ${authority} failed: ${head.split('\r\n')[0]}`))
      if (rest.length) socket.unshift(rest)
      resolve(socket)
    }
    socket.on('data', onData)
    socket.on('error', onError)
    socket.on('end', onEnd)
    let head = `CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n`
    if (auth) head += `Proxy-Authorization: ${auth}\r\n`
    socket.write(head + '\r\n')
  }), 10000, `CONNECT ${authority}`)
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

/**
 * The bytes of a real first-flight ClientHello from Node's TLS client
 * (captured by a local TCP server that never answers).
 */
export async function captureClientHello(opts = {}) {
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
// Browser side

/**
 * Answers the proxy's 407 for `page` through CDP (the Electron app's
 * app.on('login')): Fetch.enable with handleAuthRequests for `patterns`;
 * every paused request continues unchanged. Returns a record of the
 * challenges answered.
 */
export async function answerProxyAuth(page, credentials, patterns = [{ urlPattern: '*' }]) {
  const cdp = await page.context().newCDPSession(page)
  const record = { challenges: [], paused: 0, errors: [] }
  const answered = new Set()
  cdp.on('Fetch.authRequired', ({ requestId, request, authChallenge }) => {
    // The same request challenged again: the credentials were refused; give up (as Electron's login does).
    const retry = answered.has(requestId)
    answered.add(requestId)
    record.challenges.push({ url: request.url, source: authChallenge.source, scheme: authChallenge.scheme, realm: authChallenge.realm, retry })
    const response = authChallenge.source === 'Proxy' && !retry
      ? { response: 'ProvideCredentials', username: credentials.username, password: credentials.password }
      : { response: 'CancelAuth' }
    cdp.send('Fetch.continueWithAuth', { requestId, authChallengeResponse: response })
      .catch((e) => record.errors.push(`continueWithAuth: ${e.message}`))
  })
  cdp.on('Fetch.requestPaused', ({ requestId }) => {
    record.paused++
    cdp.send('Fetch.continueRequest', { requestId }).catch((e) => record.errors.push(`continueRequest: ${e.message}`))
  })
  await cdp.send('Fetch.enable', { handleAuthRequests: true, patterns })
  record.cdp = cdp
  return record
}

// A module waterfall: the page imports LEVEL1 modules, each of which imports
// its share of LEVEL2, each of those its share of LEVEL3 (every module is
// reached by exactly one import, so the page needs all three round trips).
export const TREE = { level1: 10, level2: 50, level3: 440 }
export const TREE_MODULES = TREE.level1 + TREE.level2 + TREE.level3

function treeModule(level, i) {
  const children = level === 1
    ? Array.from({ length: TREE.level2 }, (_, k) => k).filter((k) => k % TREE.level1 === i)
    : level === 2
      ? Array.from({ length: TREE.level3 }, (_, k) => k).filter((k) => k % TREE.level2 === i)
      : []
  const childLevel = level + 1
  const imports = children.map((k, n) => `import c${n} from '/tree/l${childLevel}/m${k}.js'`).join('\n')
  const sum = children.length ? children.map((_, n) => `c${n}`).join(' + ') : '0'
  // Each module's default export is how many modules its subtree holds (itself included).
  return `${imports}\nexport default 1 + ${sum}\n`
}

function treeHtml() {
  const imports = Array.from({ length: TREE.level1 }, (_, i) => `import m${i} from '/tree/l1/m${i}.js'`).join('\n')
  const sum = Array.from({ length: TREE.level1 }, (_, i) => `m${i}`).join(' + ')
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>module tree</title></head>
<body>
<p id="tree">tree: loading</p>
<script type="module">
${imports}
document.getElementById('tree').textContent = 'tree: ' + (${sum})
</script>
<script>
addEventListener('error', (e) => { document.getElementById('tree').textContent = 'tree: error ' + e.message }, true)
</script>
</body></html>
`
}

/**
 * Serves /tree/index.html and its ${TREE_MODULES} modules (no-store) for any
 * request handler; returns true when it answered.
 */
export function serveTree(req, res, seen) {
  const path = (req.url ?? '').split('?')[0]
  if (path === '/tree/index.html') {
    seen?.push(path)
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' })
    res.end(treeHtml())
    return true
  }
  const m = /^\/tree\/l([123])\/m(\d+)\.js$/.exec(path)
  if (m) {
    const level = Number(m[1])
    const i = Number(m[2])
    const count = [0, TREE.level1, TREE.level2, TREE.level3][level]
    if (i < count) {
      seen?.push(path)
      res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-store' })
      res.end(treeModule(level, i))
      return true
    }
  }
  return false
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
