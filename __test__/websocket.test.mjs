// WebSockets through the proxy: absolute-form upgrades (plain and rewritten
// to a wss dev box), and a ws client speaking inside a CONNECT tunnel.

import { WebSocket, WebSocketServer } from 'ws'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA, makeLeaf } from '../support/certs.mjs'
import { authOf, Conn, TunnelAgent } from '../support/http-client.mjs'
import { startHttpServer, startHttpsServer } from '../support/servers.mjs'
import { waitFor } from '../support/wait.mjs'
import { closeFrame, encodeFrame, readFrame, wsAccept, wsKey, wsUpgradeRequest } from './helpers.mjs'

const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' }
const DEV_3000 = 'cmux-m1-base-3000.test.local'

let proxy, proxyPort, plainWs, devWs, plain, routed
const wsServers = []

/** Attaches a WebSocket endpoint to an http(s) server; returns what it observed. */
function attachWs(server) {
  const observed = { upgrades: [], closes: [], connections: 0 }
  const wss = new WebSocketServer({ noServer: true })
  wsServers.push(wss)
  server.on('upgrade', (req, socket, head) => {
    observed.upgrades.push({ url: req.url, host: req.headers.host, headers: req.headers })
    if (req.url.startsWith('/forbidden')) {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\ndenied')
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      observed.connections++
      ws.send('welcome')
      ws.on('message', (data, isBinary) => {
        if (!isBinary && data.toString() === 'close-me') return ws.close(4000, 'bye')
        if (!isBinary && data.toString() === 'terminate-me') return ws.terminate()
        ws.send(data, { binary: isBinary })
      })
      ws.on('close', (code) => observed.closes.push(code))
      ws.on('error', () => {})
    })
  })
  return observed
}

beforeAll(async () => {
  const ca = makeCA()
  const leaf = makeLeaf(ca, [DEV_3000])
  plainWs = await startHttpServer((req, res) => res.end('not a websocket'))
  plainWs.observed = attachWs(plainWs.server)
  devWs = await startHttpsServer(leaf, (req, res) => res.end('not a websocket'))
  devWs.observed = attachWs(devWs.server)
  proxy = await ProxyServer.start('127.0.0.1:0', false, {
    resolve: { [`${DEV_3000}:443`]: `127.0.0.1:${devWs.port}` },
    upstreamCaPem: [ca.certPem],
  })
  proxyPort = proxy.port()
  plain = proxy.createContext(1)
  routed = proxy.createContext(2, ROUTE)
})

afterAll(async () => {
  await proxy?.stop()
  for (const wss of wsServers) {
    for (const client of wss.clients) client.terminate()
    wss.close()
  }
  await plainWs?.close()
  await devWs?.close()
})

/** Performs the handshake over a raw socket; returns { conn, res, key }. */
async function upgrade(url, auth, extraHeaders) {
  const conn = await Conn.connect(proxyPort, { allowHalfOpen: true })
  const key = wsKey()
  conn.write(wsUpgradeRequest(url, { auth, key, extraHeaders }))
  const res = await conn.readResponse()
  return { conn, res, key }
}

function expectHandshake(res, key) {
  expect(res.status).toBe(101)
  expect(res.headers['sec-websocket-accept']).toBe(wsAccept(key))
  expect(res.headers.upgrade.toLowerCase()).toBe('websocket')
  expect(res.headers.connection.toLowerCase()).toContain('upgrade')
}

async function expectEchoes(conn) {
  conn.write(encodeFrame(0x1, 'hello text'))
  const text = await readFrame(conn)
  expect(text.opcode).toBe(0x1)
  expect(text.masked).toBe(false)
  expect(text.payload.toString()).toBe('hello text')

  const bin = Buffer.from([0, 1, 2, 3, 254, 255])
  conn.write(encodeFrame(0x2, bin))
  const binary = await readFrame(conn)
  expect(binary.opcode).toBe(0x2)
  expect(Buffer.compare(binary.payload, bin)).toBe(0)

  const big = Buffer.alloc(70000)
  for (let i = 0; i < big.length; i++) big[i] = i % 251
  conn.write(encodeFrame(0x2, big))
  const bigBack = await readFrame(conn)
  expect(bigBack.opcode).toBe(0x2)
  expect(Buffer.compare(bigBack.payload, big)).toBe(0)
}

