// Correctness under real faults: stale pooled connections, HTTP/2 cookie
// fields, timeouts through a cmux-proxy origin, names that resolve to the
// user's own machine, a ProxyServer dropped without stop(), the connection
// cap, idle HTTP/2 sessions, the listen backlog and a log nobody reads.

import { spawn } from 'node:child_process'
import http2 from 'node:http2'
import net from 'node:net'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ADDON_PATH, ProxyServer } from '../support/addon.mjs'
import { authOf, buildRequest, Conn, getOn, openTunnel, proxyRequest } from '../support/http-client.mjs'
import { portState } from '../support/ports.mjs'
import { startProxyProcess } from '../support/proxy-process.mjs'
import { listen } from '../support/servers.mjs'
import { sleep, waitFor, withTimeout } from '../support/wait.mjs'
import {
  closeSession, findLoopbackName, h2cGet, h2cSession, headerValues, keepAliveAgent, LineReader,
  listenBacklog, ROUTE, runPool, settled, startCountingHttpServer, startHeaderRecordingServer, startRawTcp,
  startStaleKeepAliveServer, tally,
} from './conduct-helpers.mjs'
import { remoteSettings, wsOverH2 } from './tls-helpers.mjs'

// ---------------------------------------------------------------------------

describe('a stale pooled HTTP/1.1 connection (the upstream drops it when a second request arrives)', () => {
  let stale, proxy, port, auth

  beforeAll(async () => {
    stale = await startStaleKeepAliveServer()
    proxy = await ProxyServer.start('127.0.0.1:0', false, { resolve: { 'stale.test:80': `127.0.0.1:${stale.port}` } })
    port = proxy.port()
    auth = authOf(proxy.createContext(1))
  })

  afterAll(async () => {
    await proxy?.stop()
    await stale?.close()
  })

  /** `count` requests one after the other, 50 ms apart so that each connection is back in the pool. */
  async function oneAfterAnother(method, tag, count = 5) {
    const results = []
    for (let i = 0; i < count; i++) {
      results.push(await settled(proxyRequest(port, `http://stale.test/${tag}/${i}`, { method, auth })))
      await sleep(50)
    }
    return results
  }

  /** Leaves in the proxy's pool a connection the upstream answered once: GETs until one gets 200. */
  async function poolOneAnsweredConnection() {
    for (let i = 0; i < 3; i++) {
      const res = await settled(proxyRequest(port, `http://stale.test/warm/${i}`, { auth }))
      await sleep(50)
      if (res.status === 200) return
    }
    throw new Error('no GET to the upstream was answered 200 in 3 tries')
  }

  test.each(['GET', 'HEAD', 'PUT', 'DELETE'])('5 sequential %s requests without a body are all answered 200, never 502', async (method) => {
    const tag = `seq-${method.toLowerCase()}`
    const results = await oneAfterAnother(method, tag)
    expect(results.map((r) => r.status ?? r.error)).toEqual([200, 200, 200, 200, 200])
    if (method !== 'HEAD') {
      expect(results.map((r) => r.text)).toEqual(results.map((_, i) => `answered ${method} /${tag}/${i}`))
    }
    // Each request was answered once by the upstream (on a fresh connection when the pooled one was stale).
    const answered = stale.seen.filter((s) => s.path.startsWith(`/${tag}/`) && s.index === 0).map((s) => s.path)
    expect(answered).toEqual(results.map((_, i) => `/${tag}/${i}`))
  })

  test('a POST that meets the stale connection reaches the upstream at most once and gets 502 (never replayed)', async () => {
    await poolOneAnsweredConnection()
    const post = await settled(proxyRequest(port, 'http://stale.test/post', {
      method: 'POST',
      auth,
      headers: { 'content-type': 'text/plain' },
      body: 'not-idempotent',
    }))
    await sleep(200)
    const posts = stale.seen.filter((s) => s.method === 'POST')
    expect(posts.length, 'times the POST reached the upstream').toBeLessThanOrEqual(1)
    expect(post.status ?? post.error).toBe(502)
  })
})

// ---------------------------------------------------------------------------

