// The local CA and TLS interception inside CONNECT tunnels to loopback hosts
// of routed contexts; tlsInterception:false passes TLS through untouched.

import crypto from 'node:crypto'
import tls from 'node:tls'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import WebSocket, { WebSocketServer } from 'ws'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA, makeLeaf, spkiHash } from '../support/certs.mjs'
import { authOf, Conn, connectTunnel, getOn } from '../support/http-client.mjs'
import { waitFor, withTimeout } from '../support/wait.mjs'
import { startError, useTracked, withProxy } from './fixtures.mjs'
import { tlsToProxy } from './https-proxy-helpers.mjs'
import { digestOf, patternChunks, patternDigest } from './helpers.mjs'
import { DEV_HOST, fingerprint, pkcs8, requestOver, ROUTE, startTlsServer, testCA, tlsOver, tlsTunnel, TlsTunnelAgent } from './tls-helpers.mjs'

const BIG = 64 * 1024 * 1024
const DAY = 24 * 3600 * 1000

let ca, standin, wss
let proxy, proxyH1, passthrough
let ctx, ctxH1, ctxPt, auth, authH1, authPt
let proxyCaPem
const wsEvents = []

function proxyOptions(extra = {}) {
  return {
    resolve: { [`${DEV_HOST}:443`]: `127.0.0.1:${standin.port}` },
    upstreamCaPem: [ca.certPem],
    ...extra,
  }
}

beforeAll(async () => {
  ca = testCA()
  standin = await startTlsServer(async (req, res) => {
    const url = new URL(req.url, 'https://x')
    if (url.pathname === '/upload') {
      const digest = await digestOf(req)
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify(digest))
      return
    }
    if (url.pathname === '/download') {
      const total = Number(url.searchParams.get('n'))
      res.setHeader('content-type', 'application/octet-stream')
      res.setHeader('content-length', String(total))
      for (const chunk of patternChunks(total)) {
        if (!res.write(chunk)) await new Promise((r) => res.once('drain', r))
      }
      res.end()
      return
    }
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ method: req.method, url: req.url, host: req.headers.host }))
  })
  wss = new WebSocketServer({ server: standin.server, path: '/hmr' })
  wss.on('connection', (ws, req) => {
    const entry = { host: req.headers.host, url: req.url, ws, closed: null }
    wsEvents.push(entry)
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? null : data.toString()
      if (text === 'close-me') ws.close(4001, 'server says bye')
      else ws.send(data, { binary: isBinary })
    })
    ws.on('close', (code, reason) => (entry.closed = { code, reason: reason.toString() }))
    ws.send('server-hello')
  })

  proxy = await ProxyServer.start('127.0.0.1:0', true, proxyOptions())
  proxyH1 = await ProxyServer.start('127.0.0.1:0', false, proxyOptions())
  passthrough = await ProxyServer.start('127.0.0.1:0', false, proxyOptions({ tlsInterception: false }))
  ctx = proxy.createContext(1, ROUTE)
  ctxH1 = proxyH1.createContext(1, ROUTE)
  ctxPt = passthrough.createContext(1, ROUTE)
  auth = authOf(ctx)
  authH1 = authOf(ctxH1)
  authPt = authOf(ctxPt)
  proxyCaPem = proxy.caCertificatePem()
})

afterAll(async () => {
  for (const c of wss?.clients ?? []) c.terminate()
  wss?.close()
  await proxy?.stop()
  await proxyH1?.stop()
  await passthrough?.stop()
  await standin?.close()
})

// Sockets the tests keep open, closed before the proxies stop (after hooks run in reverse order).
const track = useTracked({ after: 'all' })

/** CONNECT + TLS trusting the proxy's CA, verified for `servername`. */
function intercepted(authority, opts = {}) {
  return tlsTunnel(proxy.port(), authority, auth, {
    ca: [proxyCaPem],
    ALPNProtocols: ['http/1.1'],
    ...opts,
  }).then(track)
}

