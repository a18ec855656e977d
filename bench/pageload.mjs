// Scenario s7 of `npm run bench`: what a user feels. A Vite app of 501 ES modules
// (a waterfall of depth 3: main → 10 → 50 → 440) plus CSS and Vite's HMR
// WebSocket, served by a real Vite dev server behind a TLS HTTP/2 stand-in for the
// cloud dev box (`http2.createSecureServer({ allowHTTP1: true })`, a test CA leaf
// for cmux-m-base-<P>.devbox.test) that delays every response by D ms, loaded in
// headless Chromium cold (a new browser context) and warm (a reload in the same
// context) through:
//   (a) this proxy as a plain HTTP/1.1 proxy (--proxy-server=http://…),
//   (b) this proxy in its HTTPS proxy mode (--proxy-server=https://…, its CA trusted by SPKI),
//   (c) no proxy: Chromium straight to https://cmux-m-base-<P>.devbox.test/ (the reference),
//   (d) the Node.js peer (npm `proxy`) relaying Chromium's CONNECT to that https:// URL blindly.
//
// The scenario itself (scenarioPageLoad) runs in bench/run.mjs's process and drives
// Chromium with playwright-core; the servers run in processes of their own, started
// through run.mjs's launcher (process groups, PR_SET_PDEATHSIG, stdin lifeline) as
// this same file in a child mode:
//
//   node bench/pageload.mjs devbox '{"dir","name","certPem","keyPem"}'  Vite + the dev box stand-in
//   node bench/pageload.mjs rust   '{"name","devboxPort","caPem"}'       the addon's ProxyServer, one routed context
//   node bench/pageload.mjs peer   '{"name","devboxPort"}'               npm `proxy`, CONNECT to <name>:443 sent to the dev box
//
// Each child prints one JSON line once it listens, then answers JSON commands on
// stdin (one per line: {"cmd":"stats"}, {"cmd":"delay","ms":25}) with one JSON
// line each, and exits when its stdin closes.

import { spawnSync } from 'node:child_process'
import crypto from 'node:crypto'
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath, pathToFileURL } from 'node:url'

const HERE = dirname(fileURLToPath(import.meta.url))
const require = createRequire(import.meta.url)

export const ROUTE = { morphId: 'm', scope: 'base', domainSuffix: 'devbox.test' }
export const DELAYS = [0, 25]
export const VARIANTS = ['a', 'b', 'c', 'd']
const VARIANT_TITLES = {
  a: '(a) proxy, `http://` (HTTP/1.1)',
  b: '(b) proxy, `https://` (h2)',
  c: '(c) direct to the dev box',
  d: '(d) node peer, CONNECT tunnel',
}

// The app's shape: main imports A modules, each of them B/A modules, which share C leaves.
const APP = { a: 10, b: 50, c: 440 }
const MODULES = 1 + APP.a + APP.b + APP.c

// ---------------------------------------------------------------------------
// The app

/** Writes index.html, a global stylesheet and the module tree into `dir`; returns { expectedSum, modules }. */
export function generateApp(dir) {
  const src = join(dir, 'src')
  mkdirSync(join(src, 'c'), { recursive: true })
  // Modules of a few hundred bytes to a couple of KiB, like transformed components.
  const body = (id, n) => `
export function render${id}(el) {
  const node = document.createElement('span')
  node.className = 'm-${id}'
  node.textContent = ${JSON.stringify(`module ${id}: `)} + String(${n})
  if (el) el.appendChild(node)
  return node
}
export const meta${id} = ${JSON.stringify({ id, text: `lorem ipsum dolor sit amet ${id} `.repeat(8) })}
`
  let expectedSum = 0
  const leafValue = (k) => k + 1
  for (let k = 0; k < APP.c; k++) {
    writeFileSync(join(src, 'c', `c${k}.js`), `export const value = ${leafValue(k)}\n${body(`c${k}`, leafValue(k))}`)
    expectedSum += leafValue(k)
  }
  // Leaves dealt out to the B modules as evenly as possible (440 / 50: 8 or 9 each).
  const perB = Array.from({ length: APP.b }, () => [])
  for (let k = 0; k < APP.c; k++) perB[k % APP.b].push(k)
  for (let j = 0; j < APP.b; j++) {
    const imports = perB[j].map((k) => `import { value as c${k} } from './c/c${k}.js'`)
    const value = 1000 + j
    expectedSum += value
    writeFileSync(join(src, `b${j}.js`), `${imports.join('\n')}\nexport const value = ${value} + ${perB[j].map((k) => `c${k}`).join(' + ')}\n${body(`b${j}`, value)}`)
  }
  const bPerA = APP.b / APP.a
  for (let i = 0; i < APP.a; i++) {
    const bs = Array.from({ length: bPerA }, (_, x) => i * bPerA + x)
    const value = 100000 + i
    expectedSum += value
    writeFileSync(join(src, `a${i}.js`), `${bs.map((j) => `import { value as b${j} } from './b${j}.js'`).join('\n')}\nexport const value = ${value} + ${bs.map((j) => `b${j}`).join(' + ')}\n${body(`a${i}`, value)}`)
  }
  writeFileSync(join(src, 'app.css'), `#sum { font-weight: bold; color: rgb(12, 34, 56); }\n.m-main { display: block; }\n`)
  writeFileSync(join(src, 'style.css'), `body { font: 14px/1.4 sans-serif; margin: 2em; }\n`)
  writeFileSync(join(src, 'main.js'), `import './app.css'
${Array.from({ length: APP.a }, (_, i) => `import { value as a${i} } from './a${i}.js'`).join('\n')}

// Every module of the graph has been evaluated once this line runs.
window.__appReady = performance.now()
const sum = ${Array.from({ length: APP.a }, (_, i) => `a${i}`).join(' + ')}
document.getElementById('sum').textContent = String(sum)
if (import.meta.hot) import.meta.hot.accept()
`)
  writeFileSync(join(dir, 'index.html'), `<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>cmux s7 preview</title>
<link rel="icon" href="data:,">
<script>
performance.setResourceTimingBufferSize(5000)
// A module of the graph that fails to load (or a stylesheet) fires "error" at its element: the load ends as failed.
addEventListener('error', (e) => { if (e.target && e.target.tagName) window.__appFailed = 'failed to load ' + (e.target.src || e.target.href) }, true)
</script>
<link rel="stylesheet" href="/src/style.css">
</head>
<body>
<p>sum: <b id="sum">loading</b></p>
<script type="module" src="/src/main.js"></script>
</body>
</html>
`)
  return { expectedSum, modules: MODULES }
}

