// What the Electron drop-in of cmux needs from the addon (issue 17): cmux's
// deriveRoute rules (the shared table of fixtures/derive-route.txt), the one
// loopback rule, interception of *.cmux.local and *.manaflow.local, local
// development hosts exempt from the loopback 403, and cmux's two test hooks
// (testCmuxProxyOrigin, testAllowInsecureUpstream).

import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import crypto from 'node:crypto'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA } from '../support/certs.mjs'
import { authOf, connectTunnel, proxyRequest } from '../support/http-client.mjs'
import { closedPort, startHttpServer } from '../support/servers.mjs'
import { canUseNamespaces, runInNamespace } from './netns-helpers.mjs'
import { h2Over, h2request, requestOver, startTlsServer, testCA, tlsOver } from './tls-helpers.mjs'

const require = createRequire(import.meta.url)
const addon = require('../index.js')

const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'cmux.app' }
const cleanup = []

afterAll(async () => {
  for (const close of cleanup.reverse()) await close()
})

async function startProxy(options) {
  const proxy = await ProxyServer.start('127.0.0.1:0', true, { httpsProxy: false, ...options })
  cleanup.push(() => proxy.stop())
  return proxy
}

describe('deriveRoute: cmux rules', () => {
  const table = readFileSync(new URL('./fixtures/derive-route.txt', import.meta.url), 'utf8')
    .split('\n')
    .filter((line) => line && !line.startsWith('#'))
    .map((line) => line.split(' => '))

  test('the table holds at least 40 URLs', () => {
    expect(table.length).toBeGreaterThanOrEqual(40)
  })

  test.each(table)('%s => %s', (url, expected) => {
    const route = addon.deriveRoute(url)
    const got = route ? `${route.morphId} ${route.scope} ${route.domainSuffix} ${route.cmuxProxyOrigin}` : 'null'
    expect(got).toBe(expected)
  })

  test('every derived route is one createContext accepts', async () => {
    const proxy = await startProxy()
    let id = 100
    for (const [url] of table) {
      const route = addon.deriveRoute(url)
      if (route) expect(() => proxy.createContext(id++, route), url).not.toThrow()
    }
  })
})

describe('isLoopbackHost and isInterceptedHost', () => {
  const loopback = ['localhost', 'LOCALHOST.', 'app.localhost', '127.0.0.1', '127.9.8.7', '::1', '[::1]', '0.0.0.0', '::', '::ffff:127.0.0.1', '[::ffff:7f00:1]']
  const local = ['app.cmux.local', 'A.Manaflow.Local.', 'x.y.cmux.local']
  const neither = ['example.com', 'cmux.local', 'app.cmux.local.evil.com', 'localhost.com', '10.0.0.1', '::2', 'app.cmux.app', '']

  test.each(loopback)('%s is loopback, and intercepted', (host) => {
    expect(addon.isLoopbackHost(host)).toBe(true)
    expect(addon.isInterceptedHost(host)).toBe(true)
  })
  test.each(local)('%s is intercepted, not loopback', (host) => {
    expect(addon.isLoopbackHost(host)).toBe(false)
    expect(addon.isInterceptedHost(host)).toBe(true)
  })
  test.each(neither)('%j is neither', (host) => {
    expect(addon.isLoopbackHost(host)).toBe(false)
    expect(addon.isInterceptedHost(host)).toBe(false)
  })
})

describe('CONNECT to *.cmux.local and *.manaflow.local', () => {
  let standin, proxy, routed, plain, proxyCa
  beforeAll(async () => {
    standin = await startTlsServer((req, res) => res.end(`standin ${req.headers.host}`), {
      names: ['app.cmux.local', 'app.manaflow.local'],
    })
    cleanup.push(() => standin.close())
    proxy = await startProxy({
      resolve: {
        'app.cmux.local:443': `127.0.0.1:${standin.port}`,
        'app.manaflow.local:443': `127.0.0.1:${standin.port}`,
        'app.cmux.local.evil.test:443': `127.0.0.1:${standin.port}`,
      },
      upstreamCaPem: [testCA().certPem],
    })
    routed = proxy.createContext(1, ROUTE)
    plain = proxy.createContext(2, null)
    proxyCa = proxy.caCertificatePem()
  })

  test.each(['app.cmux.local', 'app.manaflow.local'])('a routed context\'s %s:443 is intercepted (a leaf of the proxy CA, ALPN h2) and forwarded there', async (host) => {
    const raw = await connectTunnel(proxy.port(), `${host}:443`, authOf(routed))
    const tls = await tlsOver(raw, { servername: host, ca: proxyCa, ALPNProtocols: ['h2', 'http/1.1'] })
    cleanup.push(() => tls.destroy())
    expect(tls.alpnProtocol).toBe('h2')
    const leaf = new crypto.X509Certificate(tls.getPeerX509Certificate().raw)
    expect(leaf.checkHost(host)).toBe(host)
    expect(leaf.checkIssued(new crypto.X509Certificate(proxyCa))).toBe(true)
    const session = h2Over(tls, `https://${host}`)
    const res = await h2request(session, { ':path': '/x', ':authority': host })
    session.close()
    expect(res.status).toBe(200)
    expect(res.text).toBe(`standin ${host}`)
  })

  test('a route-less context\'s CONNECT there is blind: the client sees the host\'s own certificate', async () => {
    const raw = await connectTunnel(proxy.port(), 'app.cmux.local:443', authOf(plain))
    const tls = await tlsOver(raw, { servername: 'app.cmux.local', ca: testCA().certPem })
    cleanup.push(() => tls.destroy())
    expect(tls.getPeerX509Certificate().fingerprint256).toBe(new crypto.X509Certificate(standin.leaf.cert).fingerprint256)
  })

  test('a look-alike (app.cmux.local.evil.test) is not intercepted: blind, the host\'s own certificate', async () => {
    const raw = await connectTunnel(proxy.port(), 'app.cmux.local.evil.test:443', authOf(routed))
    const tls = await tlsOver(raw, { servername: 'app.cmux.local.evil.test', ca: testCA().certPem, checkServerIdentity: () => undefined })
    cleanup.push(() => tls.destroy())
    expect(tls.getPeerX509Certificate().fingerprint256).toBe(new crypto.X509Certificate(standin.leaf.cert).fingerprint256)
  })
})

