// An HTTPS "dev box" stand-in that sees the proxy's HTTP/2 frames, for
// conduct-helpers.mjs and vite-helpers.mjs: each TLS connection is decrypted
// here and its bytes are carried over loopback TCP to a plaintext Node http2
// (nghttp2) server, as http2.createSecureServer would serve them, while a
// frame reader watches each direction. Everything is a real socket on loopback.

import http2 from 'node:http2'
import net from 'node:net'
import tls from 'node:tls'
import { makeLeaf } from '../support/certs.mjs'
import { closer, listen, trackSockets } from '../support/servers.mjs'

const H2_PREFACE_LENGTH = 24
export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8 }
export const FLAG_END_STREAM = 0x1

/**
 * Splits one direction of an HTTP/2 connection into frames (after the client
 * preface when `preface`): onFrame({ type, flags, streamId, payload }).
 */
export class FrameReader {
  constructor({ preface, onFrame }) {
    this.buf = Buffer.alloc(0)
    this.prefaceLeft = preface ? H2_PREFACE_LENGTH : 0
    this.onFrame = onFrame
  }

  feed(chunk) {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk
    if (this.prefaceLeft > 0) {
      const n = Math.min(this.prefaceLeft, this.buf.length)
      this.buf = this.buf.subarray(n)
      this.prefaceLeft -= n
    }
    while (this.buf.length >= 9) {
      const length = this.buf.readUIntBE(0, 3)
      if (this.buf.length < 9 + length) break
      this.onFrame({
        type: this.buf[3],
        flags: this.buf[4],
        streamId: this.buf.readUInt32BE(5) & 0x7fffffff,
        payload: this.buf.subarray(9, 9 + length),
      })
      this.buf = this.buf.subarray(9 + length)
    }
  }
}

/**
 * TLS on 127.0.0.1:0 with a leaf for `names` signed by `ca`, ALPN h2 and
 * http/1.1, in front of a plaintext Node http2 server on loopback.
 *
 * - `onTls(socket, connection)`: every TLS connection accepted, numbered from
 *   1; return false to serve the socket elsewhere (it is then not relayed).
 * - `onRequest(req, res)`: the h2c server's requests (compatibility API);
 *   `req.stream.session.connection` is the number of the TLS connection.
 * - `onClientFrame(connection, frame)` / `onServerFrame(connection, frame)`:
 *   the frames of each direction ({ type, flags, streamId, payload }); a
 *   server frame is seen before its bytes are written to the client.
 * - `onClose()`: run first when closing.
 *
 * When the h2c session's connection closes (GOAWAY sent and done, or
 * destroyed), so does the TLS connection: ended, then destroyed a second later.
 *
 * Returns { port, sessions, close() }.
 */
export async function startH2TlsTerminator({ ca, names, onTls, onRequest, onClientFrame, onServerFrame, onClose = () => {} }) {
  const connectionOfPort = new Map()
  const sessions = new Set()
  const pipes = new Set()

  const h2 = http2.createServer()
  const h2Sockets = trackSockets(h2)
  h2.on('session', (session) => {
    session.on('error', () => {})
    sessions.add(session)
    session.on('close', () => sessions.delete(session))
  })
  h2.on('request', (req, res) => {
    req.stream.on('error', () => {})
    const session = req.stream.session
    // Known by now: the bytes of a stream come only after the loopback connection was set up.
    session.connection ??= connectionOfPort.get(session.socket.remotePort)
    onRequest(req, res)
  })
  const h2Port = await listen(h2)

  const leaf = makeLeaf(ca, names)
  let nextConnection = 0
  const server = tls.createServer({ key: leaf.key, cert: leaf.cert, ALPNProtocols: ['h2', 'http/1.1'] }, (socket) => {
    const connection = ++nextConnection
    socket.on('error', () => {})
    if (onTls?.(socket, connection) === false) return
    socket.pause()
    const fromClient = onClientFrame && new FrameReader({ preface: true, onFrame: (frame) => onClientFrame(connection, frame) })
    const fromServer = onServerFrame && new FrameReader({ preface: false, onFrame: (frame) => onServerFrame(connection, frame) })
    const inner = net.connect(h2Port, '127.0.0.1')
    inner.on('error', () => {})
    pipes.add(inner)
    inner.once('connect', () => {
      connectionOfPort.set(inner.localPort, connection)
      socket.on('data', (d) => {
        fromClient?.feed(d)
        inner.write(d)
      })
      socket.resume()
    })
    socket.on('end', () => inner.end())
    socket.on('close', () => inner.destroy())
    // Registered before the pipe's own listener: a frame is recorded before its bytes leave.
    if (fromServer) inner.on('data', (d) => fromServer.feed(d))
    inner.pipe(socket)
    inner.on('close', () => {
      pipes.delete(inner)
      socket.end()
      setTimeout(() => socket.destroy(), 1000).unref()
    })
  })
  server.on('tlsClientError', () => {})
  const tlsSockets = trackSockets(server, 'secureConnection')
  const port = await listen(server)

  const closeTls = closer(server, tlsSockets, () => {
    onClose()
    for (const p of pipes) p.destroy()
  })
  const closeH2 = closer(h2, h2Sockets, () => {
    for (const s of sessions) s.destroy()
  })
  return {
    port,
    sessions,
    close: async () => {
      await closeTls()
      await closeH2()
    },
  }
}
