// Local servers on 127.0.0.1:0 for the tests, the bench and the scripts, and
// the socket bookkeeping that lets each close at once.

import http from 'node:http'
import https from 'node:https'
import net from 'node:net'

/** The open sockets of `server`, kept current. */
export function trackSockets(server, event = 'connection') {
  const sockets = new Set()
  server.on(event, (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  return sockets
}

/**
 * A label the resolver refuses before it asks anyone (over 63 bytes): a name with it fails to resolve
 * without a packet to the machine's DNS server, which may be off the machine.
 */
export const UNRESOLVABLE_LABEL = 'x'.repeat(64)

/** Listens on `host`:0; resolves the port. */
export async function listen(server, host = '127.0.0.1') {
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return server.address().port
}

/** A close() for `server` that also destroys its open `sockets` (and runs `extra` first); idempotent. */
export function closer(server, sockets, extra = () => {}) {
  let closing
  return () => {
    closing ??= new Promise((resolve) => {
      extra()
      server.close(() => resolve())
      for (const socket of sockets) socket.destroy()
    })
    return closing
  }
}

/** A port on 127.0.0.1 on which nothing listens (bound, then released). */
export async function closedPort() {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** An HTTP server on 127.0.0.1:0. Returns { server, port, close }. */
export async function startHttpServer(handler) {
  const server = http.createServer(handler)
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { server, port, close: closer(server, sockets) }
}

/** An HTTPS server on 127.0.0.1:0 with `tls` = { key, cert }. */
export async function startHttpsServer(tls, handler) {
  const server = https.createServer({ key: tls.key, cert: tls.cert }, handler)
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { server, port, close: closer(server, sockets) }
}

/** A raw TCP server; `onSocket(socket)` handles each connection. */
export async function startTcpServer(onSocket, { allowHalfOpen = true } = {}) {
  const server = net.createServer({ allowHalfOpen }, (socket) => {
    socket.on('error', () => {})
    onSocket(socket)
  })
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { server, port, close: closer(server, sockets), sockets }
}

export const ECHO_FINAL = Buffer.from('<echo-server-final-bytes>')

/**
 * A TCP echo server. When a client half-closes, it records the 'end', writes
 * ECHO_FINAL and ends its side too. `events` counts what happened.
 */
export async function startEchoServer() {
  const events = { connections: 0, ended: 0, closed: 0, received: 0 }
  const srv = await startTcpServer((socket) => {
    events.connections++
    socket.on('data', (d) => {
      events.received += d.length
      socket.write(d)
    })
    socket.on('end', () => {
      events.ended++
      socket.end(ECHO_FINAL)
    })
    socket.on('close', () => events.closed++)
  })
  return { ...srv, events }
}
