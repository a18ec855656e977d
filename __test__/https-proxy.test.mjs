// The HTTPS proxy mode: TLS on the listener (next to plain HTTP/1.1 and h2c
// on the same port), a leaf from the proxy's CA for its own addresses, ALPN
// h2/http1.1, and everything the plain listener does, over TLS+h2 and
// TLS+HTTP/1.1. Node's tls/http2/https clients against real servers.

import crypto from 'node:crypto'
import http2 from 'node:http2'
import tls from 'node:tls'
import { WebSocket, WebSocketServer } from 'ws'
import { afterAll, beforeAll, describe, expect } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, buildRequest, Conn, proxyRequest } from '../support/http-client.mjs'
import { ECHO_FINAL, startEchoServer, startHttpServer } from '../support/servers.mjs'
import { sleep, waitFor, withTimeout } from '../support/wait.mjs'
import { spkiHash } from './browser-helpers.mjs'
import { startProxy, test, useTracked, withProxy } from './fixtures.mjs'
import { encodeFrame, readFrame, REALM, wsAccept, wsKey, wsUpgradeRequest } from './helpers.mjs'
import {
  connectOn, FRAME, H2_PREFACE, h2Connect, h2Fetch, h2Frame, H2FrameReader, h2ToProxy, hpackBlock, hpackRepeated,
  HttpsProxyTunnelAgent, sessionClosed, tlsToProxy,
} from './https-proxy-helpers.mjs'
import { captureFirstFlight, DEV_HOST, h2Over, ROUTE, startTlsServer, testCA, tlsOver } from './tls-helpers.mjs'

const SITE = 'site.test:8080' // a plain HTTP upstream, reached through the `resolve` option
const MAX_HEAD = 16384

let ca, site, devBox, echo, proxy, h1proxy, proxyCa, h1proxyCa
let plainAuth, routedAuth, h1Auth
const siteSeen = []
const devSeen = []
const wsSeen = []
const wsServers = []

/** This file's proxy options: its upstreams resolved and their CA trusted, then `options`. */
const optionsFor = (enableHttp2, options = {}) => ({
  enableHttp2,
  resolve: {
    [SITE]: `127.0.0.1:${site.port}`,
    [`${DEV_HOST}:443`]: `127.0.0.1:${devBox.port}`,
  },
  upstreamCaPem: [ca.certPem],
  logging: !!process.env.CMUX_PROXY_LOG,
  ...options,
})

function attachWs(server, label) {
  const wss = new WebSocketServer({ noServer: true })
  wsServers.push(wss)
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {})
    wss.handleUpgrade(req, socket, head, (ws) => {
      wsSeen.push({ label, url: req.url, host: req.headers.host, headers: req.headers })
      ws.on('error', () => {})
      ws.send(`welcome from ${label}`)
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    })
  })
}

beforeAll(async () => {
  ca = testCA()
  site = await startHttpServer(async (req, res) => {
    const chunks = []
    for await (const c of req) chunks.push(c)
    const body = Buffer.concat(chunks).toString()
    siteSeen.push({ method: req.method, url: req.url, host: req.headers.host, headers: req.headers, body })
    res.setHeader('content-type', 'text/plain')
    res.setHeader('x-upstream', 'site')
    res.end(`site:${req.method}:${req.url}:${body}`)
  })
  attachWs(site.server, 'site')
  // The dev box behind the rewrite speaks HTTP/2 (and HTTP/1.1 for WebSocket upgrades).
  devBox = await startTlsServer((req, res) => {
    devSeen.push({ method: req.method, url: req.url, host: req.headers.host ?? req.headers[':authority'], httpVersion: req.httpVersion })
    if (req.url.startsWith('/hold')) {
      // Answers late unless the proxy cancels it first.
      const timer = setTimeout(() => res.end('held'), 3000)
      res.on('close', () => clearTimeout(timer))
      return
    }
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ url: req.url, host: req.headers.host ?? req.headers[':authority'], httpVersion: req.httpVersion }))
  }, { h2: true })
  attachWs(devBox.server, 'devbox')
  echo = await startEchoServer()
  proxy = await startProxy(optionsFor(true, { maxHeadBytes: MAX_HEAD }))
  h1proxy = await startProxy(optionsFor(false))
  proxyCa = proxy.caCertificatePem()
  h1proxyCa = h1proxy.caCertificatePem()
  plainAuth = authOf(proxy.createContext(1))
  routedAuth = authOf(proxy.createContext(2, ROUTE))
  h1Auth = authOf(h1proxy.createContext(1))
}, 60000)

afterAll(async () => {
  for (const wss of wsServers) {
    for (const c of wss.clients) c.terminate()
    wss.close()
  }
  await proxy?.stop()
  await h1proxy?.stop()
  await site?.close()
  await devBox?.close()
  await echo?.close()
})

// Sockets, sessions and WebSockets the tests keep, closed before the above (after hooks run in reverse order).
const track = useTracked({ after: 'all' })

const siteGet = (path, auth) => ({
  ':method': 'GET',
  ':scheme': 'http',
  ':authority': SITE,
  ':path': path,
  ...(auth ? { 'proxy-authorization': auth } : {}),
})

/** A TLS connection to `p` trusting its CA, with `opts` (ALPNProtocols, servername...). */
const tlsTo = async (p, opts = {}) => track(await tlsToProxy(p.port(), { ca: [p.caCertificatePem()], servername: 'localhost', ...opts }))
const h2To = async (p, opts = {}) => track(await h2ToProxy(p.port(), [p.caCertificatePem()], opts))

/** One absolute-form HTTP/1.1 request on an open (TLS) Conn; returns the response. */
async function h1Get(conn, url, auth, extraHeaders = []) {
  const headers = [['Host', new URL(url).host], ...extraHeaders]
  if (auth) headers.push(['Proxy-Authorization', auth])
  conn.write(buildRequest('GET', url, headers))
  return conn.readResponse()
}

