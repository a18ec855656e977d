// The "cloud dev box" stand-in of the browser tests and the demo: HTTPS or
// HTTP/2 on 127.0.0.1, a preview page with CSS, JS modules, a PNG and an /hmr
// WebSocket, recording every request it sees; and what a page of it shows.

import crypto from 'node:crypto'
import https from 'node:https'
import http2 from 'node:http2'
import zlib from 'node:zlib'
import { WebSocketServer } from 'ws'

/** The dev box name of a route: cmux-<morphId>-<scope>-3000.<suffix>. */
export function devHost(route, port = 3000) {
  return `cmux-${route.morphId}-${route.scope}-${port}.${route.domainSuffix}`
}

/** What the stand-in's index page shows once its assets loaded (see INDEX_HTML / APP_JS). */
export async function inspectPage(page) {
  await page.waitForFunction(() => {
    const img = document.getElementById('img')
    return document.getElementById('js')?.textContent?.startsWith('module ran') && img?.complete
  }, null, { timeout: 15000 })
  return page.evaluate(() => {
    const img = document.getElementById('img')
    const nav = performance.getEntriesByType('navigation')[0]
    return {
      url: location.href,
      title: document.title,
      titleColor: getComputedStyle(document.getElementById('title')).color,
      routeFromCss: getComputedStyle(document.getElementById('route'), '::after').content,
      servedBy: document.getElementById('served-by').textContent,
      js: document.getElementById('js').textContent,
      imgNaturalWidth: img.naturalWidth,
      imgNaturalHeight: img.naturalHeight,
      nextHopProtocol: nav?.nextHopProtocol ?? null,
      resources: performance.getEntriesByType('resource').map((e) => ({ name: e.name, protocol: e.nextHopProtocol })),
    }
  })
}

/** Waits until the page's HMR list (#hmr li) shows `text`; returns every line. */
export async function waitForHmrText(page, text, timeout = 10000) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#hmr li')].some((li) => li.textContent === t),
    text,
    { timeout },
  )
  return page.$$eval('#hmr li', (lis) => lis.map((li) => li.textContent))
}

// ---------------------------------------------------------------------------
// A small PNG (solid colour), built by hand: signature, IHDR, IDAT, IEND.

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
  return c >>> 0
})

function crc32(buf) {
  let c = 0xffffffff
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

function pngChunk(type, data) {
  const len = Buffer.alloc(4)
  len.writeUInt32BE(data.length)
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data])
  const crc = Buffer.alloc(4)
  crc.writeUInt32BE(crc32(body))
  return Buffer.concat([len, body, crc])
}

export function solidPng(width, height, [r, g, b]) {
  const ihdr = Buffer.alloc(13)
  ihdr.writeUInt32BE(width, 0)
  ihdr.writeUInt32BE(height, 4)
  ihdr[8] = 8 // bit depth
  ihdr[9] = 2 // colour type: RGB
  const row = Buffer.alloc(1 + width * 3)
  for (let x = 0; x < width; x++) row.set([r, g, b], 1 + x * 3)
  const raw = Buffer.concat(Array.from({ length: height }, () => row))
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', zlib.deflateSync(raw)),
    pngChunk('IEND', Buffer.alloc(0)),
  ])
}

export const PIXEL_PNG = solidPng(24, 16, [40, 120, 200])
export const TITLE_COLOR = 'rgb(12, 34, 56)'
export const BURST_MODULES = 200

// ---------------------------------------------------------------------------
// The cloud dev box stand-in

/** "cmux-m1-base-3000.test.local" -> "m1-base"; anything else -> "?<host>". */
export function routeOfHost(host = '') {
  const m = /^cmux-([a-z0-9]+)-([a-z0-9]+)-\d+\./.exec(host)
  return m ? `${m[1]}-${m[2]}` : `?${host}`
}

const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c])

