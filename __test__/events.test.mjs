// onEvent, contextStats and deriveRoute, through real sockets: a scripted mix
// of requests, failures, tunnels and a WebSocket through one proxy, checked
// event by event and against the context's counters; no credentials in any
// event; and a listener that blocks its thread for a second per event, in a
// proxy process of its own, under 1,000 requests.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, buildRequest, Conn, openTunnel, proxyRequest } from '../support/http-client.mjs'
import { closedPort, ECHO_FINAL, startEchoServer, UNRESOLVABLE_LABEL } from '../support/servers.mjs'
import { waitFor, withTimeout } from '../support/wait.mjs'
import { closeSession, h2cGet, h2cSession, keepAliveAgent, ROUTE, runPool, settled } from './conduct-helpers.mjs'
import { collectEvents, credentialForms, deriveRoute, startEventsProcess, startHttpWsServer, startSilentServer } from './events-helpers.mjs'
import { closeFrame, encodeFrame, readFrame, wsKey, wsUpgradeRequest } from './helpers.mjs'
import { requestOver, tlsTunnel } from './tls-helpers.mjs'

// ---------------------------------------------------------------------------

describe('deriveRoute (through napi)', () => {
  test('cmux-<id>-<scope>-<port>.<domain> and port-<n>-morphvm-<id><suffix> give routes; a lookalike and garbage give null', () => {
    expect(deriveRoute('https://cmux-m1-base-3000.cmux.app/')).toEqual({
      morphId: 'm1',
      scope: 'base',
      domainSuffix: 'cmux.app',
      cmuxProxyOrigin: 'https://port-39379-morphvm-m1.http.cloud.morph.so',
    })
    expect(deriveRoute('https://port-5173-morphvm-abc.http.cloud.morph.so/src/main.ts?t=1')).toEqual({
      morphId: 'abc',
      scope: 'base',
      domainSuffix: 'cmux.app',
      cmuxProxyOrigin: 'http://port-39379-morphvm-abc.http.cloud.morph.so',
    })
    expect(deriveRoute('http://port-3000-morphvm-q1.example.org/')).toEqual({
      morphId: 'q1',
      scope: 'base',
      domainSuffix: 'cmux.app',
      cmuxProxyOrigin: 'http://port-39379-morphvm-q1.http.cloud.morph.so',
    })
    expect(deriveRoute('https://cmux-m1-base-3000.cmux.app.evil.example/')).toBeNull()
    expect(deriveRoute('https://cmux-m1-base-3000.notcmux.app/')).toBeNull()
    expect(deriveRoute('not a url at all')).toBeNull()
    expect(deriveRoute('')).toBeNull()
  })
})

// ---------------------------------------------------------------------------

const ORIGIN_ROUTE = { ...ROUTE, cmuxProxyOrigin: 'http://origin.test' }
const TIMEOUT_MS = 1000