// ---------------------------------------------------------------------------
// Child modes

/** Reads JSON commands from stdin, one a line, and writes `handler(cmd)` as one JSON line each; exits when stdin closes. */
function serveCommands(handler, onClose = () => {}) {
  const lines = createInterface({ input: process.stdin })
  lines.on('line', async (line) => {
    if (!line.trim()) return
    let out
    try {
      out = await handler(JSON.parse(line))
    } catch (e) {
      out = { error: String(e?.message ?? e) }
    }
    process.stdout.write(JSON.stringify(out ?? {}) + '\n')
  })
  lines.on('close', async () => {
    try {
      await onClose()
    } finally {
      process.exit(0)
    }
  })
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject).listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

// Connection-specific headers: not relayed (and not allowed in HTTP/2 responses).
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer',
  'proxy-authenticate', 'proxy-authorization', 'http2-settings'])

function relayable(headers) {
  const out = {}
  for (const [k, v] of Object.entries(headers)) if (!k.startsWith(':') && !HOP_BY_HOP.has(k)) out[k] = v
  return out
}

/**
 * Vite on its own port and the dev box stand-in: TLS (leaf + CA chain), ALPN h2 and
 * http/1.1, every request (and WebSocket upgrade) held `delay` ms and then forwarded
 * to Vite over keep-alive HTTP/1.1 with Host set to Vite's address.
 */
async function devboxMain(opts) {
  // rolldown's napi-rs loader honours the same override as the proxy addon's: never inherit it.
  delete process.env.NAPI_RS_NATIVE_LIBRARY_PATH
  const app = generateApp(opts.dir)
  const vitePort = await freePort()
  const { createServer, version } = await import('vite')
  const vite = await createServer({
    root: opts.dir,
    configFile: false,
    logLevel: 'silent',
    clearScreen: false,
    server: { host: '127.0.0.1', port: vitePort, strictPort: true },
    optimizeDeps: { noDiscovery: true, include: [] },
  })
  await vite.listen()
  // The stand-in's pooled connections to Vite must not race Node's 5 s keep-alive close.
  vite.httpServer.keepAliveTimeout = 10 * 60 * 1000
  vite.httpServer.headersTimeout = 10 * 60 * 1000 + 1000
  const viteHost = `127.0.0.1:${vitePort}`
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 })
  // Every URL of the page requested once from Vite before the dev box opens, so that its transforms are cached.
  const urls = ['/', '/@vite/client', '/@vite/env', '/src/style.css', '/src/app.css', '/src/main.js',
    ...Array.from({ length: APP.a }, (_, i) => `/src/a${i}.js`), ...Array.from({ length: APP.b }, (_, j) => `/src/b${j}.js`),
    ...Array.from({ length: APP.c }, (_, k) => `/src/c/c${k}.js`)]
  const get = (path) => new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port: vitePort, path, agent }, (r) => {
      r.resume()
      r.on('end', () => (r.statusCode === 200 ? resolve() : reject(new Error(`Vite answered ${path} with ${r.statusCode}`))))
    }).on('error', reject)
  })
  for (let i = 0; i < urls.length; i += 16) await Promise.all(urls.slice(i, i + 16).map(get))

  let delay = 0
  const stats = { tlsH2: 0, tlsHttp1: 0, requestsH2: 0, requestsHttp1: 0, upgrades: 0, statuses: {}, errors: 0, lastErrors: [] }
  const later = (fn) => (delay > 0 ? setTimeout(fn, delay) : fn())
  const noteError = (what) => {
    stats.errors++
    stats.lastErrors = [...stats.lastErrors.slice(-4), what]
  }

  const server = http2.createSecureServer({
    key: opts.keyPem,
    cert: opts.certPem,
    allowHTTP1: true,
    settings: { maxConcurrentStreams: 1000 },
  })
  const sockets = new Set()
  server.on('connection', (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
  })
  server.on('secureConnection', (s) => {
    if (s.alpnProtocol === 'h2') stats.tlsH2++
    else stats.tlsHttp1++
  })
  server.on('session', (session) => session.on('error', () => {}))
  server.on('tlsClientError', () => {})
  server.on('request', (req, res) => {
    if (req.httpVersionMajor === 2) {
      stats.requestsH2++
      req.stream.on('error', () => {})
    } else stats.requestsHttp1++
    const headers = relayable(req.headers)
    headers.host = viteHost
    // Bodiless GETs (every request of a page load) are sent again once if a pooled connection to Vite fails.
    const retryable = req.method === 'GET' || req.method === 'HEAD'
    const send = (attempt) => {
      let responded = false
      const upstream = http.request({ host: '127.0.0.1', port: vitePort, method: req.method, path: req.url, headers, agent }, (up) => {
        responded = true
        stats.statuses[up.statusCode] = (stats.statuses[up.statusCode] ?? 0) + 1
        res.writeHead(up.statusCode, relayable(up.headers))
        up.pipe(res)
      })
      upstream.on('error', (e) => {
        if (res.destroyed || res.writableEnded) return
        if (!responded && retryable && attempt === 0) return send(1)
        noteError(`${req.url}: ${e.code ?? e.message}${responded ? ' (mid-response)' : ''}`)
        if (!res.headersSent) {
          stats.statuses[502] = (stats.statuses[502] ?? 0) + 1
          res.writeHead(502, { 'content-type': 'text/plain' })
        }
        res.end()
      })
      res.on('close', () => upstream.destroy())
      if (retryable) upstream.end()
      else req.pipe(upstream)
    }
    later(() => send(0))
  })
  // The HMR WebSocket (HTTP/1.1 over TLS): the upgrade is relayed to Vite raw, Host rewritten.
  server.on('upgrade', (req, socket, head) => {
    stats.upgrades++
    socket.on('error', () => {})
    later(() => {
      const upstream = net.connect(vitePort, '127.0.0.1')
      upstream.on('error', () => socket.destroy())
      let out = `${req.method} ${req.url} HTTP/1.1\r\n`
      for (let i = 0; i < req.rawHeaders.length; i += 2) {
        const name = req.rawHeaders[i]
        out += `${name}: ${name.toLowerCase() === 'host' ? viteHost : req.rawHeaders[i + 1]}\r\n`
      }
      upstream.write(out + '\r\n')
      if (head?.length) upstream.write(head)
      upstream.pipe(socket)
      socket.pipe(upstream)
      socket.on('close', () => upstream.destroy())
      upstream.on('close', () => socket.destroy())
    })
  })
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve))

  process.stdout.write(JSON.stringify({ pid: process.pid, port: server.address().port, vitePort, vite: version, ...app }) + '\n')
  serveCommands(
    (cmd) => {
      if (cmd.cmd === 'delay') delay = Number(cmd.ms) || 0
      else if (cmd.cmd !== 'stats') throw new Error(`unknown command ${cmd.cmd}`)
      return { delay, stats }
    },
    async () => {
      for (const s of sockets) s.destroy()
      agent.destroy()
      await vite.close().catch(() => {})
    },
  )
}

