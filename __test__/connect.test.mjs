// CONNECT tunnels that are relayed as opaque bytes: context without route,
// or a non-loopback host. Half-close, tunnel accounting, errors.

import crypto from 'node:crypto'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, buildRequest, Conn, openTunnel } from '../support/http-client.mjs'
import { closedPort, ECHO_FINAL, startEchoServer, startTcpServer } from '../support/servers.mjs'
import { waitFor } from '../support/wait.mjs'
import { withProxy } from './fixtures.mjs'

const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' }

let proxy, proxyPort, echo, greeter, deadPort, plain, routed

beforeAll(async () => {
  echo = await startEchoServer()
  // Says hello and closes its side right away.
  greeter = await startTcpServer((socket) => socket.end('hello-and-bye'))
  deadPort = await closedPort()
  proxy = await ProxyServer.start('127.0.0.1:0', false, {
    resolve: { 'echo.test:7': `127.0.0.1:${echo.port}` },
  })
  proxyPort = proxy.port()
  plain = proxy.createContext(1)
  routed = proxy.createContext(2, ROUTE)
})

afterAll(async () => {
  await proxy?.stop()
  await echo?.close()
  await greeter?.close()
})

const echoAuthority = () => `127.0.0.1:${echo.port}`

describe('relayed tunnels', () => {
  test('CONNECT answers HTTP/1.1 200 and bytes go both ways', async () => {
    const { conn, res } = await openTunnel(proxyPort, echoAuthority(), authOf(plain))
    try {
      expect(res.version).toBe('1.1')
      expect(res.status).toBe(200)
      for (const msg of ['one', 'two-two', 'three\r\n\r\nGET / HTTP/1.1']) {
        conn.write(msg)
        expect((await conn.readBytes(Buffer.byteLength(msg))).toString()).toBe(msg)
      }
    } finally {
      conn.destroy()
    }
  })

  test('8 MiB of random bytes echo back intact', async () => {
    const { conn, res } = await openTunnel(proxyPort, echoAuthority(), authOf(plain))
    try {
      expect(res.status).toBe(200)
      const data = crypto.randomBytes(8 << 20)
      conn.write(data)
      const back = await conn.readBytes(data.length, 15000)
      expect(crypto.createHash('sha1').update(back).digest('hex')).toBe(crypto.createHash('sha1').update(data).digest('hex'))
    } finally {
      conn.destroy()
    }
  })

  test('bytes sent in the same write as the CONNECT head reach the target first, and count as the tunnel\'s', async () => {
    const ctx = proxy.createContext(11)
    const conn = await Conn.connect(proxyPort)
    try {
      const head = buildRequest('CONNECT', echoAuthority(), [['Host', echoAuthority()], ['Proxy-Authorization', authOf(ctx)]])
      conn.write(Buffer.concat([Buffer.from(head), Buffer.from('early-bytes|')]))
      expect((await conn.readResponse({ connect: true })).status).toBe(200)
      expect((await conn.readBytes(12)).toString()).toBe('early-bytes|')
      conn.write('later')
      expect((await conn.readBytes(5)).toString()).toBe('later')
    } finally {
      conn.destroy()
    }
    // Counted once the tunnel closed.
    await waitFor(() => proxy.contextStats(ctx.id).bytesIn === 17, { message: JSON.stringify(proxy.contextStats(ctx.id)) })
    // Out: the 17 echoed, and the echo server's farewell if it left before the client closed.
    expect([17, 17 + ECHO_FINAL.length]).toContain(proxy.contextStats(ctx.id).bytesOut)
    proxy.releaseContext(ctx.id)
  })

  test('half-close: the server sees end, its final bytes still arrive, then the client sees end', async () => {
    const { conn, res } = await openTunnel(proxyPort, echoAuthority(), authOf(plain), { allowHalfOpen: true })
    try {
      expect(res.status).toBe(200)
      conn.write('before-end')
      expect((await conn.readBytes(10)).toString()).toBe('before-end')
      const endedBefore = echo.events.ended
      conn.end()
      await waitFor(() => echo.events.ended === endedBefore + 1, { message: 'echo server never saw end' })
      const rest = await conn.readToEnd(3000)
      expect(rest.toString()).toBe(ECHO_FINAL.toString())
      expect(conn.ended).toBe(true)
    } finally {
      conn.destroy()
    }
  })

  test('the upstream closing first: its bytes arrive, then the client sees end', async () => {
    const { conn, res } = await openTunnel(proxyPort, `127.0.0.1:${greeter.port}`, authOf(plain))
    try {
      expect(res.status).toBe(200)
      const rest = await conn.readToEnd(3000)
      expect(rest.toString()).toBe('hello-and-bye')
    } finally {
      conn.destroy()
    }
  })

  test('stats().activeTunnels is 1 while a tunnel is open and back after both sides close', async () => {
    await waitFor(() => proxy.stats().activeTunnels === 0, { message: 'leftover tunnels from earlier tests' })
    const { conn, res } = await openTunnel(proxyPort, echoAuthority(), authOf(plain), { allowHalfOpen: true })
    try {
      expect(res.status).toBe(200)
      conn.write('x')
      await conn.readBytes(1)
      expect(proxy.stats().activeTunnels).toBe(1)
      conn.end()
      await conn.readToEnd(3000)
      await waitFor(() => proxy.stats().activeTunnels === 0, { message: `activeTunnels stayed ${proxy.stats().activeTunnels}` })
    } finally {
      conn.destroy()
    }
  })

  test('a client that disappears makes the proxy close the upstream side', async () => {
    const closedBefore = echo.events.closed
    const { conn, res } = await openTunnel(proxyPort, echoAuthority(), authOf(plain))
    expect(res.status).toBe(200)
    conn.write('y')
    await conn.readBytes(1)
    conn.destroy()
    await waitFor(() => echo.events.closed === closedBefore + 1, { message: 'upstream socket was not closed' })
    await waitFor(() => proxy.stats().activeTunnels === 0)
  })

  test('a routed context tunnels a non-loopback host as-is (resolve override)', async () => {
    const connectionsBefore = echo.events.connections
    const { conn, res } = await openTunnel(proxyPort, 'echo.test:7', authOf(routed))
    try {
      expect(res.status).toBe(200)
      // Looks like HTTP, but the host is not loopback: relayed byte for byte.
      const msg = 'GET /not-intercepted HTTP/1.1\r\nHost: echo.test\r\n\r\n'
      conn.write(msg)
      expect((await conn.readBytes(msg.length)).toString()).toBe(msg)
      expect(echo.events.connections).toBe(connectionsBefore + 1)
    } finally {
      conn.destroy()
    }
  })
})

