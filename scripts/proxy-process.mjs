// A proxy in a process of its own, so that its file descriptors and resident
// memory can be measured apart from the load. Driven over IPC by
// scripts/soak.mjs and __test__/memory.test.mjs; argv[2] is the StartOptions JSON.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { createRequire } from 'node:module'

const { ProxyServer } = createRequire(import.meta.url)('../index.js')
const options = JSON.parse(process.argv[2])
const proxy = await ProxyServer.start('127.0.0.1:0', true, options)

function measure() {
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))[1])
  const fds = readdirSync('/proc/self/fd').map((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`)
    } catch {
      return 'closed'
    }
  })
  return { stats: proxy.stats(), fds: fds.length, fdTargets: fds, rssKiB }
}

process.on('message', async ({ id, command, args }) => {
  let result
  if (command === 'createContext') result = proxy.createContext(...args)
  else if (command === 'releaseContext') result = proxy.releaseContext(...args)
  else if (command === 'measure') result = measure()
  else if (command === 'stop') {
    await proxy.stop()
    result = true
  }
  process.send({ id, result })
  if (command === 'stop') process.disconnect()
})
process.send({ id: 0, result: { port: proxy.port() } })