describe('events and contextStats for a scripted mix through one proxy', () => {
  let upstream, silent, echo, refusedPort, proxy, port, collector, plain, routed, plainAuth, routedAuth
  const startedAt = Date.now()
  // What the plain context's counters must say, from what the client saw.
  const expected = { requests: 0, errors: 0, bytesIn: 0, bytesOut: 0 }

  beforeAll(async () => {
    upstream = await startHttpWsServer((req, res) => {
      const chunks = []
      req.on('data', (c) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks)
        const get = /^\/get\/(\d+)$/.exec(req.url)
        res.setHeader('content-type', 'text/plain')
        if (get) return res.end('g'.repeat(Number(get[1])))
        if (req.method === 'POST') return res.end(`received ${body.length} bytes at ${req.url}`)
        res.end(`hello ${req.url} via ${req.headers.host}`)
      })
    })
    silent = await startSilentServer()
    echo = await startEchoServer()
    refusedPort = await closedPort()
    proxy = await ProxyServer.start('127.0.0.1:0', true, {
      upstreamResponseTimeoutMs: TIMEOUT_MS,
      resolve: { 'origin.test:80': `127.0.0.1:${upstream.port}` },
    })
    port = proxy.port()
    collector = collectEvents(proxy)
    plain = proxy.createContext(11)
    routed = proxy.createContext(12, ORIGIN_ROUTE)
    plainAuth = authOf(plain)
    routedAuth = authOf(routed)
  })

  afterAll(async () => {
    collector?.unsubscribe()
    await proxy?.stop()
    await upstream?.close()
    await silent?.close()
    await echo?.close()
  })

  /** The client's side of one request, counted into `expected`. */
  async function plainRequest(url, opts = {}) {
    const res = await proxyRequest(port, url, { auth: plainAuth, ...opts })
    expected.requests++
    expected.bytesIn += opts.body === undefined ? 0 : Buffer.byteLength(opts.body)
    expected.bytesOut += res.body.length
    return res
  }

  test('createContext emits `context` `created` with the id and webContentsId, and nothing else', async () => {
    const created = await collector.until(0, (es) => es.filter((e) => e.kind === 'context').length >= 2, 'two context events')
    const contextEvents = created.filter((e) => e.kind === 'context')
    expect(contextEvents).toEqual([
      { kind: 'context', phase: 'created', contextId: plain.id, webContentsId: 11 },
      { kind: 'context', phase: 'created', contextId: routed.id, webContentsId: 12 },
    ].map((e) => expect.objectContaining(e)))
    for (const e of contextEvents) {
      for (const field of ['method', 'url', 'upstream', 'status', 'cause', 'handling', 'bytesIn', 'bytesOut']) {
        expect(e[field], `context event field ${field}`).toBeUndefined()
      }
    }
  })

  test('GETs and POSTs: one `request` event each, with url, upstream, status, protocol and body bytes both ways', async () => {
    const base = `http://127.0.0.1:${upstream.port}`
    const steps = [
      { method: 'GET', url: `${base}/get/1234` },
      { method: 'GET', url: `${base}/get/0` },
      { method: 'POST', url: `${base}/post/small`, body: 'p'.repeat(3000) },
      { method: 'POST', url: `${base}/post/large`, body: 'q'.repeat(200 * 1024 + 7) },
    ]
    for (const step of steps) {
      const mark = collector.mark()
      const res = await plainRequest(step.url, { method: step.method, body: step.body })
      expect(res.status).toBe(200)
      const events = await collector.until(mark, (es) => es.some((e) => e.kind === 'request'), `the request event of ${step.method} ${step.url}`)
      expect(events.map((e) => e.kind), `events of ${step.method} ${step.url}`).toEqual(['request'])
      const [event] = events
      expect(event).toMatchObject({
        kind: 'request',
        contextId: plain.id,
        webContentsId: 11,
        method: step.method,
        url: step.url,
        upstream: `http://127.0.0.1:${upstream.port}`,
        status: 200,
        protocol: 'http/1.1',
        bytesIn: step.body === undefined ? 0 : step.body.length,
        bytesOut: res.body.length,
      })
      expect(event.bytesOut).toBe(step.method === 'GET' ? Number(step.url.split('/').pop()) : `received ${step.body.length} bytes at ${new URL(step.url).pathname}`.length)
      expect(typeof event.durationMs).toBe('number')
      expect(event.durationMs).toBeGreaterThanOrEqual(0)
      for (const field of ['phase', 'cause', 'handling', 'message']) expect(event[field], `request event field ${field}`).toBeUndefined()
    }
  })

  test('a GET over h2c is reported with protocol h2', async () => {
    const session = h2cSession(port)
    try {
      const mark = collector.mark()
      const res = await withTimeout(h2cGet(session, `127.0.0.1:${upstream.port}`, '/get/321', plainAuth), 10000, 'h2c GET')
      expect(res.status).toBe(200)
      expected.requests++
      expected.bytesOut += res.body.length
      const [event] = await collector.until(mark, (es) => es.some((e) => e.kind === 'request'), 'the h2 request event')
      expect(event).toMatchObject({ kind: 'request', method: 'GET', status: 200, protocol: 'h2', bytesIn: 0, bytesOut: 321, contextId: plain.id })
    } finally {
      await closeSession(session)
    }
  })

  const failures = [
    { name: 'a refused port', cause: 'refused', status: 502, url: () => `http://127.0.0.1:${refusedPort}/page`, upstream: () => `http://127.0.0.1:${refusedPort}` },
    { name: 'an upstream that never answers', cause: 'timeout', status: 504, url: () => `http://127.0.0.1:${silent.port}/page`, upstream: () => `http://127.0.0.1:${silent.port}` },
  ]
  let lastFailure

  test.each(failures)('$name: $status with x-cmux-proxy-error, an `error` event with cause $cause, then the `request` event', async (f) => {
    const mark = collector.mark()
    const before = Date.now()
    const res = await plainRequest(f.url())
    expect(res.status).toBe(f.status)
    expect(res.headers['x-cmux-proxy-error']).toBe(f.cause)
    expect(res.headers['content-type']).toMatch(/^text\/plain/)
    expected.errors++
    const events = await collector.until(mark, (es) => es.some((e) => e.kind === 'request'), `the events of ${f.name}`)
    expect(events.map((e) => e.kind)).toEqual(['error', 'request'])
    const [error, request] = events
    expect(error).toMatchObject({ kind: 'error', cause: f.cause, status: f.status, contextId: plain.id, webContentsId: 11 })
    expect(typeof error.message).toBe('string')
    expect(error.message.length).toBeGreaterThan(0)
    expect(res.text.trim()).toBe(error.message)
    expect(request).toMatchObject({
      kind: 'request',
      method: 'GET',
      url: f.url(),
      upstream: f.upstream(),
      status: f.status,
      bytesIn: 0,
      bytesOut: res.body.length,
    })
    expect(request.cause).toBeUndefined()
    lastFailure = { message: error.message, before, after: Date.now() }
  })

  // A dev box whose name the resolver refuses before asking anyone (a label over 63 bytes, which only a route
  // can produce: a client's own target with it is a 400), so that no DNS query leaves the machine.
  test('a dev box whose name does not resolve: 502 dns, an `error` event with cause dns, then the `request` event', async () => {
    const gone = proxy.createContext(13, { morphId: UNRESOLVABLE_LABEL, scope: 'base', domainSuffix: 'devbox.invalid' })
    const mark = collector.mark()
    const res = await proxyRequest(port, 'http://localhost:3000/page', { auth: authOf(gone) })
    expect(res.status).toBe(502)
    expect(res.headers['x-cmux-proxy-error']).toBe('dns')
    const events = (await collector.until(mark, (es) => es.some((e) => e.kind === 'request'), 'the events of the DNS failure'))
      .filter((e) => e.kind !== 'context')
    expect(events.map((e) => e.kind)).toEqual(['error', 'request'])
    expect(events[0]).toMatchObject({ kind: 'error', cause: 'dns', status: 502, contextId: gone.id, webContentsId: 13 })
    expect(res.text.trim()).toBe(events[0].message)
    expect(events[1]).toMatchObject({
      kind: 'request',
      url: 'http://localhost:3000/page',
      upstream: `https://cmux-${UNRESOLVABLE_LABEL}-base-3000.devbox.invalid:443`,
      status: 502,
    })
  })

  test('contextStats after the HTTP mix: requests, errors, bytes both ways, lastError and lastErrorAt', async () => {
    // Counters are updated when a response body is done: the events above prove it for every request.
    const stats = proxy.contextStats(plain.id)
    expect(stats).toMatchObject({ ...expected, openTunnels: 0 })
    expect(stats.lastError).toBe(lastFailure.message)
    expect(stats.lastError).toMatch(/answer|timed out|within/i)
    expect(stats.lastErrorAt).toBeGreaterThanOrEqual(lastFailure.before - 5)
    expect(stats.lastErrorAt).toBeLessThanOrEqual(lastFailure.after + 5)
    // The counters are the events' sums.
    const mine = collector.events.filter((e) => e.contextId === plain.id)
    const requestEvents = mine.filter((e) => e.kind === 'request')
    expect(requestEvents.length).toBe(stats.requests)
    expect(mine.filter((e) => e.kind === 'error').length).toBe(stats.errors)
    expect(requestEvents.reduce((n, e) => n + e.bytesIn, 0)).toBe(stats.bytesIn)
    expect(requestEvents.reduce((n, e) => n + e.bytesOut, 0)).toBe(stats.bytesOut)
    // The routed context has done nothing yet.
    expect(proxy.contextStats(routed.id)).toMatchObject({ requests: 0, errors: 0, bytesIn: 0, bytesOut: 0, openTunnels: 0 })
    expect(proxy.contextStats(routed.id).lastError).toBeUndefined()
  })

  test('a routed request to localhost is reported with its url as asked and the cmux-proxy origin as upstream', async () => {
    const mark = collector.mark()
    const res = await proxyRequest(port, 'http://localhost:3000/routed?x=1', { auth: routedAuth })
    expect(res.status).toBe(200)
    const [event] = await collector.until(mark, (es) => es.some((e) => e.kind === 'request'), 'the routed request event')
    expect(event).toMatchObject({
      kind: 'request',
      contextId: routed.id,
      webContentsId: 12,
      url: 'http://localhost:3000/routed?x=1',
      upstream: 'http://origin.test:80',
      status: 200,
      bytesOut: res.body.length,
    })
  })

  test('a blind CONNECT to an echo server: tunnel open, openTunnels 1 while open, close with the bytes each way', async () => {
    const mark = collector.mark()
    const authority = `127.0.0.1:${echo.port}`
    const { conn, res } = await openTunnel(port, authority, plainAuth, { allowHalfOpen: true })
    try {
      expect(res.status).toBe(200)
      expected.requests++
      const opened = await collector.until(mark, (es) => es.some((e) => e.kind === 'tunnel' && e.phase === 'open'), 'the tunnel open event')
      expect(opened.find((e) => e.kind === 'tunnel')).toMatchObject({
        kind: 'tunnel', phase: 'open', contextId: plain.id, webContentsId: 11, url: authority, handling: 'blind',
      })
      expect(proxy.contextStats(plain.id).openTunnels).toBe(1)
      const payload = Buffer.alloc(50000, 0x5a)
      conn.write(payload)
      const echoed = await conn.readBytes(payload.length)
      expect(echoed.equals(payload)).toBe(true)
      conn.end()
      const rest = await conn.readToEnd()
      expect(rest.equals(ECHO_FINAL)).toBe(true)
      expected.bytesIn += payload.length
      expected.bytesOut += payload.length + ECHO_FINAL.length
      const events = await collector.until(mark, (es) => es.some((e) => e.kind === 'tunnel' && e.phase === 'close'), 'the tunnel close event')
      const connect = events.find((e) => e.kind === 'request')
      expect(connect).toMatchObject({ kind: 'request', method: 'CONNECT', url: authority, status: 200, contextId: plain.id })
      const close = events.find((e) => e.kind === 'tunnel' && e.phase === 'close')
      expect(close).toMatchObject({
        kind: 'tunnel',
        phase: 'close',
        contextId: plain.id,
        url: authority,
        handling: 'blind',
        bytesIn: payload.length,
        bytesOut: payload.length + ECHO_FINAL.length,
      })
      expect(close.durationMs).toBeGreaterThanOrEqual(0)
      await waitFor(() => proxy.contextStats(plain.id).openTunnels === 0, { message: 'openTunnels back to 0 after the close' })
    } finally {
      conn.destroy()
    }
  })

  test('a WebSocket upgrade: websocket open and close (handling relayed) with the frame bytes each way', async () => {
    const mark = collector.mark()
    const url = `http://127.0.0.1:${upstream.port}/ws`
    const conn = await Conn.connect(port)
    try {
      const head = wsUpgradeRequest(url, { auth: plainAuth, key: wsKey() })
      conn.write(head)
      const res = await conn.readHead()
      expect(res.status).toBe(101)
      expected.requests++
      // Bytes of the 101 head on the wire (what is buffered beyond it belongs to the relayed stream).
      const headBytes = conn.socket.bytesRead - conn.buf.length
      await collector.until(mark, (es) => es.some((e) => e.kind === 'websocket' && e.phase === 'open'), 'the websocket open event')
      expect(proxy.contextStats(plain.id).openTunnels).toBe(1)
      const message = encodeFrame(0x1, 'hello events '.repeat(20))
      conn.write(message)
      const echoed = await readFrame(conn)
      expect(echoed.payload.toString()).toBe('hello events '.repeat(20))
      const close = closeFrame(1000, 'bye')
      conn.write(close)
      const closing = await readFrame(conn)
      expect(closing.opcode).toBe(0x8)
      await conn.readToEnd()
      await conn.waitClosed()
      const sent = message.length + close.length
      const received = conn.socket.bytesRead - headBytes
      expected.bytesIn += sent
      expected.bytesOut += received
      const events = await collector.until(mark, (es) => es.some((e) => e.kind === 'websocket' && e.phase === 'close'), 'the websocket close event')
      const ws = events.filter((e) => e.kind === 'websocket')
      expect(ws.map((e) => e.phase)).toEqual(['open', 'close'])
      for (const e of ws) {
        expect(e, `websocket ${e.phase} event`).toMatchObject({ kind: 'websocket', contextId: plain.id, webContentsId: 11, handling: 'relayed' })
      }
      expect(ws[1]).toMatchObject({ bytesIn: sent, bytesOut: received })
      const upgrade = events.find((e) => e.kind === 'request')
      expect(upgrade).toMatchObject({ method: 'GET', url, upstream: `http://127.0.0.1:${upstream.port}`, status: 101 })
      await waitFor(() => proxy.contextStats(plain.id).openTunnels === 0, { message: 'openTunnels back to 0 after the WebSocket closed' })
      // The URL as the client asked for it (ProxyEvent.url), as on the request event of the same upgrade.
      expect(ws.map((e) => e.url), 'url of the websocket events').toEqual([url, url])
    } finally {
      conn.destroy()
    }
  })

  test('contextStats of the plain context after tunnels and the WebSocket: every counter matches what the client saw', () => {
    expect(proxy.contextStats(plain.id)).toMatchObject({ ...expected, openTunnels: 0, lastError: lastFailure.message })
  })

  test('a routed CONNECT to localhost with HTTP inside: tunnel `looked-into`, the request inside reported as the context', async () => {
    const mark = collector.mark()
    const { conn, res } = await openTunnel(port, 'localhost:3000', routedAuth)
    try {
      expect(res.status).toBe(200)
      await collector.until(mark, (es) => es.some((e) => e.kind === 'tunnel' && e.phase === 'open'), 'the tunnel open event')
      expect(proxy.contextStats(routed.id).openTunnels).toBe(1)
      conn.write(buildRequest('GET', '/inside', [['Host', 'localhost:3000']]))
      const inside = await conn.readResponse()
      expect(inside.status).toBe(200)
      expect(inside.text).toBe('hello /inside via origin.test')
      const seen = await collector.until(mark, (es) => es.some((e) => e.kind === 'request' && e.method === 'GET'), 'the request event inside the tunnel')
      expect(seen.find((e) => e.kind === 'request' && e.method === 'GET')).toMatchObject({
        contextId: routed.id,
        url: 'http://localhost:3000/inside',
        upstream: 'http://origin.test:80',
        status: 200,
        bytesOut: inside.body.length,
      })
      conn.destroy()
      const events = await collector.until(mark, (es) => es.some((e) => e.kind === 'tunnel' && e.phase === 'close'), 'the tunnel close event')
      const tunnel = events.filter((e) => e.kind === 'tunnel')
      expect(tunnel.map((e) => [e.phase, e.handling, e.url])).toEqual([
        ['open', 'looked-into', 'localhost:3000'],
        ['close', 'looked-into', 'localhost:3000'],
      ])
      expect(events.find((e) => e.method === 'CONNECT')).toMatchObject({ kind: 'request', url: 'localhost:3000', status: 200, contextId: routed.id })
      await waitFor(() => proxy.contextStats(routed.id).openTunnels === 0, { message: 'openTunnels back to 0' })
    } finally {
      conn.destroy()
    }
  })

  test('a routed CONNECT to localhost with TLS inside: opened `looked-into`, closed `intercepted`', async () => {
    const mark = collector.mark()
    const socket = await tlsTunnel(port, 'localhost:3443', routedAuth, {
      servername: 'localhost',
      ca: proxy.caCertificatePem(),
      ALPNProtocols: ['http/1.1'],
    })
    try {
      const res = await withTimeout(
        requestOver(socket, { path: '/secure', headers: { host: 'localhost:3443', connection: 'close' } }),
        10000,
        'the request inside the intercepted tunnel',
      )
      expect(res.status).toBe(200)
      expect(res.text).toBe('hello /secure via origin.test')
      socket.end()
      const events = await collector.until(mark, (es) => es.some((e) => e.kind === 'tunnel' && e.phase === 'close'), 'the tunnel close event')
      const tunnel = events.filter((e) => e.kind === 'tunnel')
      expect(tunnel.map((e) => [e.phase, e.handling, e.url])).toEqual([
        ['open', 'looked-into', 'localhost:3443'],
        ['close', 'intercepted', 'localhost:3443'],
      ])
      expect(events.find((e) => e.kind === 'request' && e.method === 'GET')).toMatchObject({
        contextId: routed.id,
        url: 'https://localhost:3443/secure',
        upstream: 'http://origin.test:80',
        status: 200,
      })
    } finally {
      socket.destroy()
    }
  })

  test('releaseContext emits `context` `released`; contextStats is then null, as for an unknown id', async () => {
    const mark = collector.mark()
    expect(proxy.releaseContext(routed.id)).toBe(true)
    const [event] = await collector.until(mark, (es) => es.some((e) => e.kind === 'context'), 'the released event')
    expect(event).toMatchObject({ kind: 'context', phase: 'released', contextId: routed.id, webContentsId: 12 })
    expect(proxy.contextStats(routed.id)).toBeNull()
    expect(proxy.contextStats('00000000-0000-4000-8000-000000000000')).toBeNull()
    expect(proxy.contextStats('not an id')).toBeNull()
  })

  test('no event carries credentials: neither a password, nor user:password in base64, nor a username', () => {
    const text = JSON.stringify(collector.events)
    expect(collector.events.length).toBeGreaterThan(20)
    for (const ctx of [plain, routed]) {
      for (const [form, value] of Object.entries(credentialForms(ctx))) {
        expect(text.includes(value), `${form} of context ${ctx.webContentsId} in the events`).toBe(false)
      }
    }
    expect(text).not.toMatch(/proxy-authorization|Basic /i)
  })

  test('unsubscribe stops delivery to that listener; another listener still gets the events', async () => {
    const second = collectEvents(proxy)
    collector.unsubscribe()
    const count = collector.events.length
    const res = await plainRequest(`http://127.0.0.1:${upstream.port}/after-unsubscribe`)
    expect(res.status).toBe(200)
    await second.until(0, (es) => es.some((e) => e.kind === 'request'), 'the second listener receiving the request')
    // Anything already on its way to the first listener has been delivered by now (same thread, same order).
    const extra = proxy.createContext(13)
    await second.until(0, (es) => es.some((e) => e.kind === 'context' && e.contextId === extra.id), 'the second listener receiving the context event')
    expect(collector.events.length).toBe(count)
    second.unsubscribe()
    const third = collectEvents(proxy)
    third.unsubscribe()
    await proxyRequest(port, `http://127.0.0.1:${upstream.port}/nobody`, { auth: plainAuth })
    expect(third.events).toEqual([])
    expect(proxy.stats().droppedEvents).toBe(0)
  })
})