// ---------------------------------------------------------------------------

describe('ALPN on the listener', () => {
  test('HTTP/2 proxy, client offering h2 and http/1.1: h2 is chosen and requests run on it', async () => {
    const t = await tlsTo(proxy, { ALPNProtocols: ['h2', 'http/1.1'] })
    expect(t.alpnProtocol).toBe('h2')
    const session = track(h2Over(t, `https://127.0.0.1:${proxy.port()}`))
    const res = await h2Fetch(session, siteGet('/alpn-h2', plainAuth))
    expect(res.status).toBe(200)
    expect(res.text).toBe('site:GET:/alpn-h2:')
    session.close()
  })

  test('HTTP/2 proxy, client offering only http/1.1: http/1.1, and requests run on it', async () => {
    const t = await tlsTo(proxy, { ALPNProtocols: ['http/1.1'] })
    expect(t.alpnProtocol).toBe('http/1.1')
    const res = await h1Get(new Conn(t), `http://${SITE}/alpn-h1`, plainAuth)
    expect(res.status).toBe(200)
    expect(res.text).toBe('site:GET:/alpn-h1:')
  })

  test('proxy started with enableHttp2 = false: http/1.1 even when the client offers h2 first', async () => {
    const t = await tlsTo(h1proxy, { ALPNProtocols: ['h2', 'http/1.1'] })
    expect(t.alpnProtocol).toBe('http/1.1')
    const res = await h1Get(new Conn(t), `http://${SITE}/alpn-h1-only`, h1Auth)
    expect(res.status).toBe(200)
    expect(res.text).toBe('site:GET:/alpn-h1-only:')
  })

  test('proxy started with enableHttp2 = false does not offer h2: a client offering only h2 gets no h2', async () => {
    const outcome = await tlsToProxy(h1proxy.port(), { ca: [h1proxyCa], servername: 'localhost', ALPNProtocols: ['h2'] }).then(
      (t) => {
        track(t)
        return { alpn: t.alpnProtocol }
      },
      (e) => ({ error: e.code ?? e.message }),
    )
    // rustls refuses the handshake (no_application_protocol); a server that ignored ALPN would do too.
    expect(outcome.alpn).not.toBe('h2')
    console.log('[alpn] h2-only client on an HTTP/1.1 proxy:', outcome)
  })

  test('a client without ALPN gets HTTP/1.1', async () => {
    const t = await tlsTo(proxy)
    expect(t.alpnProtocol).toBe(false)
    const res = await h1Get(new Conn(t), `http://${SITE}/no-alpn`, plainAuth)
    expect(res.status).toBe(200)
    expect(res.text).toBe('site:GET:/no-alpn:')
  })
})

