// A real Vite dev server, and what a dev box stand-in in front of it needs to
// relay to it: the headers that may be forwarded, and the HMR WebSocket's
// upgrade carried as raw TCP. Used by __test__/vite-helpers.mjs and the bench's
// page-load scenario.

import net from 'node:net'

/** A Vite dev server for `root` on 127.0.0.1:`port`: { server, port, version, close() }. */
export async function startVite(root, port) {
  // vitest.config.mjs points NAPI_RS_NATIVE_LIBRARY_PATH at the proxy addon for the tests; rolldown's
  // napi-rs loader honours the same variable and would load the proxy addon as its own binding. The
  // proxy addon is loaded by now (or never is, in a dev box process), so this process needs it no more.
  delete process.env.NAPI_RS_NATIVE_LIBRARY_PATH
  const { createServer, version } = await import('vite')
  const server = await createServer({
    root,
    configFile: false,
    logLevel: 'silent',
    clearScreen: false,
    server: { host: '127.0.0.1', port, strictPort: true },
    optimizeDeps: { noDiscovery: true, include: [] },
  })
  await server.listen()
  return { server, port, version, close: () => server.close() }
}

// Connection-specific headers: not relayed (and forbidden in HTTP/2 responses).
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer',
  'proxy-authenticate', 'proxy-authorization', 'http2-settings',
])

/** `headers` without pseudo-headers and hop-by-hop ones. */
export function relayableHeaders(headers) {
  const out = {}
  for (const [k, v] of Object.entries(headers)) {
    if (k.startsWith(':') || HOP_BY_HOP.has(k)) continue
    out[k] = v
  }
  return out
}

/**
 * Relays an HTTP/1.1 upgrade request (the HMR WebSocket) to Vite on
 * 127.0.0.1:`port` as raw TCP, its Host rewritten to Vite's own; Vite's
 * answer goes back raw. Returns the socket to Vite.
 */
export function relayUpgrade(req, socket, head, port) {
  const upstream = net.connect(port, '127.0.0.1')
  upstream.on('error', () => socket.destroy())
  let out = `${req.method} ${req.url} HTTP/1.1\r\n`
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i]
    out += `${name}: ${name.toLowerCase() === 'host' ? `127.0.0.1:${port}` : req.rawHeaders[i + 1]}\r\n`
  }
  upstream.write(out + '\r\n')
  if (head?.length) upstream.write(head)
  upstream.pipe(socket)
  socket.pipe(upstream)
  socket.on('close', () => upstream.destroy())
  upstream.on('close', () => socket.destroy())
  return upstream
}
