// Plain (absolute-form) forwarding: as-is relaying, hop-by-hop headers,
// streaming in both directions, and the proxy's own error answers.

import http from 'node:http'
import { Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, buildRequest, Conn, proxyRequest, rawRequest } from '../support/http-client.mjs'
import { closedPort, startHttpServer, startTcpServer } from '../support/servers.mjs'
import { waitFor } from '../support/wait.mjs'
import { digestOf, patternChunks, patternDigest } from './helpers.mjs'

const MiB = 1 << 20
const BIG = 200 * MiB
const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' }

let proxy, proxyPort, upstream, rawUpstream, deadPort, plain, routed
const seen = [] // requests the upstream received
const state = { slowFinished: false, endlessClosed: false, endlessSocketClosed: false, endlessStarted: false }

beforeAll(async () => {
  upstream = await startHttpServer(async (req, res) => {
    const url = new URL(req.url, 'http://x')
    seen.push({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders })
    switch (url.pathname) {
      case '/upload': {
        const digest = await digestOf(req)
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ ...digest, te: req.headers['transfer-encoding'] ?? null, cl: req.headers['content-length'] ?? null }))
        return
      }
      case '/download': {
        const size = Number(url.searchParams.get('size'))
        res.writeHead(200, { 'content-type': 'application/octet-stream' })
        await pipeline(Readable.from(patternChunks(size)), res).catch(() => {})
        return
      }
      case '/slow': {
        state.slowFinished = false
        res.writeHead(200, { 'content-type': 'text/plain' })
        res.write('first-chunk;')
        setTimeout(() => {
          state.slowFinished = true
          res.end('rest')
        }, 1000)
        return
      }
      case '/endless': {
        state.endlessStarted = true
        res.on('close', () => (state.endlessClosed = true))
        req.socket.on('close', () => (state.endlessSocketClosed = true))
        res.writeHead(200, { 'content-type': 'application/octet-stream' })
        const block = Buffer.alloc(64 * 1024, 0x61)
        const timer = setInterval(() => {
          if (res.destroyed || res.writableEnded) return clearInterval(timer)
          res.write(block)
        }, 5)
        res.on('close', () => clearInterval(timer))
        return
      }
      case '/echo': {
        const chunks = []
        for await (const c of req) chunks.push(c)
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders, body: Buffer.concat(chunks).toString() }))
        return
      }
      case '/status': {
        const code = Number(url.searchParams.get('code'))
        res.writeHead(code, { 'content-type': 'text/plain', 'x-status': String(code) })
        res.end(`status ${code}`)
        return
      }
      default: {
        res.setHeader('cache-control', 'max-age=60, private')
        res.setHeader('etag', '"abc-123"')
        res.setHeader('set-cookie', ['a=1; Path=/', 'b=2; HttpOnly'])
        res.setHeader('content-type', 'text/plain; charset=utf-8')
        res.setHeader('x-upstream', 'yes')
        res.end(`hello from ${req.url}`)
      }
    }
  })

  // A raw upstream that answers every request head with hop-by-hop response headers.
  rawUpstream = await startTcpServer((socket) => {
    let buf = ''
    socket.on('data', (d) => {
      buf += d.toString('latin1')
      let i
      while ((i = buf.indexOf('\r\n\r\n')) >= 0) {
        buf = buf.slice(i + 4)
        socket.write(
          'HTTP/1.1 200 OK\r\n' +
            'Content-Type: text/plain\r\n' +
            'Content-Length: 2\r\n' +
            'Connection: x-upstream-secret\r\n' +
            'X-Upstream-Secret: 1\r\n' +
            'Keep-Alive: timeout=5, max=100\r\n' +
            'X-Normal: ok\r\n' +
            '\r\n' +
            'ok',
        )
      }
    })
  })

  deadPort = await closedPort()
  proxy = await ProxyServer.start('127.0.0.1:0', false, {
    resolve: {
      'upstream.test:80': `127.0.0.1:${upstream.port}`,
      'dead.test:80': `127.0.0.1:${deadPort}`,
    },
  })
  proxyPort = proxy.port()
  plain = proxy.createContext(1)
  routed = proxy.createContext(2, ROUTE)
})

afterAll(async () => {
  await proxy?.stop()
  await upstream?.close()
  await rawUpstream?.close()
})

const up = (path) => `http://127.0.0.1:${upstream.port}${path}`