/** The addon's ProxyServer as the Electron app starts it (HTTPS proxy mode on, HTTP/2), one routed context. */
async function rustMain(opts) {
  const { ProxyServer } = require(join(HERE, '..', 'index.js'))
  const proxy = await ProxyServer.start('127.0.0.1:0', true, {
    resolve: { [`${opts.name}:443`]: `127.0.0.1:${opts.devboxPort}` },
    upstreamCaPem: [opts.caPem],
  })
  const context = proxy.createContext(1, ROUTE)
  process.stdout.write(JSON.stringify({
    pid: process.pid,
    port: proxy.port(),
    username: context.username,
    password: context.password,
    spki: proxy.caSpkiSha256(),
    proxyRules: proxy.proxyRules(),
  }) + '\n')
  serveCommands((cmd) => {
    if (cmd.cmd !== 'stats') throw new Error(`unknown command ${cmd.cmd}`)
    return { stats: proxy.stats() }
  }, () => proxy.stop())
}

/**
 * The npm `proxy` package, started as bench/child.mjs starts it (Basic auth), with one
 * difference: its CONNECT to <name>:443 reaches the dev box's port (the addon's
 * `resolve` option, in the peer's terms: it calls net.connect through the module object).
 */
async function peerMain(opts) {
  const netModule = require('node:net')
  const connect = netModule.connect
  netModule.connect = function (options, ...rest) {
    if (options && typeof options === 'object' && options.host === opts.name && Number(options.port) === 443) {
      options = { ...options, host: '127.0.0.1', port: opts.devboxPort }
    }
    return connect.call(this, options, ...rest)
  }
  const { createProxy } = require('proxy')
  const username = 'bench'
  const password = crypto.randomBytes(16).toString('hex')
  const expected = 'Basic ' + Buffer.from(`${username}:${password}`).toString('base64')
  const server = createProxy(http.createServer())
  server.authenticate = (req) => req.headers['proxy-authorization'] === expected
  const stats = { accepted: 0, connects: 0, requests: 0 }
  server.on('connection', () => stats.accepted++)
  server.prependListener('connect', () => stats.connects++)
  server.prependListener('request', () => stats.requests++)
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve))
  process.stdout.write(JSON.stringify({ pid: process.pid, port: server.address().port, username, password }) + '\n')
  serveCommands((cmd) => {
    if (cmd.cmd !== 'stats') throw new Error(`unknown command ${cmd.cmd}`)
    return { stats }
  })
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.on('uncaughtException', (e) => {
    process.stdout.write(JSON.stringify({ error: String(e?.stack ?? e).split('\n').slice(0, 3).join(' | ') }) + '\n', () => process.exit(1))
  })
  const mode = process.argv[2]
  const opts = JSON.parse(process.argv[3] || '{}')
  const main = { devbox: devboxMain, rust: rustMain, peer: peerMain }[mode]
  if (!main) throw new Error(`unknown mode ${mode}`)
  await main(opts)
}

// ---------------------------------------------------------------------------
// Certificates (openssl, EC P-256): a test CA and a leaf for the dev box name

