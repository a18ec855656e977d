// Hostile clients and upstreams: every case has a defined outcome (a status,
// or a clean close within a few seconds), and afterwards the proxy is back to
// its baseline (no leaked connection or tunnel) and still serves a good request.

import crypto from 'node:crypto'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { authOf, buildRequest, Conn, getOn, openTunnel } from '../support/http-client.mjs'
import { sleep } from '../support/wait.mjs'
import { useProxy, useTracked } from './fixtures.mjs'
import { REALM, wsKey, wsUpgradeRequest } from './helpers.mjs'
import { backToBaseline, expectServed, outcome, sendRaw, startRawServer, startRecordingServer } from './hostile-helpers.mjs'
import { captureClientHelloRecord } from './tls-helpers.mjs'

const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' }
const RESPONSE_TIMEOUT = 800

let clientHello
let good, refuser, sink, garbage, hangup, silent, resetter

const sinkEvents = []

beforeAll(async () => {
  good = await startRecordingServer()
  // Answers any request with 405, like a server that knows no such method.
  refuser = await startRawServer((socket) => {
    socket.on('data', () => socket.end('HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'))
  })
  sink = await startRecordingServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    if (url.pathname === '/upload') {
      const ev = { url: req.url, received: 0, complete: null, closed: false }
      sinkEvents.push(ev)
      req.on('data', (c) => (ev.received += c.length))
      req.on('error', () => {})
      req.on('close', () => {
        ev.closed = true
        ev.complete = req.complete
      })
      req.on('end', () => res.end(`got ${ev.received}`))
      return
    }
    if (url.pathname === '/slow') {
      // 50 MB at about 3 MB/s: takes far longer than any test waits.
      const ev = { url: req.url, sent: 0, closed: false, finished: false }
      sinkEvents.push(ev)
      const total = 50 * 1024 * 1024
      const chunk = Buffer.alloc(64 * 1024, 0x61)
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(total) })
      const timer = setInterval(() => {
        if (ev.sent >= total) {
          clearInterval(timer)
          res.end()
          return
        }
        res.write(chunk)
        ev.sent += chunk.length
      }, 20)
      res.on('close', () => {
        clearInterval(timer)
        ev.closed = true
        ev.finished = res.writableFinished
      })
      return
    }
    res.end('sink')
  })
  garbage = await startRawServer((socket) => {
    socket.once('data', () => socket.end('NOT HTTP\r\n\r\n'))
  })
  hangup = await startRawServer((socket) => {
    socket.once('data', () => socket.destroy())
  })
  silent = await startRawServer()
  resetter = await startRawServer((socket) => {
    socket.once('data', (d) => {
      const chunked = d.toString('latin1').includes('/chunked')
      const rst = d.toString('latin1').includes('rst=1')
      if (chunked) {
        socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n' + 'b'.repeat(1000) + '\r\n')
      } else {
        socket.write('HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n' + 'a'.repeat(1000))
      }
      // Give the proxy time to relay the head, then cut the connection.
      setTimeout(() => (rst ? socket.resetAndDestroy() : socket.destroy()), 200)
    })
  })
  clientHello = await captureClientHelloRecord({ servername: 'localhost' })
})

afterAll(async () => {
  for (const srv of [good, refuser, sink, garbage, hangup, silent, resetter]) await srv?.close()
})

const shared = useProxy({
  enableHttp2: true,
  upstreamResponseTimeoutMs: RESPONSE_TIMEOUT,
  // Long, so that a close below is the proxy's reaction and not this timeout.
  upstreamConnectTimeoutMs: 8000,
}, { ctx: [1], routed: [2, ROUTE] })

afterEach(async () => {
  await backToBaseline(shared.proxy)
  const res = await expectServed(shared.port, `http://127.0.0.1:${good.port}/after-each`, authOf(shared.ctx))
  expect(res.text).toBe('ok:/after-each')
  await backToBaseline(shared.proxy)
})

// Sockets the tests keep, closed before the checks above (after hooks run in reverse order).
const track = useTracked()

const goodUrl = (path = '/') => `http://127.0.0.1:${good.port}${path}`
const goodHost = () => `127.0.0.1:${good.port}`

/** Asserts a 400-or-clean-close outcome and that the socket ends within a few seconds. */
async function expectRejectedOrClosed(conn, allowed = (s) => s === 400) {
  const result = await outcome(conn, 5000)
  if (result.status !== null) expect(allowed(result.status), `unexpected status ${result.status}`).toBe(true)
  await conn.waitClosed(3000)
  return result
}

