// The stand-ins of a namespace's peer network (../netns-helpers.mjs): an HTTP
// server on each address of CMUX_NETNS_SERVERS (JSON: { addresses, port })
// that answers with its own address; touches CMUX_NETNS_READY once all listen.
// Each request is logged to CMUX_NETNS_HITS as a JSON line { address, probe }
// (probe: its x-netns-probe header, or null), before it is answered.

import http from 'node:http'
import { appendFileSync, writeFileSync } from 'node:fs'

const { addresses, port } = JSON.parse(process.env.CMUX_NETNS_SERVERS)
for (const address of addresses) {
  const server = http.createServer((req, res) => {
    const probe = req.headers['x-netns-probe'] ?? null
    appendFileSync(process.env.CMUX_NETNS_HITS, JSON.stringify({ address, probe }) + '\n')
    res.end(address)
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, address, resolve)
  })
}
writeFileSync(process.env.CMUX_NETNS_READY, '')
