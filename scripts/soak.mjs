// Soak: 100 000 mixed operations through the proxy (keep-alive requests,
// rewritten HTTPS requests, CONNECT tunnels, WebSockets, abrupt aborts) while
// contexts are created and released. Checks: no wrong and no lost response,
// the proxy's file descriptors back to their baseline, RSS growth under 10 %
// after warm-up. Bounded: stops after OPERATIONS or 5 minutes.
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import { once } from 'node:events'
import { createRequire } from 'node:module'
import { makeCA, makeLeaf } from '../support/certs.mjs'
import { startProxyProcess } from '../support/proxy-process.mjs'
import { sleep } from '../support/wait.mjs'
import { buildAddon, installNodePackages, root } from './setup.mjs'

const OPERATIONS = Number(process.env.SOAK_OPERATIONS ?? 100_000)
const WARM_UP = Math.min(10_000, Math.floor(OPERATIONS / 10))
const CONCURRENCY = 96
const DEADLINE_MS = 5 * 60 * 1000
const OPERATION_TIMEOUT_MS = 15_000

if (!process.env.SOAK_SKIP_BUILD) {
  installNodePackages()
  buildAddon()
}
const { WebSocketServer, WebSocket } = createRequire(`${root}/`)('ws')

// Upstreams. Short keep-alive so that pooled upstream connections close when idle.
const plain = http.createServer((req, res) => {
  if (req.url.startsWith('/slow')) {
    res.write('x'.repeat(1024))
    const timer = setInterval(() => res.write('x'.repeat(1024)), 10)
    res.on('close', () => clearInterval(timer))
    return
  }
  res.end(`plain:${req.url}`)
})
plain.keepAliveTimeout = 1000
const route = { morphId: 'soak', scope: 'base', domainSuffix: 'soak.test' }
const devBoxHost = 'cmux-soak-base-3000.soak.test'
const ca = makeCA('soak CA')
const devBox = https.createServer(makeLeaf(ca, [devBoxHost]), (req, res) => res.end(`devbox:${req.headers.host}:${req.url}`))
devBox.keepAliveTimeout = 1000
new WebSocketServer({ server: devBox }).on('connection', (socket) => socket.on('message', (data, binary) => socket.send(data, { binary })))
const echo = net.createServer((socket) => {
  socket.on('error', () => {})
  socket.pipe(socket)
})
for (const server of [plain, devBox, echo]) {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
}

// The proxy, in its own process.
const proxyProcess = await startProxyProcess({
  // A loopback address would be looked into for a routed context: the echo service gets a name.
  resolve: { [`${devBoxHost}:443`]: `127.0.0.1:${devBox.address().port}`, 'echo.soak.test:7': `127.0.0.1:${echo.address().port}`,
    'plain.soak.test:80': `127.0.0.1:${plain.address().port}`,
  },
  upstreamCaPem: [ca.certPem],
}, { stdio: ['inherit', 'inherit', 'inherit', 'ipc'], timeout: 0 })
const { child, port, call } = proxyProcess

// Contexts come and go: each serves a batch of operations, then is released.
let webContentsId = 0
async function newContext() {
  const context = await call('createContext', ++webContentsId, route)
  // One keep-alive agent per context, as Chromium keeps one per session: releasing a
  // context closes the connections that authenticated with it.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 })
    const auth = `Basic ${Buffer.from(`${context.username}:${context.password}`).toString('base64')}`
  return { ...context, auth, agent, inFlight: 0, used: 0 }
}
let current = await newContext()
const retiring = new Set()
let rotating = null
async function contextForOperation() {
  while (current.used >= 2000) {
    rotating ??= newContext().then((fresh) => {
      retiring.add(current)
      current = fresh
      rotating = null
    })
    await rotating
  }
  current.used++
  return current
}
async function releaseIdleContexts() {
  for (const context of retiring) {
    if (context.inFlight === 0) {
      retiring.delete(context)
      context.agent.destroy()
      await call('releaseContext', context.id)
    }
  }
}

function request(context, url, { abortAfterBytes } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: url, agent: context.agent, headers: { 'proxy-authorization': context.auth } }, (res) => {
      let body = ''
      res.setEncoding('latin1')
      res.on('data', (chunk) => {
        body += chunk
        if (abortAfterBytes && body.length >= abortAfterBytes) {
          req.destroy()
          resolve({ status: res.statusCode, aborted: true })
        }
      })
      res.on('end', () => resolve({ status: res.statusCode, body }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end()
  })
}

