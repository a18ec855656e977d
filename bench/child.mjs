// One proxy (or none) in a process of its own, so that the benchmark can read
// its CPU time and resident memory from /proc/<pid>. Started by bench/run.mjs:
//
//   node bench/child.mjs rust '{"resolve":{...},"upstreamCaPem":[...],"route":{...}}'
//   node bench/child.mjs peer '{}'
//   node bench/child.mjs bare '{}'
//
// Prints one JSON line (pid, port, credentials) once it is listening, then stays
// alive until its stdin closes (the parent's lifeline). A line "stats" on stdin
// is answered with a JSON line of the proxy's stats and this process's RSS.
import crypto from 'node:crypto'
import http from 'node:http'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'

const require = createRequire(import.meta.url)
const mode = process.argv[2]
const options = JSON.parse(process.argv[3] || '{}')

function rssKiB() {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1])
}

let info = { pid: process.pid, mode }
let stats = () => null

// A failure to start is reported as one JSON line ({"error": ...}) for the parent's table.
process.on('uncaughtException', (e) => {
  process.stdout.write(JSON.stringify({ error: String(e?.message ?? e).split('\n')[0] }) + '\n', () => process.exit(1))
})

if (mode === 'rust') {
  const { ProxyServer } = require('../index.js')
  const { route, ...startOptions } = options
  const proxy = await ProxyServer.start('127.0.0.1:0', true, startOptions)
  // Context 1 has no route: loopback targets are forwarded / relayed as they are.
  const plain = proxy.createContext(1)
  info = { ...info, port: proxy.port(), username: plain.username, password: plain.password }
  if (route) {
    // Context 2 is routed: loopback CONNECTs are looked into (TLS terminated) and rewritten.
    const routed = proxy.createContext(2, route)
    info.routed = { username: routed.username, password: routed.password }
  }
  stats = () => proxy.stats()
} else if (mode === 'peer') {
  const { createProxy } = require('proxy')
  const username = 'bench'
  const password = crypto.randomBytes(16).toString('hex')
  const expected = 'Basic ' + Buffer.from(`${username}:${password}`).toString('base64')
  const server = createProxy(http.createServer())
  server.authenticate = (req) => req.headers['proxy-authorization'] === expected
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  info = { ...info, port: server.address().port, username, password }
  stats = () => ({ connections: server.connections ?? null })
} else if (mode !== 'bare') {
  throw new Error(`unknown mode ${mode}`)
}

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (line.trim() === 'stats') process.stdout.write(JSON.stringify({ stats: stats(), rssKiB: rssKiB() }) + '\n')
})
lines.on('close', () => process.exit(0))
process.stdout.write(JSON.stringify(info) + '\n')
