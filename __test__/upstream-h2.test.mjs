// HTTP/2 to the upstream: a dev box that offers h2 gets every request over
// one pooled HTTP/2 connection, which is replaced transparently when the dev
// box goes away; an HTTP/1.1-only dev box gets keep-alive connections.

import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, Conn, getOn, proxyRequest } from '../support/http-client.mjs'
import { sleep, waitFor, withTimeout } from '../support/wait.mjs'
import { DEV_HOST, startTlsServer, testCA, tlsTunnel } from './tls-helpers.mjs'

const H1_HOST = 'cmux-m2-base-3000.test.local'
const COLD_HOST = 'cmux-m3-base-3000.test.local'

let ca, h2box, h1box, coldbox, proxy, ctxH2, ctxH1, authH2, authH1, authCold, proxyCaPem
const cleanup = []

function handler(req, res) {
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({
      url: req.url,
      httpVersion: req.httpVersion,
      host: req.headers.host ?? req.headers[':authority'],
      body: Buffer.concat(chunks).toString(),
    }))
  })
}

beforeAll(async () => {
  ca = testCA()
  h2box = await startTlsServer(handler, { h2: true, names: [DEV_HOST] })
  h1box = await startTlsServer(handler, { names: [H1_HOST] })
  coldbox = await startTlsServer(handler, { h2: true, names: [COLD_HOST] })
  proxy = await ProxyServer.start('127.0.0.1:0', false, {
    resolve: {
      [`${DEV_HOST}:443`]: `127.0.0.1:${h2box.port}`,
      [`${H1_HOST}:443`]: `127.0.0.1:${h1box.port}`,
      [`${COLD_HOST}:443`]: `127.0.0.1:${coldbox.port}`,
    },
    upstreamCaPem: [ca.certPem],
  })
  ctxH2 = proxy.createContext(1, { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' })
  ctxH1 = proxy.createContext(2, { morphId: 'm2', scope: 'base', domainSuffix: 'test.local' })
  authH2 = authOf(ctxH2)
  authH1 = authOf(ctxH1)
  authCold = authOf(proxy.createContext(3, { morphId: 'm3', scope: 'base', domainSuffix: 'test.local' }))
  proxyCaPem = proxy.caCertificatePem()
})

afterAll(async () => {
  for (const s of cleanup) s.destroy()
  await proxy?.stop()
  await h2box?.close()
  await h1box?.close()
  await coldbox?.close()
})

async function tunnelConn(auth) {
  const t = await tlsTunnel(proxy.port(), 'localhost:3000', auth, {
    servername: 'localhost',
    ca: [proxyCaPem],
    ALPNProtocols: ['http/1.1'],
  })
  cleanup.push(t)
  return new Conn(t)
}

async function absolute(path, auth) {
  const res = await proxyRequest(proxy.port(), `http://localhost:3000${path}`, { auth })
  res.socket?.destroy()
  return { status: res.status, json: JSON.parse(res.text) }
}

/** `perTunnel` sequential requests on each of `tunnels` tunnels plus `absoluteCount` absolute-form ones, all at once. */
async function burst(tag, { tunnels = 3, perTunnel = 8, absoluteCount = 6, auth = authH2 } = {}) {
  const jobs = []
  for (let t = 0; t < tunnels; t++) {
    jobs.push((async () => {
      const conn = await tunnelConn(auth)
      const out = []
      for (let i = 0; i < perTunnel; i++) out.push({ path: `/${tag}/t${t}/${i}`, res: await getOn(conn, `/${tag}/t${t}/${i}`) })
      conn.destroy()
      return out
    })())
  }
  for (let i = 0; i < absoluteCount; i++) {
    jobs.push(absolute(`/${tag}/abs/${i}`, auth).then((res) => [{ path: `/${tag}/abs/${i}`, res }]))
  }
  return (await withTimeout(Promise.all(jobs), 20000, `${tag} burst`)).flat()
}

function sessionsOf(box, tag) {
  return new Set(box.requests.filter((r) => r.url.startsWith(`/${tag}/`)).map((r) => r.session))
}

describe('an h2-capable dev box', () => {
  test('after a first request, 30 requests over 3 tunnels and absolute-form all go over HTTP/2 on that one TCP connection', async () => {
    const first = await absolute('/warm/0', authH2)
    expect(first.status).toBe(200)
    expect(first.json.httpVersion).toBe('2.0')
    const results = await burst('warm')
    expect(results).toHaveLength(30)
    for (const { path, res } of results) {
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ url: path, httpVersion: '2.0', host: DEV_HOST, body: '' })
    }
    const seen = h2box.requests.filter((r) => r.url.startsWith('/warm/'))
    expect(seen).toHaveLength(31)
    expect(seen.every((r) => r.httpVersion === '2.0')).toBe(true)
    expect(h2box.stats.connections).toBe(1)
    expect(h2box.sessions.size).toBe(1)
  })

  test('30 simultaneous first requests (3 tunnels + absolute-form) share one HTTP/2 connection', async () => {
    const results = await burst('cold', { auth: authCold })
    expect(results).toHaveLength(30)
    for (const { path, res } of results) {
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ url: path, httpVersion: '2.0', host: COLD_HOST, body: '' })
    }
    expect(coldbox.stats.connections).toBe(1)
  })

  /** One request first (it must open the new connection), then a burst that must reuse it. */
  async function afterReconnect(tag) {
    const single = await absolute(`/${tag}/single`, authH2)
    expect(single.status).toBe(200)
    expect(single.json).toEqual({ url: `/${tag}/single`, httpVersion: '2.0', host: DEV_HOST, body: '' })
    const results = await burst(tag, { tunnels: 2, perTunnel: 3, absoluteCount: 4 })
    for (const { path, res } of results) {
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ url: path, httpVersion: '2.0', host: DEV_HOST, body: '' })
    }
    expect(sessionsOf(h2box, tag).size).toBe(1)
  }

  test('after the dev box sends GOAWAY and closes the session, the next requests succeed on a new connection', async () => {
    await waitFor(() => h2box.sessions.size === 1, { timeout: 5000 })
    const connectionsBefore = h2box.stats.connections
    const [session] = h2box.sessions
    session.goaway(0)
    session.close()
    await waitFor(() => h2box.sessions.size === 0, { timeout: 5000, message: 'the dev box session closed' })
    await sleep(100)
    await afterReconnect('after-goaway')
    expect(h2box.stats.connections).toBe(connectionsBefore + 1)
  })

  test('after the dev box drops the connection abruptly, the next requests succeed on a new connection', async () => {
    await waitFor(() => h2box.sessions.size === 1, { timeout: 5000 })
    const connectionsBefore = h2box.stats.connections
    const [session] = h2box.sessions
    session.destroy()
    await waitFor(() => h2box.sessions.size === 0, { timeout: 5000 })
    await sleep(100)
    await afterReconnect('after-drop')
    expect(h2box.stats.connections).toBe(connectionsBefore + 1)
  })
})