describe('cookies from an HTTP/2 client', () => {
  const COOKIES = ['a=1', 'b=2', 'c=3']
  let recorder, proxy, auth, session

  beforeAll(async () => {
    recorder = await startHeaderRecordingServer()
    proxy = await ProxyServer.start('127.0.0.1:0', true)
    auth = authOf(proxy.createContext(1))
    session = h2cSession(proxy.port())
    await withTimeout(remoteSettings(session), 5000, "the proxy's SETTINGS")
  })

  afterAll(async () => {
    await closeSession(session)
    await proxy?.stop()
    await recorder?.close()
  })

  test('precondition: Node sends a cookie array as three separate HTTP/2 header fields', async () => {
    const server = http2.createServer()
    const fields = new Promise((resolve) => {
      server.on('stream', (stream, headers, flags, rawHeaders) => {
        resolve(rawHeaders.filter((_, i) => i % 2 === 0 && rawHeaders[i] === 'cookie').length)
        stream.respond({ ':status': 204 })
        stream.end()
      })
    })
    const port = await listen(server)
    const client = http2.connect(`http://127.0.0.1:${port}`)
    client.on('error', () => {})
    try {
      const res = await h2cGet(client, `127.0.0.1:${port}`, '/', undefined, { cookie: COOKIES })
      expect(res.status).toBe(204)
      expect(await withTimeout(fields, 5000, 'the control server reading the cookies')).toBe(3)
    } finally {
      client.destroy()
      server.close()
    }
  })

  test('three cookie fields reach an HTTP/1.1 upstream as exactly one line "Cookie: a=1; b=2; c=3"', async () => {
    const res = await h2cGet(session, `127.0.0.1:${recorder.port}`, '/cookies', auth, { cookie: COOKIES })
    expect(res.status).toBe(200)
    expect(res.text).toBe('recorded')
    const seen = recorder.requests.find((r) => r.path === '/cookies')
    expect(headerValues(seen.headerLines, 'cookie')).toEqual(['a=1; b=2; c=3'])
  })

  test('an RFC 8441 WebSocket with three cookie fields: the upstream handshake has exactly one joined Cookie line', async () => {
    expect(session.remoteSettings.enableConnectProtocol).toBe(true)
    const head = wsOverH2(`127.0.0.1:${recorder.port}`, '/ws-cookies', { 'proxy-authorization': auth, cookie: COOKIES })
    const stream = session.request(head, { endStream: false })
    stream.on('error', () => {})
    try {
      const headers = await withTimeout(new Promise((resolve, reject) => {
        stream.once('response', resolve)
        stream.once('close', () => reject(new Error(`stream closed without a response (code ${stream.rstCode})`)))
      }), 10000, 'the extended CONNECT answer')
      expect(headers[':status']).toBe(200)
      const seen = recorder.requests.find((r) => r.path === '/ws-cookies')
      expect(seen, 'the upstream received the WebSocket handshake').toBeDefined()
      expect(headerValues(seen.headerLines, 'upgrade')).toEqual(['websocket'])
      expect(headerValues(seen.headerLines, 'cookie')).toEqual(['a=1; b=2; c=3'])
    } finally {
      stream.close()
    }
  })
})

// ---------------------------------------------------------------------------

describe('a cmux-proxy origin whose TLS handshake never completes (tlsInterception: false)', () => {
  let silent, proxy, port, auth

  beforeAll(async () => {
    // Accepts TCP and never writes a byte.
    silent = await startRawTcp(() => {})
    proxy = await ProxyServer.start('127.0.0.1:0', false, {
      tlsInterception: false,
      upstreamConnectTimeoutMs: 300,
      resolve: { 'origin.test:443': `127.0.0.1:${silent.port}` },
    })
    port = proxy.port()
    auth = authOf(proxy.createContext(1, { ...ROUTE, cmuxProxyOrigin: 'https://origin.test' }))
  })

  afterAll(async () => {
    await proxy?.stop()
    await silent?.close()
  })

  test('CONNECT localhost:3000 answers 504 Gateway Timeout', async () => {
    const { conn, res } = await openTunnel(port, 'localhost:3000', auth)
    conn.destroy()
    expect(res.status).toBe(504)
  })

  test('GET http://localhost:3000/ answers 504 Gateway Timeout', async () => {
    const res = await proxyRequest(port, 'http://localhost:3000/', { auth })
    expect(res.status).toBe(504)
  })
})

// ---------------------------------------------------------------------------

