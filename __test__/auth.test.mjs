// Proxy-Authorization: 407 answers, and the same keep-alive connection
// authenticating on the retry (plain requests and CONNECT).

import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, basicAuth, buildRequest, Conn, openTunnel } from '../support/http-client.mjs'
import { startEchoServer, startHttpServer } from '../support/servers.mjs'
import { REALM } from './helpers.mjs'

let proxy, proxyPort, upstream, echo, ctx
const hits = []

beforeAll(async () => {
  upstream = await startHttpServer((req, res) => {
    hits.push({ url: req.url, headers: req.headers })
    res.setHeader('content-type', 'text/plain')
    res.end(`ok:${req.url}`)
  })
  echo = await startEchoServer()
  proxy = await ProxyServer.start('127.0.0.1:0')
  proxyPort = proxy.port()
  ctx = proxy.createContext(1)
})

afterAll(async () => {
  await proxy?.stop()
  await upstream?.close()
  await echo?.close()
})

const target = (path) => `http://127.0.0.1:${upstream.port}${path}`
const getReq = (path, auth, extra = []) => {
  const headers = [['Host', `127.0.0.1:${upstream.port}`], ...extra]
  if (auth !== null && auth !== undefined) headers.push(['Proxy-Authorization', auth])
  return buildRequest('GET', target(path), headers)
}

/** Bad Proxy-Authorization values; each is a function so that contexts are made per test. */
const BAD = [
  ['no Proxy-Authorization', () => null],
  ['the Bearer scheme', () => 'Bearer x'],
  ['Basic with bad base64', () => 'Basic !!!not*base64!!!'],
  ['Basic without a colon', () => 'Basic ' + Buffer.from(ctx.username + ctx.password).toString('base64')],
  ['a wrong password', () => basicAuth(ctx.username, 'f'.repeat(ctx.password.length))],
  ['an empty password', () => basicAuth(ctx.username, '')],
  ['an unknown user', () => basicAuth('wc-999-deadbeef', ctx.password)],
  ['Basic with nothing after it', () => 'Basic'],
  ['a released context', () => {
    const gone = proxy.createContext(2)
    proxy.releaseContext(gone.id)
    return authOf(gone)
  }],
  ['a replaced context', () => {
    const old = proxy.createContext(3)
    proxy.createContext(3)
    return authOf(old)
  }],
]

describe('plain requests', () => {
  test.each(BAD)('%s gets 407, then the right credentials succeed on the same connection', async (_, bad) => {
    const badAuth = bad()
    const before = hits.length
    const conn = await Conn.connect(proxyPort)
    try {
      conn.write(getReq('/first', badAuth))
      const first = await conn.readResponse()
      expect(first.status).toBe(407)
      expect(first.all('proxy-authenticate')).toEqual([REALM])
      expect(hits.length).toBe(before) // never reached the upstream
      expect(conn.ended).toBe(false)

      conn.write(getReq('/second?x=1', authOf(ctx)))
      const second = await conn.readResponse()
      expect(second.status).toBe(200)
      expect(second.text).toBe('ok:/second?x=1')
      expect(hits.length).toBe(before + 1)
      expect(hits.at(-1).url).toBe('/second?x=1')
      expect(conn.closed).toBe(false)
    } finally {
      conn.destroy()
    }
  })

  test('the scheme name is case-insensitive', async () => {
    const conn = await Conn.connect(proxyPort)
    try {
      const token = authOf(ctx).slice('Basic '.length)
      conn.write(getReq('/lower', `basic ${token}`))
      const res = await conn.readResponse()
      expect(res.status).toBe(200)
      expect(res.text).toBe('ok:/lower')
    } finally {
      conn.destroy()
    }
  })

  test('a 407 has a short body and the connection stays usable for several retries', async () => {
    const conn = await Conn.connect(proxyPort)
    try {
      for (let i = 0; i < 3; i++) {
        conn.write(getReq(`/retry${i}`, 'Basic AAAA'))
        const res = await conn.readResponse()
        expect(res.status).toBe(407)
        expect(res.headers['proxy-authenticate']).toBe(REALM)
      }
      conn.write(getReq('/finally', authOf(ctx)))
      const ok = await conn.readResponse()
      expect(ok.status).toBe(200)
      expect(ok.text).toBe('ok:/finally')
    } finally {
      conn.destroy()
    }
  })
})

describe('CONNECT', () => {
  test.each(BAD)('%s gets 407, then CONNECT with credentials on the same socket gets 200', async (_, bad) => {
    const badAuth = bad()
    const authority = `127.0.0.1:${echo.port}`
    const connectionsBefore = echo.events.connections
    const conn = await Conn.connect(proxyPort)
    try {
      const headers = [['Host', authority]]
      if (badAuth !== null) headers.push(['Proxy-Authorization', badAuth])
      conn.write(buildRequest('CONNECT', authority, headers))
      const first = await conn.readResponse({ connect: true })
      expect(first.status).toBe(407)
      expect(first.all('proxy-authenticate')).toEqual([REALM])
      expect(echo.events.connections).toBe(connectionsBefore) // no tunnel was opened
      expect(conn.ended).toBe(false)

      conn.write(buildRequest('CONNECT', authority, [['Host', authority], ['Proxy-Authorization', authOf(ctx)]]))
      const second = await conn.readResponse({ connect: true })
      expect(second.status).toBe(200)
      conn.write('ping-through-tunnel')
      expect((await conn.readBytes('ping-through-tunnel'.length)).toString()).toBe('ping-through-tunnel')
    } finally {
      conn.destroy()
    }
  })

  test('a CONNECT with valid credentials works on a fresh socket', async () => {
    const { conn, res } = await openTunnel(proxyPort, `127.0.0.1:${echo.port}`, authOf(ctx))
    try {
      expect(res.status).toBe(200)
      conn.write('abc')
      expect((await conn.readBytes(3)).toString()).toBe('abc')
    } finally {
      conn.destroy()
    }
  })
})
