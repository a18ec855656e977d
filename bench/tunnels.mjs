// Opens COUNT idle CONNECT tunnels through a proxy and holds them open.
// Started by bench/run.mjs in a process of its own (with a raised `ulimit -n`):
//
//   node bench/tunnels.mjs '{"port":P,"auth":"Basic ...","target":"127.0.0.1:N","count":1000,"concurrency":50}'
//
// Prints one JSON line {ok, failed, errors} once every CONNECT was answered,
// keeps the tunnels open (no bytes sent) until its stdin closes, then exits.
// A line "open" on stdin opens COUNT more the same way (and prints their line):
// the RSS they add is what one more tunnel costs, past the allocator's high-water
// mark of the first batch's handshakes.
import net from 'node:net'
import { createInterface } from 'node:readline'

const { port, auth, target, count, concurrency = 50, timeoutMs = 20000 } = JSON.parse(process.argv[2])
const sockets = []
const errors = new Map()

function openTunnel() {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port })
    sockets.push(socket)
    let head = ''
    let settled = false
    const finish = (error) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.removeListener('data', onData)
      if (error) {
        errors.set(error, (errors.get(error) ?? 0) + 1)
        socket.destroy()
      }
      resolve(!error)
    }
    const timer = setTimeout(() => finish('no answer within the timeout'), timeoutMs)
    const onData = (chunk) => {
      head += chunk.toString('latin1')
      const end = head.indexOf('\r\n\r\n')
      if (end < 0) return
      const status = head.slice(0, head.indexOf('\r\n'))
      finish(/^HTTP\/1\.[01] 200\b/.test(status) ? null : `answered "${status}"`)
    }
    socket.on('data', onData)
    socket.on('error', (e) => finish(e.code || e.message))
    socket.on('close', () => finish('closed before the answer'))
    socket.on('connect', () => {
      const lines = [`CONNECT ${target} HTTP/1.1`, `Host: ${target}`]
      if (auth) lines.push(`Proxy-Authorization: ${auth}`)
      socket.write(lines.join('\r\n') + '\r\n\r\n')
    })
  })
}

/** Opens `count` tunnels, `concurrency` at a time, and prints how that went. */
async function openBatch() {
  errors.clear()
  let next = 0
  let ok = 0
  async function worker() {
    while (next < count) {
      next++
      if (await openTunnel()) ok++
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
  process.stdout.write(JSON.stringify({ ok, failed: count - ok, errors: Object.fromEntries(errors) }) + '\n')
}

await openBatch()

// "status" on stdin: how many of the established tunnels are still open.
const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (line.trim() === 'open') return void openBatch()
  if (line.trim() !== 'status') return
  const open = sockets.filter((s) => !s.destroyed && s.readyState === 'open').length
  process.stdout.write(JSON.stringify({ open }) + '\n')
})
lines.on('close', () => {
  for (const socket of sockets) socket.destroy()
  process.exit(0)
})