function makeDevboxCerts(dir, name, opensslPath = 'openssl') {
  const run = (args) => {
    const r = spawnSync(opensslPath, args, { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr}`)
  }
  const f = (x) => join(dir, x)
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  run(['req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=cmux s7 dev box test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
  run(['req', '-new', ...ec, '-keyout', f('leaf.key'), '-out', f('leaf.csr'), '-subj', `/CN=${name}`])
  writeFileSync(f('leaf.ext'), [`subjectAltName=DNS:${name}`, 'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature', 'extendedKeyUsage=serverAuth'].join('\n') + '\n')
  run(['x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '2',
    '-sha256', '-extfile', f('leaf.ext'), '-out', f('leaf.pem')])
  const caPem = readFileSync(f('ca.pem'), 'utf8')
  // The CA goes in the chain the dev box sends: Chromium matches --ignore-certificate-errors-spki-list
  // against the chain it was given when the chain does not verify against the system roots.
  return { caPem, certPem: readFileSync(f('leaf.pem'), 'utf8') + caPem, keyPem: readFileSync(f('leaf.key'), 'utf8') }
}

function spkiOf(certPem) {
  const spki = new crypto.X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' })
  return crypto.createHash('sha256').update(spki).digest('base64')
}

// ---------------------------------------------------------------------------
// CPU time from /proc

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim()) || 100

/** utime + stime of a process in seconds, or null when it is gone. */
function cpuOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
  } catch {
    return null
  }
}

function argsOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
  } catch {
    return null
  }
}

const pids = () => readdirSync('/proc').filter((d) => /^\d+$/.test(d))

/** The --user-data-dir=… argument of the Chromium browser process launched with `flag`. */
function chromiumProfileArg(flag) {
  for (const pid of pids()) {
    const args = argsOf(pid)
    if (args?.includes(flag) && !args.some((a) => a.startsWith('--type='))) return args.find((a) => a.startsWith('--user-data-dir=')) ?? null
  }
  return null
}

/** pid → CPU seconds of every process of one Chromium (all share its --user-data-dir argument). */
function chromiumCpu(profileArg) {
  const out = new Map()
  if (!profileArg) return out
  for (const pid of pids()) {
    if (argsOf(pid)?.includes(profileArg)) {
      const c = cpuOf(pid)
      if (c != null) out.set(pid, c)
    }
  }
  return out
}

/** CPU seconds spent between two chromiumCpu readings (processes born in between count whole). */
function chromiumCpuSpent(after, before) {
  let sum = 0
  for (const [pid, c] of after) sum += c - (before.get(pid) ?? 0)
  return sum
}

// ---------------------------------------------------------------------------
// The scenario

function median(xs) {
  const v = xs.filter((x) => x != null)
  if (v.length === 0) return null
  const s = [...v].sort((p, q) => p - q)
  const mid = s.length >> 1
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

const sumOf = (o) => Object.values(o ?? {}).reduce((x, y) => x + (Number(y) || 0), 0)

function diffCounts(after, before) {
  if (!after || !before) return null
  const out = {}
  for (const [k, v] of Object.entries(after)) {
    if (typeof v === 'number') out[k] = v - (before[k] ?? 0)
    else if (v && typeof v === 'object' && !Array.isArray(v)) out[k] = diffCounts(v, before[k] ?? {})
  }
  return out
}

/**
 * Runs s7. `h` carries run.mjs's machinery: { loads, quick, log, launch, nextJson, stop,
 * addonEnv, dir, openssl, cleanups }. Returns a JSON-able result (see renderPageLoad).
 */
export async function scenarioPageLoad(h) {
  const { log } = h
  const { launchChromium, requireChromium } = await import('../__test__/browser-helpers.mjs')
  requireChromium()
  const cfg = {
    loads: h.loads,
    warmupLoads: !h.quick,
    // BENCH_QUICK checks the scenario end to end in under a minute: the delay of the targets only.
    // BENCH_S7_DELAYS=0,25,100 (a development knob) measures other delays.
    delaysMs: process.env.BENCH_S7_DELAYS ? process.env.BENCH_S7_DELAYS.split(',').map(Number) : h.quick ? [25] : DELAYS,
    settleMs: h.quick ? 1000 : 2000,
    quietMs: 300,
    loadTimeoutMs: 30000,
    modules: MODULES,
    graph: `main → ${APP.a} → ${APP.b} → ${APP.c}`,
  }
  const dir = join(h.dir, 's7')
  mkdirSync(join(dir, 'app'), { recursive: true })
  const P = await freePort() // nothing listens here: a request that bypassed the proxy fails
  const name = `cmux-${ROUTE.morphId}-${ROUTE.scope}-${P}.${ROUTE.domainSuffix}`
  const certs = makeDevboxCerts(dir, name, h.openssl)
  const testCaSpki = spkiOf(certs.caPem)

  const children = []
  const browsers = []
  const contexts = new Set()
  const start = async (label, mode, opts, env) => {
    const child = h.launch(label, process.execPath, [fileURLToPath(import.meta.url), mode, JSON.stringify(opts)], { env })
    children.push(child)
    const info = await h.nextJson(child, 60000, `${label}'s ready line`)
    if (info.error) throw new Error(`${label}: ${info.error}`)
    child.info = info
    return child
  }
  const ask = (child, cmd) => {
    child.proc.stdin.write(JSON.stringify(cmd) + '\n')
    return h.nextJson(child, 10000, `an answer to ${cmd.cmd}`)
  }
  const closeAll = async () => {
    for (const c of contexts) await c.close().catch(() => {})
    for (const b of browsers) await b.close().catch(() => {})
    for (const c of children) await h.stop(c)
  }
  h.cleanups.push(() => {
    closeAll()
  })

  const result = { config: cfg, samples: [], notes: [] }
  try {
    const devbox = await start('s7 dev box', 'devbox', { dir: join(dir, 'app'), name, certPem: certs.certPem, keyPem: certs.keyPem })
    result.vite = devbox.info.vite
    log(`s7: Vite ${devbox.info.vite} on ${devbox.info.vitePort}, dev box stand-in ${name} on ${devbox.info.port}, ${devbox.info.modules} modules; page port ${P}`)
    const proxyOpts = { name, devboxPort: devbox.info.port, caPem: certs.caPem }
    const proxyA = await start('s7 rust proxy (a)', 'rust', proxyOpts, h.addonEnv)
    const proxyB = await start('s7 rust proxy (b)', 'rust', proxyOpts, h.addonEnv)
    const peer = await start('s7 node peer (d)', 'peer', { name, devboxPort: devbox.info.port })

    const pageUrl = `http://localhost:${P}/`
    const boxUrl = `https://${name}/`
    const variants = {
      a: {
        url: pageUrl,
        server: proxyA,
        args: [`--proxy-server=http://127.0.0.1:${proxyA.info.port}`, '--proxy-bypass-list=<-loopback>'],
      },
      b: {
        url: pageUrl,
        server: proxyB,
        args: [`--proxy-server=https://127.0.0.1:${proxyB.info.port}`, '--proxy-bypass-list=<-loopback>',
          `--ignore-certificate-errors-spki-list=${proxyB.info.spki}`],
      },
      c: {
        url: boxUrl,
        server: null,
        args: [`--host-resolver-rules=MAP ${name} 127.0.0.1:${devbox.info.port}`, `--ignore-certificate-errors-spki-list=${testCaSpki}`],
      },
      d: {
        url: boxUrl,
        server: peer,
        args: [`--proxy-server=http://127.0.0.1:${peer.info.port}`, `--ignore-certificate-errors-spki-list=${testCaSpki}`],
      },
    }
    for (const id of VARIANTS) {
      const v = variants[id]
      v.browser = await launchChromium({ args: v.args })
      browsers.push(v.browser)
      v.chromium = v.browser.version()
      v.profileArg = chromiumProfileArg(v.args[0])
      if (!v.profileArg) result.notes.push(`the processes of Chromium (${id}) were not found in /proc: its CPU time is not reported`)
    }
    result.chromium = variants.a.chromium
    result.flags = Object.fromEntries(VARIANTS.map((id) => [id, variants[id].args]))
    // Chromium's own connections right after launch (through the proxies too): let them settle.
    await sleep(cfg.settleMs)

    const snapshot = async (v) => ({
      devbox: (await ask(devbox, { cmd: 'stats' })).stats,
      server: v.server ? (await ask(v.server, { cmd: 'stats' })).stats : null,
      cpu: {
        chromium: chromiumCpu(v.profileArg),
        devbox: cpuOf(devbox.info.pid),
        server: v.server ? cpuOf(v.server.info.pid) : null,
        driver: process.cpuUsage(),
      },
    })

    /** One new context: a cold load, a pause, a warm reload. Returns [cold, warm]. */
    const sample = async (id, D, round, recorded) => {
      const v = variants[id]
      const context = await v.browser.newContext({ viewport: { width: 900, height: 600 } })
      contexts.add(context)
      const out = []
      try {
        const page = await context.newPage()
        // Failures only: the page's responses are counted from its resource timing entries, not from
        // Playwright's per-request events (which cost the driver and Chromium CPU on every request).
        const seen = { failures: [], errors: [] }
        page.on('requestfailed', (r) => seen.failures.push(`${r.url()} ${r.failure()?.errorText ?? '?'}`))
        page.on('pageerror', (e) => seen.errors.push(String(e)))
        // The proxy login, answered over CDP as app.on('login') answers it, for the document URL only. Every
        // variant gets the same CDP treatment ((c) never sees a 407): Fetch is enabled for each navigation and
        // disabled once it committed, because while it is enabled every request of the page passes through
        // DevTools' interception (even those no pattern matches), which made a load 20-30 % slower here.
        const cdp = await context.newCDPSession(page)
        const { username, password } = v.server?.info ?? { username: 'none', password: 'none' }
        const ignore = () => {}
        cdp.on('Fetch.authRequired', ({ requestId }) => {
          seen.authRequired++
          cdp.send('Fetch.continueWithAuth', {
            requestId,
            authChallengeResponse: { response: 'ProvideCredentials', username, password },
          }).catch(ignore)
        })
        cdp.on('Fetch.requestPaused', ({ requestId }) => cdp.send('Fetch.continueRequest', { requestId }).catch(ignore))
        seen.authRequired = 0
        for (const kind of ['cold', 'warm']) {
          if (kind === 'warm') await sleep(cfg.quietMs)
          const mark = { failures: seen.failures.length, errors: seen.errors.length }
          const before = await snapshot(v)
          const entry = { variant: id, delayMs: D, round, kind, recorded }
          try {
            await cdp.send('Fetch.enable', { handleAuthRequests: true, patterns: [{ urlPattern: v.url }] })
            const authBefore = seen.authRequired
            try {
              if (kind === 'cold') await page.goto(v.url, { waitUntil: 'commit', timeout: cfg.loadTimeoutMs })
              else await page.reload({ waitUntil: 'commit', timeout: cfg.loadTimeoutMs })
            } finally {
              await cdp.send('Fetch.disable').catch(ignore)
              entry.authChallenges = seen.authRequired - authBefore
            }
            await page.waitForFunction(() => typeof window.__appReady === 'number' || window.__appFailed, null, { timeout: cfg.loadTimeoutMs })
            const info = await page.evaluate(() => {
              const protocols = {}
              const bad = []
              const entries = performance.getEntriesByType('resource')
              for (const e of entries) {
                protocols[e.nextHopProtocol || '?'] = (protocols[e.nextHopProtocol || '?'] ?? 0) + 1
                if (e.responseStatus >= 400) bad.push(`${e.responseStatus} ${e.name}`)
              }
              const nav = performance.getEntriesByType('navigation')[0]
              return {
                readyMs: window.__appReady,
                failed: window.__appFailed ?? null,
                sum: document.getElementById('sum')?.textContent,
                document: nav?.nextHopProtocol ?? null,
                documentStatus: nav?.responseStatus ?? null,
                resources: protocols,
                responses: entries.length + 1,
                bad,
              }
            })
            entry.responses = info.responses
            entry.protocols = { document: info.document, resources: info.resources }
            if (info.bad.length) entry.badStatuses = info.bad.slice(0, 5).concat(info.bad.length > 5 ? [`… ${info.bad.length} in all`] : [])
            if (info.failed) entry.error = info.failed
            else {
              entry.ms = Math.round(info.readyMs * 10) / 10
              if (info.sum !== String(devbox.info.expectedSum)) entry.error = `#sum is ${info.sum}, expected ${devbox.info.expectedSum}`
            }
          } catch (e) {
            entry.error = String(e?.message ?? e).split('\n')[0]
          }
          await sleep(cfg.quietMs)
          const after = await snapshot(v)
          const ms = (x) => (x == null ? null : Math.round(x * 1000))
          entry.cpuMs = {
            chromium: v.profileArg ? ms(chromiumCpuSpent(after.cpu.chromium, before.cpu.chromium)) : null,
            devbox: ms(after.cpu.devbox - before.cpu.devbox),
            server: v.server ? ms(after.cpu.server - before.cpu.server) : null,
            driver: ms((after.cpu.driver.user + after.cpu.driver.system - before.cpu.driver.user - before.cpu.driver.system) / 1e6),
          }
          entry.devbox = diffCounts(after.devbox, before.devbox)
          delete entry.devbox?.lastErrors
          if (v.server) entry.server = diffCounts(after.server, before.server)
          const failures = seen.failures.slice(mark.failures)
          const bad = entry.badStatuses ?? []
          const errors = seen.errors.slice(mark.errors)
          if (failures.length) entry.failures = failures.slice(0, 5).concat(failures.length > 5 ? [`… ${failures.length} in all`] : [])
          if (errors.length) entry.pageErrors = errors.slice(0, 3)
          if (after.devbox.errors > before.devbox.errors) entry.devboxErrors = after.devbox.lastErrors
          out.push(entry)
          const conn = v.server
            ? id === 'd'
              ? `peer accepted ${entry.server?.accepted}, CONNECTs ${entry.server?.connects}`
              : `proxy accepted ${sumOf(entry.server?.accepted)} ${JSON.stringify(entry.server?.accepted)}, h2 streams ${entry.server?.http2Streams}`
            : `dev box TLS h2 ${entry.devbox?.tlsH2}, http/1.1 ${entry.devbox?.tlsHttp1}`
          log(`  s7 D=${D} ${recorded ? `round ${round}` : 'warm-up'} ${id} ${kind}: ${entry.ms != null ? `${entry.ms} ms` : 'no time'}` +
            `${entry.error ? ` ERROR ${entry.error}` : ''}; ${entry.responses} responses, ${entry.authChallenges} 407 answered, ${conn}` +
            `${failures.length ? `; ${failures.length} failed requests (${failures[0]})` : ''}${bad.length ? `; ≥ 400: ${bad.join(', ')}` : ''}` +
            `${entry.devboxErrors ? `; dev box → Vite errors: ${entry.devboxErrors.join(', ')}` : ''}; ` +
            `CPU ms: chromium ${entry.cpuMs.chromium}, dev box ${entry.cpuMs.devbox}, ${id === 'd' ? 'peer' : 'proxy'} ${entry.cpuMs.server ?? '—'}, driver ${entry.cpuMs.driver}`)
          if (entry.error && kind === 'cold') break
        }
      } finally {
        contexts.delete(context)
        await context.close().catch(() => {})
      }
      return out
    }

    for (const D of cfg.delaysMs) {
      await ask(devbox, { cmd: 'delay', ms: D })
      log(`s7: D = ${D} ms, ${cfg.loads} cold + warm loads per variant, variants alternating`)
      // Unrecorded warm-up, each variant once: Vite's transforms, the proxies' upstream connections, Chromium's caches.
      if (cfg.warmupLoads) for (const id of VARIANTS) result.samples.push(...(await sample(id, D, 0, false)))
      for (let round = 1; round <= cfg.loads; round++) {
        const order = VARIANTS.map((_, i) => VARIANTS[(i + round - 1) % VARIANTS.length])
        for (const id of order) result.samples.push(...(await sample(id, D, round, true)))
      }
    }
    result.devboxTotals = (await ask(devbox, { cmd: 'stats' })).stats
  } finally {
    await closeAll()
  }
  summarize(result)
  return result
}

/** Medians, ratios and targets from result.samples (in place). */
function summarize(result) {
  const rec = result.samples.filter((s) => s.recorded)
  const medians = {}
  const ranges = {}
  const connections = {}
  const errors = {}
  for (const D of result.config.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const key = `${D}:${kind}`
      medians[key] = {}
      connections[key] = {}
      errors[key] = {}
      for (const id of VARIANTS) {
        const mine = rec.filter((s) => s.delayMs === D && s.kind === kind && s.variant === id)
        const ok = mine.filter((s) => !s.error && s.ms != null)
        medians[key][id] = median(ok.map((s) => s.ms))
        ranges[key] ??= {}
        ranges[key][id] = ok.length ? [Math.min(...ok.map((s) => s.ms)), Math.max(...ok.map((s) => s.ms))] : null
        const failed = mine.filter((s) => s.error || s.failures || s.badStatuses)
        errors[key][id] = { loads: mine.length, ok: ok.length, failed: failed.length, first: failed[0] ? (failed[0].error ?? failed[0].failures?.[0] ?? failed[0].badStatuses?.[0]) : null }
        const m = (f) => median(mine.map(f))
        connections[key][id] = {
          proxyAccepted: id === 'a' || id === 'b' ? m((s) => (s.server ? sumOf(s.server.accepted) : null)) : id === 'd' ? m((s) => s.server?.accepted) : null,
          proxyAcceptedBy: id === 'a' || id === 'b' ? mine[Math.floor(mine.length / 2)]?.server?.accepted ?? null : null,
          h2Streams: id === 'a' || id === 'b' ? m((s) => s.server?.http2Streams) : null,
          peerConnects: id === 'd' ? m((s) => s.server?.connects) : null,
          devboxTlsH2: m((s) => s.devbox?.tlsH2),
          devboxTlsHttp1: m((s) => s.devbox?.tlsHttp1),
          devboxRequests: m((s) => (s.devbox ? s.devbox.requestsH2 + s.devbox.requestsHttp1 : null)),
          responses: m((s) => s.responses),
          cpuMs: {
            chromium: m((s) => s.cpuMs?.chromium),
            devbox: m((s) => s.cpuMs?.devbox),
            server: m((s) => s.cpuMs?.server),
            driver: m((s) => s.cpuMs?.driver),
          },
        }
      }
    }
  }
  const ratio = (x, y) => (x == null || y == null || y === 0 ? null : x / y)
  const ratios = {}
  for (const key of Object.keys(medians)) {
    const t = medians[key]
    ratios[key] = { bc: ratio(t.b, t.c), ab: ratio(t.a, t.b), dc: ratio(t.d, t.c) }
  }
  const targets = []
  for (const kind of ['cold', 'warm']) {
    const r = ratios[`25:${kind}`] ?? {}
    targets.push({ name: `s7 D=25 ${kind}: (b) within 1.1× of (c)`, value: r.bc, met: r.bc == null ? null : r.bc <= 1.1, shown: r.bc == null ? 'error' : `${r.bc.toFixed(2)}×` })
    targets.push({ name: `s7 D=25 ${kind}: (a) ÷ (b) ≥ 1.6×`, value: r.ab, met: r.ab == null ? null : r.ab >= 1.6, shown: r.ab == null ? 'error' : `${r.ab.toFixed(2)}×` })
  }
  Object.assign(result, { medians, ranges, ratios, connections, errors, targets })
}

