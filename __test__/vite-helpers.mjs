// Helpers for vite.test.mjs: a generated Vite app of a few hundred ES modules,
// and a TLS "cloud dev box" stand-in in front of a real Vite (support/vite.mjs) that
// speaks HTTP/2 (and HTTP/1.1 for WebSocket upgrades) and counts, frame by
// frame, what the proxy does to it. Everything is a real socket on loopback.

import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { relayableHeaders, relayUpgrade } from '../support/vite.mjs'
import { FLAG_END_STREAM, FRAME, startH2TlsTerminator } from './h2-frames.mjs'

// ---------------------------------------------------------------------------
// The app

export const BRANCHES = 20
export const LEAVES_PER_BRANCH = 19
export const HOT_V1 = 'hot module v1'

const leafValue = (b, l) => b * 100 + l + 1
const branchValue = (b) => 10000 + b

/**
 * Writes, in a fresh temporary directory, index.html and the module tree:
 * src/main.js imports src/b<i>.js (BRANCHES of them), each importing
 * LEAVES_PER_BRANCH leaves src/b<i>/l<j>.js, plus src/hot.js (HMR-accepted by
 * main). Each module exports a number; main writes the sum into #sum, the hot
 * string into #hot, and sets window.__appReady.
 *
 * Returns { root, expectedSum, moduleCount, hotFile, cleanup() }.
 */
export async function generateApp() {
  const root = await mkdtemp(path.join(os.tmpdir(), 'cmux-vite-app-'))
  const src = path.join(root, 'src')
  await mkdir(src)
  let expectedSum = 0
  let moduleCount = 0
  const writes = []
  const branchImports = []
  for (let b = 0; b < BRANCHES; b++) {
    await mkdir(path.join(src, `b${b}`))
    const imports = []
    const names = []
    for (let l = 0; l < LEAVES_PER_BRANCH; l++) {
      writes.push(writeFile(path.join(src, `b${b}`, `l${l}.js`), `export const value = ${leafValue(b, l)}\n`))
      expectedSum += leafValue(b, l)
      moduleCount++
      imports.push(`import { value as v${l} } from './b${b}/l${l}.js'`)
      names.push(`v${l}`)
    }
    writes.push(writeFile(
      path.join(src, `b${b}.js`),
      `${imports.join('\n')}\nexport const value = ${branchValue(b)} + ${names.join(' + ')}\n`,
    ))
    expectedSum += branchValue(b)
    moduleCount++
    branchImports.push(`import { value as b${b} } from './b${b}.js'`)
  }
  const hotFile = path.join(src, 'hot.js')
  writes.push(writeFile(hotFile, hotModule(HOT_V1)))
  moduleCount++
  writes.push(writeFile(path.join(src, 'main.js'), `${branchImports.join('\n')}
import { hot } from './hot.js'

const sum = ${Array.from({ length: BRANCHES }, (_, b) => `b${b}`).join(' + ')}
const renderHot = (text) => { document.getElementById('hot').textContent = text }
document.getElementById('sum').textContent = String(sum)
renderHot(hot)
if (import.meta.hot) {
  import.meta.hot.accept('./hot.js', (mod) => {
    if (mod) renderHot(mod.hot)
  })
}
window.__appReady = true
`))
  moduleCount++
  writes.push(writeFile(path.join(root, 'index.html'), `<!doctype html>
<html>
<head><meta charset="utf-8"><title>cmux vite preview</title></head>
<body>
<p>sum: <b id="sum">loading</b></p>
<p>hot: <b id="hot">loading</b></p>
<script type="module" src="/src/main.js"></script>
</body>
</html>
`))
  await Promise.all(writes)
  return {
    root,
    expectedSum,
    moduleCount,
    hotFile,
    cleanup: () => rm(root, { recursive: true, force: true }),
  }
}

export function hotModule(text) {
  return `export const hot = ${JSON.stringify(text)}\n`
}

// ---------------------------------------------------------------------------
// The dev box stand-in

