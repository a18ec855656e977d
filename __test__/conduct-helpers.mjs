// Helpers for upstream-conduct.test.mjs (how the proxy behaves as an HTTP/2
// client of a dev box) and faults.test.mjs (correctness under real faults).
// Everything is a real socket on loopback; nothing is mocked.

import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import dns from 'node:dns/promises'
import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import os from 'node:os'
import { closer, listen, trackSockets } from '../support/servers.mjs'
import { waitFor, withTimeout } from '../support/wait.mjs'
import { FRAME, startH2TlsTerminator } from './h2-frames.mjs'
import { h2request } from './tls-helpers.mjs'

/** The route of the tests: `http://localhost:3000/x` becomes `https://cmux-m-base-3000.devbox.test/x`. */
export const ROUTE = { morphId: 'm', scope: 'base', domainSuffix: 'devbox.test' }
export const DEVBOX_HOST = 'cmux-m-base-3000.devbox.test'

// ---------------------------------------------------------------------------
// Running many requests

/** Runs `job(i)` for i in 0..count-1 with at most `concurrency` in flight; resolves the results in order. */
export async function runPool(count, concurrency, job) {
  const results = new Array(count)
  let next = 0
  const worker = async () => {
    while (next < count) {
      const i = next++
      results[i] = await job(i)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
  return results
}

/**
 * Summarises request outcomes ({ status, text } or { error }) against the
 * expected bodies: { bad: how many are not a 200 with the expected body, wrong: the first few, statuses: count per status }.
 */
export function tally(results, expectedText) {
  const statuses = {}
  const wrong = []
  let bad = 0
  results.forEach((r, i) => {
    const key = r.error ? `error:${r.error}` : String(r.status)
    statuses[key] = (statuses[key] ?? 0) + 1
    if (r.error || r.status !== 200 || r.text !== expectedText(i)) {
      bad++
      if (wrong.length < 5) wrong.push({ i, status: r.status, error: r.error, text: r.text?.slice(0, 120) })
    }
  })
  return { bad, wrong, statuses }
}

/** Never rejects: a failed request becomes { error: message } so that one failure does not hide the others. */
export function settled(promise) {
  return promise.then(
    (r) => ({ status: r.status, text: r.text }),
    (e) => ({ error: e.code ?? e.message }),
  )
}

/** A keep-alive client agent towards the proxy (the proxy's listener is the "origin" of every request). */
export function keepAliveAgent(maxSockets = 32) {
  return new http.Agent({ keepAlive: true, maxSockets })
}

/** An h2c session with prior knowledge to the proxy's listener. */
export function h2cSession(proxyPort) {
  const session = http2.connect(`http://127.0.0.1:${proxyPort}`)
  session.on('error', () => {})
  return session
}

/** A GET of `http://<authority><path>` as an h2c stream through the proxy. */
export function h2cGet(session, authority, path, auth, extra = {}) {
  return h2request(session, {
    ':method': 'GET',
    ':scheme': 'http',
    ':authority': authority,
    ':path': path,
    ...(auth ? { 'proxy-authorization': auth } : {}),
    ...extra,
  })
}

/** Closes an HTTP/2 client session, waiting (bounded) for it. */
export async function closeSession(session) {
  if (!session || session.destroyed) return
  await withTimeout(new Promise((resolve) => session.close(resolve)), 2000, 'h2 session close').catch(() => session.destroy())
}

// ---------------------------------------------------------------------------
// An HTTP/2 dev box that counts what the proxy does to it

/**
 * An HTTPS "dev box" speaking HTTP/2 (ALPN h2, http/1.1 offered too) that
 * counts what the proxy does to it (startH2TlsTerminator of h2-frames.mjs):
 * each TLS connection is decrypted here and its bytes are carried over
 * loopback TCP to a plaintext Node http2 (nghttp2) server, while a frame
 * reader watches the proxy's frames.
 *
 * Paths: `/m/...` answers `module <path>` with content-length; `/nolen/...`
 * the same without content-length; `/slow...` streams 1 MiB (16 KiB every 25 ms).
 * `goawayAfter: N`: after the Nth stream of a session, the server sends
 * GOAWAY (last processed stream) and closes the session once its streams are done.
 *
 * stats: { connections, resets, resetCodes, resetFrames: [{ connection, streamId, code }],
 *          goaways, requests, streams: [{ connection, streamId, path }], alpn: [], openConnections }
 */
export async function startCountingH2Upstream({ ca, names = [DEVBOX_HOST], goawayAfter } = {}) {
  const stats = {
    connections: 0,
    openConnections: 0,
    resets: 0,
    resetCodes: [],
    resetFrames: [],
    goaways: 0,
    requests: 0,
    streams: [],
    alpn: [],
    slowStreamsClosed: 0,
  }
  const slowTimers = new Set()

  // Node's compatibility API, as dev servers use it: `res.end(body)` sends the body in a DATA
  // frame and END_STREAM in an empty one after it.
  const onRequest = (req, res) => {
    const stream = req.stream
    const session = stream.session
    if (stream.id > (session.lastServedStreamId ?? Infinity)) return
    session.streamCount ??= 0
    const path = req.url
    stats.requests++
    stats.streams.push({ connection: session.connection, streamId: stream.id, path })
    if (path.startsWith('/slow')) {
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      const chunk = Buffer.alloc(16 * 1024, 0x61)
      let sent = 0
      const timer = setInterval(() => {
        if (stream.destroyed || stream.closed) return
        res.write(chunk)
        sent += chunk.length
        if (sent >= 1024 * 1024) {
          clearInterval(timer)
          slowTimers.delete(timer)
          res.end()
        }
      }, 25)
      slowTimers.add(timer)
      stream.on('close', () => {
        clearInterval(timer)
        slowTimers.delete(timer)
        stats.slowStreamsClosed++
      })
    } else if (path.startsWith('/nolen/')) {
      res.setHeader('content-type', 'text/javascript')
      res.end(`module ${path}`)
    } else {
      const body = Buffer.from(`module ${path}`)
      res.setHeader('content-type', 'text/javascript')
      res.setHeader('content-length', body.length)
      res.end(body)
    }
    session.streamCount++
    if (goawayAfter && session.streamCount === goawayAfter) goAway(session, stream.id)
  }

  // A graceful shutdown: GOAWAY naming the last stream served, then close once it is sent.
  // Not `session.close()` at once: Node 20 answers a stream that arrives between the GOAWAY's
  // submission and its sending with a re-entrant RST_STREAM that corrupts the heap
  // ("malloc(): mismatching next->prev_size"; oven-sh/bun#43475 describes the path). Streams
  // above the last one are left unanswered: nghttp2 closes them as refused when it sends GOAWAY.
  const goAway = (session, lastStreamId) => {
    session.lastServedStreamId = lastStreamId
    session.goaway(http2.constants.NGHTTP2_NO_ERROR, lastStreamId)
    setImmediate(() => session.close())
  }

  const box = await startH2TlsTerminator({
    ca,
    names,
    onTls: (socket) => {
      stats.connections++
      stats.openConnections++
      stats.alpn.push(socket.alpnProtocol)
      socket.on('close', () => stats.openConnections--)
    },
    onRequest,
    onClientFrame: (connection, { type, streamId, payload }) => {
      if (type === FRAME.RST_STREAM) {
        const code = payload.readUInt32BE(0)
        stats.resets++
        stats.resetCodes.push(code)
        stats.resetFrames.push({ connection, streamId, code })
      }
      if (type === FRAME.GOAWAY) stats.goaways++
    },
    onClose: () => {
      for (const t of slowTimers) clearInterval(t)
    },
  })
  const { port, sessions } = box

  return {
    port,
    stats,
    sessions,
    /** Ends every session from the server side (GOAWAY, then close) and waits until their TLS connections are gone. */
    async closeSessions() {
      for (const s of sessions) s.close()
      await waitFor(() => sessions.size === 0 && stats.openConnections === 0, {
        timeout: 5000,
        message: `the dev box's sessions did not close (${sessions.size} sessions, ${stats.openConnections} TLS connections open)`,
      })
    },
    close: box.close,
  }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 upstreams

/**
 * Splits the requests arriving on `socket` (head + Content-Length body) and
 * calls `onRequest({ method, path, headerLines, body, index })` for each;
 * `index` counts the requests on this socket from 0.
 */
export function readRequests(socket, onRequest) {
  let buf = Buffer.alloc(0)
  let index = 0
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d])
    for (;;) {
      const end = buf.indexOf('\r\n\r\n')
      if (end < 0) return
      const lines = buf.subarray(0, end).toString('latin1').split('\r\n')
      const [method, path] = lines[0].split(' ')
      const headerLines = lines.slice(1)
      const lengthLine = headerLines.find((l) => /^content-length:/i.test(l))
      const length = lengthLine ? Number(lengthLine.split(':')[1].trim()) : 0
      if (buf.length < end + 4 + length) return
      const body = buf.subarray(end + 4, end + 4 + length)
      buf = buf.subarray(end + 4 + length)
      onRequest({ method, path, headerLines, body: body.toString(), index: index++ })
      if (socket.destroyed) return
    }
  })
}

