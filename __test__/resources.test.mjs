// Bounded resources in the app's main process (issue 18): unused upstream
// connections capped across origins, upstream connections (tunnels included)
// capped per context and in all, and connections that never authenticate
// closed after a while and capped on their own. Real servers on loopback.

import http from 'node:http'
import http2 from 'node:http2'
import { afterEach, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, Conn, openTunnel, proxyRequest } from '../support/http-client.mjs'
import { closer, listen, startEchoServer, trackSockets } from '../support/servers.mjs'
import { sleep, waitFor } from '../support/wait.mjs'
import { h2Connect } from './https-proxy-helpers.mjs'

const cleanup = []
afterEach(async () => {
  for (const close of cleanup.splice(0).reverse()) await close()
})

async function startProxy(options) {
  const proxy = await ProxyServer.start('127.0.0.1:0', true, { httpsProxy: false, ...options })
  cleanup.push(() => proxy.stop())
  return proxy
}

/** An HTTP/1.1 keep-alive server that counts its connections and knows which Host each open one served. */
async function startCountingServer() {
  const server = http.createServer((req, res) => {
    req.socket.servedHost = req.headers.host
    res.end('ok')
  })
  server.keepAliveTimeout = 120_000
  const sockets = trackSockets(server)
  let connections = 0
  server.on('connection', () => connections++)
  const port = await listen(server)
  cleanup.push(closer(server, sockets))
  return {
    port,
    open: () => sockets.size,
    connections: () => connections,
    hostsOpen: () => [...sockets].map((socket) => socket.servedHost).sort(),
  }
}

/** An echo server, a counting HTTP server named `host`, a proxy with `options`, and two route-less previews' auth. */
async function twoPreviews(options, host) {
  const echo = await startEchoServer()
  cleanup.push(() => echo.close())
  const server = await startCountingServer()
  const proxy = await startProxy({ ...options, resolve: { [`${host}:80`]: `127.0.0.1:${server.port}` } })
  return { echo, server, proxy, a: authOf(proxy.createContext(1, null)), b: authOf(proxy.createContext(2, null)) }
}

/** Sends `text` on a tunnel stream and resolves what came back once it is as long. */
function echoOver(stream, text) {
  return new Promise((resolve, reject) => {
    let got = ''
    stream.on('data', (d) => {
      got += d
      if (got.length >= text.length) resolve(got)
    })
    stream.once('error', reject)
    stream.write(text)
  })
}

describe('unused upstream connections are capped across origins', () => {
  test('300 origins touched once leave at most maxIdleUpstreamConnections (default 256) connections open', async () => {
    const server = await startCountingServer()
    const origins = Array.from({ length: 300 }, (_, i) => `origin-${i}.test:80`)
    const resolve = Object.fromEntries(origins.map((origin) => [origin, `127.0.0.1:${server.port}`]))
    const proxy = await startProxy({ resolve })
    const auth = authOf(proxy.createContext(1, null))
    for (const origin of origins) {
      const res = await proxyRequest(proxy.port(), `http://${origin}/`, { auth })
      expect(res.status).toBe(200)
    }
    await waitFor(() => server.open() <= 256, { timeout: 5000, message: `${server.open()} upstream sockets open` })
    expect(server.open()).toBeGreaterThanOrEqual(200) // kept for reuse, up to the cap
  })

  test('with maxIdleUpstreamConnections: 4, the least recently used close first and the newest are reused', async () => {
    const server = await startCountingServer()
    const origins = Array.from({ length: 8 }, (_, i) => `o${i}.test`)
    const proxy = await startProxy({ resolve: Object.fromEntries(origins.map((o) => [`${o}:80`, `127.0.0.1:${server.port}`])), maxIdleUpstreamConnections: 4 })
    const auth = authOf(proxy.createContext(1, null))
    for (const origin of origins) {
      const res = await proxyRequest(proxy.port(), `http://${origin}/`, { auth })
      expect(res.status).toBe(200)
    }
    expect(server.connections()).toBe(8)
    await waitFor(() => server.open() === 4, { timeout: 5000, message: `${server.open()} upstream sockets open` })
    expect(server.hostsOpen()).toEqual(['o4.test', 'o5.test', 'o6.test', 'o7.test'])
    // The newest origin's connection was kept: a request to it opens nothing new; the oldest's was not.
    expect((await proxyRequest(proxy.port(), `http://o7.test/`, { auth })).status).toBe(200)
    expect(server.connections()).toBe(8)
    expect((await proxyRequest(proxy.port(), `http://o0.test/`, { auth })).status).toBe(200)
    expect(server.connections()).toBe(9)
  })
})