describe('local development hosts reach the developer\'s machine; look-alikes get the 403', () => {
  test.skipIf(!canUseNamespaces)('in a namespace whose /etc/hosts maps every name to 127.0.0.1', async () => {
    const port = 18080
    const names = ['app.cmux.local', 'app.manaflow.local', 'app.manaflow.localhost', 'shop.example', 'app.cmux.local.evil.test']
    const results = await runInNamespace('probe', {
      hosts: Object.fromEntries(names.map((name) => [name, '127.0.0.1'])),
      input: {
        listen: ['127.0.0.1'],
        port,
        contexts: { routed: ROUTE, plain: null },
        probes: [
          { kind: 'get', target: `http://app.cmux.local:${port}/`, context: 'routed' },
          { kind: 'get', target: `http://app.manaflow.local:${port}/`, context: 'routed' },
          { kind: 'connect', target: `app.cmux.local:${port}`, context: 'routed' },
          { kind: 'get', target: `http://shop.example:${port}/`, context: 'routed' },
          { kind: 'get', target: `http://app.cmux.local.evil.test:${port}/`, context: 'routed' },
          { kind: 'connect', target: `shop.example:${port}`, context: 'routed' },
          { kind: 'get', target: `http://shop.example:${port}/`, context: 'plain' },
        ],
      },
    })
    expect(results.map((r) => [r.kind, r.target, r.context, r.status, r.reached])).toEqual([
      ['get', `http://app.cmux.local:${port}/`, 'routed', 200, '127.0.0.1'],
      ['get', `http://app.manaflow.local:${port}/`, 'routed', 200, '127.0.0.1'],
      ['connect', `app.cmux.local:${port}`, 'routed', 200, '127.0.0.1'],
      ['get', `http://shop.example:${port}/`, 'routed', 403, null],
      ['get', `http://app.cmux.local.evil.test:${port}/`, 'routed', 403, null],
      ['connect', `shop.example:${port}`, 'routed', 403, null],
      ['get', `http://shop.example:${port}/`, 'plain', 200, '127.0.0.1'],
    ])
  })
})

