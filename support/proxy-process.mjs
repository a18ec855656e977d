// A proxy in a process of its own, so that its file descriptors and resident
// memory can be measured apart from the load (scripts/soak.mjs,
// __test__/memory.test.mjs, the unread-stderr test of __test__/faults.test.mjs).
// Run as a script, this file is that process; argv[2] is the StartOptions JSON.

import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { answerCommands, forkWithCommands } from './child-commands.mjs'

/**
 * Starts the process with `options`; resolves { child, port, call(command, ...args), stop() }.
 * Commands: createContext, releaseContext, measure ({ stats, fds, fdTargets, rssKiB }), stop.
 */
export async function startProxyProcess(options, { stdio = ['ignore', 'ignore', 'pipe', 'ipc'], timeout = 10000 } = {}) {
  const proc = await forkWithCommands(fileURLToPath(import.meta.url), [JSON.stringify(options)], {
    name: 'the proxy process',
    stdio,
    timeout,
    startTimeout: 10000,
  })
  return { ...proc, port: proc.ready.port }
}

async function childMain(options) {
  const { ProxyServer } = await import('./addon.mjs')
  const proxy = await ProxyServer.start('127.0.0.1:0', true, options)
  const measure = () => {
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
  answerCommands({
    createContext: (...args) => proxy.createContext(...args),
    releaseContext: (...args) => proxy.releaseContext(...args),
    measure,
    stop: async () => {
      await proxy.stop()
      return true
    },
  }, { port: proxy.port() })
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await childMain(JSON.parse(process.argv[2]))
}