describe('upstream connections are capped per context and in all', () => {
  test('past maxUpstreamConnectionsPerContext a CONNECT waits: a place freed meanwhile is taken, else 503 with a clear body; another context is not held back', async () => {
    const echo = await startEchoServer()
    cleanup.push(() => echo.close())
    const proxy = await startProxy({ maxUpstreamConnectionsPerContext: 3 })
    const a = authOf(proxy.createContext(1, null))
    const b = authOf(proxy.createContext(2, null))
    const held = []
    for (let i = 0; i < 3; i++) {
      const { conn, res } = await openTunnel(proxy.port(), `127.0.0.1:${echo.port}`, a)
      expect(res.status).toBe(200)
      held.push(conn)
    }
    // A 4th CONNECT waits for a place (upstreamSlotWait, 3 s) instead of failing at once: a place freed
    // while it waits is taken.
    const waiting = openTunnel(proxy.port(), `127.0.0.1:${echo.port}`, a)
    await sleep(1000)
    held.shift().destroy()
    const fourth = await waiting
    expect(fourth.res.status).toBe(200)
    held.push(fourth.conn)
    // No place frees: the 5th gets 503 with a clear body once the wait is over.
    const { conn: refused, res } = await openTunnel(proxy.port(), `127.0.0.1:${echo.port}`, a)
    refused.destroy()
    expect(res.status).toBe(503)
    expect(res.headers['x-cmux-proxy-error']).toBe('busy')
    expect(res.text).toMatch(/too many upstream connections open for this preview/)
    // Another context is not held back.
    const other = await openTunnel(proxy.port(), `127.0.0.1:${echo.port}`, b)
    expect(other.res.status).toBe(200)
    other.conn.destroy()
    for (const conn of held) conn.destroy()
  })

  test('the global cap (maxUpstreamConnections) holds across contexts; forwarded requests count too', async () => {
    const { echo, proxy, a, b } = await twoPreviews({ maxUpstreamConnections: 2 }, 'held.test')
    // A kept-alive upstream connection of a forwarded request holds a place while it lives.
    expect((await proxyRequest(proxy.port(), 'http://held.test/', { auth: a })).status).toBe(200)
    const t1 = await openTunnel(proxy.port(), `127.0.0.1:${echo.port}`, b)
    expect(t1.res.status).toBe(200)
    const t2 = await openTunnel(proxy.port(), `127.0.0.1:${echo.port}`, b)
    expect(t2.res.status).toBe(503)
    expect(t2.res.headers['x-cmux-proxy-error']).toBe('busy')
    t1.conn.destroy()
    t2.conn.destroy()
  })

  test("a preview waiting for another preview's first connection to an origin is not refused with it when that one is at its cap", async () => {
    const { echo, proxy, a, b } = await twoPreviews({ maxUpstreamConnectionsPerContext: 1 }, 'shared.test')
    // A holds its one place with a tunnel; its request opens the origin's first connection and waits for a place.
    const held = await openTunnel(proxy.port(), `127.0.0.1:${echo.port}`, a)
    expect(held.res.status).toBe(200)
    const fromA = proxyRequest(proxy.port(), 'http://shared.test/a', { auth: a })
    await sleep(500)
    // B, and A again, ask meanwhile and wait for that opening. When it fails for A's cap, A's second request
    // fails with it (A's cap holds for it too), and B opens a connection of its own.
    const fromA2 = proxyRequest(proxy.port(), 'http://shared.test/a2', { auth: a })
    const fromB = proxyRequest(proxy.port(), 'http://shared.test/b', { auth: b })
    const [resA, resA2, resB] = await Promise.all([fromA, fromA2, fromB])
    held.conn.destroy()
    for (const res of [resA, resA2]) {
      expect(res.status).toBe(503)
      expect(res.text).toMatch(/for this preview/)
    }
    expect(resB.status).toBe(200)
  })

  test('5 000 concurrent tunnels of one context work at the defaults (five h2c connections of 1 000 CONNECT streams)', async () => {
    const echo = await startEchoServer()
    cleanup.push(() => echo.close())
    const proxy = await startProxy({})
    const auth = authOf(proxy.createContext(1, null))
    const sessions = Array.from({ length: 5 }, () => {
      const session = http2.connect(`http://127.0.0.1:${proxy.port()}`, { peerMaxConcurrentStreams: 1000 })
      session.on('error', () => {})
      cleanup.push(() => session.destroy())
      return session
    })
    const streams = []
    for (const session of sessions) {
      const opened = await Promise.all(Array.from({ length: 1000 }, () => h2Connect(session, `127.0.0.1:${echo.port}`, auth)))
      expect(opened.map((o) => o.headers[':status']).filter((status) => status !== 200)).toEqual([])
      streams.push(...opened.map((o) => o.stream))
    }
    await waitFor(() => proxy.stats().activeTunnels === 5000, { timeout: 10000, message: `activeTunnels ${proxy.stats().activeTunnels}` })
    const echoed = await Promise.all(streams.map((stream, i) => echoOver(stream, `t${i};`)))
    expect(echoed.every((text, i) => text === `t${i};`)).toBe(true)
    for (const session of sessions) session.destroy()
  }, 60000)
})

