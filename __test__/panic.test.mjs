// A panic in the Rust request handler (the test build's `x-cmux-test-panic`
// hook) costs only its own connection: the client gets 500 and a close, the
// Node process and every other connection and tunnel live on, stats() comes
// back to its baseline, and the next request is served.

import http2 from 'node:http2'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { authOf, buildRequest, Conn, getOn, openTunnel } from '../support/http-client.mjs'
import { startEchoServer } from '../support/servers.mjs'
import { waitFor, withTimeout } from '../support/wait.mjs'
import { useProxy, useTracked } from './fixtures.mjs'
import { backToBaseline, expectServed, startRecordingServer } from './hostile-helpers.mjs'
import { DEV_HOST, h2Over, h2request, requestOver, ROUTE, startTlsServer, testCA, tlsTunnel } from './tls-helpers.mjs'

const PANIC = ['x-cmux-test-panic', '1']

let upstream, echo, standin

beforeAll(async () => {
  upstream = await startRecordingServer()
  echo = await startEchoServer()
  standin = await startTlsServer((req, res) => res.end(`devbox:${req.url}`))
})

afterAll(async () => {
  await upstream?.close()
  await echo?.close()
  await standin?.close()
})

const shared = useProxy(() => ({
  enableHttp2: true,
  resolve: { [`${DEV_HOST}:443`]: `127.0.0.1:${standin.port}` },
  upstreamCaPem: [testCA().certPem],
}), { ctx: [1], routed: [2, ROUTE] })

afterEach(async () => {
  await backToBaseline(shared.proxy)
})

// Sockets the tests keep, closed before the checks above (after hooks run in reverse order).
const track = useTracked()

const url = (path) => `http://127.0.0.1:${upstream.port}${path}`

/** One HTTP/2 request: { status, text, rstCode, error } however the stream ended (bounded). */
function h2Outcome(session, headers) {
  return withTimeout(new Promise((resolve) => {
    const stream = session.request(headers)
    const out = {}
    const chunks = []
    stream.on('response', (h) => (out.status = h[':status']))
    stream.on('data', (c) => chunks.push(c))
    stream.on('error', (e) => (out.error = e.code ?? e.message))
    stream.on('close', () => {
      out.rstCode = stream.rstCode
      out.text = Buffer.concat(chunks).toString()
      resolve(out)
    })
  }), 5000, 'an HTTP/2 stream')
}

function expectPanicAnswer(res) {
  expect(res.status).toBe(500)
  expect(res.text.trim()).toBe('internal proxy error')
  expect((res.headers.connection ?? '').toLowerCase()).toContain('close')
}

describe('a panic on a listener connection', () => {
  test('500 and a close for that connection; other connections and tunnels carry on; stats return; next request served', async () => {
    // Bystanders: a keep-alive connection and a relayed tunnel.
    const keepAlive = track(await Conn.connect(shared.port))
    expect((await getOn(keepAlive, url('/before'), { auth: authOf(shared.ctx) })).status).toBe(200)
    const { conn: tunnel, res: tunnelRes } = await openTunnel(shared.port, `127.0.0.1:${echo.port}`, authOf(shared.ctx))
    track(tunnel)
    expect(tunnelRes.status).toBe(200)
    tunnel.write('one')
    expect((await tunnel.readBytes(3)).toString()).toBe('one')
    const baseline = { activeConnections: 1, activeTunnels: 1 }
    await backToBaseline(shared.proxy, baseline)
    const requestsBefore = shared.proxy.stats().totalRequests

    const victim = track(await Conn.connect(shared.port))
    victim.write(buildRequest('GET', url('/panic'), [['Host', `127.0.0.1:${upstream.port}`], ['Proxy-Authorization', authOf(shared.ctx)], PANIC]))
    const res = await victim.readResponse({ timeout: 5000 })
    expectPanicAnswer(res)
    await victim.waitClosed(3000)
    expect(upstream.requests.some((r) => r.url === '/panic')).toBe(false)

    // The process is alive and the proxy still answers its API.
    expect(shared.proxy.stats().totalRequests).toBeGreaterThan(requestsBefore)
    await backToBaseline(shared.proxy, baseline)

    // The bystanders are unaffected.
    const again = await getOn(keepAlive, url('/after'), { auth: authOf(shared.ctx) })
    expect(again.status).toBe(200)
    expect(again.text).toBe('ok:/after')
    tunnel.write('two')
    expect((await tunnel.readBytes(3)).toString()).toBe('two')
    expect(keepAlive.closed).toBe(false)
    expect(tunnel.closed).toBe(false)

    keepAlive.destroy()
    tunnel.destroy()
    await backToBaseline(shared.proxy)
    const next = await expectServed(shared.port, url('/next'), authOf(shared.ctx))
    expect(next.text).toBe('ok:/next')
  })

  test('a request on the same connection after the panic is not served (the connection is gone)', async () => {
    const conn = track(await Conn.connect(shared.port))
    // Two pipelined requests: the first panics, the second must not be answered on this connection.
    conn.write(Buffer.concat([
      buildRequest('GET', url('/panic-first'), [['Host', `127.0.0.1:${upstream.port}`], ['Proxy-Authorization', authOf(shared.ctx)], PANIC]),
      buildRequest('GET', url('/pipelined'), [['Host', `127.0.0.1:${upstream.port}`], ['Proxy-Authorization', authOf(shared.ctx)]]),
    ]))
    const res = await conn.readResponse({ timeout: 5000 })
    expectPanicAnswer(res)
    await conn.waitClosed(3000)
    expect(conn.buf.length).toBe(0)
    expect(upstream.requests.some((r) => r.url === '/pipelined')).toBe(false)
  })

  test('30 panics in a row leak nothing and the proxy keeps serving', async () => {
    for (let i = 0; i < 30; i++) {
      const conn = track(await Conn.connect(shared.port))
      conn.write(buildRequest('GET', url(`/panic-${i}`), [['Host', `127.0.0.1:${upstream.port}`], ['Proxy-Authorization', authOf(shared.ctx)], PANIC]))
      const res = await conn.readResponse({ timeout: 5000 })
      expect(res.status).toBe(500)
      await conn.waitClosed(3000)
    }
    await backToBaseline(shared.proxy)
    await expectServed(shared.port, url('/after-30'), authOf(shared.ctx))
  })

  test('over HTTP/2 (h2c): the stream gets 500 and the connection is closed; a new one is served', async () => {
    const session = http2.connect(`http://127.0.0.1:${shared.port}`)
    session.on('error', () => {})
    track(session)
    const closed = new Promise((resolve) => session.once('close', resolve))
    const res = await h2Outcome(session, {
      ':method': 'GET',
      ':scheme': 'http',
      ':authority': `127.0.0.1:${upstream.port}`,
      ':path': '/h2-panic',
      'proxy-authorization': authOf(shared.ctx),
      [PANIC[0]]: PANIC[1],
    })
    expect(res, `the panicking stream ended with ${JSON.stringify(res)}`).toMatchObject({ status: 500, text: 'internal proxy error\n' })
    await withTimeout(closed, 3000, 'closing the h2 connection')
    await backToBaseline(shared.proxy)

    const fresh = http2.connect(`http://127.0.0.1:${shared.port}`)
    fresh.on('error', () => {})
    track(fresh)
    const ok = await h2request(fresh, {
      ':method': 'GET',
      ':scheme': 'http',
      ':authority': `127.0.0.1:${upstream.port}`,
      ':path': '/h2-after',
      'proxy-authorization': authOf(shared.ctx),
    })
    expect(ok.status).toBe(200)
    expect(ok.text).toBe('ok:/h2-after')
    fresh.close()
  })
})

