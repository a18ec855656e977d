// Loopback rewriting for routed contexts: localhost & co. go to
// https://cmux-<morph>-<scope>-<port>.<suffix> (or a cmux-proxy origin),
// for absolute-form requests and for HTTP inside CONNECT tunnels.

import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA, makeLeaf } from '../support/certs.mjs'
import { authOf, buildRequest, openTunnel, proxyRequest } from '../support/http-client.mjs'
import { startHttpServer, startHttpsServer } from '../support/servers.mjs'

const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' }
const DEV_3000 = 'cmux-m1-base-3000.test.local'

let ca, standin, origin, plainUpstream, proxy, proxyPort, untrusting
let routed, viaOrigin, unrouted, routedOnUntrusting
const standinSeen = []
const originSeen = []
const plainSeen = []

function recorder(list, name) {
  return async (req, res) => {
    const chunks = []
    for await (const c of req) chunks.push(c)
    const entry = {
      method: req.method,
      url: req.url,
      host: req.headers.host,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body: Buffer.concat(chunks).toString(),
    }
    list.push(entry)
    res.setHeader('content-type', 'application/json')
    res.setHeader('x-served-by', name)
    res.end(JSON.stringify({ url: entry.url, host: entry.host, method: entry.method, body: entry.body }))
  }
}

beforeAll(async () => {
  ca = makeCA()
  const devLeaf = makeLeaf(ca, [DEV_3000, 'cmux-m1-base-80.test.local', 'cmux-m1-base-5173.test.local'])
  const originLeaf = makeLeaf(ca, ['origin.test.local'])
  standin = await startHttpsServer(devLeaf, recorder(standinSeen, 'standin'))
  origin = await startHttpsServer(originLeaf, recorder(originSeen, 'origin'))
  plainUpstream = await startHttpServer((req, res) => {
    plainSeen.push({ url: req.url, headers: req.headers })
    res.end(`plain:${req.headers.host}:${req.url}`)
  })
  const resolve = {
    [`${DEV_3000}:443`]: `127.0.0.1:${standin.port}`,
    'cmux-m1-base-80.test.local:443': `127.0.0.1:${standin.port}`,
    'cmux-m1-base-5173.test.local:443': `127.0.0.1:${standin.port}`,
    // The stand-in's certificate does not name this host.
    'cmux-m1-base-4000.test.local:443': `127.0.0.1:${standin.port}`,
    'origin.test.local:443': `127.0.0.1:${origin.port}`,
    'plain.test:80': `127.0.0.1:${plainUpstream.port}`,
  }
  proxy = await ProxyServer.start('127.0.0.1:0', false, { resolve, upstreamCaPem: [ca.certPem] })
  proxyPort = proxy.port()
  routed = proxy.createContext(1, ROUTE)
  viaOrigin = proxy.createContext(2, { ...ROUTE, cmuxProxyOrigin: 'https://origin.test.local' })
  unrouted = proxy.createContext(3)
  untrusting = await ProxyServer.start('127.0.0.1:0', false, { resolve })
  routedOnUntrusting = untrusting.createContext(1, ROUTE)
})

afterAll(async () => {
  await proxy?.stop()
  await untrusting?.stop()
  await standin?.close()
  await origin?.close()
  await plainUpstream?.close()
})

