// The proxy end to end, the way a preview WebContents uses it, against local
// stand-ins: a "cloud dev box" (HTTPS + WebSocket, certificate from a demo CA)
// and a plain TCP echo service. The route comes from the preview's cmux URL
// (deriveRoute, as @cmux/preview-proxy/electron derives it), and the proxy's
// events (onEvent, what the Electron module sends to the app's logger) are
// printed along the way. Prints what happened and how long it took.
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import tls from 'node:tls'
import { once } from 'node:events'
import { createRequire } from 'node:module'
import { buildAddon, installChromium, installNodePackages, root } from './setup.mjs'

installNodePackages()
installChromium()
buildAddon()

const require = createRequire(`${root}/`)
const { ProxyServer, deriveRoute } = require('./index.js')
const { WebSocketServer, WebSocket } = require('ws')
const { makeCA, makeLeaf, spkiHash } = await import('../support/certs.mjs')

// The preview's URL, as cmux opens it; its route says where the page's localhost goes.
const previewUrl = 'https://cmux-demo-base-3000.cmux.app/'
const route = deriveRoute(previewUrl)
// Loopback traffic goes to the cmux-proxy origin (with X-Cmux-Port-Internal / X-Cmux-Host-Override).
const devBoxHost = new URL(route.cmuxProxyOrigin).hostname
const ms = (start) => `${(performance.now() - start).toFixed(1)} ms`

// The proxy's events, printed (compactly) before each step and at the end.
const events = []
function describeEvent(e) {
  const parts = [e.kind, e.phase, e.method, e.url, e.upstream && `-> ${e.upstream}`, e.status, e.handling, e.cause,
    e.durationMs !== undefined && `${e.durationMs.toFixed(1)} ms`, e.kind === 'context' && `webContents ${e.webContentsId}`]
  return parts.filter((p) => p !== undefined && p !== false && p !== null).join(' ')
}
const flushEvents = async () => {
  await new Promise((resolve) => setTimeout(resolve, 20))
  for (const e of events.splice(0)) console.log(`   event: ${describeEvent(e)}`)
}
const step = async (title) => {
  await flushEvents()
  console.log(`\n== ${title}`)
}

// The cloud dev box stand-in: answers with what it saw, echoes WebSocket messages.
const demoCa = makeCA('cmux demo CA')
const devBox = https.createServer(makeLeaf(demoCa, [devBoxHost]), (req, res) => {
  res.setHeader('content-type', 'text/plain')
  res.end(`dev box saw ${req.method} ${req.url} Host=${req.headers.host}` +
    ` X-Cmux-Port-Internal=${req.headers['x-cmux-port-internal']} X-Cmux-Host-Override=${req.headers['x-cmux-host-override']}`)
})
const hmr = new WebSocketServer({ server: devBox, path: '/hmr' })
hmr.on('connection', (socket) => {
  socket.send('hello from the dev server')
  socket.on('message', (data) => socket.send(`echo: ${data}`))
})
devBox.listen(0, '127.0.0.1')
await once(devBox, 'listening')

const echo = net.createServer((socket) => socket.pipe(socket)).listen(0, '127.0.0.1')
await once(echo, 'listening')

const proxy = await ProxyServer.start('127.0.0.1:0', true, {
  // Like curl --resolve: the demo's "remote" names point at local stand-ins.
  resolve: {
    [`${devBoxHost}:443`]: `127.0.0.1:${devBox.address().port}`,
    'echo.demo.test:7': `127.0.0.1:${echo.address().port}`,
  },
  upstreamCaPem: [demoCa.certPem],
})
const unsubscribe = proxy.onEvent((event) => events.push(event))
const port = proxy.port()
console.log(`deriveRoute(${JSON.stringify(previewUrl)}) = ${JSON.stringify(route)}`)
const context = proxy.createContext(1, route)
const auth = `Basic ${Buffer.from(`${context.username}:${context.password}`).toString('base64')}`
console.log(`proxy on 127.0.0.1:${port}; context ${context.id} as ${context.username} routes to ${devBoxHost}`)