describe('as-is forwarding', () => {
  test('a context without route: path, query, status, body and headers pass unchanged', async () => {
    const res = await proxyRequest(proxyPort, up('/path?q=1'), { auth: authOf(plain) })
    expect(seen.at(-1).url).toBe('/path?q=1')
    expect(seen.at(-1).method).toBe('GET')
    expect(seen.at(-1).headers.host).toBe(`127.0.0.1:${upstream.port}`)
    expect(res.status).toBe(200)
    expect(res.text).toBe('hello from /path?q=1')
    expect(res.headers['cache-control']).toBe('max-age=60, private')
    expect(res.headers.etag).toBe('"abc-123"')
    expect(res.headers['set-cookie']).toEqual(['a=1; Path=/', 'b=2; HttpOnly'])
    expect(res.headers['x-upstream']).toBe('yes')
    expect(res.headers['content-type']).toBe('text/plain; charset=utf-8')
  })

  test.each([201, 404, 500])('status %i and its body are relayed', async (code) => {
    const res = await proxyRequest(proxyPort, up(`/status?code=${code}`), { auth: authOf(plain) })
    expect(res.status).toBe(code)
    expect(res.text).toBe(`status ${code}`)
    expect(res.headers['x-status']).toBe(String(code))
  })

  test('a POST body and the method reach the upstream', async () => {
    const res = await proxyRequest(proxyPort, up('/echo?m=post'), {
      method: 'POST',
      auth: authOf(plain),
      headers: { 'content-type': 'application/json' },
      body: '{"hello":"world"}',
    })
    expect(res.status).toBe(200)
    const echo = JSON.parse(res.text)
    expect(echo.method).toBe('POST')
    expect(echo.url).toBe('/echo?m=post')
    expect(echo.body).toBe('{"hello":"world"}')
    expect(echo.headers['content-type']).toBe('application/json')
  })

  test('a routed context with a non-loopback host is not rewritten (resolve override)', async () => {
    const res = await proxyRequest(proxyPort, 'http://upstream.test/x', { auth: authOf(routed) })
    expect(res.status).toBe(200)
    expect(res.text).toBe('hello from /x')
    expect(seen.at(-1).url).toBe('/x')
    expect(seen.at(-1).headers.host).toBe('upstream.test')
  })

  test('request hop-by-hop headers are not forwarded; end-to-end ones are', async () => {
    const { conn, res } = await rawRequest(proxyPort, 'GET', up('/echo'), [
      ['Host', `127.0.0.1:${upstream.port}`],
      ['Connection', 'x-secret'],
      ['X-Secret', 'should-not-pass'],
      ['Keep-Alive', 'timeout=5'],
      ['Proxy-Authorization', authOf(plain)],
      ['Proxy-Connection', 'keep-alive'],
      ['TE', 'trailers'],
      ['Upgrade', 'websocket'],
      ['Cookie', 'a=1; b=2'],
      ['X-Custom', 'yes'],
      ['User-Agent', 'hop-test'],
    ])
    conn.destroy()
    expect(res.status).toBe(200)
    const { headers } = JSON.parse(res.text)
    for (const name of ['x-secret', 'keep-alive', 'proxy-authorization', 'proxy-connection', 'te', 'upgrade']) {
      expect(headers, `upstream saw ${name}`).not.toHaveProperty(name)
    }
    expect(headers.connection ?? '').not.toMatch(/x-secret/i)
    expect(headers.cookie).toBe('a=1; b=2')
    expect(headers['x-custom']).toBe('yes')
    expect(headers['user-agent']).toBe('hop-test')
  })

  test('response hop-by-hop headers do not reach the client; others do', async () => {
    const res = await proxyRequest(proxyPort, `http://127.0.0.1:${rawUpstream.port}/r`, { auth: authOf(plain) })
    expect(res.status).toBe(200)
    expect(res.text).toBe('ok')
    expect(res.headers['x-normal']).toBe('ok')
    expect(res.headers).not.toHaveProperty('x-upstream-secret')
    expect(res.headers).not.toHaveProperty('keep-alive')
    expect(res.headers.connection ?? '').not.toMatch(/x-upstream-secret/i)
  })
})

