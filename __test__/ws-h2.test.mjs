// WebSockets over HTTP/2 (RFC 8441 extended CONNECT): on the h2c listener,
// and inside an intercepted TLS tunnel that negotiated h2.

import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { WebSocketServer } from 'ws'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, Conn } from '../support/http-client.mjs'
import { startHttpServer } from '../support/servers.mjs'
import { waitFor, withTimeout } from '../support/wait.mjs'
import { h2cSession } from './conduct-helpers.mjs'
import { useTracked } from './fixtures.mjs'
import { closeFrame, encodeFrame, readFrame } from './helpers.mjs'
import { DEV_HOST, h2Over, remoteSettings, ROUTE, startTlsServer, testCA, tlsTunnel, wsOverH2 } from './tls-helpers.mjs'

let ca, plainBox, tlsBox, plainWss, tlsWss, proxy, auth, routedAuth
const upgrades = []
const serverSockets = []

function attachEcho(wss, label) {
  wss.on('connection', (ws, req) => {
    const entry = { label, host: req.headers.host, url: req.url, headers: req.headers, ws, closed: null }
    upgrades.push(entry)
    serverSockets.push(ws)
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    ws.on('close', (code, reason) => (entry.closed = { code, reason: reason.toString() }))
    ws.send(`server-hello:${label}`)
  })
}

beforeAll(async () => {
  ca = testCA()
  plainBox = await startHttpServer((req, res) => res.end('plain'))
  plainWss = new WebSocketServer({ server: plainBox.server, path: '/echo' })
  attachEcho(plainWss, 'plain')
  tlsBox = await startTlsServer((req, res) => res.end('tls'))
  tlsWss = new WebSocketServer({ server: tlsBox.server, path: '/hmr' })
  attachEcho(tlsWss, 'tls')
  proxy = await ProxyServer.start('127.0.0.1:0', true, {
    resolve: { [`${DEV_HOST}:443`]: `127.0.0.1:${tlsBox.port}` },
    upstreamCaPem: [ca.certPem],
  })
  auth = authOf(proxy.createContext(1))
  routedAuth = authOf(proxy.createContext(2, ROUTE))
})

afterAll(async () => {
  for (const ws of serverSockets) ws.terminate()
  plainWss?.close()
  tlsWss?.close()
  await proxy?.stop()
  await plainBox?.close()
  await tlsBox?.close()
})

// Sessions and sockets the tests keep, closed before the above (after hooks run in reverse order).
const track = useTracked({ after: 'all' })

/** Opens an extended CONNECT stream; resolves { stream, headers, conn }. */
function extendedConnect(session, headers) {
  return withTimeout(new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: false })
    stream.on('error', reject)
    stream.once('response', (h) => resolve({ stream, headers: h }))
  }), 10000, 'extended CONNECT response')
}

async function exchange(conn, label) {
  const hello = await readFrame(conn)
  expect(hello.opcode).toBe(0x1)
  expect(hello.masked).toBe(false)
  expect(hello.payload.toString()).toBe(`server-hello:${label}`)

  conn.write(encodeFrame(0x1, 'text over h2'))
  const text = await readFrame(conn)
  expect(text.opcode).toBe(0x1)
  expect(text.payload.toString()).toBe('text over h2')

  const bin = Buffer.from([0, 1, 2, 127, 128, 255])
  conn.write(encodeFrame(0x2, bin))
  const echoed = await readFrame(conn)
  expect(echoed.opcode).toBe(0x2)
  expect(echoed.payload.equals(bin)).toBe(true)

  const big = Buffer.alloc(100 * 1024, 0x5a)
  conn.write(encodeFrame(0x2, big))
  const bigEcho = await readFrame(conn)
  expect(bigEcho.payload.equals(big)).toBe(true)
}

