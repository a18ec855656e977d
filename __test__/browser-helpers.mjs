// What the browser tests use: Chromium and the dev box stand-in (support/),
// and the browser-only pieces of the tests: a WebSocket opened from page code,
// and a plain HTTP dev server with a service worker (own-port-browser.test.mjs).
//
// Every browser test imports through this module: CI's macOS and Windows job
// skips the test files that name it (.github/workflows/CI.yml, `grep -l browser-helpers`).

import http from 'node:http'

export { spkiHash } from '../support/certs.mjs'
export {
  answerProxyAuth,
  CHROMIUM_PATH,
  launchChromium,
  launchPersistentChromium,
  newPreviewContext,
  recordFailures,
  requireChromium,
} from '../support/chromium.mjs'
export {
  BURST_MODULES,
  devHost,
  inspectPage,
  PIXEL_PNG,
  routeOfHost,
  startStandInDevBox,
  TITLE_COLOR,
  waitForHmrText,
} from '../support/dev-box.mjs'

/**
 * What headless Chromium asks its proxy for by itself, even with background
 * networking disabled (seen with Chromium 156 in its first seconds). A proxy
 * that authenticates them (a context's own port) must map these in `resolve`
 * to a local sink, or it would look them up in DNS.
 */
export const CHROMIUM_BACKGROUND_HOSTS = ['accounts.google.com:443', 'update.googleapis.com:443', 'update.googleapis.com:80']

/**
 * Opens `new WebSocket(url)` in `page` (kept as window.ws, its events in
 * window.wsLog: 'open', 'message: <data>', 'error', 'close <code>'), sends
 * `message` once open, and resolves a copy of the log once the stand-in's
 * echo of it ("echo: <message>") arrived, the socket closed, or `timeout` ms passed ('timeout').
 */
export function pageWebSocket(page, url, message, timeout = 10000) {
  return page.evaluate(([url, message, timeout]) => new Promise((resolve) => {
    const log = (window.wsLog = [])
    const ws = (window.ws = new WebSocket(url))
    let timer
    const done = () => {
      clearTimeout(timer)
      resolve([...log])
    }
    ws.onopen = () => {
      log.push('open')
      ws.send(message)
    }
    ws.onmessage = (e) => {
      log.push(`message: ${e.data}`)
      if (e.data === `echo: ${message}`) done()
    }
    ws.onerror = () => log.push('error')
    ws.onclose = (e) => {
      log.push(`close ${e.code}`)
      done()
    }
    timer = setTimeout(() => {
      log.push('timeout')
      done()
    }, timeout)
  }), [url, message, timeout])
}

// ---------------------------------------------------------------------------
// A dev server with a service worker (plain HTTP, for a route's cmuxProxyOrigin)

// Takes control at once; every fetch of the pages it controls, navigations included, is its fetch().
const SW_JS = `self.addEventListener('install', () => self.skipWaiting())
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()))
self.addEventListener('fetch', (event) => event.respondWith(fetch(event.request)))
`

// Load `n` of the page: registers /sw.js and shows "sw: controlling" once it controls the page.
function swPageHtml(n) {
  return `<!doctype html>
<html><head><meta charset="utf-8"><title>sw page ${n}</title></head>
<body>
<p id="load">load ${n}</p>
<p id="sw">sw: registering</p>
<script>
window.controlledAtLoad = !!navigator.serviceWorker.controller
const controlled = () => navigator.serviceWorker.controller
  ? null
  : new Promise((resolve) => navigator.serviceWorker.addEventListener('controllerchange', resolve, { once: true }))
navigator.serviceWorker.register('/sw.js')
  .then(() => navigator.serviceWorker.ready)
  .then(controlled)
  .then(() => { document.getElementById('sw').textContent = 'sw: controlling' },
    (e) => { document.getElementById('sw').textContent = 'sw: failed ' + e })
</script>
</body></html>
`
}

/**
 * Starts on 127.0.0.1:0 a plain HTTP dev server serving /sw-page.html (its
 * body says "load <n>", n counting the page's requests) and /sw.js.
 * requests: { path, load (for the page), secFetchMode, serviceWorker (its
 * Service-Worker header), portInternal (X-Cmux-Port-Internal) }.
 */
export async function startServiceWorkerOrigin() {
  const requests = []
  const sockets = new Set()
  let loads = 0
  const server = http.createServer((req, res) => {
    const path = req.url.split('?')[0]
    const seen = {
      path,
      secFetchMode: req.headers['sec-fetch-mode'] ?? null,
      serviceWorker: req.headers['service-worker'] ?? null,
      portInternal: req.headers['x-cmux-port-internal'] ?? null,
    }
    requests.push(seen)
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' })
      res.end(body)
    }
    if (path === '/sw-page.html') {
      seen.load = ++loads
      return send(200, 'text/html; charset=utf-8', swPageHtml(seen.load))
    }
    if (path === '/sw.js') return send(200, 'text/javascript', SW_JS)
    if (path === '/favicon.ico') return send(204, 'image/x-icon', '')
    send(404, 'text/plain', `not found: ${path}`)
  })
  server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  return {
    port: server.address().port,
    requests,
    /** The page loads it served so far. */
    loads: () => loads,
    close: () => new Promise((resolve) => {
      server.close(() => resolve())
      for (const socket of sockets) socket.destroy()
    }),
  }
}