describe('cmux\'s test hooks: testCmuxProxyOrigin and testAllowInsecureUpstream', () => {
  let origin, untrustedCa
  beforeAll(async () => {
    // The stand-in for cmux-proxy: TLS + h2 with a certificate nobody trusts (like cmux's script's).
    untrustedCa = makeCA('untrusted origin CA')
    origin = await startTlsServer((req, res) => {
      res.setHeader('cache-control', 'max-age=3600')
      res.end(`origin ${req.headers['x-cmux-host-override']} ${req.headers['x-cmux-port-internal']} ${req.url}`)
    }, { names: ['127.0.0.1'], ca: untrustedCa, h2: true })
    cleanup.push(() => origin.close())
  })

  test('every request of a routed context, whatever its host, goes through the origin; a route-less one does not', async () => {
    const direct = await startHttpServer((req, res) => res.end('direct'))
    cleanup.push(() => direct.close())
    const proxy = await startProxy({
      testCmuxProxyOrigin: `https://127.0.0.1:${origin.port}`,
      testAllowInsecureUpstream: true,
      resolve: { 'example.test:80': `127.0.0.1:${direct.port}` },
    })
    const routed = proxy.createContext(1, ROUTE)
    for (const url of ['http://example.test/a?b=1', 'http://localhost:5173/src/main.ts']) {
      const res = await proxyRequest(proxy.port(), url, { auth: authOf(routed) })
      const u = new URL(url)
      expect(res.status, url).toBe(200)
      expect(res.text).toBe(`origin ${u.hostname}:${u.port || 80} ${u.port || 80} ${u.pathname}${u.search}`)
      expect(res.headers['cache-control']).toBe('max-age=3600')
    }
    const plain = proxy.createContext(2, null)
    const res = await proxyRequest(proxy.port(), 'http://example.test/a', { auth: authOf(plain) })
    expect([res.status, res.text]).toEqual([200, 'direct'])
  })

  test('cmux\'s script: CONNECT cmux-test-base-8080.cmux.local:443 and 127.0.0.1:<port> are intercepted, h2 inside reaches the origin', async () => {
    const proxy = await startProxy({ testCmuxProxyOrigin: `https://127.0.0.1:${origin.port}`, testAllowInsecureUpstream: true })
    const ctx = proxy.createContext(123, { morphId: 'test', scope: 'base', domainSuffix: 'cmux.local', cmuxProxyOrigin: `https://127.0.0.1:${origin.port}` })
    const host = 'cmux-test-base-8080.cmux.local'
    const tls = await tlsOver(await connectTunnel(proxy.port(), `${host}:443`, authOf(ctx)), {
      servername: host, ca: proxy.caCertificatePem(), ALPNProtocols: ['h2', 'http/1.1'],
    })
    cleanup.push(() => tls.destroy())
    expect(tls.alpnProtocol).toBe('h2')
    const session = h2Over(tls, `https://${host}`)
    for (let i = 0; i < 2; i++) {
      const res = await h2request(session, { ':path': '/', ':authority': host })
      expect(res.status).toBe(200)
      expect(res.headers['cache-control']).toBe('max-age=3600')
      expect(res.text).toBe(`origin ${host}:443 443 /`)
    }
    session.close()
    const ip = await tlsOver(await connectTunnel(proxy.port(), `127.0.0.1:${origin.port}`, authOf(ctx)), {
      servername: undefined, host: '127.0.0.1', ca: proxy.caCertificatePem(), checkServerIdentity: () => undefined,
    })
    cleanup.push(() => ip.destroy())
    expect(ip.getPeerCertificate().subjectaltname).toContain('IP Address:127.0.0.1')
  })

  test('without testAllowInsecureUpstream the origin\'s certificate is verified: 502', async () => {
    const proxy = await startProxy({ testCmuxProxyOrigin: `https://127.0.0.1:${origin.port}` })
    const routed = proxy.createContext(1, ROUTE)
    const res = await proxyRequest(proxy.port(), 'http://localhost:5173/', { auth: authOf(routed) })
    expect(res.status).toBe(502)
    expect(res.headers['x-cmux-proxy-error']).toBe('tls')
  })

  test('a testCmuxProxyOrigin that is not an origin is refused, naming the option', async () => {
    await expect(ProxyServer.start('127.0.0.1:0', true, { testCmuxProxyOrigin: 'ftp://x/y' })).rejects.toThrow(/testCmuxProxyOrigin/)
  })

  test('a CONNECT to a non-intercepted host goes through the origin\'s own CONNECT', async () => {
    const tunnels = await startTlsServer((req, res) => res.end(), { names: ['127.0.0.1'], ca: untrustedCa })
    cleanup.push(() => tunnels.close())
    const asked = []
    tunnels.server.on('connect', (req, socket) => {
      asked.push({ target: req.url, override: req.headers['x-cmux-host-override'] })
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      // Later than the head: connectTunnel hands the socket over once the proxy's own 200 is read.
      setTimeout(() => socket.end(`tunnel to ${req.url} via the origin`), 100)
    })
    const proxy = await startProxy({ testCmuxProxyOrigin: `https://127.0.0.1:${tunnels.port}`, testAllowInsecureUpstream: true })
    const routed = proxy.createContext(1, ROUTE)
    const socket = await connectTunnel(proxy.port(), 'example.test:443', authOf(routed))
    const received = await new Promise((resolve) => {
      let text = ''
      socket.on('data', (d) => (text += d))
      socket.on('close', () => resolve(text))
    })
    expect(received).toBe('tunnel to example.test:443 via the origin')
    expect(asked).toEqual([{ target: 'example.test:443', override: 'example.test:443' }])
  })
})

describe('a CA handed in by the app', () => {
  test('an RSA CA in PKCS#1 form, as cmux\'s ~/.cmux/certs holds it (node-forge): intercepted leaves verify against it', async () => {
    const ca = makeCA('Cmux Preview Proxy CA')
    expect(ca.keyPem).toMatch(/BEGIN RSA PRIVATE KEY/)
    // The dev box's name goes to a closed local port: nothing is looked up or sent off the machine.
    const devBox = `cmux-m1-base-3000.${ROUTE.domainSuffix}:443`
    const proxy = await startProxy({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, resolve: { [devBox]: `127.0.0.1:${await closedPort()}` } })
    const ctx = proxy.createContext(1, ROUTE)
    const tls = await tlsOver(await connectTunnel(proxy.port(), 'localhost:3000', authOf(ctx)), { servername: 'localhost', ca: ca.certPem })
    cleanup.push(() => tls.destroy())
    expect(tls.authorized).toBe(true)
    // Inside the tunnel the proxy answers: the rewritten dev box refuses the connection.
    const res = await requestOver(tls, { path: '/' })
    expect(res.status).toBe(502)
    expect(res.headers['x-cmux-proxy-error']).toBe('refused')
  })
})