describe("the listener's certificate", () => {
  test('verifies against caCertificatePem() with servername localhost', async () => {
    const t = await tlsTo(proxy, { servername: 'localhost' })
    expect(t.authorized).toBe(true)
    expect(t.authorizationError).toBeNull()
  })

  test('connecting by IP 127.0.0.1 without a servername passes checkServerIdentity (IP SAN)', async () => {
    const checked = []
    const t = track(await tlsToProxy(proxy.port(), {
      ca: [proxyCa],
      checkServerIdentity: (host, cert) => {
        const err = tls.checkServerIdentity(host, cert)
        checked.push({ host, err: err?.message ?? null })
        return err
      },
    }))
    expect(t.authorized).toBe(true)
    expect(checked).toEqual([{ host: '127.0.0.1', err: null }])
    // And the identity check is real: another name is refused.
    const cert = t.getPeerCertificate()
    expect(tls.checkServerIdentity('::1', cert)).toBeUndefined()
    expect(tls.checkServerIdentity('localhost', cert)).toBeUndefined()
    expect(tls.checkServerIdentity('example.com', cert)?.message).toMatch(/not in the cert's altnames/)
    expect(tls.checkServerIdentity('127.0.0.2', cert)?.message).toMatch(/IP: 127\.0\.0\.2 is not in the cert's list/)
  })

  test("the chain served includes the proxy's CA, and the leaf is issued by it", async () => {
    // Trusting nothing: what the client learns about the CA can only come from the chain the proxy sent.
    const t = track(await tlsToProxy(proxy.port(), { rejectUnauthorized: false, servername: 'localhost' }))
    expect(t.authorized).toBe(false)
    expect(t.authorizationError).toBe('SELF_SIGNED_CERT_IN_CHAIN')
    const caCert = new crypto.X509Certificate(proxyCa)
    const leaf = t.getPeerCertificate(true)
    expect(leaf.issuerCertificate, 'issuer certificate in the chain').toBeTruthy()
    expect(leaf.issuerCertificate.fingerprint256).toBe(caCert.fingerprint256)
    const leafX509 = t.getPeerX509Certificate()
    expect(leafX509.ca).toBe(false)
    expect(leafX509.checkIssued(caCert)).toBe(true)
    expect(leafX509.verify(caCert.publicKey)).toBe(true)
  })

  test('SANs: DNS localhost, IP 127.0.0.1, IP ::1 and nothing else', async () => {
    const t = await tlsTo(proxy)
    const sans = t.getPeerX509Certificate().subjectAltName.split(', ').sort()
    expect(sans).toEqual(['DNS:localhost', 'IP Address:0:0:0:0:0:0:0:1', 'IP Address:127.0.0.1'].sort())
  })

  test('listening on another address (127.0.0.2) adds that IP to the SANs and to proxyRules', async ({ newProxy }) => {
    const other = await newProxy({ listen: '127.0.0.2:0', enableHttp2: true })
    const t = track(await tlsToProxy(other.port(), { host: '127.0.0.2', ca: [other.caCertificatePem()] }))
    expect(t.authorized).toBe(true)
    const sans = t.getPeerX509Certificate().subjectAltName.split(', ').sort()
    expect(sans).toEqual(['DNS:localhost', 'IP Address:0:0:0:0:0:0:0:1', 'IP Address:127.0.0.1', 'IP Address:127.0.0.2'].sort())
    expect(other.proxyRules()).toBe(`http=https://127.0.0.2:${other.port()};https=https://127.0.0.2:${other.port()}`)
  })
})

describe('failed and stalled TLS handshakes', () => {
  test('a client that does not trust the CA fails cleanly; nothing stays open, nothing is counted', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true))
    for (const ALPNProtocols of [['h2', 'http/1.1'], ['http/1.1']]) {
      const err = await tlsToProxy(p.port(), { servername: 'localhost', ALPNProtocols }).then(
        (t) => {
          t.destroy()
          return null
        },
        (e) => e,
      )
      expect(err, 'the handshake must fail').toBeInstanceOf(Error)
      expect(err.code).toBe('SELF_SIGNED_CERT_IN_CHAIN')
    }
    await waitFor(() => p.stats().activeConnections === 0, {
      timeout: 5000,
      message: `activeConnections is ${p.stats().activeConnections}, expected 0 after the failed handshakes`,
    })
    expect(p.stats().accepted).toEqual({ http1: 0, h2c: 0, tlsHttp1: 0, tlsH2: 0 })
    // The listener is fine afterwards.
    const ok = track(await tlsToProxy(p.port(), { ca: [p.caCertificatePem()], servername: 'localhost' }))
    expect(ok.authorized).toBe(true)
  })

  test('half a ClientHello is closed at the TLS handshake timeout (tlsHandshakeTimeoutMs), not headerReadTimeoutMs', async ({ newProxy }) => {
    // tlsHandshakeTimeoutMs is 1 s here; the head timeout is far away (60 s).
    const p = await newProxy(optionsFor(true, { tlsHandshakeTimeoutMs: 1000, headerReadTimeoutMs: 60000 }))
    const hello = await captureFirstFlight()
    expect(hello[0]).toBe(0x16) // a TLS handshake record
    const conn = track(await Conn.connect(p.port(), { timeout: 8000 }))
    conn.write(hello.subarray(0, Math.floor(hello.length / 2)))
    await waitFor(() => p.stats().activeConnections === 1, { timeout: 3000, message: 'the proxy holds the connection' })
    await conn.waitClosed(6000)
    // Closed without an HTTP answer: the bytes were taken for TLS, not for a request.
    expect(conn.buf.toString('latin1')).not.toMatch(/^HTTP\//)
    await waitFor(() => p.stats().activeConnections === 0, { timeout: 3000, message: 'activeConnections back to 0' })
    expect(p.stats().accepted).toEqual({ http1: 0, h2c: 0, tlsHttp1: 0, tlsH2: 0 })
  })

  test('upstreamConnectTimeoutMs does not bound the client\'s TLS handshake (its own option does, 10 s by default)', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true, { upstreamConnectTimeoutMs: 500, headerReadTimeoutMs: 60000 }))
    const hello = await captureFirstFlight()
    const conn = track(await Conn.connect(p.port(), { timeout: 8000 }))
    conn.write(hello.subarray(0, Math.floor(hello.length / 2)))
    await sleep(2000)
    expect(conn.closed).toBe(false)
    expect(p.stats().activeConnections).toBe(1)
  })

  test('after the handshake, an HTTP/1.1 connection that sends no request is closed at headerReadTimeoutMs', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true, { headerReadTimeoutMs: 1000 }))
    const t = track(await tlsToProxy(p.port(), { ca: [p.caCertificatePem()], servername: 'localhost', ALPNProtocols: ['http/1.1'] }))
    const closed = await withTimeout(new Promise((resolve) => t.once('close', () => resolve(true))), 8000, 'the idle TLS connection closing')
    expect(closed).toBe(true)
    await waitFor(() => p.stats().activeConnections === 0, { timeout: 3000, message: 'activeConnections back to 0' })
  })

  test('an idle TLS HTTP/2 session gets GOAWAY at http2IdleTimeoutMs and is closed', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true, { http2IdleTimeoutMs: 1000 }))
    const ctx = p.createContext(1)
    const session = await h2To(p)
    const res = await h2Fetch(session, siteGet('/before-idle', authOf(ctx)))
    expect(res.status).toBe(200)
    expect(await sessionClosed(session, 8000), 'session closed within 8 s').toBe(true)
    expect(session.goaways.length, 'GOAWAY frames received').toBeGreaterThanOrEqual(1)
    expect(session.goaways[0].code).toBe(http2.constants.NGHTTP2_NO_ERROR)
  })
})