// ---------------------------------------------------------------------------

describe('a listener that blocks its thread for 1 s per event (proxy in a child process)', () => {
  const REQUESTS = 1000
  let upstream, refusedPort, child, flagDir, flagPath, auth, agent

  beforeAll(async () => {
    upstream = await startHttpWsServer((req, res) => res.end(`hello ${req.url}`))
    refusedPort = await closedPort()
    child = await startEventsProcess({})
    auth = authOf(await child.call('createContext', 21))
    flagDir = mkdtempSync(path.join(os.tmpdir(), 'cmux-events-'))
    flagPath = path.join(flagDir, 'load-done')
  })

  afterAll(async () => {
    agent?.destroy()
    // Whatever happened, let the listener go so that the child can stop.
    if (flagPath) writeFileSync(flagPath, 'done')
    await child?.stop()
    await upstream?.close()
    if (flagDir) rmSync(flagDir, { recursive: true, force: true })
  })

  // Every other request goes to a refused port: its error and request events make 1,500 events in all,
  // more than a listener's queue (1,024) holds.
  const url = (i) => (i % 2 ? `http://127.0.0.1:${refusedPort}/r/${i}` : `http://127.0.0.1:${upstream.port}/ok/${i}`)
  const EVENTS_PER_LOAD = REQUESTS / 2 + (REQUESTS / 2) * 2

  async function load(what) {
    agent?.destroy()
    agent = keepAliveAgent(32)
    const start = performance.now()
    const results = await withTimeout(
      runPool(REQUESTS, 32, (i) => settled(proxyRequest(child.port, url(i), { auth, agent }))),
      40000,
      `${REQUESTS} requests ${what}`,
    )
    const wallMs = performance.now() - start
    const wrong = results
      .map((r, i) => ({ i, ...r }))
      .filter((r, i) => (i % 2 ? r.status !== 502 : r.status !== 200 || r.text !== `hello /ok/${i}`))
    expect(wrong.slice(0, 5), `requests ${what} not answered as expected (${wrong.length})`).toEqual([])
    return wallMs
  }

  test(`${REQUESTS} requests complete while the listener blocks; it saw far fewer events than produced; droppedEvents > 0`, async () => {
    const withoutListener = await load('without a listener')
    const idle = await child.call('report')
    expect(idle.stats.droppedEvents).toBe(0)
    expect(idle.seenWhileBlocking + idle.seenAfterFlag).toBe(0)

    expect(await child.call('subscribeSlow', flagPath, 1000)).toBe(true)
    const withSlowListener = await load('with a listener blocking 1 s per event')
    // The load is done: let the listener stop blocking, then ask the child what it saw.
    writeFileSync(flagPath, 'done')
    let report
    await waitFor(async () => {
      report = await child.call('report')
      return report.seenWhileBlocking + report.seenAfterFlag + report.stats.droppedEvents >= EVENTS_PER_LOAD
    }, { timeout: 20000, interval: 100, message: `the child's listener draining its queue: ${JSON.stringify(report)}` })
    console.log('[slow listener]', {
      wallMsWithoutListener: Math.round(withoutListener),
      wallMsWithSlowListener: Math.round(withSlowListener),
      eventsProduced: EVENTS_PER_LOAD,
      seenWhileBlocking: report.seenWhileBlocking,
      seenAfterTheLoad: report.seenAfterFlag,
      droppedEvents: report.stats.droppedEvents,
    })
    expect(report.seenWhileBlocking, 'events the listener handled during the load').toBeLessThan(EVENTS_PER_LOAD / 10)
    expect(report.stats.droppedEvents).toBeGreaterThan(0)
    // Every event is accounted for: delivered (then or later) or counted as dropped.
    expect(report.seenWhileBlocking + report.seenAfterFlag + report.stats.droppedEvents).toBe(EVENTS_PER_LOAD)
    // The listener's queue held at most 1,024 (plus the one it was handling).
    expect(report.seenAfterFlag).toBeLessThanOrEqual(1025)
  }, 60000)
})
