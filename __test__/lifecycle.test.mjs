// releaseContext closing what a context opened, stats(), and stop().

import net from 'node:net'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, buildRequest, Conn, openTunnel, proxyRequest, sendGet } from '../support/http-client.mjs'
import { portState } from '../support/ports.mjs'
import { startEchoServer, startHttpServer } from '../support/servers.mjs'
import { waitFor, withTimeout } from '../support/wait.mjs'

const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' }

let proxy, proxyPort, upstream, echo

beforeAll(async () => {
  upstream = await startHttpServer((req, res) => res.end(`ok:${req.url}`))
  echo = await startEchoServer()
  proxy = await ProxyServer.start('127.0.0.1:0')
  proxyPort = proxy.port()
})

afterAll(async () => {
  await proxy?.stop()
  await upstream?.close()
  await echo?.close()
})

const upHost = () => `127.0.0.1:${upstream.port}`
const upUrl = (path) => `http://${upHost()}${path}`

async function keepAliveConn(ctx) {
  const conn = await Conn.connect(proxyPort)
  sendGet(conn, upUrl('/warm'), { auth: authOf(ctx) })
  const res = await conn.readResponse()
  expect(res.status).toBe(200)
  return conn
}

const settle = (field, value) =>
  waitFor(() => proxy.stats()[field] === value, { message: `stats().${field} is ${proxy.stats()[field]}, expected ${value}` })

describe('releaseContext closes what the context opened', () => {
  test('an open keep-alive connection is closed and activeConnections drops back', async () => {
    await settle('activeConnections', 0)
    const ctx = proxy.createContext(10)
    const conn = await keepAliveConn(ctx)
    try {
      await settle('activeConnections', 1)
      expect(conn.closed).toBe(false)
      expect(proxy.releaseContext(ctx.id)).toBe(true)
      await conn.waitClosed(2000)
      await settle('activeConnections', 0)
    } finally {
      conn.destroy()
    }
  })

  test('an open CONNECT tunnel is closed, upstream side too, and activeTunnels drops back', async () => {
    await settle('activeTunnels', 0)
    const ctx = proxy.createContext(11)
    const closedBefore = echo.events.closed
    const { conn, res } = await openTunnel(proxyPort, `127.0.0.1:${echo.port}`, authOf(ctx))
    try {
      expect(res.status).toBe(200)
      conn.write('alive?')
      expect((await conn.readBytes(6)).toString()).toBe('alive?')
      await settle('activeTunnels', 1)
      expect(conn.closed).toBe(false)
      proxy.releaseContext(ctx.id)
      await conn.waitClosed(2000)
      await waitFor(() => echo.events.closed === closedBefore + 1, { message: 'upstream side of the tunnel stayed open' })
      await settle('activeTunnels', 0)
      await settle('activeConnections', 0)
    } finally {
      conn.destroy()
    }
  })

  test('an idle intercepted tunnel of a routed context (CONNECT localhost:3000) is closed', async () => {
    const ctx = proxy.createContext(12, ROUTE)
    const { conn, res } = await openTunnel(proxyPort, 'localhost:3000', authOf(ctx))
    try {
      expect(res.status).toBe(200)
      proxy.releaseContext(ctx.id)
      await conn.waitClosed(2000)
      await settle('activeTunnels', 0)
    } finally {
      conn.destroy()
    }
  })

  test('replacing a context (same webContentsId) closes the old one\'s connections', async () => {
    const old = proxy.createContext(13)
    const conn = await keepAliveConn(old)
    try {
      expect(conn.closed).toBe(false)
      const fresh = proxy.createContext(13)
      await conn.waitClosed(2000)
      proxy.releaseContext(fresh.id)
    } finally {
      conn.destroy()
    }
  })

  test('connections of other contexts stay open and usable', async () => {
    const a = proxy.createContext(14)
    const b = proxy.createContext(15)
    const connB = await keepAliveConn(b)
    const tunnelB = await openTunnel(proxyPort, `127.0.0.1:${echo.port}`, authOf(b))
    try {
      expect(tunnelB.res.status).toBe(200)
      proxy.releaseContext(a.id)
      await new Promise((r) => setTimeout(r, 300))
      expect(connB.closed).toBe(false)
      sendGet(connB, upUrl('/still-there'), { auth: authOf(b) })
      const res = await connB.readResponse()
      expect(res.status).toBe(200)
      expect(res.text).toBe('ok:/still-there')
      tunnelB.conn.write('still')
      expect((await tunnelB.conn.readBytes(5)).toString()).toBe('still')
    } finally {
      connB.destroy()
      tunnelB.conn.destroy()
      proxy.releaseContext(b.id)
    }
  })
})