describe('TLS + HTTP/2 to the proxy', () => {
  test('no credentials: 407 with Proxy-Authenticate on the stream; the session then authenticates', async () => {
    const session = await h2To(proxy)
    const before = siteSeen.length
    const denied = await h2Fetch(session, siteGet('/no-auth'))
    expect(denied.status).toBe(407)
    expect(denied.headers['proxy-authenticate']).toBe(REALM)
    expect(siteSeen.length).toBe(before)
    const deniedConnect = await h2Connect(session, `127.0.0.1:${echo.port}`)
    expect(deniedConnect.headers[':status']).toBe(407)
    expect(deniedConnect.headers['proxy-authenticate']).toBe(REALM)
    deniedConnect.stream.close()
    const ok = await h2Fetch(session, siteGet('/after-407', plainAuth))
    expect(ok.status).toBe(200)
    expect(ok.text).toBe('site:GET:/after-407:')
    expect(session.goaways).toEqual([])
    session.close()
  })

  test('absolute-form GET and POST (:scheme http, :authority site.test:8080) reach the upstream', async () => {
    const session = await h2To(proxy)
    const res = await h2Fetch(session, { ...siteGet('/abs?q=1', plainAuth), 'x-custom': 'over-tls-h2' })
    expect(res.status).toBe(200)
    expect(res.text).toBe('site:GET:/abs?q=1:')
    expect(res.headers['x-upstream']).toBe('site')
    const seen = siteSeen.at(-1)
    expect(seen).toMatchObject({ url: '/abs?q=1', host: SITE })
    expect(seen.headers['x-custom']).toBe('over-tls-h2')
    expect(seen.headers).not.toHaveProperty('proxy-authorization')
    const post = await h2Fetch(session, { ...siteGet('/post', plainAuth), ':method': 'POST' }, 'tls-h2-body')
    expect(post.status).toBe(200)
    expect(post.text).toBe('site:POST:/post:tls-h2-body')
    session.close()
  })

  test('a routed context: localhost:3000 is rewritten to the dev box', async () => {
    const session = await h2To(proxy)
    const res = await h2Fetch(session, {
      ':method': 'GET',
      ':scheme': 'http',
      ':authority': 'localhost:3000',
      ':path': '/rewritten?x=1',
      'proxy-authorization': routedAuth,
    })
    expect(res.status).toBe(200)
    expect(JSON.parse(res.text)).toEqual({ url: '/rewritten?x=1', host: DEV_HOST, httpVersion: '2.0' })
    session.close()
  })

  test('a CONNECT stream to an echo server carries bytes both ways, with half-close', async () => {
    const session = await h2To(proxy)
    const endedBefore = echo.events.ended
    const { stream, headers } = await h2Connect(session, `127.0.0.1:${echo.port}`, plainAuth)
    expect(headers[':status']).toBe(200)
    const conn = new Conn(stream)
    conn.write('ping over a CONNECT stream')
    expect((await conn.readBytes(26)).toString()).toBe('ping over a CONNECT stream')
    const big = crypto.randomBytes(3 << 20) // beyond the 1 MiB stream window
    conn.write(big)
    expect((await conn.readBytes(big.length)).equals(big)).toBe(true)
    conn.end()
    const rest = await conn.readToEnd()
    expect(rest.equals(ECHO_FINAL)).toBe(true)
    expect(echo.events.ended).toBe(endedBefore + 1)
    session.close()
  })

  test('CONNECT localhost:3000 of a routed context: TLS intercepted inside the stream, h2 inside, served by the dev box', async () => {
    const session = await h2To(proxy)
    const { stream, headers } = await h2Connect(session, 'localhost:3000', routedAuth)
    expect(headers[':status']).toBe(200)
    const inner = track(await tlsOver(stream, { servername: 'localhost', ca: [proxyCa], ALPNProtocols: ['h2', 'http/1.1'] }))
    expect(inner.alpnProtocol).toBe('h2')
    expect(inner.getPeerX509Certificate().subjectAltName).toContain('DNS:localhost')
    const innerSession = track(h2Over(inner))
    for (const i of [1, 2]) {
      const res = await h2Fetch(innerSession, { ':method': 'GET', ':scheme': 'https', ':authority': 'localhost:3000', ':path': `/inner-${i}` })
      expect(res.status).toBe(200)
      expect(JSON.parse(res.text)).toEqual({ url: `/inner-${i}`, host: DEV_HOST, httpVersion: '2.0' })
    }
    innerSession.close()
    session.close()
  })

  test('CONNECT localhost:3000 of a routed context: plaintext HTTP and a WebSocket upgrade inside the stream', async () => {
    const session = await h2To(proxy)
    const a = await h2Connect(session, 'localhost:3000', routedAuth)
    expect(a.headers[':status']).toBe(200)
    const plain = new Conn(a.stream)
    plain.write(buildRequest('GET', '/plain-in-stream', [['Host', 'localhost:3000']]))
    const res = await plain.readResponse()
    expect(res.status).toBe(200)
    expect(JSON.parse(res.text)).toMatchObject({ url: '/plain-in-stream', host: DEV_HOST })

    const b = await h2Connect(session, 'localhost:3000', routedAuth)
    expect(b.headers[':status']).toBe(200)
    const ws = new Conn(b.stream)
    const key = wsKey()
    ws.write(buildRequest('GET', '/hmr', [
      ['Host', 'localhost:3000'],
      ['Upgrade', 'websocket'],
      ['Connection', 'Upgrade'],
      ['Sec-WebSocket-Key', key],
      ['Sec-WebSocket-Version', '13'],
    ]))
    const head = await ws.readHead()
    expect(head.status).toBe(101)
    expect(head.headers['sec-websocket-accept']).toBe(wsAccept(key))
    expect((await readFrame(ws)).payload.toString()).toBe('welcome from devbox')
    expect(wsSeen.at(-1)).toMatchObject({ label: 'devbox', url: '/hmr', host: DEV_HOST })
    ws.write(encodeFrame(0x1, 'hmr over a CONNECT stream'))
    expect((await readFrame(ws)).payload.toString()).toBe('hmr over a CONNECT stream')
    a.stream.close()
    b.stream.close()
    session.close()
  })

  test('RFC 8441: a WebSocket over extended CONNECT, to a plain upstream and rewritten to the dev box', async () => {
    const session = await h2To(proxy)
    expect(session.firstSettings.enableConnectProtocol).toBe(true)
    for (const [authority, path, auth, label, host] of [
      [SITE, '/ws-8441', plainAuth, 'site', SITE],
      ['localhost:3000', '/hmr', routedAuth, 'devbox', DEV_HOST],
    ]) {
      const { stream, headers } = await h2Connect(session, authority, auth, {
        ':protocol': 'websocket',
        ':scheme': 'http',
        ':path': path,
        'sec-websocket-version': '13',
      })
      expect(headers[':status'], `${authority}${path}`).toBe(200)
      const conn = new Conn(stream)
      expect((await readFrame(conn)).payload.toString()).toBe(`welcome from ${label}`)
      expect(wsSeen.at(-1)).toMatchObject({ label, url: path, host })
      expect(wsSeen.at(-1).headers).not.toHaveProperty('proxy-authorization')
      const bin = crypto.randomBytes(70 * 1024)
      conn.write(encodeFrame(0x2, bin))
      const echoed = await readFrame(conn)
      expect(echoed.opcode).toBe(0x2)
      expect(echoed.payload.equals(bin)).toBe(true)
      stream.close()
    }
    session.close()
  })

  test(`a header block over maxHeadBytes (${MAX_HEAD}) gets 431; the session stays usable`, async () => {
    const session = await h2To(proxy)
    const before = siteSeen.length
    const big = await h2Fetch(session, { ...siteGet('/big-head', plainAuth), 'x-pad': 'v'.repeat(MAX_HEAD + 4096) })
    expect(big.status, JSON.stringify({ status: big.status, rstCode: big.rstCode })).toBe(431)
    expect(siteSeen.length).toBe(before)
    const small = await h2Fetch(session, { ...siteGet('/small-head', plainAuth), 'x-pad': 'v'.repeat(1000) })
    expect(small.status).toBe(200)
    expect(siteSeen.length).toBe(before + 1)
    session.close()
  })

  test('SETTINGS towards the client: 1000 concurrent streams, 1 MiB stream window, extended CONNECT', async () => {
    const session = await h2To(proxy)
    expect(session.firstSettings).toMatchObject({
      maxConcurrentStreams: 1000,
      initialWindowSize: 1 << 20,
      enableConnectProtocol: true,
    })
    session.close()
  })

  test('http2MaxConcurrentStreams changes SETTINGS_MAX_CONCURRENT_STREAMS', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true, { http2MaxConcurrentStreams: 64 }))
    const session = await h2To(p)
    expect(session.firstSettings.maxConcurrentStreams).toBe(64)
    session.close()
  })

  /** Opens 300 GET streams on `session` (routed, held by the dev box); returns them. */
  function open300(session, tag) {
    return Array.from({ length: 300 }, (_, i) => {
      const stream = session.request({
        ':method': 'GET',
        ':scheme': 'http',
        ':authority': 'localhost:3000',
        ':path': `/hold?${tag}=${i}`,
        'proxy-authorization': routedAuth,
      })
      stream.on('error', () => {})
      return stream
    })
  }

  async function fiftyMore(session, tag) {
    const results = await Promise.all(Array.from({ length: 50 }, (_, i) => h2Fetch(session, siteGet(`/after-${tag}-${i}`, plainAuth))))
    expect(session.goaways, 'GOAWAY frames received after the resets').toEqual([])
    expect(results.map((r) => r.status ?? `reset ${r.rstCode}`)).toEqual(Array(50).fill(200))
    results.forEach((r, i) => expect(r.text).toBe(`site:GET:/after-${tag}-${i}:`))
    expect(session.closed || session.destroyed).toBe(false)
  }

  test('300 streams reset by the client right away (HEADERS and RST_STREAM back to back): no GOAWAY, 50 more requests succeed', async () => {
    const session = await h2To(proxy)
    const streams = open300(session, 'rapid')
    // Same tick: nghttp2 sends each HEADERS, then each RST_STREAM (CANCEL).
    for (const stream of streams) stream.close(http2.constants.NGHTTP2_CANCEL)
    await waitFor(() => streams.every((s) => s.closed), { timeout: 5000, message: 'all 300 streams closed' })
    expect(session.state.nextStreamID).toBe(601)
    await fiftyMore(session, 'rapid')
    session.close()
  })

  test('300 streams in flight at the dev box, then all reset (a reload mid-load): no GOAWAY, 50 more requests succeed', async () => {
    const session = await h2To(proxy)
    const heldBefore = devSeen.filter((r) => r.url.startsWith('/hold?inflight=')).length
    const streams = open300(session, 'inflight')
    await waitFor(() => devSeen.filter((r) => r.url.startsWith('/hold?inflight=')).length - heldBefore === 300, {
      timeout: 10000,
      message: 'the dev box holds all 300 requests',
    })
    for (const stream of streams) stream.close(http2.constants.NGHTTP2_CANCEL)
    await waitFor(() => streams.every((s) => s.closed), { timeout: 5000, message: 'all 300 streams closed' })
    await fiftyMore(session, 'inflight')
    session.close()
  })
  /**
   * Writes the preface, SETTINGS and `n` × (HEADERS, RST_STREAM CANCEL) of one GET, compressed by HPACK
   * indexing to 27 bytes a pair so that the burst fits one TLS record and reaches the proxy in one read.
   */
  async function rapidResets(p, auth, n, tag) {
    const t = await tlsTo(p, { ALPNProtocols: ['h2'] })
    expect(t.alpnProtocol).toBe('h2')
    const reader = new H2FrameReader(t)
    const { first, repeat } = hpackRepeated({ ':method': 'GET', ':scheme': 'http', ':authority': SITE, ':path': `/${tag}`, 'proxy-authorization': auth })
    const burst = [H2_PREFACE, h2Frame(FRAME.SETTINGS, 0, 0)]
    for (let i = 0; i < n; i++) {
      const id = 1 + 2 * i
      burst.push(h2Frame(FRAME.HEADERS, END_STREAM_HEADERS, id, i === 0 ? first : repeat))
      burst.push(h2Frame(FRAME.RST_STREAM, 0, id, Buffer.from([0, 0, 0, http2.constants.NGHTTP2_CANCEL])))
    }
    const bytes = Buffer.concat(burst)
    expect(bytes.length).toBeLessThan(16384)
    t.write(bytes)
    return { t, reader, nextId: 1 + 2 * n }
  }
  const END_STREAM_HEADERS = 0x1 | 0x4
  const rawGet = (path, auth) => hpackBlock({ ':method': 'GET', ':scheme': 'http', ':authority': SITE, ':path': path, 'proxy-authorization': auth })

  test('raw frames: 250 × (HEADERS, RST_STREAM) in one write, then 50 GETs on the same connection: no GOAWAY, 50 × 200', async () => {
    // The rapid-reset pattern a reload produces, on the wire in one piece (hyper's default of 20 pending-accept
    // resets would answer it with GOAWAY ENHANCE_YOUR_CALM), within the allowance (http2MaxResets, 300).
    const { t, reader, nextId } = await rapidResets(proxy, plainAuth, 250, 'raw-reset')
    const seenBefore = siteSeen.length
    const after = []
    for (let i = 0; i < 50; i++) {
      const id = nextId + 2 * i
      after.push(id)
      t.write(h2Frame(FRAME.HEADERS, END_STREAM_HEADERS, id, rawGet(`/raw-after-${i}`, plainAuth)))
    }
    const responded = () => new Set(reader.of(FRAME.HEADERS).filter((f) => f.streamId >= nextId).map((f) => f.streamId))
    await waitFor(() => responded().size === 50 || reader.goaways().length > 0 || reader.closed, {
      timeout: 10000,
      message: `responses to the 50 GETs (got ${responded().size})`,
    })
    expect(reader.goaways(), 'GOAWAY frames from the proxy').toEqual([])
    expect(reader.closed).toBe(false)
    const heads = reader.of(FRAME.HEADERS).filter((f) => f.streamId >= nextId)
    expect(heads.map((f) => f.streamId).sort((a, b) => a - b)).toEqual(after)
    // HPACK static index 8 is ":status: 200"; an indexed field is 0x80 | index.
    for (const f of heads) expect(f.payload[0], `stream ${f.streamId} :status`).toBe(0x88)
    await waitFor(() => siteSeen.slice(seenBefore).filter((r) => r.url.startsWith('/raw-after-')).length === 50, {
      timeout: 5000,
      message: 'the upstream saw the 50 GETs',
    })
  })

  test('past the reset allowance (http2MaxResets, 300 by default) a burst of 400 gets GOAWAY ENHANCE_YOUR_CALM', async () => {
    // Abuse protection is kept, only sized for a browser's reloads (bench/scenarios/h2-resets.mjs measured them).
    const { reader } = await rapidResets(proxy, plainAuth, 400, 'abusive')
    await waitFor(() => reader.goaways().length > 0, { timeout: 5000, message: 'a GOAWAY for 400 rapid resets' })
    expect(reader.goaways()[0].code).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM)
  })

  test('http2MaxResets sets the allowance: at 64, a burst of 100 gets GOAWAY ENHANCE_YOUR_CALM', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true, { http2MaxResets: 64 }))
    const { reader } = await rapidResets(p, authOf(p.createContext(1)), 100, 'abusive-64')
    await waitFor(() => reader.goaways().length > 0, { timeout: 5000, message: 'a GOAWAY for 100 rapid resets at 64' })
    expect(reader.goaways()[0].code).toBe(http2.constants.NGHTTP2_ENHANCE_YOUR_CALM)
  })
})