describe("a routed preview cannot reach the user's machine through a name that resolves to loopback", () => {
  let loopback, server, proxy, port, routedAuth, routeLessAuth

  beforeAll(async () => {
    loopback = await findLoopbackName()
    server = await startCountingHttpServer(loopback.address)
    const address = net.isIPv6(loopback.address) ? `[${loopback.address}]` : loopback.address
    proxy = await ProxyServer.start('127.0.0.1:0', false, {
      resolve: { [`trusted.test:${server.port}`]: `${address}:${server.port}` },
    })
    port = proxy.port()
    routedAuth = authOf(proxy.createContext(1, ROUTE))
    routeLessAuth = authOf(proxy.createContext(9))
  })

  afterAll(async () => {
    await proxy?.stop()
    await server?.close()
  })

  test('routed context: GET http://<name>:P/ answers 403 with a one-line body and never reaches the server', async () => {
    const before = { ...server.stats }
    const res = await proxyRequest(port, `http://${loopback.name}:${server.port}/private`, { auth: routedAuth })
    expect(res.status, `GET via ${loopback.name} (${loopback.address})`).toBe(403)
    const body = res.text.trim()
    expect(body.length).toBeGreaterThan(0)
    expect(body).not.toContain('\n')
    expect(server.stats.connections).toBe(before.connections)
    expect(server.stats.requests).toBe(before.requests)
  })

  test('routed context: CONNECT <name>:P answers 403 and never reaches the server', async () => {
    const before = server.stats.connections
    const { conn, res } = await openTunnel(port, `${loopback.name}:${server.port}`, routedAuth)
    conn.destroy()
    expect(res.status, `CONNECT ${loopback.name} (${loopback.address})`).toBe(403)
    expect(server.stats.connections).toBe(before)
  })

  test('route-less context: GET http://<name>:P/ is forwarded (200)', async () => {
    const res = await proxyRequest(port, `http://${loopback.name}:${server.port}/own-machine`, { auth: routeLessAuth })
    expect(res.status).toBe(200)
    expect(res.text).toBe('hello /own-machine')
  })

  test('routed context: a name the app mapped with the resolve option stays trusted (200)', async () => {
    const res = await proxyRequest(port, `http://trusted.test:${server.port}/trusted`, { auth: routedAuth })
    expect(res.status).toBe(200)
    expect(res.text).toBe('hello /trusted')
  })
})

// ---------------------------------------------------------------------------

/** Starts a proxy, prints its port, and on "drop" forgets it and runs the GC for 5 s; lives until stdin closes. */
const GC_CHILD = `
const { ProxyServer } = require(process.env.CMUX_TEST_ADDON)
const lines = require('node:readline').createInterface({ input: process.stdin })
const nextLine = () => new Promise((resolve) => lines.once('line', resolve))
lines.on('close', () => process.exit(0))
;(async () => {
  let proxy = await ProxyServer.start('127.0.0.1:0', false)
  console.log(JSON.stringify({ port: proxy.port() }))
  await nextLine()
  proxy = null
  const until = Date.now() + 5000
  while (Date.now() < until) {
    global.gc()
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
})()
`