describe('extended CONNECT on the h2c listener', () => {
  test('SETTINGS_ENABLE_CONNECT_PROTOCOL is advertised and a WebSocket runs on the stream', async () => {
    const session = track(h2cSession(proxy.port()))
    const settings = await withTimeout(remoteSettings(session), 5000, 'remote SETTINGS')
    expect(settings.enableConnectProtocol).toBe(true)

    const before = upgrades.length
    const { stream, headers } = await extendedConnect(session, wsOverH2(`127.0.0.1:${plainBox.port}`, '/echo', { 'proxy-authorization': auth }))
    expect(headers[':status']).toBe(200)
    for (const name of ['upgrade', 'connection', 'sec-websocket-accept']) expect(headers).not.toHaveProperty(name)
    const conn = new Conn(stream)
    await exchange(conn, 'plain')

    await waitFor(() => upgrades.length > before)
    const server = upgrades.at(-1)
    expect(server).toMatchObject({ label: 'plain', url: '/echo', host: `127.0.0.1:${plainBox.port}` })
    expect(server.headers).not.toHaveProperty('proxy-authorization')

    server.ws.send('pushed by the server')
    const pushed = await readFrame(conn)
    expect(pushed.payload.toString()).toBe('pushed by the server')

    conn.write(closeFrame(1000, 'client done'))
    const close = await readFrame(conn)
    expect(close.opcode).toBe(0x8)
    expect(close.payload.readUInt16BE(0)).toBe(1000)
    // Closing handshake done: the client ends its stream, the server's TCP connection must end too.
    conn.end()
    await waitFor(() => server.closed, { timeout: 5000, message: 'server saw the close' })
    expect(server.closed).toEqual({ code: 1000, reason: 'client done' })
    session.close()
  })

  test('an extended CONNECT without credentials gets 407', async () => {
    const session = track(h2cSession(proxy.port()))
    await withTimeout(remoteSettings(session), 5000, 'remote SETTINGS')
    const before = upgrades.length
    const { stream, headers } = await extendedConnect(session, wsOverH2(`127.0.0.1:${plainBox.port}`, '/echo'))
    expect(headers[':status']).toBe(407)
    stream.destroy()
    expect(upgrades.length).toBe(before)
    session.close()
  })
})

describe('extended CONNECT inside an intercepted TLS tunnel', () => {
  test('a wss-style WebSocket over h2 reaches the dev box; server push arrives', async () => {
    const t = await tlsTunnel(proxy.port(), 'localhost:3000', routedAuth, {
      servername: 'localhost',
      ca: [proxy.caCertificatePem()],
      ALPNProtocols: ['h2', 'http/1.1'],
    })
    track(t)
    expect(t.alpnProtocol).toBe('h2')
    const session = h2Over(t)
    track(session)
    const settings = await withTimeout(remoteSettings(session), 5000, 'remote SETTINGS in the tunnel')
    expect(settings.enableConnectProtocol).toBe(true)

    const before = upgrades.length
    const { stream, headers } = await extendedConnect(session, wsOverH2('localhost:3000', '/hmr?token=abc', { scheme: 'https', origin: 'https://localhost:3000' }))
    expect(headers[':status']).toBe(200)
    const conn = new Conn(stream)
    await exchange(conn, 'tls')

    await waitFor(() => upgrades.length > before)
    const server = upgrades.at(-1)
    expect(server.label).toBe('tls')
    expect(server.url).toBe('/hmr?token=abc')
    expect(server.host).toBe(DEV_HOST)

    server.ws.send('hmr update')
    const pushed = await readFrame(conn)
    expect(pushed.opcode).toBe(0x1)
    expect(pushed.payload.toString()).toBe('hmr update')

    // A close from the server side reaches the client as a close frame.
    server.ws.close(4002, 'server closing')
    const close = await readFrame(conn)
    expect(close.opcode).toBe(0x8)
    expect(close.payload.readUInt16BE(0)).toBe(4002)
    expect(close.payload.subarray(2).toString()).toBe('server closing')
    session.close()
  })
})