describe('TLS + HTTP/1.1 to the proxy', () => {
  const h1Tls = async () => new Conn(await tlsTo(proxy, { ALPNProtocols: ['http/1.1'] }))

  test('absolute-form GET: 407 without credentials, then 200 on the same connection', async () => {
    const conn = await h1Tls()
    const denied = await h1Get(conn, `http://${SITE}/h1-no-auth`)
    expect(denied.status).toBe(407)
    expect(denied.headers['proxy-authenticate']).toBe(REALM)
    const ok = await h1Get(conn, `http://${SITE}/h1-abs?x=2`, plainAuth)
    expect(ok.status).toBe(200)
    expect(ok.text).toBe('site:GET:/h1-abs?x=2:')
    expect(siteSeen.at(-1)).toMatchObject({ url: '/h1-abs?x=2', host: SITE })
    expect(siteSeen.at(-1).headers).not.toHaveProperty('proxy-authorization')
    conn.destroy()
  })

  test('localhost:3000 of a routed context is rewritten to the dev box', async () => {
    const conn = await h1Tls()
    const res = await h1Get(conn, 'http://localhost:3000/h1-rewritten', routedAuth)
    expect(res.status).toBe(200)
    expect(JSON.parse(res.text)).toMatchObject({ url: '/h1-rewritten', host: DEV_HOST })
    conn.destroy()
  })

  test(`a head over maxHeadBytes gets 431`, async () => {
    const conn = await h1Tls()
    const res = await h1Get(conn, `http://${SITE}/h1-big`, plainAuth, [['X-Pad', 'v'.repeat(MAX_HEAD + 4096)]])
    expect(res.status).toBe(431)
    conn.destroy()
  })

  test('CONNECT to an echo server: the tunnel carries bytes both ways', async () => {
    const t = await tlsTo(proxy, { ALPNProtocols: ['http/1.1'] })
    await connectOn(t, `127.0.0.1:${echo.port}`, plainAuth)
    const conn = new Conn(t)
    conn.write('bytes through a CONNECT over TLS')
    expect((await conn.readBytes(32)).toString()).toBe('bytes through a CONNECT over TLS')
    const big = crypto.randomBytes(2 << 20)
    conn.write(big)
    expect((await conn.readBytes(big.length)).equals(big)).toBe(true)
    conn.destroy()
  })

  test('a WebSocket upgrade (absolute-form) to a plain upstream', async () => {
    const conn = await h1Tls()
    const key = wsKey()
    conn.write(wsUpgradeRequest(`http://${SITE}/ws-h1`, { auth: plainAuth, key }))
    const head = await conn.readHead()
    expect(head.status).toBe(101)
    expect(head.headers['sec-websocket-accept']).toBe(wsAccept(key))
    expect((await readFrame(conn)).payload.toString()).toBe('welcome from site')
    expect(wsSeen.at(-1)).toMatchObject({ label: 'site', url: '/ws-h1', host: SITE })
    conn.write(encodeFrame(0x1, 'text over tls h1'))
    expect((await readFrame(conn)).payload.toString()).toBe('text over tls h1')
    conn.destroy()
  })

  test('the ws library through a CONNECT tunnel over TLS: ws://localhost:3000/hmr reaches the dev box', async () => {
    const agent = new HttpsProxyTunnelAgent({ proxyPort: proxy.port(), auth: routedAuth, ca: [proxyCa] })
    const ws = track(new WebSocket('ws://localhost:3000/hmr', { agent }))
    const inbox = []
    ws.on('message', (d) => inbox.push(String(d)))
    await withTimeout(new Promise((resolve, reject) => {
      ws.once('open', resolve)
      ws.once('error', reject)
    }), 10000, 'ws open through the HTTPS proxy')
    expect(agent.proxySockets.length).toBe(1)
    expect(agent.proxySockets[0].alpnProtocol).toBe('http/1.1')
    await waitFor(() => inbox.includes('welcome from devbox'), { timeout: 5000, message: 'welcome message' })
    expect(wsSeen.at(-1)).toMatchObject({ label: 'devbox', url: '/hmr', host: DEV_HOST })
    ws.send('hello through ws')
    await waitFor(() => inbox.includes('hello through ws'), { timeout: 5000, message: 'echo' })
    ws.close()
  })
})

