// HTTP/2 to the client inside an intercepted TLS tunnel (ALPN h2), with an
// HTTP/1.1 dev box behind the proxy.

import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf } from '../support/http-client.mjs'
import { sleep, withTimeout } from '../support/wait.mjs'
import { DEV_HOST, h2Over, h2request, ROUTE, startTlsServer, testCA, tlsTunnel } from './tls-helpers.mjs'

let ca, standin, proxy, ctx, auth, proxyCaPem
const live = { inFlight: 0, maxInFlight: 0 }
const cleanup = []

beforeAll(async () => {
  ca = testCA()
  standin = await startTlsServer(async (req, res) => {
    const url = new URL(req.url, 'https://x')
    if (url.pathname === '/slow') {
      live.inFlight++
      live.maxInFlight = Math.max(live.maxInFlight, live.inFlight)
      await sleep(200)
      live.inFlight--
      res.setHeader('content-type', 'text/plain')
      res.end(`slow:${url.searchParams.get('i')}`)
      return
    }
    if (url.pathname === '/headers') {
      res.setHeader('cache-control', 'public, max-age=60, must-revalidate')
      res.setHeader('etag', '"v1-abc123"')
      res.setHeader('set-cookie', ['a=1; Path=/', 'b=2; Path=/; HttpOnly', 'c=3; SameSite=Lax'])
      res.setHeader('connection', 'keep-alive')
      res.setHeader('keep-alive', 'timeout=5, max=100')
      res.setHeader('x-custom', 'kept')
      // No content-length: the HTTP/1.1 answer is chunked.
      res.write('part1-')
      res.end('part2')
      return
    }
    const chunks = []
    for await (const c of req) chunks.push(c)
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ method: req.method, url: req.url, host: req.headers.host, body: Buffer.concat(chunks).toString() }))
  })
  proxy = await ProxyServer.start('127.0.0.1:0', true, {
    resolve: { [`${DEV_HOST}:443`]: `127.0.0.1:${standin.port}` },
    upstreamCaPem: [ca.certPem],
  })
  ctx = proxy.createContext(1, ROUTE)
  auth = authOf(ctx)
  proxyCaPem = proxy.caCertificatePem()
})

afterAll(async () => {
  for (const s of cleanup) s.destroy()
  await proxy?.stop()
  await standin?.close()
})

async function h2Session() {
  const t = await tlsTunnel(proxy.port(), 'localhost:3000', auth, {
    servername: 'localhost',
    ca: [proxyCaPem],
    ALPNProtocols: ['h2', 'http/1.1'],
  })
  expect(t.alpnProtocol).toBe('h2')
  const session = h2Over(t)
  cleanup.push(session, t)
  return session
}

const get = (path) => ({ ':method': 'GET', ':scheme': 'https', ':authority': 'localhost:3000', ':path': path })

describe('HTTP/2 inside an intercepted tunnel', () => {
  test('a GET over h2 reaches the dev box with its path and Host', async () => {
    const session = await h2Session()
    const res = await withTimeout(h2request(session, get('/hello?q=1')), 10000, 'h2 GET')
    expect(res.status).toBe(200)
    expect(JSON.parse(res.text)).toEqual({ method: 'GET', url: '/hello?q=1', host: DEV_HOST, body: '' })
    const seen = standin.requests.at(-1)
    expect(seen.httpVersion).toBe('1.1')
    session.close()
  })

  test('a POST body over h2 arrives', async () => {
    const session = await h2Session()
    const res = await withTimeout(
      h2request(session, { ...get('/post'), ':method': 'POST', 'content-type': 'text/plain' }, 'payload-123'),
      10000,
      'h2 POST',
    )
    expect(res.status).toBe(200)
    expect(JSON.parse(res.text)).toEqual({ method: 'POST', url: '/post', host: DEV_HOST, body: 'payload-123' })
    session.close()
  })

  test('20 concurrent streams on one connection are served concurrently', async () => {
    const session = await h2Session()
    live.maxInFlight = 0
    const results = await withTimeout(
      Promise.all(Array.from({ length: 20 }, (_, i) => h2request(session, get(`/slow?i=${i}`)))),
      15000,
      '20 h2 streams',
    )
    results.forEach((res, i) => {
      expect(res.status).toBe(200)
      expect(res.text).toBe(`slow:${i}`)
    })
    expect(live.maxInFlight).toBeGreaterThan(1)
    session.close()
  })

  test('cache-control, etag and every set-cookie arrive unchanged; no connection-specific headers', async () => {
    const session = await h2Session()
    const res = await withTimeout(h2request(session, get('/headers')), 10000, 'h2 GET /headers')
    expect(res.status).toBe(200)
    expect(res.text).toBe('part1-part2')
    expect(res.headers['cache-control']).toBe('public, max-age=60, must-revalidate')
    expect(res.headers.etag).toBe('"v1-abc123"')
    expect(res.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; Path=/; HttpOnly', 'c=3; SameSite=Lax'])
    expect(res.headers['x-custom']).toBe('kept')
    for (const name of ['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade']) {
      expect(res.headers, name).not.toHaveProperty(name)
    }
    // The session survived the response (a connection-specific header would be a protocol error).
    const again = await withTimeout(h2request(session, get('/after-headers')), 10000, 'h2 GET after')
    expect(again.status).toBe(200)
    session.close()
  })
})
