// A namespace scenario (see ../netns-helpers.mjs): HTTP servers on each of
// `listen` (addresses on the namespace's lo, all on `port`), one proxy, a
// routed and a route-less context, then each of `probes` through the proxy.
// Prints [{ ...probe, status, reached }] where `reached` names the listen
// address that answered (none when the proxy refused).
//
// input: { listen: string[], port: number, route, proxyOptions, contextOptions?, probes: [
//   { kind: 'get', url, routed: boolean } | { kind: 'connect', authority, routed: boolean } ] }

import http from 'node:http'
import { authOf, openTunnel, ProxyServer, proxyRequest } from '../helpers.mjs'

const input = JSON.parse(process.env.CMUX_NETNS_INPUT)
const servers = []
for (const address of input.listen) {
  const server = http.createServer((req, res) => res.end(address))
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(input.port, address, resolve)
  })
  servers.push(server)
}

const proxy = await ProxyServer.start('127.0.0.1:0', true, { httpsProxy: false, ...input.proxyOptions })
const routed = proxy.createContext(1, input.route, ...(input.contextOptions ? [input.contextOptions] : []))
const plain = proxy.createContext(2, null)
const results = []
for (const probe of input.probes) {
  const auth = authOf(probe.routed ? routed : plain)
  if (probe.kind === 'get') {
    const res = await proxyRequest(proxy.port(), probe.url, { auth })
    results.push({ ...probe, status: res.status, reached: res.status === 200 ? res.text : null })
  } else {
    const { conn, res } = await openTunnel(proxy.port(), probe.authority, auth)
    let reached = null
    if (res.status === 200) {
      conn.write(`GET / HTTP/1.1\r\nHost: ${probe.authority}\r\nConnection: close\r\n\r\n`)
      const answer = await conn.readResponse()
      reached = answer.body.toString()
    }
    conn.destroy()
    results.push({ ...probe, status: res.status, reached })
  }
}
await proxy.stop()
for (const server of servers) server.close()
console.log(JSON.stringify(results))