function indexHtml(host, route) {
  return `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>preview ${esc(route)}</title>
<link rel="stylesheet" href="/style.css">
<script type="module" src="/app.js"></script>
</head>
<body>
<h1 id="title">cmux preview stand-in</h1>
<p>served by <b id="served-by">${esc(host)}</b> route <b id="route"></b></p>
<p id="js">module not run</p>
<p id="whoami"></p>
<img id="img" src="/pixel.png" width="96" height="64" alt="pixel">
<p id="hmr-state">hmr: idle</p>
<ul id="hmr"></ul>
</body>
</html>
`
}

function styleCss(route) {
  return `body { font-family: sans-serif; margin: 24px; background: #f6f6ef; }
#title { color: ${TITLE_COLOR}; }
#route::after { content: "${route}"; }
#img { image-rendering: pixelated; border: 2px solid #333; }
`
}

const LIB_JS = `export const greeting = 'module ran'
export function whoami() {
  return fetch('/whoami', { cache: 'no-store' }).then((r) => r.text())
}
`

// The page's "Vite client": runs the module graph, then opens the HMR socket
// on the page's own origin (ws:// for http, wss:// for https).
const APP_JS = `import { greeting, whoami } from '/lib.js'
const $ = (id) => document.getElementById(id)
$('js').textContent = greeting + ' at ' + location.origin
whoami().then((t) => { $('whoami').textContent = t }, (e) => { $('whoami').textContent = 'whoami failed: ' + e })
const hmrUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/hmr'
const show = (text) => { const li = document.createElement('li'); li.textContent = text; $('hmr').append(li) }
window.hmrMessages = []
window.hmrSocket = new WebSocket(hmrUrl)
hmrSocket.onopen = () => { $('hmr-state').textContent = 'hmr: open'; hmrSocket.send('hello from the page') }
hmrSocket.onmessage = (e) => { hmrMessages.push(e.data); show(String(e.data)) }
hmrSocket.onerror = () => { $('hmr-state').textContent = 'hmr: error' }
hmrSocket.onclose = (e) => { $('hmr-state').textContent = 'hmr: closed ' + e.code }
`

