// A namespace scenario (see ../netns-helpers.mjs) for `maxConcurrentDnsLookups`:
// a DNS server of its own on UDP 127.0.0.1:53 (the namespace's resolv.conf
// names it) that answers slowly and records how many names it was answering
// at once; an HTTP server on 127.0.0.1; a proxy with the input's options and
// a route-less context (so names that resolve to 127.0.0.1 may be reached);
// then `names` requests at once, each to a name of its own under `.dns.test`.
//
// input: { proxyOptions, names: number, delayMs: number, batch?: number, everyMs?: number,
//   late?: { afterMs } }
// With `late`, a second context asks for `fast.dns.test` (answered at once)
// `afterMs` after the first context's requests started.
// Prints { statuses, peak, asked, queries, late? } where `peak` is the most
// distinct names with a question pending at any moment, `asked` the names the
// server was asked about (sorted), `queries` the questions by type, and `late`
// { status, beforeSlowAnswers: whether it was served before the server sent
// any answer about the first context's names }.

import dgram from 'node:dgram'
import { ProxyServer } from '../../support/addon.mjs'
import { authOf, proxyRequest } from '../../support/http-client.mjs'
import { startHttpServer } from '../../support/servers.mjs'

const input = JSON.parse(process.env.CMUX_NETNS_INPUT)
const { proxyOptions, names, delayMs } = input
const ZONE = 'dns.test'
const TYPE_A = 1
const TYPE_AAAA = 28

/** The question of a DNS query: { name (lowercase, no trailing dot), type, end (offset past the question) }. */
function question(msg) {
  const labels = []
  let at = 12
  while (msg[at] !== 0) {
    if (at >= msg.length || msg[at] >= 0x40) throw new Error('a name that is not plain labels')
    labels.push(msg.subarray(at + 1, at + 1 + msg[at]).toString('latin1'))
    at += 1 + msg[at]
  }
  at += 1
  return { name: labels.join('.').toLowerCase(), type: msg.readUInt16BE(at), end: at + 4 }
}

/**
 * The answer to `query`: names under ZONE have an A record 127.0.0.1 and no
 * AAAA (NOERROR with no answer, which getaddrinfo takes as "no IPv6 here" and
 * returns the A record); any other name does not exist.
 */
function answer(query, { name, type, end }) {
  const inZone = name.endsWith(`.${ZONE}`)
  const withA = inZone && type === TYPE_A
  const header = Buffer.alloc(12)
  header.writeUInt16BE(query.readUInt16BE(0), 0) // id
  // QR, the query's opcode and RD, RA; rcode NOERROR or NXDOMAIN.
  header.writeUInt16BE(0x8000 | (query.readUInt16BE(2) & 0x7900) | 0x0080 | (inZone ? 0 : 3), 2)
  header.writeUInt16BE(1, 4) // QDCOUNT
  header.writeUInt16BE(withA ? 1 : 0, 6) // ANCOUNT
  const parts = [header, query.subarray(12, end)]
  if (withA) {
    // The question's name (a pointer to offset 12), A, IN, TTL 60, 4 bytes: 127.0.0.1.
    parts.push(Buffer.from([0xc0, 0x0c, 0, TYPE_A, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]))
  }
  return Buffer.concat(parts)
}

// glibc asks for A and AAAA at once, over one socket: what is counted is
// names with a question not answered yet, not packets.
const pending = new Map()
let peak = 0
const asked = new Set()
const queries = {}
const dns = dgram.createSocket('udp4')
let closed = false
let slowAnswered = false
dns.on('message', (msg, from) => {
  let q
  try {
    q = question(msg)
  } catch {
    return
  }
  asked.add(q.name)
  const type = { [TYPE_A]: 'A', [TYPE_AAAA]: 'AAAA' }[q.type] ?? String(q.type)
  queries[type] = (queries[type] ?? 0) + 1
  pending.set(q.name, (pending.get(q.name) ?? 0) + 1)
  peak = Math.max(peak, pending.size)
  const fast = q.name.startsWith('fast.')
  setTimeout(() => {
    if (!fast) slowAnswered = true
    const left = pending.get(q.name) - 1
    if (left === 0) pending.delete(q.name)
    else pending.set(q.name, left)
    if (!closed) dns.send(answer(msg, q), from.port, from.address)
  }, fast ? 0 : delayMs)
})
await new Promise((resolve, reject) => {
  dns.once('error', reject)
  dns.bind(53, '127.0.0.1', resolve)
})

const upstream = await startHttpServer((req, res) => res.end('ok'))
const proxy = await ProxyServer.start('127.0.0.1:0', true, { httpsProxy: false, ...proxyOptions })
const auth = authOf(proxy.createContext(1, null))
const lateAuth = authOf(proxy.createContext(2, null))
const late = input.late
  ? new Promise((resolve) => setTimeout(resolve, input.late.afterMs)).then(async () => {
      const res = await proxyRequest(proxy.port(), `http://fast.${ZONE}:${upstream.port}/`, { auth: lateAuth })
      return { status: res.status, beforeSlowAnswers: !slowAnswered, ...(res.status === 200 ? {} : { body: res.text }) }
    })
  : undefined
// Requests go out in batches of `batch` every `everyMs` (all at once by default).
const batch = input.batch ?? names
const responses = await Promise.all(
  Array.from({ length: names }, async (_, i) => {
    await new Promise((resolve) => setTimeout(resolve, Math.floor(i / batch) * (input.everyMs ?? 0)))
    return proxyRequest(proxy.port(), `http://n${i}.${ZONE}:${upstream.port}/`, { auth }).then(
      (res) => (res.status === 200 && res.text === 'ok' ? 200 : res.status),
      (e) => `failed: ${e.message}`,
    )
  }),
)
const lateResult = await late
// Lookups the proxy gave up on are still under way in its resolver threads: let them be answered.
while (pending.size) await new Promise((resolve) => setTimeout(resolve, 50))
await proxy.stop()
await upstream.close()
closed = true
dns.close()
console.log(JSON.stringify({ statuses: responses, peak, asked: [...asked].sort(), queries, late: lateResult }))