describe('the local CA', () => {
  test('caCertificatePem() is a PEM CA certificate', () => {
    expect(proxyCaPem).toMatch(/^-----BEGIN CERTIFICATE-----\r?\n/)
    const x = new crypto.X509Certificate(proxyCaPem)
    expect(x.ca).toBe(true)
    // Each proxy generates its own CA unless given one.
    expect(fingerprint(proxyH1.caCertificatePem())).not.toBe(x.fingerprint256)
  })

  test('a given CA (caCertPem + caKeyPem) is the one returned and the one that signs leaves', async () => {
    const own = makeCA('caller supplied CA')
    await withProxy(proxyOptions({ caCertPem: own.certPem, caKeyPem: pkcs8(own.keyPem) }), async (p) => {
      expect(fingerprint(p.caCertificatePem())).toBe(fingerprint(own.certPem))
      const c = p.createContext(7, ROUTE)
      const t = track(await tlsTunnel(p.port(), 'localhost:3000', authOf(c), {
        servername: 'localhost',
        ca: [own.certPem],
        ALPNProtocols: ['http/1.1'],
      }))
      expect(t.authorized).toBe(true)
      const leaf = t.getPeerX509Certificate()
      const caX = new crypto.X509Certificate(own.certPem)
      expect(leaf.checkIssued(caX)).toBe(true)
      expect(leaf.verify(caX.publicKey)).toBe(true)
      const res = await getOn(new Conn(t), '/given-ca')
      expect(res.status).toBe(200)
      expect(res.json).toMatchObject({ url: '/given-ca', host: DEV_HOST })
      t.destroy()
    })
  })

  test('a CA key in PKCS#1 form ("BEGIN RSA PRIVATE KEY", as node-forge and openssl genrsa write it) is accepted', async () => {
    const own = makeCA('pkcs1 CA')
    expect(own.keyPem).toMatch(/BEGIN RSA PRIVATE KEY/)
    await withProxy(proxyOptions({ caCertPem: own.certPem, caKeyPem: own.keyPem }), (p) => {
      expect(fingerprint(p.caCertificatePem())).toBe(fingerprint(own.certPem))
    })
  })

  // A long-running app: a CA the addon made is issued again, with the same key, once fewer than 10 days
  // are left, here at once for a CA generateCa made with 5 days. What a client sees of it, without waiting.
  test('a CA of generateCa with 5 days left is issued again for 30 days: same key and SPKI, its leaves verify against the given certificate too', async () => {
    const given = ProxyServer.generateCa({ validityDays: 5 })
    const givenX = new crypto.X509Certificate(given.certPem)
    await withProxy(proxyOptions({ caCertPem: given.certPem, caKeyPem: given.keyPem, enableHttp2: true, httpsProxy: true }), async (p) => {
      const current = new crypto.X509Certificate(p.caCertificatePem())
      expect(current.fingerprint256).not.toBe(givenX.fingerprint256)
      expect(current.subject).toBe(givenX.subject)
      expect(current.publicKey.equals(givenX.publicKey)).toBe(true)
      expect(p.caSpkiSha256()).toBe(spkiHash(given.certPem))
      const lifetime = Date.parse(current.validTo) - Date.now()
      expect(lifetime).toBeGreaterThan(29 * DAY)
      expect(lifetime).toBeLessThanOrEqual(30 * DAY)
      // An intercepted tunnel and the HTTPS listener both present the renewed CA; a client that has only
      // the given certificate accepts their leaves.
      const tunnel = track(await tlsTunnel(p.port(), 'localhost:3000', authOf(p.createContext(8, ROUTE)), {
        servername: 'localhost',
        ca: [given.certPem],
        ALPNProtocols: ['http/1.1'],
      }))
      const listener = track(await tlsToProxy(p.port(), { servername: 'localhost', ca: [given.certPem] }))
      for (const t of [tunnel, listener]) {
        expect(t.authorized).toBe(true)
        const chain = t.getPeerCertificate(true)
        expect(chain.issuerCertificate.fingerprint256).toBe(current.fingerprint256)
        expect(Date.parse(chain.valid_to)).toBeLessThanOrEqual(Date.parse(current.validTo))
        expect(Date.parse(chain.valid_to)).toBeGreaterThan(Date.now() + 29 * DAY)
      }
    })
    // With 20 days left it is used as it is.
    const later = ProxyServer.generateCa({ validityDays: 20 })
    await withProxy(proxyOptions({ caCertPem: later.certPem, caKeyPem: later.keyPem }), (p) => {
      expect(fingerprint(p.caCertificatePem())).toBe(fingerprint(later.certPem))
    })
  })

  test('bad, mismatched, non-CA or half-given CA options make start reject with a clear Error', async () => {
    const own = makeCA('for the error cases')
    const other = makeCA('another CA')
    const leaf = makeLeaf(own, ['not-a-ca.test'])
    const cases = [
      [{ caCertPem: 'not a certificate', caKeyPem: pkcs8(own.keyPem) }, [/caCertPem/]],
      [{ caCertPem: own.certPem, caKeyPem: 'not a key' }, [/caKeyPem/]],
      [{ caCertPem: own.certPem, caKeyPem: pkcs8(other.keyPem) }, [/caKeyPem/, /caCertPem/]],
      [{ caCertPem: leaf.cert, caKeyPem: pkcs8(leaf.key) }, [/caCertPem/, /\bCA\b/]],
      [{ caCertPem: own.certPem }, [/caCertPem/, /caKeyPem/]],
      [{ caKeyPem: pkcs8(own.keyPem) }, [/caCertPem/, /caKeyPem/]],
    ]
    for (const [opts, patterns] of cases) {
      const error = await startError('127.0.0.1:0', false, proxyOptions(opts))
      expect(error, `start with ${Object.keys(opts).join('+')} should reject`).toBeInstanceOf(Error)
      for (const re of patterns) expect(error.message).toMatch(re)
    }
  })
})