function burstHtml(n) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>burst</title></head>
<body>
<p id="burst">burst: loading</p>
<script type="module">
const n = ${n}
const results = await Promise.allSettled(Array.from({ length: n }, (_, i) => import('/mods/m' + i + '.js')))
const ok = results.filter((r, i) => r.status === 'fulfilled' && r.value.default === i).length
const errors = results.filter((r) => r.status === 'rejected').map((r) => String(r.reason)).slice(0, 3)
document.getElementById('burst').textContent = 'burst: ' + ok + '/' + n + (errors.length ? ' ' + errors.join('; ') : '')
</script>
</body></html>
`
}

/**
 * Starts the stand-in on 127.0.0.1:0 with `tls` = { key, cert } (a leaf for
 * every dev box name it plays). `h2`: http2.createSecureServer({ allowHTTP1 }).
 *
 * requests: { seq, kind: 'http'|'ws', method, path, host, route, httpVersion }
 * wsMessages: { route, data }; ws: open sockets with their route.
 * h2Goaways: GOAWAY frames the stand-in received from its client (the proxy), { code, lastStreamId }.
 *
 * `batchMs`: module responses (/mods/*) are held and released together, every
 * `batchMs` ms after the first held one, the way a dev server answers a burst
 * of module requests after one transform pass; 0 answers at once.
 */
export async function startStandInDevBox({ tls, h2 = false, batchMs = 0 } = {}) {
  const requests = []
  const wsMessages = []
  const wsClients = new Set()
  const counters = { tcp: 0, tls: 0, h2Sessions: 0 }
  const h2Goaways = []
  let held = []
  const hold = (fn) => {
    held.push(fn)
    if (held.length === 1) {
      setTimeout(() => {
        const batch = held
        held = []
        for (const f of batch) f()
      }, batchMs)
    }
  }
  const sockets = new Set()
  const sessions = new Set()
  let seq = 0

  const server = h2
    ? http2.createSecureServer({ key: tls.key, cert: tls.cert, allowHTTP1: true })
    : https.createServer({ key: tls.key, cert: tls.cert })
  server.on('connection', (socket) => {
    counters.tcp++
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
  })
  server.on('secureConnection', () => counters.tls++)
  server.on('tlsClientError', () => {})
  if (h2) {
    server.on('session', (s) => {
      counters.h2Sessions++
      sessions.add(s)
      s.on('close', () => sessions.delete(s))
      s.on('goaway', (code, lastStreamId) => h2Goaways.push({ code, lastStreamId }))
      s.on('error', () => {})
    })
  }

  const hostOf = (req) => req.headers[':authority'] ?? req.headers.host ?? ''

  server.on('request', (req, res) => {
    const host = hostOf(req)
    const route = routeOfHost(host)
    const path = req.url
    requests.push({ seq: ++seq, kind: 'http', method: req.method, path, host, route, httpVersion: req.httpVersion })
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-dev-box-route': route })
      res.end(body)
    }
    const pathname = path.split('?')[0]
    if (pathname === '/' || pathname === '/index.html') return send(200, 'text/html; charset=utf-8', indexHtml(host, route))
    if (pathname === '/style.css') return send(200, 'text/css', styleCss(route))
    if (pathname === '/app.js') return send(200, 'text/javascript', APP_JS)
    if (pathname === '/lib.js') return send(200, 'text/javascript', LIB_JS)
    if (pathname === '/pixel.png') return send(200, 'image/png', PIXEL_PNG)
    if (pathname === '/whoami') return send(200, 'text/plain', `whoami: ${host} (${req.httpVersion})`)
    if (pathname === '/burst.html') return send(200, 'text/html; charset=utf-8', burstHtml(BURST_MODULES))
    const mod = /^\/mods\/m(\d+)\.js$/.exec(pathname)
    if (mod) {
      const reply = () => send(200, 'text/javascript', `export default ${Number(mod[1])}\n`)
      return batchMs > 0 ? hold(reply) : reply()
    }
    if (pathname === '/echo' && req.method === 'POST') {
      const hash = crypto.createHash('sha256')
      let length = 0
      req.on('data', (c) => {
        length += c.length
        hash.update(c)
      })
      req.on('end', () => send(200, 'application/json', JSON.stringify({ length, sha256: hash.digest('hex') })))
      return
    }
    if (pathname === '/events') {
      // Server-sent events (webpack-hot-middleware style): each event must reach the page while the stream stays open.
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' })
      let n = 0
      const tick = () => res.write(`data: tick ${++n} from ${route}\n\n`)
      tick()
      const timer = setInterval(tick, 250)
      res.on('close', () => clearInterval(timer))
      return
    }
    if (pathname === '/favicon.ico') return send(204, 'image/x-icon', '')
    send(404, 'text/plain', `not found: ${path}`)
  })

  const wss = new WebSocketServer({ noServer: true })
  server.on('upgrade', (req, socket, head) => {
    const host = hostOf(req)
    const route = routeOfHost(host)
    requests.push({ seq: ++seq, kind: 'ws', method: req.method, path: req.url, host, route, httpVersion: req.httpVersion })
    socket.on('error', () => {})
    if (req.url.split('?')[0] !== '/hmr') {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.route = route
      wsClients.add(ws)
      ws.on('close', () => wsClients.delete(ws))
      ws.on('error', () => {})
      ws.send(`connected to ${route}`)
      ws.on('message', (data) => {
        const text = String(data)
        wsMessages.push({ route, data: text })
        ws.send(`echo: ${text}`)
      })
    })
  })

  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const { port } = server.address()

  let closing
  return {
    port,
    server,
    requests,
    wsMessages,
    wsClients,
    counters,
    h2Goaways,
    /** Sends `text` to every open HMR socket (optionally of one route); returns how many got it. */
    push(text, route) {
      let n = 0
      for (const ws of wsClients) {
        if (route && ws.route !== route) continue
        ws.send(text)
        n++
      }
      return n
    },
    close() {
      closing ??= new Promise((resolve) => {
        for (const ws of wsClients) ws.terminate()
        wss.close()
        for (const s of sessions) s.destroy()
        server.close(() => resolve())
        for (const socket of sockets) socket.destroy()
      })
      return closing
    },
  }
}