describe('absolute-form upgrade, not rewritten', () => {
  test('101 with the right accept, server push first, text and binary frames echo, client close', async () => {
    const url = `http://127.0.0.1:${plainWs.port}/echo`
    const closesBefore = plainWs.observed.closes.length
    const { conn, res, key } = await upgrade(url, authOf(plain))
    try {
      expectHandshake(res, key)
      expect(plainWs.observed.upgrades.at(-1)).toMatchObject({ url: '/echo', host: `127.0.0.1:${plainWs.port}` })
      expect(plainWs.observed.upgrades.at(-1).headers).not.toHaveProperty('proxy-authorization')

      // Pushed by the server on 'connection', before the client sent anything.
      const welcome = await readFrame(conn, 2000)
      expect(welcome.opcode).toBe(0x1)
      expect(welcome.payload.toString()).toBe('welcome')

      await expectEchoes(conn)

      // The server answers a close frame only once it received it.
      conn.write(closeFrame(1000, 'done'))
      const reply = await readFrame(conn)
      expect(reply.opcode).toBe(0x8)
      expect(reply.payload.readUInt16BE(0)).toBe(1000)
      // Then it ends the TCP connection; the proxy relays the end.
      await conn.readToEnd(3000)
      expect(conn.ended).toBe(true)
      conn.end()
      // ws emits 'close' (with the client's code) once the TCP connection is closed.
      await waitFor(() => plainWs.observed.closes.length === closesBefore + 1, { message: 'server never saw the close' })
      expect(plainWs.observed.closes.at(-1)).toBe(1000)
    } finally {
      conn.destroy()
    }
  })

  test('a graceful close by the server reaches the client, then the socket ends', async () => {
    const { conn, res, key } = await upgrade(`http://127.0.0.1:${plainWs.port}/echo`, authOf(plain))
    try {
      expectHandshake(res, key)
      expect((await readFrame(conn)).payload.toString()).toBe('welcome')
      conn.write(encodeFrame(0x1, 'close-me'))
      const close = await readFrame(conn)
      expect(close.opcode).toBe(0x8)
      expect(close.payload.readUInt16BE(0)).toBe(4000)
      expect(close.payload.subarray(2).toString()).toBe('bye')
      conn.write(closeFrame(4000))
      await conn.readToEnd(3000)
      expect(conn.ended).toBe(true)
    } finally {
      conn.destroy()
    }
  })

  test('the server dropping the connection ends the client socket', async () => {
    const { conn, res, key } = await upgrade(`http://127.0.0.1:${plainWs.port}/echo`, authOf(plain))
    try {
      expectHandshake(res, key)
      expect((await readFrame(conn)).payload.toString()).toBe('welcome')
      conn.write(encodeFrame(0x1, 'terminate-me'))
      await conn.readToEnd(2000)
      expect(conn.ended || conn.closed).toBe(true)
    } finally {
      conn.destroy()
    }
  })

  test('a non-101 answer (403) is relayed', async () => {
    const { conn, res } = await upgrade(`http://127.0.0.1:${plainWs.port}/forbidden`, authOf(plain))
    try {
      expect(res.status).toBe(403)
      expect(res.text).toBe('denied')
    } finally {
      conn.destroy()
    }
  })

  test('an upgrade without credentials gets 407 and never reaches the server', async () => {
    const before = plainWs.observed.upgrades.length
    const { conn, res } = await upgrade(`http://127.0.0.1:${plainWs.port}/echo`, null)
    try {
      expect(res.status).toBe(407)
      expect(plainWs.observed.upgrades.length).toBe(before)
    } finally {
      conn.destroy()
    }
  })
})

describe('absolute-form upgrade, rewritten to the wss dev box', () => {
  test('ws://localhost:3000/hmr upgrades against the dev box over TLS', async () => {
    const closesBefore = devWs.observed.closes.length
    const { conn, res, key } = await upgrade('http://localhost:3000/hmr', authOf(routed))
    try {
      expectHandshake(res, key)
      expect(devWs.observed.upgrades.at(-1)).toMatchObject({ url: '/hmr', host: DEV_3000 })
      const welcome = await readFrame(conn, 2000)
      expect(welcome.payload.toString()).toBe('welcome')
      await expectEchoes(conn)
      conn.write(closeFrame(1000))
      expect((await readFrame(conn)).opcode).toBe(0x8)
      await conn.readToEnd(3000)
      conn.end()
      await waitFor(() => devWs.observed.closes.length === closesBefore + 1, { message: 'dev box never saw the close' })
      expect(devWs.observed.closes.at(-1)).toBe(1000)
    } finally {
      conn.destroy()
    }
  })

  test('a 403 from the dev box is relayed', async () => {
    const { conn, res } = await upgrade('http://localhost:3000/forbidden', authOf(routed))
    try {
      expect(res.status).toBe(403)
      expect(res.text).toBe('denied')
    } finally {
      conn.destroy()
    }
  })
})

describe('ws client inside a CONNECT tunnel (routed context)', () => {
  test('ws://localhost:3000/hmr works through CONNECT localhost:3000', async () => {
    const closesBefore = devWs.observed.closes.length
    const ws = new WebSocket('ws://localhost:3000/hmr', { agent: new TunnelAgent({ proxyPort, auth: authOf(routed) }) })
    const messages = []
    ws.on('message', (data, isBinary) => messages.push({ data: Buffer.from(data), isBinary }))
    const nextMessage = async () => {
      await waitFor(() => messages.length > 0, { timeout: 5000, message: 'no WebSocket message' })
      return messages.shift()
    }
    try {
      await new Promise((resolve, reject) => {
        ws.once('open', resolve)
        ws.once('error', reject)
        ws.once('unexpected-response', (req, res) => reject(new Error(`unexpected response ${res.statusCode}`)))
      })
      expect(devWs.observed.upgrades.at(-1)).toMatchObject({ url: '/hmr', host: DEV_3000 })
      expect((await nextMessage()).data.toString()).toBe('welcome')
      ws.send('ping over tunnel')
      const text = await nextMessage()
      expect(text.isBinary).toBe(false)
      expect(text.data.toString()).toBe('ping over tunnel')
      ws.send(Buffer.from([9, 8, 7]))
      const bin = await nextMessage()
      expect(bin.isBinary).toBe(true)
      expect([...bin.data]).toEqual([9, 8, 7])
      const closed = new Promise((resolve) => ws.once('close', (code) => resolve(code)))
      ws.close(1000)
      expect(await closed).toBe(1000)
      await waitFor(() => devWs.observed.closes.length === closesBefore + 1, { message: 'dev box never saw the close' })
    } finally {
      ws.terminate()
    }
  })
})