/** The RESULTS.md section of s7 (markdown lines) from a result of scenarioPageLoad. */
export function renderPageLoad(result, { date, command, machineLine, quick }) {
  const cfg = result.config
  const ms = (v) => (v == null ? 'error' : Math.round(v).toLocaleString('en-US'))
  const x = (v) => (v == null ? '—' : `${v.toFixed(2)}×`)
  const notes = []
  const note = (text) => {
    let i = notes.indexOf(text)
    if (i < 0) i = notes.push(text) - 1
    return ` [s7-${i + 1}]`
  }
  const cell = (key, id) => {
    const e = result.errors[key][id]
    let text = ms(result.medians[key][id])
    if (e.failed) text += note(`D=${key.replace(':', ' ms, ')}, ${id}: ${e.failed} of ${e.loads} loads had an error or failed requests; first: ${e.first}`)
    return text
  }
  const lines = [
    '| D (dev box delay) | load | (a) proxy http:// | (b) proxy https:// | (c) direct | (d) node peer | b ÷ c | a ÷ b | d ÷ c |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  for (const D of cfg.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const key = `${D}:${kind}`
      const r = result.ratios[key]
      lines.push(`| ${D} ms | ${kind} | ${VARIANTS.map((id) => cell(key, id)).join(' | ')} | ${x(r.bc)} | ${x(r.ab)} | ${x(r.dc)} |`)
    }
  }
  const spread = [
    '| D | load | (a) | (b) | (c) | (d) |',
    '| --- | --- | ---: | ---: | ---: | ---: |',
  ]
  for (const D of cfg.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const r = result.ranges[`${D}:${kind}`]
      spread.push(`| ${D} ms | ${kind} | ${VARIANTS.map((id) => (r[id] ? `${ms(r[id][0])}–${ms(r[id][1])}` : '—')).join(' | ')} |`)
    }
  }
  const conn = [
    '| D | load | (a) client connections / h2 streams | (b) client connections / h2 streams | (c) TLS connections to the dev box (h2 + http/1.1) | (d) peer connections / CONNECTs | dev box connections opened by (a), (b), (d) | responses the page got (document + resource timing entries; a, b, c, d) |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  const n = (v) => (v == null ? '—' : String(v))
  for (const D of cfg.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const c = result.connections[`${D}:${kind}`]
      const box = (id) => (c[id].devboxTlsH2 == null ? '—' : `${c[id].devboxTlsH2 + c[id].devboxTlsHttp1}`)
      conn.push(`| ${D} ms | ${kind} | ${n(c.a.proxyAccepted)} / ${n(c.a.h2Streams)} | ${n(c.b.proxyAccepted)} / ${n(c.b.h2Streams)} | ` +
        `${n(c.c.devboxTlsH2)} + ${n(c.c.devboxTlsHttp1)} | ${n(c.d.proxyAccepted)} / ${n(c.d.peerConnects)} | ${box('a')}, ${box('b')}, ${box('d')} | ` +
        `${VARIANTS.map((id) => n(c[id].responses)).join(', ')} |`)
    }
  }
  const cpu = [
    '| D | load | (a) Chromium / dev box / proxy | (b) Chromium / dev box / proxy | (c) Chromium / dev box | (d) Chromium / dev box / peer |',
    '| --- | --- | ---: | ---: | ---: | ---: |',
  ]
  for (const D of cfg.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const c = result.connections[`${D}:${kind}`]
      const cell = (id) => [c[id].cpuMs.chromium, c[id].cpuMs.devbox, ...(id === 'c' ? [] : [c[id].cpuMs.server])].map(n).join(' / ')
      cpu.push(`| ${D} ms | ${kind} | ${VARIANTS.map(cell).join(' | ')} |`)
    }
  }
  const targetLines = result.targets.map((t) => `- ${t.met == null ? '❔ unknown' : t.met ? '✅ met' : '❌ missed'} — ${t.name}: ${t.shown}`)
  return [
    '<!-- s7:begin -->',
    '## s7: preview page load in Chromium (what a user feels)',
    '',
    `Command: \`${command}\`${quick ? ' with BENCH_QUICK=1 (one load each: not representative)' : ''}  `,
    `Date: ${date}. ${machineLine}; Chromium ${result.chromium}, Vite ${result.vite}.`,
    '',
    `Time (ms, median of ${cfg.loads} loads) from navigation start to the app's "all modules evaluated" marker, for a Vite app of ${cfg.modules} ES modules (${cfg.graph}) plus CSS and the HMR WebSocket, behind a TLS HTTP/2 dev box stand-in that holds every response D ms:`,
    '',
    ...lines,
    '',
    ...notes.map((t, i) => `[s7-${i + 1}] ${t}  `),
    ...(notes.length ? [''] : []),
    `Spread of the same loads (fastest–slowest of ${cfg.loads}, ms):`,
    '',
    ...spread,
    '',
    'Connections per load (median): client connections the proxy accepted (`stats().accepted`, all kinds) and HTTP/2 streams it served (`stats().http2Streams`); for (c) and (d), what the dev box or the peer saw:',
    '',
    ...conn,
    '',
    'CPU time per load (ms, median; from /proc, between the reading before the navigation and the one after the marker): every process of that Chromium, the dev box process (Vite and the stand-in), and the proxy or peer process:',
    '',
    ...cpu,
    '',
    ...(result.notes.length ? [...result.notes.map((t) => `Note: ${t}.`), ''] : []),
    'Targets (the proxy is not tuned for them here):',
    '',
    ...targetLines,
    '',
    'How it is measured:',
    '',
    `- The app: a generated Vite project, \`src/main.js\` importing ${APP.a} modules that import ${APP.b} more that import ${APP.c} leaves (each a few hundred bytes to 1.5 KiB, exporting a number), a stylesheet linked from index.html and one imported by main.js; Vite's \`/@vite/client\` opens the HMR WebSocket. The last line of main.js's body sets \`window.__appReady = performance.now()\`, which runs once every module of the graph has been evaluated; that value (ms since the document's navigation start, the 407 round trip included) is the time, read the same way for every variant, and the page's sum of all exported numbers is checked each load. A module or stylesheet that fails to load ends the load as an error (an \`error\` listener in the page), as do failed requests; responses are counted and their statuses checked from the page's resource timing entries, so that no Playwright per-request event is subscribed (they cost CPU in the driver and in Chromium).`,
    `- The dev box: a real Vite ${result.vite} dev server (\`createServer\`, its own port) behind a stand-in for \`https://cmux-m-base-<P>.devbox.test\`: Node \`http2.createSecureServer({ allowHTTP1: true })\`, a test CA's EC leaf (CA in the chain), each request and WebSocket upgrade held D ms and then forwarded to Vite over keep-alive HTTP/1.1. Vite, the stand-in, each proxy and the driver are separate processes; all share the machine's CPUs with Chromium.`,
    `- Variants, each its own headless Chromium (\`launchChromium\` of __test__/browser-helpers.mjs plus the flags below), alternating in rotated order each round: (a) \`--proxy-server=http://127.0.0.1:PORT --proxy-bypass-list=<-loopback>\`, page \`http://localhost:<P>/\` (nothing listens on P) with a routed context \`{ morphId: 'm', scope: 'base', domainSuffix: 'devbox.test' }\`, start options \`resolve\` (dev box name → stand-in) and \`upstreamCaPem\`, HTTP/2 on; (b) the same with \`--proxy-server=https://127.0.0.1:PORT\` and \`--ignore-certificate-errors-spki-list=<proxy.caSpkiSha256()>\` (a second proxy process, so that each one's counters belong to one browser); (c) \`https://cmux-m-base-<P>.devbox.test/\` with \`--host-resolver-rules="MAP <name> 127.0.0.1:<stand-in port>"\` and the test CA trusted by SPKI; (d) the same URL through the npm \`proxy\` package (Basic auth as in bench/child.mjs; its CONNECT to <name>:443 is sent to the stand-in's port), which relays the TLS (and h2) between Chromium and the dev box blindly.`,
    `- Each round, per variant: a new browser context (cold: empty cache, no connections, no proxy credentials), \`page.goto\`; ${cfg.quietMs} ms later a \`page.reload()\` in the same context (warm: Vite answers the revalidations with 304). The 407 is answered over CDP (\`Fetch.enable({ handleAuthRequests: true, patterns: [{ urlPattern: <document URL> }] })\`, \`Fetch.authRequired\` → \`continueWithAuth\`), not with Playwright's proxy credentials (they pause every request and disable the cache); Fetch is enabled before each navigation and disabled once it committed, the same way for all four variants ((c) never gets a 407), because while it is enabled every request of the page passes through DevTools' interception, patterns or not, which made a direct load 20-30 % slower in a trial here. Later connections carry the credentials Chromium cached (the proxy's 407 count per load is in results.json). Vite's transforms are cached before the first load (every URL of the page requested once), and ${cfg.warmupLoads ? 'one unrecorded cold + warm load per variant precedes each D (the proxies\' upstream connections, Chromium\'s own caches)' : 'no unrecorded load precedes the rounds (BENCH_QUICK)'}. Chromium's background connections were let settle ${cfg.settleMs} ms after launch. Counters are read before each load and ${cfg.quietMs} ms after its marker.`,
    '<!-- s7:end -->',
  ]
}