describe('releaseContext closes the TLS connections of that context', () => {
  test('its h2 session and its HTTP/1.1 socket close; another context keeps working', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true))
    const doomed = p.createContext(10)
    const kept = p.createContext(11)
    const session = await h2To(p)
    expect((await h2Fetch(session, siteGet('/doomed-h2', authOf(doomed)))).status).toBe(200)
    const tunnel = await h2Connect(session, `127.0.0.1:${echo.port}`, authOf(doomed))
    expect(tunnel.headers[':status']).toBe(200)
    const h1 = new Conn(await tlsTo(p, { ALPNProtocols: ['http/1.1'] }))
    expect((await h1Get(h1, `http://${SITE}/doomed-h1`, authOf(doomed))).status).toBe(200)
    const keptSession = await h2To(p)
    expect((await h2Fetch(keptSession, siteGet('/kept-1', authOf(kept)))).status).toBe(200)
    await waitFor(() => p.stats().activeTunnels === 1, { timeout: 3000, message: 'the tunnel is counted' })

    expect(p.releaseContext(doomed.id)).toBe(true)
    expect(await sessionClosed(session, 5000), "the released context's h2 session closed").toBe(true)
    await h1.waitClosed(5000)
    await waitFor(() => p.stats().activeTunnels === 0, { timeout: 5000, message: 'the tunnel is closed' })
    expect(keptSession.closed || keptSession.destroyed).toBe(false)
    const after = await h2Fetch(keptSession, siteGet('/kept-2', authOf(kept)))
    expect(after.status).toBe(200)
    // The released credentials are refused on a new connection.
    const again = await h2To(p)
    expect((await h2Fetch(again, siteGet('/doomed-again', authOf(doomed)))).status).toBe(407)
    keptSession.close()
    again.close()
  })
})

