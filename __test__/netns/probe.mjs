// A namespace scenario (see ../netns-helpers.mjs): HTTP servers on each of
// `listen` (addresses of this namespace, all on `port`), one proxy, the
// contexts named in `contexts`, then each of `probes` through the proxy.
// Prints [{ ...probe, status, reached }] where `reached` is what the server
// that answered says (its address), or null when the proxy refused.
//
// The peer network's stand-ins (../netns-helpers.mjs, `peer`) answer the same way.
//
// input: { listen: string[], port: number, proxyOptions, contexts: { [name]: route | null },
//   probes: [{ kind: 'get' | 'connect' | 'websocket', target, context }] }
//   get: target is an absolute URL; connect: host:port; websocket: an absolute ws:// URL.

import http from 'node:http'
import { authOf, Conn, openTunnel, ProxyServer, proxyRequest, wsKey, wsUpgradeRequest } from '../helpers.mjs'

const input = JSON.parse(process.env.CMUX_NETNS_INPUT)
const servers = []
for (const address of input.listen ?? []) {
  const server = http.createServer((req, res) => res.end(address))
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
    return { status: res.status, reached: res.status === 200 ? res.text : null }
  }
  if (kind === 'websocket') {
    const conn = await Conn.connect(proxy.port())
    conn.write(wsUpgradeRequest(target, { auth, key: wsKey() }))
    const res = await conn.readResponse()
    conn.destroy()
    // The stand-ins speak plain HTTP: a reached upstream answers the handshake with 200 and its address.
    return { status: res.status, reached: res.status === 200 ? res.body.toString() : null }
  }
  const { conn, res } = await openTunnel(proxy.port(), target, auth)
  let reached = null
  if (res.status === 200) {
    conn.write(`GET / HTTP/1.1\r\nHost: ${target}\r\nConnection: close\r\n\r\n`)
    reached = (await conn.readResponse()).body.toString()
  }
  conn.destroy()
  return { status: res.status, reached }
}

const results = []
for (const p of input.probes) results.push({ ...p, ...(await probe(p)) })
await proxy.stop()
for (const server of servers) server.close()
console.log(JSON.stringify(results))