describe('connections that never authenticate', () => {
  test('a TCP connection that sends nothing and an h2c connection with no stream close at unauthenticatedTimeoutMs; an authenticated one stays', async () => {
    const server = await startCountingServer()
    const proxy = await startProxy({ unauthenticatedTimeoutMs: 1000, resolve: { 'site.test:80': `127.0.0.1:${server.port}` } })
    const auth = authOf(proxy.createContext(1, null))
    const silent = await Conn.connect(proxy.port())
    cleanup.push(() => silent.destroy())
    const h2 = http2.connect(`http://127.0.0.1:${proxy.port()}`)
    h2.on('error', () => {})
    cleanup.push(() => h2.destroy())
    const h2Closed = new Promise((resolve) => h2.once('close', () => resolve(true)))
    // A connection that only ever gets 407s does not count as authenticated either.
    const unanswered = await Conn.connect(proxy.port())
    cleanup.push(() => unanswered.destroy())
    unanswered.write('GET http://site.test/ HTTP/1.1\r\nHost: site.test\r\n\r\n')
    expect((await unanswered.readResponse()).status).toBe(407)
    const authenticated = await Conn.connect(proxy.port())
    cleanup.push(() => authenticated.destroy())
    authenticated.write(`GET http://site.test/ HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: ${auth}\r\n\r\n`)
    expect((await authenticated.readResponse()).status).toBe(200)
    await silent.waitClosed(4000)
    await unanswered.waitClosed(4000)
    expect(await Promise.race([h2Closed, sleep(4000).then(() => false)])).toBe(true)
    await sleep(500)
    expect(authenticated.closed).toBe(false)
    authenticated.write(`GET http://site.test/again HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: ${auth}\r\n\r\n`)
    expect((await authenticated.readResponse()).status).toBe(200)
  })

  test('they have a cap of their own (maxUnauthenticatedConnections): the next gets 503 and a close, while authenticated ones are still served', async () => {
    const server = await startCountingServer()
    const proxy = await startProxy({ maxUnauthenticatedConnections: 3, resolve: { 'site.test:80': `127.0.0.1:${server.port}` } })
    const auth = authOf(proxy.createContext(1, null))
    const authenticated = await Conn.connect(proxy.port())
    cleanup.push(() => authenticated.destroy())
    authenticated.write(`GET http://site.test/ HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: ${auth}\r\n\r\n`)
    expect((await authenticated.readResponse()).status).toBe(200)
    const silent = []
    for (let i = 0; i < 3; i++) {
      const conn = await Conn.connect(proxy.port())
      cleanup.push(() => conn.destroy())
      silent.push(conn)
    }
    await waitFor(() => proxy.stats().activeConnections === 4, { message: `activeConnections ${proxy.stats().activeConnections}` })
    const refused = await Conn.connect(proxy.port())
    cleanup.push(() => refused.destroy())
    const res = await refused.readResponse()
    expect(res.status).toBe(503)
    expect(res.body.toString()).toBe('too many connections are waiting to authenticate\n')
    authenticated.write(`GET http://site.test/more HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: ${auth}\r\n\r\n`)
    expect((await authenticated.readResponse()).status).toBe(200)
    // One of the silent ones authenticates: its place frees for a newcomer.
    silent[0].write(`GET http://site.test/late HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: ${auth}\r\n\r\n`)
    expect((await silent[0].readResponse()).status).toBe(200)
    const newcomer = await Conn.connect(proxy.port())
    cleanup.push(() => newcomer.destroy())
    newcomer.write(`GET http://site.test/new HTTP/1.1\r\nHost: site.test\r\nProxy-Authorization: ${auth}\r\n\r\n`)
    expect((await newcomer.readResponse()).status).toBe(200)
  })
})