/** Opens a CONNECT tunnel through the proxy, as Chromium does for ws:// and https://. */
async function tunnel(authority) {
  const socket = net.connect(port, '127.0.0.1')
  await once(socket, 'connect')
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\nProxy-Authorization: ${auth}\r\n\r\n`)
  const [head] = await once(socket, 'data')
  const status = head.toString('latin1').split('\r\n')[0]
  if (!status.includes(' 200 ')) throw new Error(`CONNECT ${authority}: ${status}`)
  return socket
}

await step('1. Without credentials the proxy challenges (the browser answers in app.on("login"))')
let start = performance.now()
const challenged = await new Promise((resolve, reject) =>
  http.get({ host: '127.0.0.1', port, path: 'http://localhost:3000/' }, resolve).on('error', reject))
challenged.resume()
console.log(`${challenged.statusCode} ${challenged.headers['proxy-authenticate']} (${ms(start)})`)

await step("2. http://localhost:3000/ is rewritten to the preview's cmux-proxy origin (the dev box)")
start = performance.now()
const page = await new Promise((resolve, reject) =>
  http.get({ host: '127.0.0.1', port, path: 'http://localhost:3000/index.html?v=1', headers: { 'proxy-authorization': auth } }, (res) => {
    let body = ''
    res.on('data', (chunk) => (body += chunk))
    res.on('end', () => resolve(`${res.statusCode}: ${body}`))
  }).on('error', reject))
console.log(`${page} (${ms(start)})`)

await step('3. A CONNECT tunnel to a non-loopback service is relayed byte for byte')
start = performance.now()
const raw = await tunnel('echo.demo.test:7')
raw.write('ping through the tunnel')
const [echoed] = await once(raw, 'data')
console.log(`echo service answered "${echoed}" (${ms(start)})`)
raw.destroy()

await step('4. ws://localhost:3000/hmr through CONNECT: the hot-reload socket, both ways')
start = performance.now()
const hmrSocket = await tunnel('localhost:3000')
const client = new WebSocket('ws://localhost:3000/hmr', { createConnection: () => hmrSocket })
const messages = []
client.on('message', (data) => messages.push(String(data)))
await once(client, 'open')
client.send('file changed: src/App.tsx')
while (messages.length < 2) await once(client, 'message')
console.log(`received: ${messages.map((m) => JSON.stringify(m)).join(', ')} (${ms(start)})`)
client.close()
await once(client, 'close')

await step('5. https://localhost:3000/ through CONNECT: TLS terminated with the proxy CA, then rewritten')
start = performance.now()
const secureTunnel = await tunnel('localhost:3000')
const secure = tls.connect({ socket: secureTunnel, servername: 'localhost', ca: [proxy.caCertificatePem()], ALPNProtocols: ['http/1.1'] })
await once(secure, 'secureConnect')
const leaf = secure.getPeerCertificate()
const securePage = await new Promise((resolve, reject) =>
  // The socket is already TLS: plain http on top of it, as a browser would send.
  http.get({ host: 'localhost:3000', path: '/secure', createConnection: () => secure }, (res) => {
    let body = ''
    res.on('data', (chunk) => (body += chunk))
    res.on('end', () => resolve(`${res.statusCode}: ${body}`))
  }).on('error', reject))
console.log(`leaf ${leaf.subject.CN} (${leaf.subjectaltname}) issued by "${leaf.issuer.CN}"`)
console.log(`${securePage} (${ms(start)})`)

await step('6. releaseContext revokes the credentials at once')
proxy.releaseContext(context.id)
const revoked = await new Promise((resolve, reject) =>
  http.get({ host: '127.0.0.1', port, path: 'http://localhost:3000/', headers: { 'proxy-authorization': auth }, agent: false }, resolve).on('error', reject))
revoked.resume()
console.log(`after release: ${revoked.statusCode}`)
await flushEvents()
console.log('stats:', proxy.stats())

unsubscribe()
await proxy.stop()
hmr.close()
devBox.closeAllConnections()
devBox.close()
echo.close()
console.log('\nproxy stopped')

// ---------------------------------------------------------------------------
// The same, in a real browser: headless Chromium configured like an Electron
// preview session (proxy for http and https with loopback not bypassed, the
// 407 answered with the context's credentials, the proxy CA trusted by its key).
const { mkdirSync } = await import('node:fs')
const { join } = await import('node:path')
const { CHROMIUM_PATH, launchChromium, newPreviewContext, recordFailures } = await import('../support/chromium.mjs')
const { devHost, inspectPage, startStandInDevBox, waitForHmrText } = await import('../support/dev-box.mjs')

// Here the route without its cmux-proxy origin: loopback traffic goes to the dev box's own name.
const { cmuxProxyOrigin: _origin, ...webRoute } = deriveRoute('https://cmux-web-base-3000.cmux.app/')
const webHost = devHost(webRoute)
await step(`7. Chromium (${CHROMIUM_PATH}, headless) opens http://localhost:3000/; nothing listens on localhost:3000`)
const webBox = await startStandInDevBox({ tls: makeLeaf(demoCa, [webHost]) })
const browserProxy = await ProxyServer.start('127.0.0.1:0', true, {
  resolve: { [`${webHost}:443`]: `127.0.0.1:${webBox.port}` },
  upstreamCaPem: [demoCa.certPem],
})
const preview = browserProxy.createContext(2, webRoute)
console.log(`proxy on 127.0.0.1:${browserProxy.port()}; context ${preview.id} as ${preview.username} routes to ${webHost}` +
  ` (dev box stand-in on 127.0.0.1:${webBox.port})`)
console.log(`trusting the proxy CA by its SPKI hash ${spkiHash(browserProxy.caCertificatePem())}`)
start = performance.now()
const browser = await launchChromium({ caPem: browserProxy.caCertificatePem() })
const browserContext = await newPreviewContext(browser, browserProxy.port(), preview)
const browserPage = await browserContext.newPage()
const failures = recordFailures(browserPage)
console.log(`${browser.version()} launched (${ms(start)})`)
try {
  start = performance.now()
  const response = await browserPage.goto('http://localhost:3000/')
  const seen = await inspectPage(browserPage)
  console.log(`page ${seen.url}: ${response.status()} "${seen.title}", loaded with its assets in ${ms(start)}`)
  console.log(`  served by:  ${seen.servedBy}  (route from the stylesheet: ${seen.routeFromCss})`)
  console.log(`  CSS:        #title color ${seen.titleColor}`)
  console.log(`  JS module:  "${seen.js}"`)
  console.log(`  image:      ${seen.imgNaturalWidth}x${seen.imgNaturalHeight} px`)
  console.log('  the dev box saw:')
  for (const r of webBox.requests) console.log(`    ${r.kind === 'ws' ? 'WS  ' : r.method.padEnd(4)} ${r.path.padEnd(12)} Host=${r.host}`)

  await step('8. Hot reload in Chromium: ws://localhost:3000/hmr (a CONNECT tunnel the proxy serves), both ways')
  start = performance.now()
  await waitForHmrText(browserPage, 'echo: hello from the page')
  const upgrade = webBox.requests.find((r) => r.kind === 'ws')
  console.log(`page socket open and echoed (${ms(start)}); the dev box saw the upgrade GET ${upgrade.path} Host=${upgrade.host}`)
  await browserPage.evaluate(() => window.hmrSocket.send('file saved: src/App.tsx'))
  while (!webBox.wsMessages.some((m) => m.data === 'file saved: src/App.tsx')) await new Promise((r) => setTimeout(r, 10))
  console.log('dev box received from the page:', webBox.wsMessages.map((m) => JSON.stringify(m.data)).join(', '))
  start = performance.now()
  webBox.push('update: /src/App.tsx')
  const lines = await waitForHmrText(browserPage, 'update: /src/App.tsx')
  console.log(`pushed "update: /src/App.tsx", shown by the page after ${ms(start)}`)
  console.log('page HMR log:', lines.map((l) => JSON.stringify(l)).join(', '))

  const outputDir = join(root, '__test__', 'output')
  mkdirSync(outputDir, { recursive: true })
  const screenshot = join(outputDir, 'demo.png')
  await browserPage.screenshot({ path: screenshot, fullPage: true })
  console.log(`screenshot: ${screenshot}`)
  console.log('failed requests:', failures.length ? failures : 'none')
  console.log('stats:', browserProxy.stats())
} finally {
  await browserContext.close()
  await browser.close()
  await browserProxy.stop()
  await webBox.close()
}
console.log('\ndemo finished: browser closed, proxies stopped')