describe('stats(): accepted connections by protocol, HTTP/2 streams', () => {
  test('one listener port: plain HTTP/1.1, h2c, TLS+HTTP/1.1 and TLS+h2 are each counted exactly', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true))
    const auth = authOf(p.createContext(1))
    const pca = [p.caCertificatePem()]
    const sessions = []
    for (let i = 0; i < 2; i++) {
      const s = track(await h2ToProxy(p.port(), pca))
      sessions.push(s)
      for (let j = 0; j < 2; j++) expect((await h2Fetch(s, siteGet(`/count-tls-h2-${i}-${j}`, auth))).status).toBe(200)
    }
    for (const ALPNProtocols of [['http/1.1'], ['http/1.1'], undefined]) {
      const conn = new Conn(track(await tlsToProxy(p.port(), { ca: pca, servername: 'localhost', ALPNProtocols })))
      expect((await h1Get(conn, `http://${SITE}/count-tls-h1`, auth)).status).toBe(200)
    }
    const plain = await proxyRequest(p.port(), `http://${SITE}/count-h1`, { auth })
    expect(plain.status).toBe(200)
    plain.socket.destroy()
    for (let i = 0; i < 2; i++) {
      const s = track(http2.connect(`http://127.0.0.1:${p.port()}`))
      s.on('error', () => {})
      expect((await h2Fetch(s, siteGet(`/count-h2c-${i}`, auth))).status).toBe(200)
    }
    const stats = p.stats()
    expect(stats.accepted).toEqual({ http1: 1, h2c: 2, tlsHttp1: 3, tlsH2: 2 })
    expect(stats.http2Streams).toBe(2 * 2 + 2)
    expect(stats.totalRequests).toBe(4 + 3 + 1 + 2)
  })

  test('streams inside an intercepted tunnel count as HTTP/2 streams, the tunnel is no listener connection', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true))
    const auth = authOf(p.createContext(1, ROUTE))
    const t = track(await tlsToProxy(p.port(), { ca: [p.caCertificatePem()], servername: 'localhost', ALPNProtocols: ['http/1.1'] }))
    await connectOn(t, 'localhost:3000', auth)
    const inner = track(await tlsOver(t, { servername: 'localhost', ca: [p.caCertificatePem()], ALPNProtocols: ['h2'] }))
    expect(inner.alpnProtocol).toBe('h2')
    const session = track(h2Over(inner))
    for (let i = 0; i < 3; i++) {
      const res = await h2Fetch(session, { ':method': 'GET', ':scheme': 'https', ':authority': 'localhost:3000', ':path': `/tunnel-count-${i}` })
      expect(res.status).toBe(200)
    }
    const stats = p.stats()
    expect(stats.accepted).toEqual({ http1: 0, h2c: 0, tlsHttp1: 1, tlsH2: 0 })
    expect(stats.http2Streams).toBe(3)
    session.close()
  })
})

