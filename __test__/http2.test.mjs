// HTTP/2 (h2c, prior knowledge) on the proxy's listener when enableHttp2 is true.

import http2 from 'node:http2'
import { WebSocketServer } from 'ws'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, Conn, connectTunnel, proxyRequest } from '../support/http-client.mjs'
import { startEchoServer, startHttpServer } from '../support/servers.mjs'
import { sleep } from '../support/wait.mjs'
import { encodeFrame, readFrame, REALM } from './helpers.mjs'
import { h2request, wsOverH2 } from './tls-helpers.mjs'

let h2proxy, h1proxy, upstream, echo, ctx, h1ctx, routedCtx, h1routedCtx, wss
const wsUpgrades = []
const seen = []
const sessions = []
// Requests to /delay the upstream holds at once, and the most it ever held.
const delayed = { now: 0, most: 0 }

beforeAll(async () => {
  upstream = await startHttpServer(async (req, res) => {
    const chunks = []
    for await (const c of req) chunks.push(c)
    seen.push({ method: req.method, url: req.url, host: req.headers.host, headers: req.headers, body: Buffer.concat(chunks).toString() })
    const url = new URL(req.url, 'http://x')
    if (url.pathname === '/delay') {
      delayed.most = Math.max(delayed.most, ++delayed.now)
      await sleep(300)
      delayed.now--
    }
    res.setHeader('content-type', 'text/plain')
    res.setHeader('x-upstream', 'yes')
    res.end(`h2ok:${req.method}:${req.url}:${Buffer.concat(chunks).toString()}`)
  })
  wss = new WebSocketServer({ noServer: true })
  upstream.server.on('upgrade', (req, socket, head) => {
    wsUpgrades.push({ url: req.url, host: req.headers.host, headers: req.headers })
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.send('welcome')
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
      ws.on('error', () => {})
    })
  })
  echo = await startEchoServer()
  // A routed context whose loopback traffic goes to a plain-HTTP cmux-proxy origin (the upstream).
  const resolve = { 'origin.test:80': `127.0.0.1:${upstream.port}` }
  h2proxy = await ProxyServer.start('127.0.0.1:0', true, { resolve })
  h1proxy = await ProxyServer.start('127.0.0.1:0', false, { resolve })
  ctx = h2proxy.createContext(1)
  h1ctx = h1proxy.createContext(1)
  const route = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local', cmuxProxyOrigin: 'http://origin.test' }
  routedCtx = h2proxy.createContext(2, route)
  h1routedCtx = h1proxy.createContext(2, route)
})

afterAll(async () => {
  for (const s of sessions) s.destroy()
  for (const c of wss?.clients ?? []) c.terminate()
  wss?.close()
  await h2proxy?.stop()
  await h1proxy?.stop()
  await upstream?.close()
  await echo?.close()
})

function connect(port, options) {
  const session = http2.connect(`http://127.0.0.1:${port}`, options)
  session.on('error', () => {})
  sessions.push(session)
  return session
}

const get = (path, auth) => ({
  ':method': 'GET',
  ':scheme': 'http',
  ':authority': `127.0.0.1:${upstream.port}`,
  ':path': path,
  ...(auth ? { 'proxy-authorization': auth } : {}),
})

