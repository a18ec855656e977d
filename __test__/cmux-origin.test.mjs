// Routes with a cmuxProxyOrigin: loopback traffic goes to that origin with
// X-Cmux-Port-Internal / X-Cmux-Host-Override, and (without interception)
// CONNECT tunnels are carried by the origin's own CONNECT.

import net from 'node:net'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, buildRequest, Conn, openTunnel, proxyRequest } from '../support/http-client.mjs'
import { startEchoServer } from '../support/servers.mjs'
import { sleep, waitFor } from '../support/wait.mjs'
import { startTlsServer, testCA, tlsTunnel } from './tls-helpers.mjs'

const ORIGIN_HOST = 'origin.test.local'
const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local', cmuxProxyOrigin: `https://${ORIGIN_HOST}` }

let ca, origin, echo, blind, intercepting, authBlind, authIntercepting
const connects = []
let connectMode = 'accept'
let release = () => {}
let released = Promise.resolve()
const cleanup = []

beforeAll(async () => {
  ca = testCA()
  echo = await startEchoServer()
  origin = await startTlsServer((req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() }))
    })
  }, { names: [ORIGIN_HOST] })
  origin.server.on('connect', async (req, socket, head) => {
    socket.on('error', () => {})
    const entry = { url: req.url, headers: req.headers, answeredAt: null }
    connects.push(entry)
    if (connectMode === 'forbid') {
      entry.answeredAt = Date.now()
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nConnection: close\r\n\r\nforbidden')
      return
    }
    await released
    const upstream = net.connect(echo.port, '127.0.0.1')
    upstream.on('error', () => socket.destroy())
    await new Promise((resolve) => upstream.once('connect', resolve))
    entry.answeredAt = Date.now()
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
    if (head.length) upstream.write(head)
    socket.pipe(upstream)
    upstream.pipe(socket)
    cleanup.push(upstream)
  })
  const options = {
    resolve: { [`${ORIGIN_HOST}:443`]: `127.0.0.1:${origin.port}` },
    upstreamCaPem: [ca.certPem],
  }
  blind = await ProxyServer.start('127.0.0.1:0', false, { ...options, tlsInterception: false })
  intercepting = await ProxyServer.start('127.0.0.1:0', false, options)
  authBlind = authOf(blind.createContext(1, ROUTE))
  authIntercepting = authOf(intercepting.createContext(1, ROUTE))
})

afterAll(async () => {
  for (const s of cleanup) s.destroy()
  await blind?.stop()
  await intercepting?.stop()
  await origin?.close()
  await echo?.close()
})

function expectCmuxHeaders(headers, { port = '3000', override = 'localhost:3000' } = {}) {
  expect(headers['x-cmux-port-internal']).toBe(port)
  expect(headers['x-cmux-host-override']).toBe(override)
  expect(headers).not.toHaveProperty('proxy-authorization')
}

describe('requests through a cmux-proxy origin', () => {
  test('an absolute-form GET http://localhost:3000/a reaches the origin with Host and X-Cmux headers', async () => {
    for (const proxy of [blind, intercepting]) {
      const auth = proxy === blind ? authBlind : authIntercepting
      const res = await proxyRequest(proxy.port(), 'http://localhost:3000/a?b=1', {
        auth,
        headers: { 'x-cmux-port-internal': '9999', 'x-test': 'kept' },
      })
      res.socket?.destroy()
      expect(res.status).toBe(200)
      const seen = JSON.parse(res.text)
      expect(seen.url).toBe('/a?b=1')
      expect(seen.headers.host).toBe(ORIGIN_HOST)
      expectCmuxHeaders(seen.headers)
      expect(seen.headers['x-test']).toBe('kept')
    }
  })

  test('another loopback port and host name map to the same origin with their own X-Cmux values', async () => {
    const res = await proxyRequest(blind.port(), 'http://app.localhost:5173/vite', { auth: authBlind })
    res.socket?.destroy()
    expect(res.status).toBe(200)
    const seen = JSON.parse(res.text)
    expect(seen.headers.host).toBe(ORIGIN_HOST)
    expectCmuxHeaders(seen.headers, { port: '5173', override: 'app.localhost:5173' })
  })

  test('with interception, requests inside a TLS tunnel to localhost:3000 go to the origin with X-Cmux headers', async () => {
    const t = await tlsTunnel(intercepting.port(), 'localhost:3000', authIntercepting, {
      servername: 'localhost',
      ca: [intercepting.caCertificatePem()],
      ALPNProtocols: ['http/1.1'],
    })
    cleanup.push(t)
    const conn = new Conn(t)
    conn.write(buildRequest('GET', '/inside', [['Host', 'localhost:3000']]))
    const res = await conn.readResponse()
    expect(res.status).toBe(200)
    const seen = JSON.parse(res.text)
    expect(seen.url).toBe('/inside')
    expect(seen.headers.host).toBe(ORIGIN_HOST)
    expectCmuxHeaders(seen.headers)
    t.destroy()
  })
})

describe('CONNECT without interception goes through the origin', () => {
  test('the proxy sends CONNECT localhost:3000 to the origin and opens the client tunnel only after its 200', async () => {
    connectMode = 'accept'
    released = new Promise((resolve) => (release = resolve))
    const before = connects.length
    const echoBefore = echo.events.connections
    const conn = await Conn.connect(blind.port())
    cleanup.push(conn)
    conn.write(buildRequest('CONNECT', 'localhost:3000', [['Host', 'localhost:3000'], ['Proxy-Authorization', authBlind]]))
    await waitFor(() => connects.length > before, { timeout: 5000, message: 'the origin saw a CONNECT' })
    const seen = connects.at(-1)
    expect(seen.url).toBe('localhost:3000')
    expectCmuxHeaders(seen.headers)

    // The origin has not answered yet, so neither may the proxy.
    await sleep(300)
    expect(conn.buf.length).toBe(0)
    expect(conn.closed).toBe(false)

    release()
    const res = await conn.readResponse({ connect: true })
    expect(res.status).toBe(200)
    expect(seen.answeredAt).not.toBeNull()

    const payload = Buffer.from('bytes through the origin tunnel \x00\x01\xff')
    conn.write(payload)
    expect((await conn.readBytes(payload.length)).equals(payload)).toBe(true)
    expect(echo.events.connections).toBe(echoBefore + 1)
    conn.destroy()
  })

  test('when the origin answers CONNECT with 403, the client gets 502', async () => {
    connectMode = 'forbid'
    const before = connects.length
    const { conn, res } = await openTunnel(blind.port(), 'localhost:3000', authBlind)
    cleanup.push(conn)
    expect(connects.length).toBe(before + 1)
    expectCmuxHeaders(connects.at(-1).headers)
    expect(res.status).toBe(502)
    conn.destroy()
    connectMode = 'accept'
  })
})