// ---------------------------------------------------------------------------

describe('garbage and absurd request lines', () => {
  test.each([
    ['random bytes ending in a blank line', () => Buffer.concat([crypto.randomBytes(256), Buffer.from('\r\n\r\n')])],
    ['\\x00\\x01\\x02...', () => Buffer.from(Array.from({ length: 64 }, (_, i) => i))],
    ['HELLO and a blank line', () => Buffer.from('HELLO\r\n\r\n')],
    ['a request line without a version', () => Buffer.from('GET http://x/\r\n\r\n')],
    ['an HTTP/2 preface followed by junk', () => Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), crypto.randomBytes(64)])],
  ])('%s: 400 or a clean close, no hang', async (_, bytes) => {
    const before = good.requests.length
    const conn = track(await sendRaw(shared.port, bytes()))
    await expectRejectedOrClosed(conn)
    expect(good.requests.length).toBe(before)
  })

  test('a 200-character method: 4xx (the proxy\'s or the upstream\'s) or a clean close', async () => {
    const host = `127.0.0.1:${refuser.port}`
    const conn = track(await sendRaw(shared.port, buildRequest('M'.repeat(200), `http://${host}/absurd`, [['Host', host], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const result = await outcome(conn, 5000)
    if (result.status !== null) {
      expect(result.status).toBeGreaterThanOrEqual(400)
      expect(result.status).toBeLessThan(500)
    }
  })

  test('G@T as a method: 4xx or a clean close', async () => {
    const conn = track(await sendRaw(shared.port, buildRequest('G@T', goodUrl('/at'), [['Host', goodHost()], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const result = await outcome(conn, 5000)
    if (result.status !== null) {
      expect(result.status).toBeGreaterThanOrEqual(400)
      expect(result.status).toBeLessThan(500)
    }
    expect(good.requests.some((r) => r.url === '/at')).toBe(false)
  })

  test('absolute-form without a host (GET http:/// HTTP/1.1): 400', async () => {
    const conn = track(await sendRaw(shared.port, buildRequest('GET', 'http:///', [['Host', ''], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const result = await outcome(conn, 5000)
    expect(result.status).toBe(400)
  })

  test('origin-form on the listener (no tunnel binding): 400', async () => {
    const conn = track(await sendRaw(shared.port, buildRequest('GET', '/index.html', [['Host', goodHost()], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const result = await outcome(conn, 5000)
    expect(result.status).toBe(400)
    expect(good.requests.some((r) => r.url === '/index.html')).toBe(false)
  })
})

// ---------------------------------------------------------------------------

describe('CONNECT with a bad authority: 400', () => {
  test.each([
    ['unparsable', 'h:port'],
    ['unclosed bracket', '[::1:80'],
    ['two ports', 'h:80:90'],
    ['no port', 'h:'],
    ['no host', ':80'],
    ['IPv6 unbracketed', '::1:80'],
    ['port out of range', 'h:70000'],
    ['port 0', 'h:0'],
  ])('%s: CONNECT %s', async (_, authority) => {
    const conn = track(await sendRaw(shared.port, buildRequest('CONNECT', authority, [['Host', authority], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const res = await conn.readResponse({ connect: true, timeout: 5000 })
    expect(res.status).toBe(400)
  })

  test('empty: "CONNECT  HTTP/1.1"', async () => {
    const conn = track(await sendRaw(shared.port, `CONNECT  HTTP/1.1\r\nHost: x\r\nProxy-Authorization: ${authOf(shared.ctx)}\r\n\r\n`))
    const result = await outcome(conn, 5000)
    expect(result.status).toBe(400)
  })
})

// ---------------------------------------------------------------------------

describe('bad Proxy-Authorization: 407, and the connection stays usable for the retry', () => {
  const b64 = (s) => Buffer.from(s).toString('base64')
  const cases = [
    ['a wrong scheme', () => `Bearer ${b64(`${shared.ctx.username}:${shared.ctx.password}`)}`],
    ['Digest', () => `Digest username="${shared.ctx.username}", realm="x", nonce="n", uri="/", response="r"`],
    ['bad base64', () => 'Basic !!!not*base64!!!'],
    ['no colon', () => `Basic ${b64(shared.ctx.username + shared.ctx.password)}`],
    ['an empty password', () => `Basic ${b64(`${shared.ctx.username}:`)}`],
    ['an empty user', () => `Basic ${b64(`:${shared.ctx.password}`)}`],
    ['the right user with a wrong password', () => `Basic ${b64(`${shared.ctx.username}:${'0'.repeat(32)}`)}`],
    ['a 10 KiB header', () => `Basic ${b64(`${shared.ctx.username}:${'p'.repeat(10 * 1024)}`)}`],
    ['non-UTF-8 bytes', () => 'Basic \xff\xfe\xfd'],
  ]

  test.each(cases)('%s', async (_, header) => {
    const conn = track(await Conn.connect(shared.port))
    conn.write(buildRequest('GET', goodUrl('/denied'), [['Host', goodHost()], ['Proxy-Authorization', header()]]))
    const res = await conn.readResponse({ timeout: 5000 })
    expect(res.status).toBe(407)
    expect(res.headers['proxy-authenticate']).toBe(REALM)
    expect(good.requests.some((r) => r.url === '/denied')).toBe(false)
    const retry = await getOn(conn, goodUrl('/retry'), { auth: authOf(shared.ctx) })
    expect(retry.status).toBe(200)
  })

  test('a CONNECT with bad credentials gets 407 and no tunnel', async () => {
    const conn = track(await Conn.connect(shared.port))
    conn.write(buildRequest('CONNECT', goodHost(), [['Host', goodHost()], ['Proxy-Authorization', 'Basic !!!']]))
    const res = await conn.readResponse({ connect: true, timeout: 5000 })
    expect(res.status).toBe(407)
    expect(shared.proxy.stats().activeTunnels).toBe(0)
  })

  test("a released context's credentials", async () => {
    const gone = shared.proxy.createContext(77)
    expect(shared.proxy.releaseContext(gone.id)).toBe(true)
    const conn = track(await Conn.connect(shared.port))
    conn.write(buildRequest('GET', goodUrl('/released'), [['Host', goodHost()], ['Proxy-Authorization', authOf(gone)]]))
    const res = await conn.readResponse({ timeout: 5000 })
    expect(res.status).toBe(407)
    expect(good.requests.some((r) => r.url === '/released')).toBe(false)
    const tunnel = await openTunnel(shared.port, goodHost(), authOf(gone))
    track(tunnel.conn)
    expect(tunnel.res.status).toBe(407)
  })
})

// ---------------------------------------------------------------------------

describe('request smuggling: ambiguous framing gets 400 and the upstream receives nothing', () => {
  // A fresh upstream per case, so one case's leftovers cannot hide or fake another's.
  let upstream
  afterEach(async () => {
    await upstream?.close()
    upstream = undefined
  })

  async function attempt(lines, body, version = 'HTTP/1.1') {
    // Answers (and closes) if anything is ever forwarded, so a test cannot hang on it.
    upstream = await startRawServer((socket) => {
      socket.once('data', () => socket.end('HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nsmuggled!'))
    })
    const conn = track(await sendRaw(shared.port,
      `POST http://127.0.0.1:${upstream.port}/smuggle ${version}\r\nHost: 127.0.0.1:${upstream.port}\r\n` +
      `Proxy-Authorization: ${authOf(shared.ctx)}\r\n${lines.join('\r\n')}\r\n\r\n${body}`))
    const res = await conn.readResponse({ timeout: 5000 })
    // Give anything forwarded in the background time to arrive.
    await sleep(300)
    return { conn, res, forwarded: upstream.text() }
  }

  test.each([
    ['conflicting Content-Length headers', ['Content-Length: 5', 'Content-Length: 6'], 'hello!'],
    ['conflicting Content-Length values in one header', ['Content-Length: 5, 6'], 'hello!'],
    ['Transfer-Encoding: gzip (not ending in chunked)', ['Transfer-Encoding: gzip'], 'hello'],
    ['Transfer-Encoding: chunked, gzip', ['Transfer-Encoding: chunked, gzip'], '5\r\nhello\r\n0\r\n\r\n'],
    ['a negative Content-Length', ['Content-Length: -1'], 'x'],
    ['a non-numeric Content-Length', ['Content-Length: 5x'], 'hello'],
    ['whitespace before the colon', ['Transfer-Encoding : chunked'], '0\r\n\r\n'],
  ])('%s', async (_, lines, body) => {
    const { conn, res, forwarded } = await attempt(lines, body)
    expect(res.status, `forwarded: ${JSON.stringify(forwarded)}`).toBe(400)
    expect(forwarded).toBe('')
    expect(upstream.stats.connections).toBe(0)
    await conn.waitClosed(3000)
  })

  // hyper (RFC 9112 §6.3) reads Content-Length plus Transfer-Encoding: chunked as chunked,
  // drops the Content-Length before the proxy sees the request, and closes the connection
  // after answering. The proxy cannot tell such a request from a plain chunked one, so it
  // cannot answer 400; what it guarantees instead: the upstream gets one unambiguous chunked
  // request, and the bytes past the chunked body are never served as a request.
  test.each([
    ['Content-Length plus Transfer-Encoding: chunked', ['Content-Length: 6', 'Transfer-Encoding: chunked']],
    ['Transfer-Encoding: chunked plus Content-Length', ['Transfer-Encoding: chunked', 'Content-Length: 6']],
  ])('%s: framed as chunked, nothing smuggled, connection closed', async (_, lines) => {
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'
    const { conn, res, forwarded } = await attempt(lines, `0\r\n\r\n${smuggled}`)
    expect(res.status).toBe(200)
    const head = forwarded.slice(0, forwarded.indexOf('\r\n\r\n')).toLowerCase()
    expect(head.startsWith('post /smuggle http/1.1')).toBe(true)
    expect(head).toContain('transfer-encoding: chunked')
    expect(head).not.toContain('content-length')
    expect(forwarded.endsWith('\r\n\r\n0\r\n\r\n')).toBe(true)
    expect(forwarded).not.toContain('/smuggled')
    expect(upstream.stats.connections).toBe(1)
    await conn.waitClosed(3000)
  })

  test('HTTP/1.0 with Transfer-Encoding: chunked', async () => {
    const { res, forwarded } = await attempt(['Transfer-Encoding: chunked'], '0\r\n\r\n', 'HTTP/1.0')
    expect(res.status, `forwarded: ${JSON.stringify(forwarded)}`).toBe(400)
    expect(forwarded).toBe('')
    expect(upstream.stats.connections).toBe(0)
  })
})

// ---------------------------------------------------------------------------

describe('broken TLS inside an intercepted tunnel (CONNECT localhost:3000, routed context)', () => {
  test('a ClientHello cut off after 20 bytes, then a half-close: the proxy closes', async () => {
    const { conn, res } = await openTunnel(shared.port, 'localhost:3000', authOf(shared.routed), { allowHalfOpen: true })
    track(conn)
    expect(res.status).toBe(200)
    conn.write(clientHello.subarray(0, 20))
    await sleep(100)
    conn.end()
    await conn.waitClosed(3000)
  })

  test('a ClientHello cut off after 20 bytes, then the client goes away: nothing is left behind', async () => {
    const { conn, res } = await openTunnel(shared.port, 'localhost:3000', authOf(shared.routed))
    track(conn)
    expect(res.status).toBe(200)
    conn.write(clientHello.subarray(0, 20))
    await sleep(100)
    expect(shared.proxy.stats().activeTunnels).toBe(1)
    conn.destroy()
    // afterEach checks that the tunnel is gone.
  })

  test('a corrupted ClientHello: the proxy answers with an alert or nothing, and closes', async () => {
    const { conn, res } = await openTunnel(shared.port, 'localhost:3000', authOf(shared.routed))
    track(conn)
    expect(res.status).toBe(200)
    const bad = Buffer.from(clientHello)
    // Keep the record header (so it is sniffed as TLS), flip the handshake
    // header and the session id / cipher suite lengths.
    for (const i of [5, 6, 7, 8, 43, 44, 45, 76, 77, 78]) bad[i] ^= 0xff
    conn.write(bad)
    await conn.waitClosed(3000)
    const got = conn.take(conn.buf.length)
    if (got.length) expect(got[0]).toBe(0x15) // a TLS alert record
  })
})

// ---------------------------------------------------------------------------

describe('clients that disappear mid-body', () => {
  test('closing mid-upload (Content-Length 10 MB, 1 MB sent): the upstream sees the request aborted', async () => {
    const conn = track(await Conn.connect(shared.port))
    const total = 10 * 1024 * 1024
    conn.write(buildRequest('POST', `http://127.0.0.1:${sink.port}/upload`, [
      ['Host', `127.0.0.1:${sink.port}`],
      ['Proxy-Authorization', authOf(shared.ctx)],
      ['Content-Type', 'application/octet-stream'],
      ['Content-Length', String(total)],
    ]))
    conn.write(Buffer.alloc(1024 * 1024, 0x75))
    const ev = await waitForValue(() => sinkEvents.find((e) => e.url === '/upload' && e.received > 0), 5000, 'the upload never reached the upstream')
    await sleep(200)
    conn.destroy()
    await waitForValue(() => ev.closed || undefined, 3000, 'the upstream request was never closed')
    expect(ev.complete).toBe(false)
    expect(ev.received).toBeLessThan(total)
  })

  test('closing mid-download (50 MB streamed slowly): the upstream response is closed', async () => {
    const conn = track(await Conn.connect(shared.port))
    conn.write(buildRequest('GET', `http://127.0.0.1:${sink.port}/slow`, [['Host', `127.0.0.1:${sink.port}`], ['Proxy-Authorization', authOf(shared.ctx)]]))
    const res = await conn.readHead(5000)
    expect(res.status).toBe(200)
    await conn.readBytes(256 * 1024, 5000)
    const ev = sinkEvents.find((e) => e.url === '/slow')
    expect(ev).toBeTruthy()
    conn.destroy()
    await waitForValue(() => ev.closed || undefined, 3000, 'the upstream kept streaming to nobody')
    expect(ev.finished).toBe(false)
    expect(ev.sent).toBeLessThan(50 * 1024 * 1024)
  })
})

// ---------------------------------------------------------------------------

describe('upstreams that misbehave', () => {
  test('an upstream that closes mid-response (Content-Length): the client sees a truncated response and a close', async () => {
    const conn = track(await sendRaw(shared.port, buildRequest('GET', `http://127.0.0.1:${resetter.port}/cl`, [['Host', `127.0.0.1:${resetter.port}`], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const head = await conn.readHead(5000)
    expect(head.status).toBe(200)
    await conn.waitClosed(3000)
    expect(conn.buf.length).toBeLessThan(100000)
  })

  test('an upstream that resets mid-response (chunked): no terminating chunk reaches the client, and it is closed', async () => {
    const conn = track(await sendRaw(shared.port, buildRequest('GET', `http://127.0.0.1:${resetter.port}/chunked?rst=1`, [['Host', `127.0.0.1:${resetter.port}`], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const head = await conn.readHead(5000)
    expect(head.status).toBe(200)
    await conn.waitClosed(3000)
    const rest = conn.buf.toString('latin1')
    // A truncated body must not be turned into a complete chunked message.
    expect(rest).not.toMatch(/(^|\r\n)0\r\n\r\n$/)
  })

  test('an upstream that resets mid-response (Content-Length, RST): truncated or 502, never a hang', async () => {
    const conn = track(await sendRaw(shared.port, buildRequest('GET', `http://127.0.0.1:${resetter.port}/cl?rst=1`, [['Host', `127.0.0.1:${resetter.port}`], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const head = await conn.readHead(5000)
    expect([200, 502]).toContain(head.status)
    if (head.status === 200) {
      await conn.waitClosed(3000)
      expect(conn.buf.length).toBeLessThan(100000)
    }
  })

  test('an upstream that answers garbage: 502 with a one-line body', async () => {
    const conn = track(await sendRaw(shared.port, buildRequest('GET', `http://127.0.0.1:${garbage.port}/`, [['Host', `127.0.0.1:${garbage.port}`], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const res = await conn.readResponse({ timeout: 5000 })
    expect(res.status).toBe(502)
    expect(res.text.trim().length).toBeGreaterThan(0)
    expect(res.text.trim()).not.toContain('\n')
  })

  test('an upstream that closes without a response: 502', async () => {
    const conn = track(await sendRaw(shared.port, buildRequest('GET', `http://127.0.0.1:${hangup.port}/`, [['Host', `127.0.0.1:${hangup.port}`], ['Proxy-Authorization', authOf(shared.ctx)]])))
    const res = await conn.readResponse({ timeout: 5000 })
    expect(res.status).toBe(502)
  })

  test('a WebSocket upgrade whose upstream never answers: 504 after upstreamResponseTimeoutMs', async () => {
    const conn = track(await Conn.connect(shared.port))
    const t0 = Date.now()
    conn.write(wsUpgradeRequest(`http://127.0.0.1:${silent.port}/ws`, { auth: authOf(shared.ctx), key: wsKey() }))
    const res = await conn.readResponse({ timeout: RESPONSE_TIMEOUT * 6 })
    expect(res.status).toBe(504)
    expect(Date.now() - t0).toBeGreaterThanOrEqual(RESPONSE_TIMEOUT * 0.5)
    expect(silent.text()).toContain('GET /ws HTTP/1.1')
    // The upstream connection of the failed handshake is not kept.
    await waitForValue(() => silent.sockets.size === 0 || undefined, 3000, 'the proxy kept the silent upstream connection')
  })
})

/** Polls `fn` until it returns something other than undefined; fails after `timeout`. */
async function waitForValue(fn, timeout, message) {
  const deadline = Date.now() + timeout
  for (;;) {
    const v = fn()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms: ${message}`)
    await sleep(20)
  }
}