describe('a panic inside a loopback tunnel (routed context, CONNECT localhost:3000)', () => {
  test('plain HTTP in the tunnel: 500, the tunnel is closed; a new tunnel is served by the dev box', async () => {
    const { conn, res } = await openTunnel(shared.port, 'localhost:3000', authOf(shared.routed))
    track(conn)
    expect(res.status).toBe(200)
    await waitFor(() => shared.proxy.stats().activeTunnels === 1)
    conn.write(buildRequest('GET', '/inner-panic', [['Host', 'localhost:3000'], PANIC]))
    const inner = await conn.readResponse({ timeout: 5000 })
    expectPanicAnswer(inner)
    await conn.waitClosed(3000)
    expect(standin.requests.some((r) => r.url === '/inner-panic')).toBe(false)
    await backToBaseline(shared.proxy)

    const next = await openTunnel(shared.port, 'localhost:3000', authOf(shared.routed))
    track(next.conn)
    expect(next.res.status).toBe(200)
    next.conn.write(buildRequest('GET', '/inner-ok', [['Host', 'localhost:3000']]))
    const ok = await next.conn.readResponse({ timeout: 5000 })
    expect(ok.status).toBe(200)
    expect(ok.text).toBe('devbox:/inner-ok')
  })

  test('HTTPS in the tunnel (intercepted TLS): 500, the tunnel is closed; other tunnels unaffected', async () => {
    const tlsOpts = { servername: 'localhost', ca: [shared.proxy.caCertificatePem()], ALPNProtocols: ['http/1.1'] }
    const bystander = track(await tlsTunnel(shared.port, 'localhost:3000', authOf(shared.routed), tlsOpts))
    const warm = await requestOver(bystander, { path: '/bystander-1', headers: { connection: 'keep-alive' } })
    expect(warm.status).toBe(200)

    const victim = track(await tlsTunnel(shared.port, 'localhost:3000', authOf(shared.routed), tlsOpts))
    const victimClosed = new Promise((resolve) => victim.once('close', resolve))
    const res = await requestOver(victim, { path: '/tls-panic', headers: { [PANIC[0]]: PANIC[1] } })
    expect(res.status).toBe(500)
    expect(res.text.trim()).toBe('internal proxy error')
    await withTimeout(victimClosed, 3000, 'closing the intercepted tunnel')
    expect(standin.requests.some((r) => r.url === '/tls-panic')).toBe(false)

    const again = await requestOver(bystander, { path: '/bystander-2', headers: { connection: 'keep-alive' } })
    expect(again.status).toBe(200)
    expect(again.text).toBe('devbox:/bystander-2')
    bystander.destroy()
    await backToBaseline(shared.proxy)
  })

  test('HTTP/2 in an intercepted tunnel: the stream gets 500 and the tunnel is closed', async () => {
    const t = track(await tlsTunnel(shared.port, 'localhost:3000', authOf(shared.routed), {
      servername: 'localhost',
      ca: [shared.proxy.caCertificatePem()],
      ALPNProtocols: ['h2'],
    }))
    expect(t.alpnProtocol).toBe('h2')
    const closed = new Promise((resolve) => t.once('close', resolve))
    const session = track(h2Over(t))
    const res = await h2Outcome(session, {
      ':method': 'GET',
      ':scheme': 'https',
      ':authority': 'localhost:3000',
      ':path': '/h2-tunnel-panic',
      [PANIC[0]]: PANIC[1],
    })
    expect(res, `the panicking stream ended with ${JSON.stringify(res)}`).toMatchObject({ status: 500, text: 'internal proxy error\n' })
    await withTimeout(closed, 3000, 'closing the intercepted h2 tunnel')
    await backToBaseline(shared.proxy)
  })
})