describe('streaming', () => {
  test('a 200 MiB upload passes through intact', async () => {
    const expected = patternDigest(BIG)
    const result = await new Promise((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: proxyPort,
        method: 'POST',
        path: up('/upload'),
        agent: false,
        headers: {
          host: `127.0.0.1:${upstream.port}`,
          'proxy-authorization': authOf(plain),
          'content-type': 'application/octet-stream',
          'content-length': String(BIG),
        },
      }, (res) => {
        const chunks = []
        res.on('data', (c) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(Buffer.concat(chunks).toString()) }))
        res.on('error', reject)
      })
      req.on('error', reject)
      pipeline(Readable.from(patternChunks(BIG)), req).catch(reject)
    })
    expect(result.status).toBe(200)
    expect(result.body.bytes).toBe(BIG)
    expect(result.body.sha1).toBe(expected)
  }, 40000)

  test('a chunked upload (no content-length) passes through intact', async () => {
    const size = 16 * MiB + 12345
    const result = await new Promise((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: proxyPort,
        method: 'PUT',
        path: up('/upload'),
        agent: false,
        headers: { host: `127.0.0.1:${upstream.port}`, 'proxy-authorization': authOf(plain) },
      }, (res) => {
        const chunks = []
        res.on('data', (c) => chunks.push(c))
        res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(Buffer.concat(chunks).toString()) }))
      })
      req.on('error', reject)
      pipeline(Readable.from(patternChunks(size, 64 * 1024 + 3)), req).catch(reject)
    })
    expect(result.status).toBe(200)
    expect(result.body.bytes).toBe(size)
    expect(result.body.sha1).toBe(patternDigest(size, 64 * 1024 + 3))
  })

  test('a 200 MiB download passes through intact', async () => {
    const expected = patternDigest(BIG)
    const result = await new Promise((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: proxyPort,
        path: up(`/download?size=${BIG}`),
        agent: false,
        headers: { host: `127.0.0.1:${upstream.port}`, 'proxy-authorization': authOf(plain) },
      }, (res) => digestOf(res).then((digest) => resolve({ status: res.statusCode, ...digest }), reject))
      req.on('error', reject)
      req.end()
    })
    expect(result.status).toBe(200)
    expect(result.bytes).toBe(BIG)
    expect(result.sha1).toBe(expected)
  }, 40000)

  test('the first bytes of a slow response arrive before the upstream finishes', async () => {
    const started = Date.now()
    const result = await new Promise((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: proxyPort,
        path: up('/slow'),
        agent: false,
        headers: { host: `127.0.0.1:${upstream.port}`, 'proxy-authorization': authOf(plain) },
      }, (res) => {
        let first
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c) => {
          if (!first) first = { at: Date.now() - started, finished: state.slowFinished, text: c }
          body += c
        })
        res.on('end', () => resolve({ status: res.statusCode, first, body, total: Date.now() - started }))
        res.on('error', reject)
      })
      req.on('error', reject)
      req.end()
    })
    expect(result.status).toBe(200)
    expect(result.body).toBe('first-chunk;rest')
    expect(result.first.finished).toBe(false)
    expect(result.first.text.startsWith('first-chunk')).toBe(true)
  })

  test('a client aborting mid-download makes the proxy close the upstream response', async () => {
    state.endlessClosed = false
    state.endlessSocketClosed = false
    state.endlessStarted = false
    await new Promise((resolve, reject) => {
      const req = http.request({
        host: '127.0.0.1',
        port: proxyPort,
        path: up('/endless'),
        agent: false,
        headers: { host: `127.0.0.1:${upstream.port}`, 'proxy-authorization': authOf(plain) },
      }, (res) => {
        let got = 0
        res.on('data', (c) => {
          got += c.length
          if (got > 256 * 1024) {
            req.destroy()
            resolve()
          }
        })
      })
      req.on('error', () => {})
      req.on('close', resolve)
      req.end()
    })
    expect(state.endlessStarted).toBe(true)
    await waitFor(() => state.endlessClosed && state.endlessSocketClosed, {
      timeout: 3000,
      message: 'the upstream response/socket was not closed after the client aborted',
    })
  })
})

describe('errors', () => {
  test('an unreachable upstream (route-less context, closed port) gives 502 with a one-line body', async () => {
    const res = await proxyRequest(proxyPort, `http://127.0.0.1:${deadPort}/x`, { auth: authOf(plain) })
    expect(res.status).toBe(502)
    const text = res.text.trim()
    expect(text.length).toBeGreaterThan(0)
    expect(text).not.toContain('\n')
  })

  test('an unreachable upstream via a resolve override gives 502', async () => {
    const res = await proxyRequest(proxyPort, 'http://dead.test/x', { auth: authOf(routed) })
    expect(res.status).toBe(502)
    const text = res.text.trim()
    expect(text.length).toBeGreaterThan(0)
    expect(text).not.toContain('\n')
  })

  test('the connection stays usable after a 502', async () => {
    const conn = await Conn.connect(proxyPort)
    try {
      conn.write(buildRequest('GET', `http://127.0.0.1:${deadPort}/x`, [['Host', `127.0.0.1:${deadPort}`], ['Proxy-Authorization', authOf(plain)]]))
      expect((await conn.readResponse()).status).toBe(502)
      conn.write(buildRequest('GET', up('/after-502'), [['Host', `127.0.0.1:${upstream.port}`], ['Proxy-Authorization', authOf(plain)]]))
      const ok = await conn.readResponse()
      expect(ok.status).toBe(200)
      expect(ok.text).toBe('hello from /after-502')
    } finally {
      conn.destroy()
    }
  })

  test('an origin-form request to the proxy gives 400', async () => {
    const before = seen.length
    const { conn, res } = await rawRequest(proxyPort, 'GET', '/x', [
      ['Host', `127.0.0.1:${upstream.port}`],
      ['Proxy-Authorization', authOf(plain)],
    ])
    conn.destroy()
    expect(res.status).toBe(400)
    expect(seen.length).toBe(before)
  })
})
