// Helpers for the limits, hostile-input and panic tests: servers that
// misbehave on purpose, and bounded waits on sockets and on the proxy's stats().

import http from 'node:http'
import net from 'node:net'
import { expect } from 'vitest'
import { WebSocketServer } from 'ws'
import { Conn, proxyRequest } from '../support/http-client.mjs'
import { closer, listen, trackSockets } from '../support/servers.mjs'
import { waitFor } from '../support/wait.mjs'

// ---------------------------------------------------------------------------
// Servers

/**
 * An HTTP server that accepts heads up to 1 MiB (Node's default is 16 KiB),
 * so the proxy's own head limit is what is being tested. `requests` records
 * { method, url, headers } of every request it parsed.
 */
export async function startRecordingServer(handler = (req, res) => res.end(`ok:${req.url}`)) {
  const requests = []
  const server = http.createServer({ maxHeaderSize: 1 << 20 }, (req, res) => {
    requests.push({ method: req.method, url: req.url, headers: req.headers })
    handler(req, res)
  })
  server.on('clientError', (err, socket) => socket.destroy())
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { server, port, requests, sockets, close: closer(server, sockets) }
}

/**
 * A raw TCP server that records everything: { connections, bytes, data, ended, closed }.
 * `onSocket(socket, stats)` decides what to answer (default: nothing, ever).
 */
export async function startRawServer(onSocket = () => {}) {
  const stats = { connections: 0, bytes: 0, ended: 0, closed: 0, data: [] }
  // Not half-open: when the proxy ends its side, this side ends too and the
  // socket leaves `sockets`, so a test can see that the proxy let go of it.
  const server = net.createServer({ allowHalfOpen: false }, (socket) => {
    stats.connections++
    socket.on('error', () => {})
    socket.on('data', (d) => {
      stats.bytes += d.length
      stats.data.push(d)
    })
    socket.on('end', () => stats.ended++)
    socket.on('close', () => stats.closed++)
    onSocket(socket, stats)
  })
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { server, port, stats, sockets, close: closer(server, sockets), text: () => Buffer.concat(stats.data).toString('latin1') }
}

/**
 * A WebSocket echo endpoint on a plain HTTP server. `observed` counts
 * { upgrades, opened, closed }.
 */
export async function startWsEchoServer() {
  const observed = { upgrades: 0, opened: 0, closed: 0 }
  const server = http.createServer((req, res) => res.end('not a websocket'))
  const wss = new WebSocketServer({ noServer: true })
  server.on('upgrade', (req, socket, head) => {
    observed.upgrades++
    wss.handleUpgrade(req, socket, head, (ws) => {
      observed.opened++
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
      ws.on('close', () => observed.closed++)
      ws.on('error', () => {})
    })
  })
  const sockets = trackSockets(server)
  const port = await listen(server)
  const close = closer(server, sockets, () => {
    for (const client of wss.clients) client.terminate()
    wss.close()
  })
  return { server, port, observed, close }
}

// ---------------------------------------------------------------------------
// Bounded waits

/** Resolves with the ms it took `conn` to close; fails after `timeout` ms. */
export async function closedWithin(conn, timeout, since = Date.now()) {
  await conn.waitClosed(timeout)
  return Date.now() - since
}

/** Waits until the proxy holds exactly `baseline` connections and tunnels again. */
export async function backToBaseline(proxy, baseline = { activeConnections: 0, activeTunnels: 0 }, timeout = 3000) {
  await waitFor(() => {
    const s = proxy.stats()
    return s.activeConnections === baseline.activeConnections && s.activeTunnels === baseline.activeTunnels
  }, {
    timeout,
    message: `stats() did not return to baseline ${JSON.stringify(baseline)}: ${JSON.stringify(proxy.stats())}`,
  })
}

/** One ordinary request through the proxy that must be served with 200. */
export async function expectServed(proxyPort, url, auth) {
  const res = await proxyRequest(proxyPort, url, { auth })
  expect(res.status).toBe(200)
  return res
}

/** Sends `data` on a fresh connection; returns the Conn (reads are the caller's). */
export async function sendRaw(port, data, opts) {
  const conn = await Conn.connect(port, opts)
  conn.write(data)
  return conn
}

/**
 * What the proxy did with a request it should refuse: { status, closed }.
 * Waits for a response head or a close, whichever comes first (bounded).
 */
export async function outcome(conn, timeout = 5000) {
  try {
    const res = await conn.readResponse({ timeout })
    return { status: res.status, res }
  } catch (e) {
    if (conn.closed || conn.ended) return { status: null, closed: true, error: e }
    throw e
  }
}