describe('errors', () => {
  test.each(['nohost', 'h:99999', '::1:80', 'h:0', 'h:', ':80', 'user@h:80'])('CONNECT %s gives 400', async (authority) => {
    const conn = await Conn.connect(proxyPort)
    try {
      conn.write(buildRequest('CONNECT', authority, [['Host', authority], ['Proxy-Authorization', authOf(plain)]]))
      const res = await conn.readResponse({ connect: true })
      expect(res.status).toBe(400)
    } finally {
      conn.destroy()
    }
  })

  test('CONNECT to a closed port gives 502 with a one-line body', async () => {
    const { conn, res } = await openTunnel(proxyPort, `127.0.0.1:${deadPort}`, authOf(plain))
    try {
      expect(res.status).toBe(502)
      expect(res.text.trim().length).toBeGreaterThan(0)
      expect(res.text.trim()).not.toContain('\n')
    } finally {
      conn.destroy()
    }
  })

  test('no tunnel is counted after failed CONNECTs', async () => {
    await waitFor(() => proxy.stats().activeTunnels === 0)
  })
})

describe('which relay a blind tunnel takes', () => {
  test.skipIf(process.platform !== 'linux')('a plain client connection\'s blind tunnel is spliced in the kernel (stats().splicedTunnels); a TLS client\'s is not', async () => {
    const before = proxy.stats().splicedTunnels
    const { conn, res } = await openTunnel(proxyPort, `127.0.0.1:${echo.port}`, authOf(plain))
    expect(res.status).toBe(200)
    conn.write('spliced bytes')
    await conn.until(() => conn.buf.includes('spliced bytes') || undefined)
    expect(proxy.stats().splicedTunnels).toBe(before + 1)
    conn.destroy()

    // Over the HTTPS listener the client's bytes are decrypted by the proxy: the portable relay carries them.
    await withProxy({ httpsProxy: true }, async (tlsProxy) => {
      const ctx = tlsProxy.createContext(1)
      const tls = await import('node:tls')
      const socket = tls.connect({ port: tlsProxy.port(), host: '127.0.0.1', servername: 'localhost', ca: tlsProxy.caCertificatePem() })
      await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject))
      const over = new Conn(socket)
      over.write(buildRequest('CONNECT', `127.0.0.1:${echo.port}`, [['Host', `127.0.0.1:${echo.port}`], ['Proxy-Authorization', authOf(ctx)]]))
      expect((await over.readResponse({ connect: true })).status).toBe(200)
      over.write('relayed bytes')
      await over.until(() => over.buf.includes('relayed bytes') || undefined)
      expect(tlsProxy.stats().splicedTunnels).toBe(0)
      over.destroy()
    })
  })
})