describe('a ProxyServer dropped without stop()', () => {
  test('is stopped once garbage-collected: its port refuses connections while the process lives on', async () => {
    const child = spawn(process.execPath, ['--expose-gc', '-e', GC_CHILD], {
      env: { ...process.env, CMUX_TEST_ADDON: ADDON_PATH },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stderr = ''
    child.stderr.on('data', (d) => (stderr += d))
    const exited = new Promise((resolve) => child.once('exit', resolve))
    try {
      const stdout = new LineReader(child.stdout)
      const { port } = JSON.parse(await stdout.next(5000, 'the child printing its proxy port'))
      expect(await portState(port), 'the port accepted connections before the drop').toBe('open')
      child.stdin.write('drop\n')
      await waitFor(async () => (await portState(port)) === 'ECONNREFUSED', {
        timeout: 8000,
        interval: 100,
        message: `port ${port} still accepts connections after the ProxyServer was dropped and collected${stderr ? `; child stderr: ${stderr}` : ''}`,
      })
      expect(child.exitCode, 'the child process is still alive').toBeNull()
    } finally {
      child.stdin.end()
      await withTimeout(exited, 5000, 'the GC child exiting').catch(() => child.kill('SIGKILL'))
    }
  })
})

// ---------------------------------------------------------------------------

describe('over the connection cap (maxConnections: 1)', () => {
  let proxy, port, auth, upstream

  beforeAll(async () => {
    upstream = await startCountingHttpServer()
    proxy = await ProxyServer.start('127.0.0.1:0', false, { maxConnections: 1 })
    port = proxy.port()
    auth = authOf(proxy.createContext(1))
  })

  afterAll(async () => {
    await proxy?.stop()
    await upstream?.close()
  })

  /** One client over the cap: connects, sends `request` at once, reads what comes back. */
  async function refusedClient(request) {
    const conn = new Conn(net.connect(port, '127.0.0.1'))
    conn.write(request)
    try {
      const res = await conn.readResponse({ timeout: 5000 })
      await conn.waitClosed(3000).catch(() => {})
      // Every byte up to the close: a body longer than its Content-Length shows as bytes left over.
      const complete = res.body.length > 0 && res.body.length === Number(res.headers['content-length']) && conn.buf.length === 0
      return { status: res.status, complete, error: conn.error?.code ?? null }
    } catch (e) {
      return { status: null, complete: false, error: conn.error?.code ?? e.message.slice(0, 80) }
    } finally {
      conn.destroy()
    }
  }

  test('20 clients that send a whole request at once each read a complete 503 with its body, without ECONNRESET', async () => {
    const holder = await Conn.connect(port)
    try {
      const held = await getOn(holder, `http://127.0.0.1:${upstream.port}/held`, { auth })
      expect(held.status).toBe(200)
      const request = buildRequest('GET', 'http://x/', [
        ['Host', 'x'],
        ['Proxy-Authorization', auth],
        ...Array.from({ length: 4 }, (_, i) => [`X-Pad-${i}`, 'p'.repeat(1024)]),
      ])
      const outcomes = await Promise.all(Array.from({ length: 20 }, () => refusedClient(request)))
      expect(outcomes).toEqual(Array.from({ length: 20 }, () => ({ status: 503, complete: true, error: null })))
    } finally {
      holder.destroy()
    }
  })

  test('a client still sending its request body when refused reads the 503 without a reset', async () => {
    // Closing with the request unread resets the connection; a client that is still
    // writing then fails with EPIPE/ECONNRESET before it ever reads the answer.
    // The previous test's connections must have left their place under the cap.
    await waitFor(() => proxy.stats().activeConnections === 0, { message: 'earlier connections to close' })
    const holder = await Conn.connect(port)
    try {
      expect((await getOn(holder, `http://127.0.0.1:${upstream.port}/held`, { auth })).status).toBe(200)
      const socket = net.connect(port, '127.0.0.1')
      socket.pause()
      const errors = []
      socket.on('error', (e) => errors.push(e.code))
      const closed = new Promise((resolve) => socket.once('close', resolve))
      await new Promise((resolve) => socket.once('connect', resolve))
      const chunk = 'b'.repeat(8192)
      socket.write(`POST http://x/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${auth}\r\nContent-Length: ${4 * chunk.length}\r\n\r\n`)
      for (let i = 0; i < 4; i++) {
        await sleep(60)
        if (!socket.destroyed) socket.write(chunk)
      }
      await sleep(60)
      let received = ''
      socket.setEncoding('latin1')
      socket.on('data', (data) => (received += data))
      socket.resume()
      await withTimeout(closed, 5000, 'the refused connection to close')
      expect({ errors, head: received.split('\r\n')[0] }).toEqual({ errors: [], head: 'HTTP/1.1 503 Service Unavailable' })
    } finally {
      holder.destroy()
    }
  })
})

// ---------------------------------------------------------------------------

describe('HTTP/2 idle timeout (http2IdleTimeoutMs: 500)', () => {
  const IDLE = 500
  let proxy, port, auth, upstream
  const sessions = []

  beforeAll(async () => {
    upstream = await startCountingHttpServer('127.0.0.1', (req, res) => {
      if (req.url !== '/slow') return res.end(`hello ${req.url}`)
      // 20 KiB over 2 s.
      let n = 0
      const timer = setInterval(() => {
        res.write(Buffer.alloc(1024, 0x62))
        if (++n === 20) {
          clearInterval(timer)
          res.end()
        }
      }, 100)
      res.on('close', () => clearInterval(timer))
    })
    proxy = await ProxyServer.start('127.0.0.1:0', true, { http2IdleTimeoutMs: IDLE })
    port = proxy.port()
    auth = authOf(proxy.createContext(1))
  })

  afterAll(async () => {
    for (const s of sessions) s.destroy()
    await proxy?.stop()
    await upstream?.close()
  })

  function watchedSession() {
    const session = h2cSession(port)
    sessions.push(session)
    const seen = { goaway: false, closed: false }
    session.on('goaway', () => (seen.goaway = true))
    session.on('close', () => (seen.closed = true))
    return { session, seen }
  }

  test('a session idle after one request receives GOAWAY and is closed; activeConnections returns to 0', async () => {
    const { session, seen } = watchedSession()
    const res = await h2cGet(session, `127.0.0.1:${upstream.port}`, '/once', auth)
    expect(res.status).toBe(200)
    await waitFor(() => seen.goaway && seen.closed, {
      timeout: IDLE * 10,
      message: `the idle session was not closed by the proxy (goaway: ${seen.goaway}, closed: ${seen.closed})`,
    })
    await waitFor(() => proxy.stats().activeConnections === 0, {
      timeout: 3000,
      message: `stats().activeConnections is ${proxy.stats().activeConnections}, expected 0`,
    })
  })

  test('a session whose stream streams for 2 s is not closed meanwhile, and serves the next request', async () => {
    const { session, seen } = watchedSession()
    const res = await withTimeout(h2cGet(session, `127.0.0.1:${upstream.port}`, '/slow', auth), 10000, 'the slow response')
    expect(res.status).toBe(200)
    expect(res.body.length).toBe(20 * 1024)
    expect(seen).toEqual({ goaway: false, closed: false })
    const next = await h2cGet(session, `127.0.0.1:${upstream.port}`, '/after-slow', auth)
    expect(next.status).toBe(200)
  })
})

// ---------------------------------------------------------------------------

describe('the listen backlog', () => {
  let proxy, port, auth, upstream

  beforeAll(async () => {
    upstream = await startCountingHttpServer()
    proxy = await ProxyServer.start('127.0.0.1:0', false)
    port = proxy.port()
    auth = authOf(proxy.createContext(1))
  })

  afterAll(async () => {
    await proxy?.stop()
    await upstream?.close()
  })

  test('ss reports a backlog (Send-Q) of at least 511 on the proxy port', async () => {
    expect(await listenBacklog(port)).toBeGreaterThanOrEqual(511)
  })

  test('600 clients connecting at once, one request each, are all answered 200', async () => {
    const results = await withTimeout(
      Promise.all(Array.from({ length: 600 }, (_, i) =>
        settled(proxyRequest(port, `http://127.0.0.1:${upstream.port}/c/${i}`, { auth })))),
      25000,
      '600 simultaneous clients',
    )
    const summary = tally(results, (i) => `hello /c/${i}`)
    expect(summary.bad, JSON.stringify(summary)).toBe(0)
  })
})

// ---------------------------------------------------------------------------

describe('logging to a stderr pipe nobody reads', () => {
  let upstream, proxyProcess, agent

  beforeAll(async () => {
    upstream = await startCountingHttpServer()
    proxyProcess = await startProxyProcess({
      logging: true,
      resolve: { 'origin.test:80': `127.0.0.1:${upstream.port}` },
    })
  })

  afterAll(async () => {
    agent?.destroy()
    await proxyProcess?.stop()
    await upstream?.close()
  })

  test('3000 proxied requests all complete (route-less, and rewritten ones that each log a line)', async () => {
    const routeLess = proxyProcess.call('createContext', 1)
    const routed = proxyProcess.call('createContext', 2, { ...ROUTE, cmuxProxyOrigin: 'http://origin.test' })
    const [plainAuth, routedAuth] = (await Promise.all([routeLess, routed])).map(authOf)
    agent = keepAliveAgent(32)
    const url = (i) => (i % 2 ? `http://localhost:3000/routed/${i}` : `http://127.0.0.1:${upstream.port}/plain/${i}`)
    const results = await withTimeout(
      runPool(3000, 32, (i) => settled(proxyRequest(proxyProcess.port, url(i), { auth: i % 2 ? routedAuth : plainAuth, agent }))),
      20000,
      '3000 requests through a proxy logging to an unread pipe',
    )
    const summary = tally(results, (i) => `hello ${new URL(url(i)).pathname}`)
    expect(summary.bad, JSON.stringify(summary)).toBe(0)
    // The log really was on: it went to the pipe this test never drained.
    expect(String(proxyProcess.child.stderr.read() ?? '')).toContain('[cmux-preview-proxy]')
  })
})