describe('interception of loopback tunnels', () => {
  test('CONNECT localhost:3000: verified handshake with a localhost leaf; 3 keep-alive requests reach the dev box', async () => {
    const t = await intercepted('localhost:3000', { servername: 'localhost' })
    expect(t.authorized).toBe(true)
    expect(t.alpnProtocol).toBe('http/1.1')
    const peer = t.getPeerCertificate()
    expect(peer.subjectaltname.split(', ')).toContain('DNS:localhost')
    expect(new Date(peer.valid_from).getTime()).toBeLessThanOrEqual(Date.now() - 23 * 3600 * 1000)
    expect(new Date(peer.valid_to).getTime()).toBeGreaterThan(Date.now() + DAY)

    const before = standin.requests.length
    const conn = new Conn(t)
    for (let i = 0; i < 3; i++) {
      const res = await getOn(conn, i === 0 ? '/x' : `/x?n=${i}`)
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ method: 'GET', url: i === 0 ? '/x' : `/x?n=${i}`, host: DEV_HOST })
    }
    expect(conn.closed).toBe(false)
    expect(standin.requests.length - before).toBe(3)
    t.destroy()
  })

  test('CONNECT 127.0.0.1:3000 without SNI gets a leaf with an IP SAN for 127.0.0.1', async () => {
    const t = await intercepted('127.0.0.1:3000', {
      checkServerIdentity: (_host, cert) => tls.checkServerIdentity('127.0.0.1', cert),
    })
    expect(t.authorized).toBe(true)
    const peer = t.getPeerCertificate()
    expect(peer.subjectaltname.split(', ')).toContain('IP Address:127.0.0.1')
    expect(t.getPeerX509Certificate().checkIP('127.0.0.1')).toBe('127.0.0.1')
    expect(new Date(peer.valid_from).getTime()).toBeLessThanOrEqual(Date.now() - 23 * 3600 * 1000)
    const res = await getOn(new Conn(t), '/ip4', { host: '127.0.0.1:3000' })
    expect(res.status).toBe(200)
    expect(res.json).toEqual({ method: 'GET', url: '/ip4', host: DEV_HOST })
    t.destroy()
  })

  test('CONNECT [::1]:3000 without SNI gets a leaf with an IP SAN for ::1', async () => {
    const t = await intercepted('[::1]:3000', {
      checkServerIdentity: (_host, cert) => tls.checkServerIdentity('::1', cert),
    })
    expect(t.authorized).toBe(true)
    const san = t.getPeerCertificate().subjectaltname.split(', ')
    expect(san.some((s) => s === 'IP Address:0:0:0:0:0:0:0:1' || s === 'IP Address:::1')).toBe(true)
    expect(t.getPeerX509Certificate().checkIP('::1')).toBeDefined()
    const res = await getOn(new Conn(t), '/ip6', { host: '[::1]:3000' })
    expect(res.status).toBe(200)
    expect(res.json).toEqual({ method: 'GET', url: '/ip6', host: DEV_HOST })
    t.destroy()
  })

  // The proxy takes these for loopback too; the CA's name constraints permit them, so a strict verifier
  // (OpenSSL here) accepts their leaves.
  test.each([
    ['0.0.0.0:3000', '0.0.0.0'],
    ['[::]:3000', '::'],
  ])('CONNECT %s gets a leaf for %s that verifies within the CA name constraints', async (authority, ip) => {
    const t = await intercepted(authority, { checkServerIdentity: (_host, cert) => tls.checkServerIdentity(ip, cert) })
    expect(t.authorizationError ?? null).toBeNull()
    expect(t.authorized).toBe(true)
    expect(t.getPeerX509Certificate().checkIP(ip)).toBeDefined()
    t.destroy()
  })

  test('the server sends its chain: leaf then the CA itself', async () => {
    // No trust store that knows the CA: any issuer Node reports came from the wire.
    const t = track(await tlsTunnel(proxy.port(), 'localhost:3000', auth, {
      servername: 'localhost',
      rejectUnauthorized: false,
      ALPNProtocols: ['http/1.1'],
    }))
    const leaf = t.getPeerCertificate(true)
    const caFp = fingerprint(proxyCaPem)
    expect(leaf.fingerprint256).not.toBe(caFp)
    expect(leaf.issuerCertificate).toBeDefined()
    expect(leaf.issuerCertificate.fingerprint256).toBe(caFp)
    expect(t.authorized).toBe(false)
    t.destroy()
  })

  test('a client that does not trust the CA fails the handshake; the tunnel is released and the proxy keeps serving', async () => {
    // Earlier tests destroyed their tunnels; let the proxy notice, so the count is stable.
    await waitFor(() => proxy.stats().activeTunnels === 0, { timeout: 5000, message: 'earlier tunnels released' })
    const baseline = 0
    const raw = track(await connectTunnel(proxy.port(), 'localhost:3000', auth))
    await waitFor(() => proxy.stats().activeTunnels > baseline, { message: 'the CONNECT tunnel is counted' })
    const err = await tlsOver(raw, { servername: 'localhost', ALPNProtocols: ['http/1.1'] }).then(
      () => null,
      (e) => e,
    )
    expect(err).toBeInstanceOf(Error)
    expect(err.code).toMatch(/CERT|ISSUER|SIGN/)
    await waitFor(() => raw.destroyed || raw.closed, { message: 'client socket closed' })
    await waitFor(() => proxy.stats().activeTunnels <= baseline, {
      timeout: 5000,
      message: 'activeTunnels back to its baseline after the failed handshake',
    })
    const t = await intercepted('localhost:3000', { servername: 'localhost' })
    const res = await getOn(new Conn(t), '/after-bad-client')
    expect(res.status).toBe(200)
    expect(res.json.url).toBe('/after-bad-client')
    t.destroy()
  })

  test('ALPN h2,http/1.1: h2 when HTTP/2 is enabled (and intercepted), http/1.1 when it is not', async () => {
    const t2 = await intercepted('localhost:3000', { servername: 'localhost', ALPNProtocols: ['h2', 'http/1.1'] })
    expect(t2.authorized).toBe(true)
    expect(t2.alpnProtocol).toBe('h2')
    expect(t2.getPeerCertificate(true).issuerCertificate.fingerprint256).toBe(fingerprint(proxyCaPem))
    t2.destroy()

    const h1CaPem = proxyH1.caCertificatePem()
    const t1 = track(await tlsTunnel(proxyH1.port(), 'localhost:3000', authH1, {
      servername: 'localhost',
      ca: [h1CaPem],
      ALPNProtocols: ['h2', 'http/1.1'],
    }))
    expect(t1.authorized).toBe(true)
    expect(t1.alpnProtocol).toBe('http/1.1')
    const res = await getOn(new Conn(t1), '/h1-alpn')
    expect(res.status).toBe(200)
    expect(res.json).toEqual({ method: 'GET', url: '/h1-alpn', host: DEV_HOST })
    t1.destroy()
  })

  test('50 simultaneous intercepted tunnels each do a GET', async () => {
    const results = await withTimeout(Promise.all(Array.from({ length: 50 }, async (_, i) => {
      const t = await intercepted('localhost:3000', { servername: 'localhost' })
      try {
        return await getOn(new Conn(t, { timeout: 20000 }), `/many?i=${i}`)
      } finally {
        t.destroy()
      }
    })), 25000, '50 tunnels')
    results.forEach((res, i) => {
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ method: 'GET', url: `/many?i=${i}`, host: DEV_HOST })
    })
  })

  test('64 MiB up and 64 MiB down through one intercepted tunnel arrive intact', async () => {
    const t = await intercepted('localhost:3000', { servername: 'localhost' })
    const up = await requestOver(t, {
      method: 'POST',
      path: '/upload',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(BIG) },
      body: patternChunks(BIG),
    })
    expect(up.status).toBe(200)
    expect(JSON.parse(up.text)).toEqual({ bytes: BIG, sha1: patternDigest(BIG) })
    t.destroy()

    const t2 = await intercepted('localhost:3000', { servername: 'localhost' })
    const down = await requestOver(t2, { path: `/download?n=${BIG}` })
    expect(down.status).toBe(200)
    expect(down.body.length).toBe(BIG)
    expect(crypto.createHash('sha1').update(down.body).digest('hex')).toBe(patternDigest(BIG))
    t2.destroy()
  }, 60000)
})