describe('API: proxyRules, caSpkiSha256, generateCa, httpsProxy: false', () => {
  test('proxyRules(): https:// by default in the HTTPS mode, http:// on request', () => {
    const port = proxy.port()
    const https = `http=https://127.0.0.1:${port};https=https://127.0.0.1:${port}`
    expect(proxy.proxyRules()).toBe(https)
    expect(proxy.proxyRules({})).toBe(https)
    expect(proxy.proxyRules({ https: true })).toBe(https)
    expect(proxy.proxyRules({ https: false })).toBe(`http=http://127.0.0.1:${port};https=http://127.0.0.1:${port}`)
    // Also without HTTP/2: the HTTPS mode does not depend on it.
    expect(h1proxy.proxyRules()).toBe(`http=https://127.0.0.1:${h1proxy.port()};https=https://127.0.0.1:${h1proxy.port()}`)
  })

  test('caSpkiSha256() is the base64 SHA-256 of the CA SubjectPublicKeyInfo; each generated CA differs', () => {
    expect(proxy.caSpkiSha256()).toBe(spkiHash(proxyCa))
    expect(h1proxy.caSpkiSha256()).toBe(spkiHash(h1proxyCa))
    expect(proxy.caSpkiSha256()).not.toBe(h1proxy.caSpkiSha256())
    expect(Buffer.from(proxy.caSpkiSha256(), 'base64').length).toBe(32)
  })

  test('generateCa(): a CA usable as caCertPem/caKeyPem, stable across restarts', async () => {
    const generated = ProxyServer.generateCa()
    expect(generated.certPem).toMatch(/^-----BEGIN CERTIFICATE-----/)
    expect(generated.keyPem).toMatch(/-----BEGIN (EC |)PRIVATE KEY-----/)
    const caCert = new crypto.X509Certificate(generated.certPem)
    expect(caCert.ca).toBe(true)
    expect(crypto.createPrivateKey(generated.keyPem).asymmetricKeyType).toBe(caCert.publicKey.asymmetricKeyType)
    expect(ProxyServer.generateCa().certPem).not.toBe(generated.certPem)

    const hashes = []
    for (let i = 0; i < 2; i++) {
      await withProxy({ enableHttp2: true, caCertPem: generated.certPem, caKeyPem: generated.keyPem }, async (p) => {
        hashes.push(p.caSpkiSha256())
        expect(new crypto.X509Certificate(p.caCertificatePem()).fingerprint256).toBe(caCert.fingerprint256)
        // The listener's leaf chains to the given CA.
        const t = await tlsToProxy(p.port(), { ca: [generated.certPem], servername: 'localhost' })
        expect(t.authorized).toBe(true)
        expect(t.getPeerX509Certificate().checkIssued(caCert)).toBe(true)
        t.destroy()
      })
    }
    expect(hashes[0]).toBe(hashes[1])
    expect(hashes[0]).toBe(spkiHash(generated.certPem))
  })

  test('httpsProxy: false: TLS is not accepted (served as HTTP/1.1), plain HTTP and h2c work, proxyRules is http://', async ({ newProxy }) => {
    const p = await newProxy(optionsFor(true, { httpsProxy: false }))
    const auth = authOf(p.createContext(1))
    const port = p.port()

    const err = await tlsToProxy(port, { ca: [p.caCertificatePem()], servername: 'localhost' }).then((t) => {
      t.destroy()
      return null
    }, (e) => e)
    expect(err, 'the TLS handshake must fail').toBeInstanceOf(Error)
    // What a TLS client gets there: an HTTP/1.1 error answer to its ClientHello.
    const conn = track(await Conn.connect(port))
    conn.write(await captureFirstFlight())
    const answer = await conn.readHead(5000)
    expect(answer.status).toBe(400)

    const plain = await proxyRequest(port, `http://${SITE}/plain-on-https-off`, { auth })
    expect(plain.status).toBe(200)
    expect(plain.text).toBe('site:GET:/plain-on-https-off:')
    const h2c = track(http2.connect(`http://127.0.0.1:${port}`))
    h2c.on('error', () => {})
    const viaH2c = await h2Fetch(h2c, siteGet('/h2c-on-https-off', auth))
    expect(viaH2c.status).toBe(200)

    const stats = p.stats()
    expect(stats.accepted.tlsHttp1).toBe(0)
    expect(stats.accepted.tlsH2).toBe(0)
    expect(stats.accepted.h2c).toBe(1)

    expect(p.proxyRules()).toBe(`http=http://127.0.0.1:${port};https=http://127.0.0.1:${port}`)
    expect(p.proxyRules({ https: false })).toBe(p.proxyRules())
    expect(() => p.proxyRules({ https: true })).toThrow(/httpsProxy/)
    // The CA is still there for intercepted tunnels.
    expect(p.caSpkiSha256()).toBe(spkiHash(p.caCertificatePem()))
  })
})