describe('h2c requests', () => {
  test('a GET with credentials reaches the upstream and the answer comes back', async () => {
    const session = connect(h2proxy.port())
    const res = await h2request(session, { ...get('/x?y=1', authOf(ctx)), 'x-custom': 'h2' })
    expect(res.status).toBe(200)
    expect(res.text).toBe('h2ok:GET:/x?y=1:')
    expect(res.headers['x-upstream']).toBe('yes')
    const last = seen.at(-1)
    expect(last.url).toBe('/x?y=1')
    expect(last.host).toBe(`127.0.0.1:${upstream.port}`)
    expect(last.headers['x-custom']).toBe('h2')
    expect(last.headers).not.toHaveProperty('proxy-authorization')
  })

  test('without credentials: 407 with the realm, and the upstream sees nothing', async () => {
    const before = seen.length
    const session = connect(h2proxy.port())
    const res = await h2request(session, get('/no-auth'))
    expect(res.status).toBe(407)
    expect(res.headers['proxy-authenticate']).toBe(REALM)
    expect(seen.length).toBe(before)
    // The same session can then authenticate.
    const ok = await h2request(session, get('/after-407', authOf(ctx)))
    expect(ok.status).toBe(200)
    expect(ok.text).toBe('h2ok:GET:/after-407:')
  })

  test('a POST body goes through', async () => {
    const session = connect(h2proxy.port())
    const res = await h2request(session, { ...get('/post', authOf(ctx)), ':method': 'POST', 'content-type': 'text/plain' }, 'h2-body')
    expect(res.status).toBe(200)
    expect(res.text).toBe('h2ok:POST:/post:h2-body')
    expect(seen.at(-1)).toMatchObject({ method: 'POST', body: 'h2-body' })
  })

  test('several concurrent streams on one session all succeed, concurrently', async () => {
    const session = connect(h2proxy.port())
    const n = 8
    delayed.most = 0
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) => h2request(session, get(`/delay?i=${i}`, authOf(ctx)))),
    )
    results.forEach((res, i) => {
      expect(res.status).toBe(200)
      expect(res.text).toBe(`h2ok:GET:/delay?i=${i}:`)
    })
    // The streams reached the upstream together, not one after the other.
    expect(delayed.most).toBeGreaterThan(1)
  })

  test('a CONNECT stream with credentials gets 200 and echoes bytes', async () => {
    const session = connect(h2proxy.port())
    const stream = session.request(
      { ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}`, 'proxy-authorization': authOf(ctx) },
      { endStream: false },
    )
    try {
      const headers = await new Promise((resolve, reject) => {
        stream.once('response', resolve)
        stream.once('error', reject)
      })
      expect(headers[':status']).toBe(200)
      const received = []
      stream.on('data', (c) => received.push(c))
      stream.write('h2-tunnel-bytes')
      const deadline = Date.now() + 3000
      while (Buffer.concat(received).length < 15 && Date.now() < deadline) await sleep(20)
      expect(Buffer.concat(received).toString()).toBe('h2-tunnel-bytes')
    } finally {
      stream.close()
    }
  })

  test('a CONNECT stream without credentials gets 407', async () => {
    const session = connect(h2proxy.port())
    const stream = session.request({ ':method': 'CONNECT', ':authority': `127.0.0.1:${echo.port}` }, { endStream: false })
    try {
      const headers = await new Promise((resolve, reject) => {
        stream.once('response', resolve)
        stream.once('error', reject)
      })
      expect(headers[':status']).toBe(407)
    } finally {
      stream.close()
    }
  })

  test('HTTP/1.1 still works on an HTTP/2-enabled listener', async () => {
    const res = await proxyRequest(h2proxy.port(), `http://127.0.0.1:${upstream.port}/h1-on-h2`, { auth: authOf(ctx) })
    expect(res.status).toBe(200)
    expect(res.text).toBe('h2ok:GET:/h1-on-h2:')
  })

  test('the h2c preface gets a SETTINGS frame when enabled', async () => {
    const conn = await Conn.connect(h2proxy.port())
    try {
      conn.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]))
      const frame = await conn.readBytes(9, 3000)
      expect(frame[3]).toBe(0x04) // SETTINGS
      expect(frame.readUInt32BE(5) & 0x7fffffff).toBe(0) // stream 0
    } finally {
      conn.destroy()
    }
  })
})

/** Sends the h2c preface and an empty SETTINGS on `conn`: whether what comes back starts with a SETTINGS frame on stream 0. */
async function answersH2cPreface(conn) {
  conn.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]))
  let data
  try {
    data = await conn.readToEnd(3000)
  } catch {
    data = conn.take(conn.buf.length)
  }
  return data.length >= 9 && data[3] === 0x04 && (data.readUInt32BE(5) & 0x7fffffff) === 0
}

