// s5: the resident memory of a fresh proxy process, idle and per idle CONNECT
// tunnel (two batches of CFG.tunnels, opened by fixtures/tunnels.mjs).

import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { BENCH, CFG, log } from '../config.mjs'
import { rssKiB } from '../fixtures/proc.mjs'
import { launch, nextJson, NOFILE_EFFECTIVE, stop } from '../fixtures/processes.mjs'
import { childStats, startProxyChild } from '../fixtures/proxies.mjs'
import { attempt, put, rotate } from '../report/results.mjs'

export async function scenarioMemory(ctx) {
  const { nginx, proxyOptions } = ctx
  log(`s5: idle RSS and RSS per idle CONNECT tunnel (${CFG.tunnels} tunnels), fresh processes, ${CFG.rounds} rounds`)
  for (let round = 1; round <= CFG.rounds; round++) {
    for (const mode of rotate(['bare', 'rust', 'peer'], round - 1)) {
      const target = mode === 'bare' ? 'direct' : mode
      const metrics = mode === 'bare' ? ['s5_idle'] : ['s5_idle', 's5_tunnel', 's5_more']
      let child = null
      let tunnels = null
      await attempt('s5', round, target, metrics, async () => {
        try {
          child = await startProxyChild(mode, mode === 'rust' ? proxyOptions : {})
          await sleep(CFG.settleMs)
          const idle = rssKiB(child.pid)
          put('s5_idle', target, idle / 1024)
          metrics.splice(metrics.indexOf('s5_idle'), 1) // a later failure is the tunnels' only
          if (mode === 'bare') {
            log(`  s5 round ${round} bare node: idle RSS ${(idle / 1024).toFixed(1)} MiB`)
            return { idle_rss_kib: idle }
          }
          tunnels = launch('tunnels', process.execPath, [join(BENCH, 'fixtures', 'tunnels.mjs'), JSON.stringify({
            port: child.info.port, auth: child.auth, target: `127.0.0.1:${nginx.ports.http}`, count: CFG.tunnels, concurrency: 50,
          })])
          // A batch of CFG.tunnels more, then the RSS once they are all open and idle.
          const openBatch = async (batch) => {
            if (batch > 1) tunnels.proc.stdin.write('open\n')
            const opened = await nextJson(tunnels, 90000, 'tunnel count')
            if (opened.failed > 0) {
              const low = NOFILE_EFFECTIVE < 2 * batch * CFG.tunnels + 256 ? `; \`ulimit -n\` could only be raised to ${NOFILE_EFFECTIVE} (hard limit), which is too few for ${batch * CFG.tunnels} tunnels` : ''
              throw new Error(`${opened.failed} of ${CFG.tunnels} CONNECTs failed: ${JSON.stringify(opened.errors)}${low}`)
            }
            await sleep(1000)
            const rss = rssKiB(child.pid)
            tunnels.proc.stdin.write('status\n')
            const { open } = await nextJson(tunnels, 5000, 'tunnel status')
            if (open !== batch * CFG.tunnels) throw new Error(`only ${open} of ${batch * CFG.tunnels} tunnels were still open when RSS was read`)
            return rss
          }
          const loaded = await openBatch(1)
          const perTunnel = (loaded - idle) / CFG.tunnels
          put('s5_tunnel', target, perTunnel)
          metrics.splice(metrics.indexOf('s5_tunnel'), 1)
          const more = await openBatch(2)
          const perMoreTunnel = (more - loaded) / CFG.tunnels
          put('s5_more', target, perMoreTunnel)
          const stats = await childStats(child).catch(() => null)
          log(`  s5 round ${round} ${mode}: idle RSS ${(idle / 1024).toFixed(1)} MiB, with ${CFG.tunnels} tunnels ${(loaded / 1024).toFixed(1)} MiB → ${perTunnel.toFixed(1)} KiB/tunnel; with ${2 * CFG.tunnels} ${(more / 1024).toFixed(1)} MiB → ${perMoreTunnel.toFixed(1)} KiB per tunnel of the second ${CFG.tunnels}`)
          return { idle_rss_kib: idle, loaded_rss_kib: loaded, kib_per_tunnel: perTunnel, more_rss_kib: more, kib_per_more_tunnel: perMoreTunnel, proxy_stats: stats?.stats ?? null }
        } finally {
          await stop(tunnels)
          await stop(child)
        }
      })
    }
  }
}