/**
 * The cloud dev box: TLS on 127.0.0.1:0 with a leaf for `names`, ALPN h2 and
 * http/1.1 (as http2.createSecureServer({ allowHTTP1: true }) offers). Every
 * request is forwarded to Vite on 127.0.0.1:`vitePort` (Host rewritten to
 * Vite's own address) and its response streamed back; HTTP/1.1 upgrades (the
 * HMR WebSocket) are piped to Vite as raw TCP.
 *
 * To see the proxy's frames (startH2TlsTerminator of h2-frames.mjs), each h2
 * TLS connection is decrypted here and its bytes carried over loopback TCP to
 * a plaintext Node http2 server (nghttp2, as http2.createSecureServer would
 * use), with a frame reader on each direction: client→server (RST_STREAM,
 * GOAWAY, new HEADERS) and server→client (END_STREAM, so a reset can be
 * classed as on a completed stream or on one still in flight).
 *
 * stats:
 *   tls: [{ id, alpn, open }]          every TLS connection accepted (open: not closed yet)
 *   h2Streams                          streams opened by the proxy (HEADERS on a new stream id)
 *   resets: [{ connection, streamId, code, completed, msAfterEnd, requestEnded, path, status }]
 *                                      RST_STREAM frames from the proxy; completed: the dev box
 *                                      had already sent END_STREAM on that stream, msAfterEnd
 *                                      before the reset arrived; requestEnded: the proxy had sent
 *                                      END_STREAM on its request
 *   goaways: [{ connection, lastStreamId, code }]  GOAWAY frames from the proxy
 *   serverResets                       RST_STREAM frames the dev box sent
 *   responses: [{ proto, method, path, status }]    every response status the dev box sent
 *   aborted                            requests the client went away from before the response ended
 *   upgrades                           WebSocket upgrades piped to Vite
 *   upstreamErrors: [{ path, error }]  failures of the dev box's own requests to Vite (answered 502)
 */