describe('absolute-form requests of a routed context', () => {
  test('http://localhost:3000/a?b=1 reaches the dev box over TLS with its Host', async () => {
    const before = standinSeen.length
    const res = await proxyRequest(proxyPort, 'http://localhost:3000/a?b=1', { auth: authOf(routed) })
    expect(res.status).toBe(200)
    expect(res.headers['x-served-by']).toBe('standin')
    expect(standinSeen.length).toBe(before + 1)
    const seen = standinSeen.at(-1)
    expect(seen.url).toBe('/a?b=1')
    expect(seen.host).toBe(DEV_3000)
    expect(seen.headers).not.toHaveProperty('proxy-authorization')
    expect(JSON.parse(res.text)).toMatchObject({ url: '/a?b=1', host: DEV_3000 })
  })

  test.each([
    ['127.0.0.1:3000', DEV_3000],
    ['[::1]:3000', DEV_3000],
    ['app.localhost:3000', DEV_3000],
    ['LOCALHOST:3000', DEV_3000],
    ['localhost:5173', 'cmux-m1-base-5173.test.local'],
    ['localhost', 'cmux-m1-base-80.test.local'],
    ['127.0.0.1', 'cmux-m1-base-80.test.local'],
  ])('http://%s/ is rewritten to %s', async (authority, devHost) => {
    const res = await proxyRequest(proxyPort, `http://${authority}/p?authority=${encodeURIComponent(authority)}`, { auth: authOf(routed) })
    expect(res.status).toBe(200)
    const seen = standinSeen.at(-1)
    expect(seen.host).toBe(devHost)
    expect(seen.url).toBe(`/p?authority=${encodeURIComponent(authority)}`)
  })

  test('a POST body goes along', async () => {
    const res = await proxyRequest(proxyPort, 'http://localhost:3000/submit', {
      method: 'POST',
      auth: authOf(routed),
      headers: { 'content-type': 'text/plain' },
      body: 'payload-123',
    })
    expect(res.status).toBe(200)
    expect(standinSeen.at(-1)).toMatchObject({ method: 'POST', url: '/submit', body: 'payload-123', host: DEV_3000 })
  })

  test('a certificate that does not name the dev box host gives 502', async () => {
    const before = standinSeen.length
    const res = await proxyRequest(proxyPort, 'http://localhost:4000/', { auth: authOf(routed) })
    expect(res.status).toBe(502)
    expect(res.text.trim().length).toBeGreaterThan(0)
    expect(standinSeen.length).toBe(before)
  })

  test('without upstreamCaPem the test CA is not trusted: 502', async () => {
    const before = standinSeen.length
    const res = await proxyRequest(untrusting.port(), 'http://localhost:3000/a', { auth: authOf(routedOnUntrusting) })
    expect(res.status).toBe(502)
    expect(res.text.trim().length).toBeGreaterThan(0)
    expect(res.text.trim()).not.toContain('\n')
    expect(standinSeen.length).toBe(before)
  })

  test('a context without route reaches localhost as-is', async () => {
    const res = await proxyRequest(proxyPort, `http://localhost:${plainUpstream.port}/direct`, { auth: authOf(unrouted) })
    expect(res.status).toBe(200)
    expect(res.text).toBe(`plain:localhost:${plainUpstream.port}:/direct`)
  })

  test('with cmuxProxyOrigin: the origin gets Host and the x-cmux-* headers, client ones replaced', async () => {
    const before = originSeen.length
    const res = await proxyRequest(proxyPort, 'http://localhost:3000/o?x=1', {
      auth: authOf(viaOrigin),
      headers: { 'x-cmux-host-override': 'evil', 'x-cmux-port-internal': '1', 'x-other': 'kept' },
    })
    expect(res.status).toBe(200)
    expect(res.headers['x-served-by']).toBe('origin')
    expect(originSeen.length).toBe(before + 1)
    const seen = originSeen.at(-1)
    expect(seen.url).toBe('/o?x=1')
    expect(seen.host).toBe('origin.test.local')
    expect(seen.headers['x-cmux-port-internal']).toBe('3000')
    expect(seen.headers['x-cmux-host-override']).toBe('localhost:3000')
    const raw = (name) => seen.rawHeaders.filter((_, i) => i % 2 === 0 && seen.rawHeaders[i].toLowerCase() === name)
    expect(raw('x-cmux-host-override')).toHaveLength(1)
    expect(raw('x-cmux-port-internal')).toHaveLength(1)
    expect(seen.headers['x-other']).toBe('kept')
  })

  test('with cmuxProxyOrigin: app.localhost:5173 is described by the headers', async () => {
    const res = await proxyRequest(proxyPort, 'http://app.localhost:5173/', { auth: authOf(viaOrigin) })
    expect(res.status).toBe(200)
    const seen = originSeen.at(-1)
    expect(seen.host).toBe('origin.test.local')
    expect(seen.headers['x-cmux-port-internal']).toBe('5173')
    expect(seen.headers['x-cmux-host-override']).toBe('app.localhost:5173')
  })

  test('with cmuxProxyOrigin: a non-loopback host is not rewritten and gets no x-cmux headers', async () => {
    const before = originSeen.length
    const res = await proxyRequest(proxyPort, 'http://plain.test/np', {
      auth: authOf(viaOrigin),
      headers: { 'x-cmux-host-override': 'from-client' },
    })
    expect(res.status).toBe(200)
    expect(res.text).toBe('plain:plain.test:/np')
    expect(originSeen.length).toBe(before)
    expect(plainSeen.at(-1).headers).not.toHaveProperty('x-cmux-port-internal')
  })
})

describe('HTTP inside a CONNECT tunnel to a loopback host (routed context)', () => {
  test('CONNECT localhost:3000 then three keep-alive requests are rewritten to the dev box', async () => {
    const { conn, res } = await openTunnel(proxyPort, 'localhost:3000', authOf(routed))
    try {
      expect(res.status).toBe(200)
      for (const i of [1, 2, 3]) {
        const before = standinSeen.length
        conn.write(buildRequest('GET', `/x${i}?n=${i}`, [['Host', 'localhost:3000'], ['User-Agent', 'tunnel-test']]))
        const r = await conn.readResponse()
        expect(r.status).toBe(200)
        expect(r.headers['x-served-by']).toBe('standin')
        expect(standinSeen.length).toBe(before + 1)
        expect(standinSeen.at(-1)).toMatchObject({ url: `/x${i}?n=${i}`, host: DEV_3000, method: 'GET' })
        expect(standinSeen.at(-1).headers['user-agent']).toBe('tunnel-test')
      }
      expect(conn.closed).toBe(false)
    } finally {
      conn.destroy()
    }
  })

  test('a POST inside the tunnel carries its body', async () => {
    const { conn, res } = await openTunnel(proxyPort, '127.0.0.1:3000', authOf(routed))
    try {
      expect(res.status).toBe(200)
      conn.write(buildRequest('POST', '/in-tunnel', [['Host', '127.0.0.1:3000'], ['Content-Length', '5']], 'hello'))
      const r = await conn.readResponse()
      expect(r.status).toBe(200)
      expect(standinSeen.at(-1)).toMatchObject({ method: 'POST', url: '/in-tunnel', body: 'hello', host: DEV_3000 })
    } finally {
      conn.destroy()
    }
  })

  test('inside a tunnel of a cmuxProxyOrigin context the origin gets the x-cmux headers', async () => {
    const { conn, res } = await openTunnel(proxyPort, 'localhost:3000', authOf(viaOrigin))
    try {
      expect(res.status).toBe(200)
      conn.write(buildRequest('GET', '/t', [['Host', 'localhost:3000'], ['X-Cmux-Host-Override', 'evil']]))
      const r = await conn.readResponse()
      expect(r.status).toBe(200)
      const seen = originSeen.at(-1)
      expect(seen.url).toBe('/t')
      expect(seen.host).toBe('origin.test.local')
      expect(seen.headers['x-cmux-port-internal']).toBe('3000')
      expect(seen.headers['x-cmux-host-override']).toBe('localhost:3000')
    } finally {
      conn.destroy()
    }
  })
})
