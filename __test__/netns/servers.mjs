// The stand-ins of a namespace's peer network (../netns-helpers.mjs): an HTTP
// server on each address of CMUX_NETNS_SERVERS (JSON: { addresses, port })
// that answers with its own address; touches CMUX_NETNS_READY once all listen.

import http from 'node:http'
import { writeFileSync } from 'node:fs'

const { addresses, port } = JSON.parse(process.env.CMUX_NETNS_SERVERS)
for (const address of addresses) {
  const server = http.createServer((req, res) => res.end(address))
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, address, resolve)
  })
}
writeFileSync(process.env.CMUX_NETNS_READY, '')