export async function startViteDevBox({ ca, names, vitePort }) {
  const stats = {
    tls: [],
    h2Streams: 0,
    resets: [],
    goaways: [],
    serverResets: 0,
    responses: [],
    aborted: 0,
    upgrades: 0,
    upstreamErrors: [],
  }
  const viteHost = `127.0.0.1:${vitePort}`
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })
  // Per TLS connection (by id): stream id -> { path, status, requestEnded, ended, endedAt, reset }.
  const streamInfo = new Map()
  const infoOf = (connection, streamId) => {
    let m = streamInfo.get(connection)
    if (!m) streamInfo.set(connection, (m = new Map()))
    let s = m.get(streamId)
    if (!s) m.set(streamId, (s = { path: null, status: null, requestEnded: false, ended: false, endedAt: 0, reset: false }))
    return s
  }
  const pipes = new Set()

  // Forwards one request (HTTP/2 compat API or HTTP/1.1) to Vite.
  const forward = (proto, connection) => (req, res) => {
    const headers = relayableHeaders(req.headers)
    headers.host = viteHost
    const info = proto === 'h2' && connection ? infoOf(connection, req.stream.id) : null
    if (info) info.path = req.url
    let upstreamEnded = false
    let failed = false
    let clientGone = false
    const upstream = http.request(
      { host: '127.0.0.1', port: vitePort, method: req.method, path: req.url, headers, agent },
      (up) => {
        if (info) info.status = up.statusCode
        if (clientGone) return up.resume()
        stats.responses.push({ proto, method: req.method, path: req.url, status: up.statusCode })
        res.writeHead(up.statusCode, relayableHeaders(up.headers))
        up.on('end', () => (upstreamEnded = true))
        up.pipe(res)
      },
    )
    upstream.on('error', (e) => {
      if (upstreamEnded || clientGone) return
      failed = true
      stats.upstreamErrors.push({ path: req.url, error: e.code ?? e.message })
      if (!res.headersSent) {
        stats.responses.push({ proto, method: req.method, path: req.url, status: 502 })
        res.writeHead(502, { 'content-type': 'text/plain' })
      }
      res.end(`dev box: ${e.message}`)
    })
    // The client (the proxy) went away before the whole response was handed over: a cancelled request.
    res.on('close', () => {
      if (!failed && !(upstreamEnded && res.writableEnded)) {
        clientGone = true
        stats.aborted++
        upstream.destroy()
      }
    })
    req.pipe(upstream)
  }

  // HTTP/1.1 (the WebSocket upgrades) is served straight on the TLS socket.
  const h1 = http.createServer()
  h1.on('request', (req, res) => forward('http/1.1', null)(req, res))
  h1.on('clientError', (_e, socket) => socket.destroy())
  h1.on('upgrade', (req, socket, head) => {
    stats.upgrades++
    socket.on('error', () => {})
    const upstream = relayUpgrade(req, socket, head, vitePort)
    pipes.add(upstream)
    upstream.on('close', () => pipes.delete(upstream))
    // The 101 (or any other answer) is relayed raw; record its status.
    upstream.once('data', (d) => {
      const m = /^HTTP\/1\.1 (\d{3})/.exec(d.subarray(0, 16).toString('latin1'))
      stats.responses.push({ proto: 'ws', method: req.method, path: req.url, status: m ? Number(m[1]) : 0 })
    })
  })

  // HTTP/2 goes to a plaintext HTTP/2 server behind the TLS terminator, watched frame by frame.
  const box = await startH2TlsTerminator({
    ca,
    names,
    onTls: (socket, connection) => {
      const alpn = socket.alpnProtocol || 'none'
      const record = { id: connection, alpn, open: true }
      stats.tls.push(record)
      socket.on('close', () => (record.open = false))
      if (alpn !== 'h2') {
        h1.emit('connection', socket)
        return false
      }
    },
    onRequest: (req, res) => forward('h2', req.stream.session.connection)(req, res),
    onClientFrame: (connection, { type, flags, streamId, payload }) => {
      if (type === FRAME.HEADERS && !streamInfo.get(connection)?.has(streamId)) stats.h2Streams++
      if ((type === FRAME.DATA || type === FRAME.HEADERS) && flags & FLAG_END_STREAM) {
        infoOf(connection, streamId).requestEnded = true
      } else if (type === FRAME.HEADERS) {
        infoOf(connection, streamId)
      } else if (type === FRAME.RST_STREAM) {
        const info = infoOf(connection, streamId)
        info.reset = true
        stats.resets.push({
          connection,
          streamId,
          code: payload.readUInt32BE(0),
          completed: info.ended,
          // How long after the dev box wrote its END_STREAM the reset arrived (null: not ended).
          msAfterEnd: info.ended ? Math.round((performance.now() - info.endedAt) * 10) / 10 : null,
          // Whether the proxy had ended its own side (the request) before resetting.
          requestEnded: info.requestEnded,
          // The request head is read by the http2 server after this frame reader: path and status are
          // looked up when reported.
          get path() {
            return info.path
          },
          get status() {
            return info.status
          },
        })
      } else if (type === FRAME.GOAWAY) {
        stats.goaways.push({ connection, lastStreamId: payload.readUInt32BE(0) & 0x7fffffff, code: payload.readUInt32BE(4) })
      }
    },
    // Recorded before the bytes leave: an RST read after this saw a completed stream.
    onServerFrame: (connection, { type, flags, streamId }) => {
      if ((type === FRAME.DATA || type === FRAME.HEADERS) && flags & FLAG_END_STREAM) {
        const info = infoOf(connection, streamId)
        info.ended = true
        info.endedAt = performance.now()
      }
      if (type === FRAME.RST_STREAM) stats.serverResets++
    },
    onClose: () => {
      for (const p of pipes) p.destroy()
    },
  })
  const port = box.port

  return {
    port,
    stats,
    /** Streams the proxy opened that the dev box has not ended and that were not reset: [{ connection, streamId, path }]. */
    inFlight() {
      const out = []
      for (const [connection, m] of streamInfo) {
        for (const [streamId, s] of m) if (!s.ended && !s.reset) out.push({ connection, streamId, path: s.path })
      }
      return out
    },
    /** The TLS connections still open, by ALPN protocol: { h2: n, 'http/1.1': n, ... }. */
    openConnections() {
      const out = {}
      for (const t of stats.tls) if (t.open) out[t.alpn] = (out[t.alpn] ?? 0) + 1
      return out
    },
    /** A copy of the counters, to diff phases with `since`. */
    snapshot() {
      return {
        tls: stats.tls.length,
        h2Streams: stats.h2Streams,
        resets: stats.resets.length,
        goaways: stats.goaways.length,
        responses: stats.responses.length,
        aborted: stats.aborted,
        upgrades: stats.upgrades,
        upstreamErrors: stats.upstreamErrors.length,
      }
    },
    /** What happened after `snap` was taken. */
    since(snap) {
      const tlsNew = stats.tls.slice(snap.tls)
      return {
        tls: tlsNew,
        h2Connections: tlsNew.filter((t) => t.alpn === 'h2').length,
        h1Connections: tlsNew.filter((t) => t.alpn !== 'h2').length,
        h2Streams: stats.h2Streams - snap.h2Streams,
        resets: stats.resets.slice(snap.resets),
        goaways: stats.goaways.slice(snap.goaways),
        responses: stats.responses.slice(snap.responses),
        aborted: stats.aborted - snap.aborted,
        upgrades: stats.upgrades - snap.upgrades,
        upstreamErrors: stats.upstreamErrors.slice(snap.upstreamErrors),
      }
    },
    async close() {
      await box.close()
      agent.destroy()
    },
  }
}

