// s3: a bulk download with curl, TLS through a CONNECT tunnel (s3a) and plain
// forwarding (s3b): MiB/s, and the proxy's CPU time per GiB.

import { CFG, TARGETS, log } from '../config.mjs'
import { curlDownload } from '../fixtures/load.mjs'
import { cpuSeconds } from '../fixtures/proc.mjs'
import { attempt, put, putError, rotate } from '../report/results.mjs'

export async function scenarioBulk(ctx) {
  const { nginx, rust, peer, certs } = ctx
  const proxies = { rust, peer }
  log(`s3: ${CFG.bulkMiB} MiB download, TLS through CONNECT and plain forwarding, ${CFG.rounds} rounds`)
  for (let round = 1; round <= CFG.rounds; round++) {
    for (const [tunnel, metric] of [[true, 's3_tunnel'], [false, 's3_forward']]) {
      for (const target of rotate(TARGETS, round - 1)) {
        const proxy = proxies[target]
        if (target !== 'direct' && !proxy) {
          for (const m of [metric, `${metric}_cpu`]) putError(m, target, ctx.proxyErrors[target])
          continue
        }
        const cpuMetric = `${metric}_cpu`
        await attempt(metric, round, target, [metric, cpuMetric], async () => {
          const cpu0 = proxy ? cpuSeconds(proxy.pid) : null
          const res = await curlDownload({ target, proxy, nginx, tunnel, certs, expectBytes: CFG.bulkMiB * 1048576 })
          put(metric, target, res.mibps)
          if (proxy) {
            // What relaying costs the proxy, apart from how the machine's 2 cores were shared.
            res.proxy_cpu_s_per_gib = (cpuSeconds(proxy.pid) - cpu0) / (res.bytes / 2 ** 30)
            put(cpuMetric, target, res.proxy_cpu_s_per_gib)
          }
          log(`  s3 ${tunnel ? 'tunnel ' : 'forward'} round ${round} ${target}: ${res.mibps.toFixed(1)} MiB/s` +
            (proxy ? `, proxy CPU ${res.proxy_cpu_s_per_gib.toFixed(2)} s per GiB` : ''))
          return res
        })
      }
    }
  }
}