function tunnel(context, authority) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1', () =>
      socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\nProxy-Authorization: ${context.auth}\r\n\r\n`))
    socket.once('error', reject)
    socket.once('data', (head) => {
      const status = head.toString('latin1').split('\r\n')[0]
      if (status.includes(' 200 ')) resolve(socket)
      else reject(new Error(`CONNECT ${authority}: ${status}`))
    })
  })
}

const operations = {
  async keepAlive(context, n) {
    const { status, body } = await request(context, `http://plain.soak.test/k/${n}`)
    return status === 200 && body === `plain:/k/${n}`
  },
  async rewritten(context, n) {
    const { status, body } = await request(context, `http://localhost:3000/r/${n}`)
    return status === 200 && body === `devbox:${devBoxHost}:/r/${n}`
  },
  async connectEcho(context) {
    const socket = await tunnel(context, 'echo.soak.test:7')
    const payload = randomBytes(4096)
    let received = Buffer.alloc(0)
    socket.on('data', (chunk) => (received = Buffer.concat([received, chunk])))
    socket.write(payload)
    while (received.length < payload.length) await once(socket, 'data')
    socket.end()
    await once(socket, 'close')
    return received.equals(payload)
  },
  async webSocket(context, n) {
    const socket = await tunnel(context, 'localhost:3000')
    const ws = new WebSocket('ws://localhost:3000/hmr', { createConnection: () => socket })
    await once(ws, 'open')
    const replies = []
    ws.on('message', (data) => replies.push(String(data)))
    for (let i = 0; i < 3; i++) ws.send(`m${n}.${i}`)
    while (replies.length < 3) await once(ws, 'message')
    ws.close()
    await once(ws, 'close')
    return replies.join(',') === `m${n}.0,m${n}.1,m${n}.2`
  },
  async abort(context) {
    const { status, aborted } = await request(context, 'http://plain.soak.test/slow', { abortAfterBytes: 4096 })
    return status === 200 && aborted === true
  },
}
const mix = [...Array(70).fill('keepAlive'), ...Array(12).fill('rewritten'), ...Array(8).fill('connectEcho'), ...Array(5).fill('webSocket'), ...Array(5).fill('abort')]

const counts = { done: 0, wrong: 0, lost: 0, byKind: {} }
const failures = []
async function runOne(n) {
  const kind = mix[n % mix.length]
  const context = await contextForOperation()
  context.inFlight++
  let timer
  try {
    const timeout = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('no answer in time')), OPERATION_TIMEOUT_MS)))
    const ok = await Promise.race([operations[kind](context, n), timeout])
    if (!ok) {
      counts.wrong++
      if (failures.length < 10) failures.push(`${kind} #${n}: wrong response`)
    }
  } catch (error) {
    counts.lost++
    if (failures.length < 10) failures.push(`${kind} #${n}: ${error.message}`)
    if (process.env.SOAK_DEBUG) console.log(`lost ${kind} #${n}: ${error.message}`)
  } finally {
    clearTimeout(timer)
    context.inFlight--
    counts.done++
    if (counts.done % 10000 === 0) console.log(`  ${counts.done} ops, ${counts.wrong} wrong, ${counts.lost} lost`)
    counts.byKind[kind] = (counts.byKind[kind] ?? 0) + 1
  }
}

async function runUntil(limit, startedAt) {
  let next = counts.done
  const workers = Array.from({ length: CONCURRENCY }, async () => {
    while (next < limit && Date.now() - startedAt < DEADLINE_MS) {
      await runOne(next++)
      if (next % 1000 === 0) await releaseIdleContexts()
    }
  })
  await Promise.all(workers)
}

/**
 * Lets every client and pooled upstream connection close (upstreams drop idle
 * keep-alive connections after 1 s), then measures the proxy. With a baseline,
 * waits up to 10 s for the descriptors to come back to it: a leak never does.
 */
async function settle(baseline) {
  current.agent.destroy()
  for (const context of retiring) context.agent.destroy()
  await releaseIdleContexts()
  let measured
  for (let waited = 0; waited < 10_000; waited += 200) {
    await sleep(200)
    measured = await call('measure')
    const idle = measured.stats.activeConnections === 0 && measured.stats.activeTunnels === 0
    if (idle && waited >= 2000 && (!baseline || measured.fds <= baseline.fds)) break
  }
  return measured
}

const startedAt = Date.now()
console.log(`soak: ${OPERATIONS} operations, ${CONCURRENCY} at a time, proxy pid ${child.pid} on port ${port}`)
await runUntil(WARM_UP, startedAt)
const baseline = await settle()
console.log(`after warm-up (${counts.done} ops): fds ${baseline.fds}, rss ${(baseline.rssKiB / 1024).toFixed(1)} MiB`)
await runUntil(OPERATIONS, startedAt)
const end = await settle(baseline)
const seconds = (Date.now() - startedAt) / 1000
const rssGrowth = (end.rssKiB - baseline.rssKiB) / baseline.rssKiB

console.log(`done: ${counts.done} ops in ${seconds.toFixed(1)} s (${Math.round(counts.done / seconds)} ops/s) ${JSON.stringify(counts.byKind)}`)
console.log(`contexts created ${webContentsId}, proxy stats ${JSON.stringify(end.stats)}`)
console.log(`wrong responses ${counts.wrong}, lost responses ${counts.lost}`)
console.log(`fds ${baseline.fds} -> ${end.fds}; rss ${(baseline.rssKiB / 1024).toFixed(1)} -> ${(end.rssKiB / 1024).toFixed(1)} MiB (${(rssGrowth * 100).toFixed(1)} %)`)
for (const failure of failures) console.log(`  ${failure}`)
if (end.fds > baseline.fds) {
  const before = new Set(baseline.fdTargets)
  console.log(`  descriptors not there after warm-up: ${end.fdTargets.filter((t) => !before.has(t)).join(', ')}`)
}

const checks = [
  ['all operations ran', counts.done >= OPERATIONS],
  ['zero wrong responses', counts.wrong === 0],
  ['zero lost responses', counts.lost === 0],
  ['file descriptors back to baseline', end.fds <= baseline.fds],
  ['RSS growth under 10 % after warm-up', rssGrowth < 0.1],
]
for (const [name, ok] of checks) console.log(`${ok ? 'PASS' : 'FAIL'} ${name}`)

await proxyProcess.stop()
for (const server of [plain, devBox, echo]) {
  server.closeAllConnections?.()
  server.close()
}
process.exit(checks.every(([, ok]) => ok) ? 0 : 1)