// ---------------------------------------------------------------------------
// A preview page in Chromium, configured as the Electron app configures it

/**
 * A new browser context and page whose proxy login is answered over CDP
 * (Fetch.authRequired → ProvideCredentials) for requests to `origin`, the way
 * app.on('login') answers it, without Playwright's proxy credentials (they
 * pause every request and disable the cache).
 */
export async function openPreviewPage(browser, { origin, credentials }) {
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } })
  const page = await context.newPage()
  const cdp = await context.newCDPSession(page)
  const ignore = () => {}
  cdp.on('Fetch.authRequired', ({ requestId }) => {
    cdp.send('Fetch.continueWithAuth', {
      requestId,
      authChallengeResponse: { response: 'ProvideCredentials', username: credentials.username, password: credentials.password },
    }).catch(ignore)
  })
  cdp.on('Fetch.requestPaused', ({ requestId }) => {
    cdp.send('Fetch.continueRequest', { requestId }).catch(ignore)
  })
  await cdp.send('Fetch.enable', { handleAuthRequests: true, patterns: [{ urlPattern: `${origin}/*` }] })
  return { context, page, cdp }
}

/**
 * Records the page's traffic to URLs matching `filter`, charged to the main-frame
 * document that issued it: `doc` counts committed main-frame navigations, and a
 * request belongs to the document current when it was issued (Playwright reports
 * the failures of a document replaced mid-load after the next one started).
 *
 * Returns { doc(), responses: [{ url, status, doc }], failures: [{ url, error, doc }],
 *           console: [{ text, doc }], errors: [{ error, doc }] }.
 */
export function recordByDocument(page, filter) {
  let doc = 0
  const docOf = new WeakMap()
  const rec = { doc: () => doc, responses: [], failures: [], console: [], errors: [] }
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) doc++
  })
  // A main-frame navigation request makes the next document.
  page.on('request', (r) => docOf.set(r, r.isNavigationRequest() && r.frame() === page.mainFrame() ? doc + 1 : doc))
  page.on('response', (r) => {
    if (filter(r.url())) rec.responses.push({ url: r.url(), status: r.status(), doc: docOf.get(r.request()) ?? doc })
  })
  page.on('requestfailed', (r) => {
    if (filter(r.url())) rec.failures.push({ url: r.url(), error: r.failure()?.errorText ?? '?', doc: docOf.get(r) ?? doc })
  })
  page.on('console', (m) => rec.console.push({ text: m.text(), doc }))
  page.on('pageerror', (e) => rec.errors.push({ error: String(e), doc }))
  return rec
}
