// s1, s2 and s6: small GETs through each target with wrk: req/s and latency
// at 50 connections (s1) and at one (s2), and the proxy's CPU time per
// request around the s1 runs (s6).

import os from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { CFG, enabled, RELAY, SMALL_TARGETS, log } from '../config.mjs'
import { wrk } from '../fixtures/load.mjs'
import { cpuSplit, rssKiB } from '../fixtures/proc.mjs'
import { childStats } from '../fixtures/proxies.mjs'
import { attempt, put, putError, rotate } from '../report/results.mjs'

// What one s1 round records per target (s6 is its proxy CPU, read around the same wrk run).
const S1_METRICS = ['s1_rps', 's1_p50', 's1_p99', 's6_cpu', 's6_us', 's6_user', 's6_kernel']

export async function scenarioSmall(ctx) {
  const { nginx, rust, peer } = ctx
  const proxies = { rust, peer, [RELAY]: ctx.relay }
  const s1 = { connections: CFG.s1Connections, threads: CFG.s1Threads, seconds: CFG.s1Seconds }
  const s2 = { connections: 1, threads: 1, seconds: CFG.s2Seconds }
  if (enabled('s1')) {
    log(`s1/s6: small responses, ${s1.connections} connections, ${s1.threads} threads, ${s1.seconds} s, ${CFG.rounds} rounds`)
    for (const target of ['rust', 'peer', RELAY]) {
      if (!proxies[target]) continue
      // Warm-up, not recorded: fills the upstream pools and lets V8 optimise the peer.
      await wrk({ target, proxy: proxies[target], nginx, ...s1, seconds: CFG.warmupSeconds }).catch(() => {})
    }
    for (let round = 1; round <= CFG.rounds; round++) {
      for (const target of rotate(SMALL_TARGETS, round - 1)) {
        const proxy = proxies[target]
        if (target !== 'direct' && !proxy) {
          for (const m of S1_METRICS) putError(m, target, ctx.proxyErrors[target])
          continue
        }
        await attempt('s1', round, target, S1_METRICS, async () => {
          const load1 = os.loadavg()[0]
          const stats0 = target === 'rust' ? await childStats(proxy).catch(() => null) : null
          const cpu0 = proxy ? cpuSplit(proxy.pid) : null
          const res = await wrk({ target, proxy, nginx, ...s1 })
          const cpu1 = proxy ? cpuSplit(proxy.pid) : null
          if (stats0) {
            // Sanity check: the proxy itself counted the requests wrk sent through it.
            const stats1 = await childStats(proxy).catch(() => null)
            if (stats1) res.proxy_counted_requests = stats1.stats.totalRequests - stats0.stats.totalRequests
          }
          put('s1_rps', target, res.rps)
          put('s1_p50', target, res.p50_us)
          put('s1_p99', target, res.p99_us)
          if (proxy) {
            res.proxy_cpu_s = cpu1.total - cpu0.total
            res.proxy_rss_kib = rssKiB(proxy.pid)
            res.cpu_s_per_100k = (res.proxy_cpu_s / res.requests) * 100000
            res.cpu_us_per_request = (res.proxy_cpu_s / res.requests) * 1e6
            res.kernel_us_per_request = ((cpu1.kernel - cpu0.kernel) / res.requests) * 1e6
            res.user_us_per_request = ((cpu1.user - cpu0.user) / res.requests) * 1e6
            put('s6_cpu', target, res.cpu_s_per_100k)
            put('s6_us', target, res.cpu_us_per_request)
            put('s6_user', target, res.user_us_per_request)
            put('s6_kernel', target, res.kernel_us_per_request)
          }
          res.load1_at_start = load1
          log(`  s1 round ${round} ${target}: ${res.rps.toFixed(0)} req/s, p50 ${res.p50_us} µs, p99 ${res.p99_us} µs` +
            (proxy ? `, CPU ${res.proxy_cpu_s.toFixed(2)} s for ${res.requests} requests (${res.cpu_us_per_request.toFixed(1)} µs each, ${res.user_us_per_request.toFixed(1)} user + ${res.kernel_us_per_request.toFixed(1)} kernel)` : '') +
            `; load ${load1.toFixed(2)}`)
          return res
        })
        await sleep(300)
      }
    }
  }
  if (enabled('s2')) {
    log(`s2: small responses, 1 connection, 1 thread, ${s2.seconds} s, ${CFG.rounds} rounds`)
    for (let round = 1; round <= CFG.rounds; round++) {
      for (const target of rotate(SMALL_TARGETS, round - 1)) {
        const proxy = proxies[target]
        if (target !== 'direct' && !proxy) {
          for (const m of ['s2_p50', 's2_p99']) putError(m, target, ctx.proxyErrors[target])
          continue
        }
        await attempt('s2', round, target, ['s2_p50', 's2_p99'], async () => {
          const res = await wrk({ target, proxy, nginx, ...s2 })
          put('s2_p50', target, res.p50_us)
          put('s2_p99', target, res.p99_us)
          log(`  s2 round ${round} ${target}: p50 ${res.p50_us} µs, p99 ${res.p99_us} µs (${res.rps.toFixed(0)} req/s)`)
          return res
        })
        await sleep(300)
      }
    }
  }
}