/**
 * A plain HTTP/1.1 server that promises keep-alive but drops a connection
 * when a second request arrives on it, without answering: the classic stale
 * pooled connection. `seen` lists every request head it received.
 */
export async function startStaleKeepAliveServer() {
  const seen = []
  const srv = await startRawTcp((socket) => {
    readRequests(socket, (req) => {
      seen.push({ method: req.method, path: req.path, index: req.index, body: req.body })
      if (req.index > 0) {
        socket.destroy()
        return
      }
      const body = `answered ${req.method} ${req.path}`
      socket.write(
        `HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n` +
          (req.method === 'HEAD' ? '' : body),
      )
    })
  })
  return { ...srv, seen }
}

/**
 * A plain HTTP/1.1 server that records the exact header lines of every
 * request, answers `200 recorded`, and completes WebSocket handshakes (101)
 * so that an upgrade can be inspected too.
 */
export async function startHeaderRecordingServer() {
  const requests = []
  const srv = await startRawTcp((socket) => {
    readRequests(socket, (req) => {
      requests.push(req)
      const key = req.headerLines.find((l) => /^sec-websocket-key:/i.test(l))
      if (key) {
        const accept = wsAcceptOf(key.slice(key.indexOf(':') + 1).trim())
        socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`)
        return
      }
      socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nrecorded')
    })
  })
  return { ...srv, requests }
}

function wsAcceptOf(key) {
  return crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64')
}

/** The lines of `headerLines` named `name` (case-insensitive), as [value, ...]. */
export function headerValues(headerLines, name) {
  const prefix = `${name.toLowerCase()}:`
  return headerLines.filter((l) => l.toLowerCase().startsWith(prefix)).map((l) => l.slice(prefix.length).trim())
}

/** A raw TCP server on `host`:0 with tracked sockets. */
export async function startRawTcp(onSocket, host = '127.0.0.1') {
  const server = net.createServer((socket) => {
    socket.on('error', () => {})
    onSocket(socket)
  })
  const sockets = trackSockets(server)
  const port = await listen(server, host)
  return { server, port, sockets, close: closer(server, sockets) }
}

/**
 * An HTTP server on `host`:0 that counts its TCP connections and requests
 * and answers `hello <url>` (or runs `handler`).
 */
export async function startCountingHttpServer(host = '127.0.0.1', handler) {
  const stats = { connections: 0, requests: 0, urls: [] }
  const server = http.createServer((req, res) => {
    stats.requests++
    stats.urls.push(req.url)
    if (handler) return handler(req, res)
    res.setHeader('content-type', 'text/plain')
    res.end(`hello ${req.url}`)
  })
  server.keepAliveTimeout = 30000
  server.on('connection', () => stats.connections++)
  const sockets = trackSockets(server)
  const port = await listen(server, host)
  return { server, port, stats, close: closer(server, sockets) }
}

// ---------------------------------------------------------------------------
// The machine

/** Whether an address is loopback (127/8 or ::1). */
export function isLoopbackAddress(address) {
  return address === '::1' || /^127\./.test(address) || /^::ffff:127\./.test(address)
}

/**
 * The first of os.hostname(), vm, runsc, ip6-localhost whose DNS answer is
 * loopback: a name that is not "localhost" yet reaches this machine.
 * Returns { name, address } or throws naming what was tried.
 */
export async function findLoopbackName() {
  const tried = []
  for (const name of [os.hostname(), 'vm', 'runsc', 'ip6-localhost']) {
    if (!name || name === 'localhost' || name.endsWith('.localhost') || net.isIP(name)) continue
    try {
      const addresses = await dns.lookup(name, { all: true })
      tried.push(`${name} -> ${addresses.map((a) => a.address).join(',')}`)
      const loopback = addresses.find((a) => isLoopbackAddress(a.address))
      if (loopback) return { name, address: loopback.address }
    } catch (e) {
      tried.push(`${name} -> ${e.code ?? e.message}`)
    }
  }
  throw new Error(`no host name resolving to loopback was found (tried: ${tried.join('; ')})`)
}

/** The listen backlog (Send-Q of a listening socket) `ss` reports for TCP port `port`. */
export async function listenBacklog(port) {
  const out = await runCommand('ss', ['-ltnH', `sport = :${port}`])
  const line = out.split('\n').find((l) => l.trim().startsWith('LISTEN'))
  if (!line) throw new Error(`ss shows no listening socket on port ${port}: ${JSON.stringify(out)}`)
  // State Recv-Q Send-Q Local:Port Peer:Port
  return Number(line.trim().split(/\s+/)[2])
}

function runCommand(command, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (err += d))
    child.on('error', reject)
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${command} exited ${code}: ${err}`))))
  })
}

/** Lines of a child's stdout, awaitable one by one (bounded). */
export class LineReader {
  constructor(stream) {
    this.lines = []
    let rest = ''
    stream.setEncoding('utf8')
    stream.on('data', (d) => {
      rest += d
      let i
      while ((i = rest.indexOf('\n')) >= 0) {
        this.lines.push(rest.slice(0, i))
        rest = rest.slice(i + 1)
      }
    })
  }

  async next(timeout = 10000, what = 'a line from the child') {
    await waitFor(() => this.lines.length > 0, { timeout, interval: 10, message: what })
    return this.lines.shift()
  }
}