describe('h2c and routed contexts', () => {
  test('an h2 request to localhost:3000 is rewritten to the cmux-proxy origin', async () => {
    const session = connect(h2proxy.port())
    const res = await h2request(session, {
      ':method': 'GET',
      ':scheme': 'http',
      ':authority': 'localhost:3000',
      ':path': '/h2-rewritten?a=1',
      'proxy-authorization': authOf(routedCtx),
    })
    expect(res.status).toBe(200)
    expect(seen.at(-1)).toMatchObject({
      url: '/h2-rewritten?a=1',
      host: 'origin.test',
      headers: { 'x-cmux-port-internal': '3000', 'x-cmux-host-override': 'localhost:3000' },
    })
  })

  test('h2c inside a CONNECT localhost:3000 tunnel is served and rewritten', async () => {
    const socket = await connectTunnel(h2proxy.port(), 'localhost:3000', authOf(routedCtx))
    const session = http2.connect('http://localhost:3000', { createConnection: () => socket })
    session.on('error', () => {})
    sessions.push(session)
    for (const i of [1, 2]) {
      const res = await h2request(session, { ':method': 'GET', ':path': `/in-tunnel-h2-${i}` })
      expect(res.status).toBe(200)
      expect(seen.at(-1)).toMatchObject({ url: `/in-tunnel-h2-${i}`, host: 'origin.test' })
      expect(seen.at(-1).headers['x-cmux-port-internal']).toBe('3000')
    }
  })

  test('a WebSocket over an h2 extended CONNECT (RFC 8441) reaches the upstream as an HTTP/1.1 upgrade', async () => {
    const session = connect(h2proxy.port())
    await new Promise((resolve) => session.once('remoteSettings', resolve))
    expect(session.remoteSettings.enableConnectProtocol).toBe(true)
    const stream = session.request(wsOverH2(`127.0.0.1:${upstream.port}`, '/ws-over-h2', { 'proxy-authorization': authOf(ctx) }), { endStream: false })
    const headers = await new Promise((resolve, reject) => {
      stream.once('response', resolve)
      stream.once('error', reject)
    })
    const conn = new Conn(stream)
    try {
      expect(headers[':status']).toBe(200)
      expect(wsUpgrades.at(-1)).toMatchObject({ url: '/ws-over-h2', host: `127.0.0.1:${upstream.port}` })
      expect(wsUpgrades.at(-1).headers.upgrade.toLowerCase()).toBe('websocket')
      const welcome = await readFrame(conn)
      expect(welcome.payload.toString()).toBe('welcome')
      stream.write(encodeFrame(0x1, 'h2-ws-text'))
      const echoed = await readFrame(conn)
      expect(echoed.opcode).toBe(0x1)
      expect(echoed.payload.toString()).toBe('h2-ws-text')
    } finally {
      stream.close()
    }
  })
})

describe('enableHttp2 = false', () => {
  test('an h2c session cannot make a request', async () => {
    const before = seen.length
    const session = connect(h1proxy.port())
    const outcome = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ kind: 'timeout' }), 5000)
      const done = (v) => {
        clearTimeout(timer)
        resolve(v)
      }
      session.once('error', (e) => done({ kind: 'session-error', message: e.message }))
      session.once('close', () => done({ kind: 'session-closed' }))
      let stream
      try {
        stream = session.request(get('/h2-on-h1', authOf(h1ctx)))
      } catch (e) {
        return done({ kind: 'request-threw', message: e.message })
      }
      stream.once('response', (h) => done({ kind: 'response', status: h[':status'] }))
      stream.once('error', (e) => done({ kind: 'stream-error', message: e.message }))
      stream.once('close', () => done({ kind: 'stream-closed' }))
    })
    expect(outcome.kind).not.toBe('response')
    expect(seen.length).toBe(before)
  })

  test('the h2c preface is not answered with HTTP/2 frames', async () => {
    const conn = await Conn.connect(h1proxy.port())
    try {
      expect(await answersH2cPreface(conn)).toBe(false)
    } finally {
      conn.destroy()
    }
  })

  test('h2c inside a CONNECT localhost:3000 tunnel is not served either', async () => {
    const before = seen.length
    const socket = await connectTunnel(h1proxy.port(), 'localhost:3000', authOf(h1routedCtx))
    const conn = new Conn(socket)
    try {
      expect(await answersH2cPreface(conn)).toBe(false)
      expect(seen.length).toBe(before)
    } finally {
      conn.destroy()
    }
  })

  test('HTTP/1.1 works on that listener', async () => {
    const res = await proxyRequest(h1proxy.port(), `http://127.0.0.1:${upstream.port}/h1`, { auth: authOf(h1ctx) })
    expect(res.status).toBe(200)
    expect(res.text).toBe('h2ok:GET:/h1:')
  })
})
