// A namespace scenario (see ../netns-helpers.mjs): HTTP servers on each of
// `listen` (addresses of this namespace, all on `port`), one proxy, the
// contexts named in `contexts`, then each of `probes` through the proxy.
// Prints [{ ...probe, status, reached }] where `reached` is what the server
// that answered says (its address), or null when the proxy refused.
//
// The peer network's stand-ins (../netns-helpers.mjs, `peer`) answer the same way,
// and like the servers here log each request they get to CMUX_NETNS_HITS.
//
// input: { listen: string[], port: number, proxyOptions, contexts: { [name]: route | null },
//   probes: [{ kind: 'get' | 'connect' | 'websocket' | 'websocket-h2', target, context }] }
//   get: target is an absolute URL; connect: host:port; websocket, websocket-h2: an absolute
//   ws:// URL (websocket-h2: an RFC 8441 extended CONNECT over an h2c session to the proxy).

import { appendFileSync, readFileSync } from 'node:fs'
import http from 'node:http'
import http2 from 'node:http2'
import { ProxyServer } from '../../support/addon.mjs'
import { authOf, Conn, openTunnel, proxyRequest } from '../../support/http-client.mjs'
import { wsKey, wsUpgradeRequest } from '../helpers.mjs'

const input = JSON.parse(process.env.CMUX_NETNS_INPUT)
const HITS = process.env.CMUX_NETNS_HITS
/** Which server got each request that carried a PROBE_HEADER (same format as ../netns/servers.mjs). */
const PROBE_HEADER = 'x-netns-probe'
const logHit = (address, req) =>
  HITS && appendFileSync(HITS, JSON.stringify({ address, probe: req.headers[PROBE_HEADER] ?? null }) + '\n')
const hitsOf = (probe) =>
  (HITS ? readFileSync(HITS, 'utf8').split('\n').filter(Boolean).map((line) => JSON.parse(line)) : [])
    .filter((hit) => hit.probe === probe)
    .map((hit) => hit.address)
const servers = []
for (const address of input.listen ?? []) {
  const server = http.createServer((req, res) => {
    logHit(address, req)
    res.end(address)
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(input.port, address, resolve)
  })
  servers.push(server)
}

const proxy = await ProxyServer.start('127.0.0.1:0', true, { httpsProxy: false, ...input.proxyOptions })
const contexts = {}
let id = 1
for (const [name, route] of Object.entries(input.contexts)) contexts[name] = proxy.createContext(id++, route)

async function probe({ kind, target, context }) {
  const auth = authOf(contexts[context])
  if (kind === 'get') {
    const res = await proxyRequest(proxy.port(), target, { auth })
    return { status: res.status, reached: res.status === 200 ? res.text : null, refusal: res.status === 403 ? res.text : undefined }
  }
  if (kind === 'websocket') {
    const conn = await Conn.connect(proxy.port())
    conn.write(wsUpgradeRequest(target, { auth, key: wsKey() }))
    const res = await conn.readResponse()
    conn.destroy()
    // The stand-ins speak plain HTTP: a reached upstream answers the handshake with 200 and its address.
    return { status: res.status, reached: res.status === 200 ? res.body.toString() : null }
  }
  if (kind === 'websocket-h2') return websocketOverH2(target, auth)
  const { conn, res } = await openTunnel(proxy.port(), target, auth)
  let reached = null
  if (res.status === 200) {
    conn.write(`GET / HTTP/1.1\r\nHost: ${target}\r\nConnection: close\r\n\r\n`)
    reached = (await conn.readResponse()).body.toString()
  }
  conn.destroy()
  return { status: res.status, reached }
}

let probes = 0
/** RFC 9113 §7 error codes, by number. */
const H2_ERRORS = ['NO_ERROR', 'PROTOCOL_ERROR', 'INTERNAL_ERROR', 'FLOW_CONTROL_ERROR', 'SETTINGS_TIMEOUT',
  'STREAM_CLOSED', 'FRAME_SIZE_ERROR', 'REFUSED_STREAM', 'CANCEL', 'COMPRESSION_ERROR', 'CONNECT_ERROR',
  'ENHANCE_YOUR_CALM', 'INADEQUATE_SECURITY', 'HTTP_1_1_REQUIRED']

/**
 * An RFC 8441 WebSocket: an extended CONNECT on an h2c session. The stand-ins
 * answer the proxy's upgrade with a plain 200 and their address, not a 101: the
 * proxy hands that answer to the client, so what the client sees says little
 * (see the test). Whether the upstream was reached is what the servers logged.
 */
async function websocketOverH2(target, auth) {
  const { host, pathname } = new URL(target)
  const id = String(++probes)
  const session = http2.connect(`http://127.0.0.1:${proxy.port()}`)
  session.on('error', () => {})
  try {
    await new Promise((resolve, reject) => {
      session.once('remoteSettings', resolve)
      session.once('error', reject)
    })
    const stream = session.request({
      ':method': 'CONNECT',
      ':protocol': 'websocket',
      ':scheme': 'http',
      ':authority': host,
      ':path': pathname,
      'sec-websocket-version': '13',
      'proxy-authorization': auth,
      [PROBE_HEADER]: id,
    }, { endStream: false })
    const status = await new Promise((resolve) => {
      let status = null
      const timer = setTimeout(() => resolve(status ?? 'timeout'), 5000)
      const done = () => {
        clearTimeout(timer)
        resolve(status ?? `RST_STREAM ${H2_ERRORS[stream.rstCode] ?? stream.rstCode}`)
      }
      stream.once('response', (headers) => {
        status = headers[':status']
        // A 200 stands for the 101: the stream stays open as the WebSocket.
        if (status === 200) done()
      })
      stream.on('data', () => {})
      stream.once('error', done)
      stream.once('close', done)
    })
    stream.close()
    const reached = hitsOf(id)
    return { status, reached: reached.length === 1 ? reached[0] : reached.length ? reached : null }
  } finally {
    session.close()
  }
}

const results = []
for (const p of input.probes) results.push({ ...p, ...(await probe(p)) })
await proxy.stop()
for (const server of servers) server.close()
console.log(JSON.stringify(results))