describe('a context\'s own port closes before releaseContext returns', () => {
  // No wait between the release and the connect: the listener is closed by the time the call returns.
  test('releaseContext, 20 times', async () => {
    for (let i = 0; i < 20; i++) {
      const ctx = proxy.createContext(30 + i, ROUTE, { ownPort: true })
      expect(await portState(ctx.port)).toBe('open')
      expect(proxy.releaseContext(ctx.id)).toBe(true)
      expect(await portState(ctx.port), `round ${i}`).toBe('ECONNREFUSED')
    }
  })

  test('a createContext that replaces the context (same webContentsId), 20 times', async () => {
    let ctx = proxy.createContext(60, ROUTE, { ownPort: true })
    for (let i = 0; i < 20; i++) {
      const next = proxy.createContext(60, ROUTE, { ownPort: true })
      expect(await portState(ctx.port), `round ${i}`).toBe('ECONNREFUSED')
      expect(await portState(next.port)).toBe('open')
      ctx = next
    }
    expect(proxy.releaseContext(ctx.id)).toBe(true)
  })
})

describe('own ports count against maxContextPorts', () => {
  test('past the cap createContext throws naming it; a replacement (same webContentsId) works at the cap; a release frees a place', async () => {
    const capped = await ProxyServer.start('127.0.0.1:0', false, { maxContextPorts: 2 })
    try {
      const a = capped.createContext(1, ROUTE, { ownPort: true })
      const b = capped.createContext(2, ROUTE, { ownPort: true })
      expect(() => capped.createContext(3, ROUTE, { ownPort: true })).toThrow(/ownPort: too many contexts with a port of their own \(maxContextPorts: 2\)/)
      expect(capped.createContext(4, ROUTE).port).toBeUndefined() // the shared port is not capped by it
      const a2 = capped.createContext(1, ROUTE, { ownPort: true })
      expect(await portState(a.port)).toBe('ECONNREFUSED')
      expect(await portState(a2.port)).toBe('open')
      expect(capped.releaseContext(b.id)).toBe(true)
      const c = capped.createContext(3, ROUTE, { ownPort: true })
      expect(await portState(c.port)).toBe('open')
    } finally {
      await capped.stop()
    }
  })
})

describe('stats()', () => {
  test('totalRequests increases by the number of requests made', async () => {
    const ctx = proxy.createContext(20)
    try {
      const before = proxy.stats().totalRequests
      const conn = await Conn.connect(proxyPort)
      try {
        for (const path of ['/s1', '/s2', '/s3']) {
          sendGet(conn, upUrl(path), { auth: authOf(ctx) })
          expect((await conn.readResponse()).status).toBe(200)
        }
      } finally {
        conn.destroy()
      }
      const res = await proxyRequest(proxyPort, `http://${upHost()}/s4`, { auth: authOf(ctx) })
      expect(res.status).toBe(200)
      await waitFor(() => proxy.stats().totalRequests >= before + 4)
      expect(proxy.stats().totalRequests).toBe(before + 4)
    } finally {
      proxy.releaseContext(ctx.id)
    }
  })

  test('activeConnections follows clients and returns to the baseline when they close', async () => {
    const ctx = proxy.createContext(21)
    await settle('activeConnections', 0)
    const conns = []
    try {
      for (let i = 0; i < 3; i++) conns.push(await keepAliveConn(ctx))
      await settle('activeConnections', 3)
      conns[0].destroy()
      await settle('activeConnections', 2)
      for (const c of conns) c.destroy()
      await settle('activeConnections', 0)
    } finally {
      for (const c of conns) c.destroy()
      proxy.releaseContext(ctx.id)
    }
  })
})

async function canListenOn(port) {
  const server = net.createServer()
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', resolve)
  })
  await new Promise((resolve) => server.close(resolve))
  return true
}

describe('stop()', () => {
  test('resolves once the port is free; a second stop resolves too', async () => {
    const p = await ProxyServer.start('127.0.0.1:0')
    const port = p.port()
    await p.stop()
    expect(await canListenOn(port)).toBe(true)
    await expect(p.stop()).resolves.toBeUndefined()
  })

  test('after stop, port(), createContext() and stats() throw', async () => {
    const p = await ProxyServer.start('127.0.0.1:0')
    await p.stop()
    expect(() => p.port()).toThrow(Error)
    expect(() => p.createContext(1)).toThrow(Error)
    expect(() => p.stats()).toThrow(Error)
  })

  test('concurrent stop() calls both resolve', async () => {
    const p = await ProxyServer.start('127.0.0.1:0')
    const port = p.port()
    await withTimeout(Promise.all([p.stop(), p.stop()]), 5000, 'two concurrent stops')
    expect(await canListenOn(port)).toBe(true)
  })

  test('stop resolves with a keep-alive connection and a tunnel open, and closes them', async () => {
    const p = await ProxyServer.start('127.0.0.1:0')
    const port = p.port()
    const ctx = p.createContext(1)
    const conn = await Conn.connect(port)
    conn.write(buildRequest('GET', `http://${upHost()}/before-stop`, [['Host', upHost()], ['Proxy-Authorization', authOf(ctx)]]))
    expect((await conn.readResponse()).status).toBe(200)
    const tunnel = await openTunnel(port, `127.0.0.1:${echo.port}`, authOf(ctx))
    expect(tunnel.res.status).toBe(200)
    try {
      await withTimeout(p.stop(), 5000, 'stop() with open connections')
      await conn.waitClosed(2000)
      await tunnel.conn.waitClosed(2000)
      expect(await canListenOn(port)).toBe(true)
    } finally {
      conn.destroy()
      tunnel.conn.destroy()
    }
  })
})