describe('an HTTP/1.1-only dev box', () => {
  test('10 sequential requests (absolute-form and in tunnels) reuse one keep-alive connection', async () => {
    const connectionsBefore = h1box.stats.connections
    for (let i = 0; i < 5; i++) {
      const res = await absolute(`/h1/abs/${i}`, authH1)
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ url: `/h1/abs/${i}`, httpVersion: '1.1', host: H1_HOST, body: '' })
    }
    for (let i = 0; i < 5; i++) {
      const conn = await tunnelConn(authH1)
      const res = await getOn(conn, `/h1/t/${i}`)
      conn.destroy()
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ url: `/h1/t/${i}`, httpVersion: '1.1', host: H1_HOST, body: '' })
    }
    expect(h1box.requests.filter((r) => r.url.startsWith('/h1/'))).toHaveLength(10)
    expect(h1box.stats.connections - connectionsBefore).toBe(1)
  })

  test('concurrent requests to it still all succeed', async () => {
    const results = await burst('h1burst', { auth: authH1, tunnels: 3, perTunnel: 4, absoluteCount: 6 })
    expect(results).toHaveLength(18)
    for (const { path, res } of results) {
      expect(res.status).toBe(200)
      expect(res.json).toEqual({ url: path, httpVersion: '1.1', host: H1_HOST, body: '' })
    }
  })
})