describe('wss:// through an intercepted tunnel', () => {
  function openWs() {
    const agent = new TlsTunnelAgent({ proxyPort: proxy.port(), auth, tlsOptions: { ca: [proxyCaPem] } })
    const ws = new WebSocket('wss://localhost:3000/hmr', { agent })
    track({ destroy: () => ws.terminate() })
    const inbox = []
    const waiters = []
    ws.on('message', (data, isBinary) => {
      inbox.push({ data: Buffer.from(data), isBinary })
      for (const w of waiters.splice(0)) w()
    })
    const next = () => withTimeout(new Promise((resolve) => {
      const take = () => (inbox.length ? resolve(inbox.shift()) : waiters.push(take))
      take()
    }), 5000, 'a WebSocket message')
    const opened = withTimeout(new Promise((resolve, reject) => {
      ws.once('open', resolve)
      ws.once('error', reject)
    }), 10000, 'wss open')
    const closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })))
    return { ws, next, opened, closed }
  }

  test('text and binary echo both ways, server push arrives, client close reaches the server', async () => {
    const before = wsEvents.length
    const c = openWs()
    await c.opened
    const hello = await c.next()
    expect(hello).toEqual({ data: Buffer.from('server-hello'), isBinary: false })
    await waitFor(() => wsEvents.length > before)
    const server = wsEvents[wsEvents.length - 1]
    expect(server.host).toBe(DEV_HOST)
    expect(server.url).toBe('/hmr')

    c.ws.send('text-1')
    expect(await c.next()).toEqual({ data: Buffer.from('text-1'), isBinary: false })
    const bin = Buffer.from([0, 1, 2, 253, 254, 255])
    c.ws.send(bin)
    expect(await c.next()).toEqual({ data: bin, isBinary: true })
    const big = crypto.randomBytes(200 * 1024)
    c.ws.send(big)
    expect((await c.next()).data.equals(big)).toBe(true)
    server.ws.send('pushed-later')
    expect(await c.next()).toEqual({ data: Buffer.from('pushed-later'), isBinary: false })

    c.ws.close(1000, 'client bye')
    await waitFor(() => server.closed, { timeout: 5000, message: 'server saw the close' })
    expect(server.closed).toEqual({ code: 1000, reason: 'client bye' })
    expect(await withTimeout(c.closed, 5000, 'client close')).toEqual({ code: 1000, reason: 'client bye' })
  })

  test('a close from the server reaches the client', async () => {
    const c = openWs()
    await c.opened
    expect((await c.next()).data.toString()).toBe('server-hello')
    c.ws.send('close-me')
    expect(await withTimeout(c.closed, 5000, 'client sees the server close')).toEqual({ code: 4001, reason: 'server says bye' })
  })
})

describe('tlsInterception: false', () => {
  test('TLS inside CONNECT localhost:3000 goes blindly to the dev box, which presents its own certificate', async () => {
    const before = standin.requests.length
    const t = track(await tlsTunnel(passthrough.port(), 'localhost:3000', authPt, {
      servername: DEV_HOST,
      ca: [ca.certPem],
      ALPNProtocols: ['http/1.1'],
    }))
    expect(t.authorized).toBe(true)
    expect(t.getPeerX509Certificate().fingerprint256).toBe(fingerprint(standin.leaf.cert))
    const res = await getOn(new Conn(t), '/blind', { host: DEV_HOST })
    expect(res.status).toBe(200)
    expect(res.json).toEqual({ method: 'GET', url: '/blind', host: DEV_HOST })
    expect(standin.requests.length - before).toBe(1)
    t.destroy()
  })

  test('the proxy CA is not used: a client trusting only it fails', async () => {
    const err = await tlsTunnel(passthrough.port(), 'localhost:3000', authPt, {
      servername: 'localhost',
      ca: [passthrough.caCertificatePem()],
      ALPNProtocols: ['http/1.1'],
    }).then((t) => (t.destroy(), null), (e) => e)
    expect(err).toBeInstanceOf(Error)
  })
})
