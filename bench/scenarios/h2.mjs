// s4: HTTP/2 inside an intercepted tunnel with h2load, to an h2 and to an
// HTTP/1.1 upstream, against h2load straight to nginx.

import { CFG, log } from '../config.mjs'
import { h2load, startForwarder } from '../fixtures/load.mjs'
import { fileSize, nginxRejections } from '../fixtures/nginx.mjs'
import { attempt, put, putError, rotate } from '../report/results.mjs'

export async function scenarioH2(ctx) {
  const { nginx, rust } = ctx
  log(`s4: HTTP/2 in an intercepted tunnel, h2load -n ${CFG.h2Requests} -c ${CFG.h2Clients} -m ${CFG.h2Streams}, ${CFG.rounds} rounds`)
  // Two upstream flavours behind the same intercepted h2 tunnel: nginx over h2 (the
  // scenario as specified) and nginx over HTTP/1.1 (TLS port without http2).
  const variants = [
    { metric: 's4_rps', connect: 'localhost:3000', upstream: 'h2' },
    { metric: 's4h1_rps', connect: 'localhost:3001', upstream: 'http/1.1' },
  ]
  for (const v of variants) putError(v.metric, 'peer', null) // n/a, see footnote
  if (rust) {
    for (const v of variants) {
      v.forwarder = await startForwarder(rust.info.port, rust.routedAuth, v.connect)
      ctx.cleanups.push(() => v.forwarder.close())
      // Warm-up, not recorded: the leaf certificate for localhost and the upstream connections.
      await h2load(`https://localhost:${v.forwarder.port}/small`, Math.min(2000, CFG.h2Requests)).catch((e) =>
        log(`  s4 warm-up (upstream ${v.upstream}): ${e.message}`),
      )
    }
  }
  const runRust = async (round, v) => {
    if (!rust) return putError(v.metric, 'rust', ctx.proxyErrors.rust)
    await attempt(v.metric, round, 'rust', [v.metric], async () => {
      const failuresBefore = v.forwarder.failures.length
      const logOffset = fileSize(nginx.errorLog)
      let res
      try {
        res = await h2load(`https://localhost:${v.forwarder.port}/small`, CFG.h2Requests)
      } catch (e) {
        const refused = v.forwarder.failures.slice(failuresBefore)
        if (refused.length) e.message += `; the proxy answered the forwarder's CONNECT with "${refused[0]}"`
        const rejections = nginxRejections(nginx, logOffset)
        if (rejections.length) e.message += `; nginx's log: ${rejections.map((r) => r.replace(/ while reading client request headers$/, '')).join('; ')}`
        if (rejections.some((r) => r.includes('duplicate host header')))
          e.message += ' (the proxy sends a `host` header next to `:authority` on its upstream HTTP/2 requests, which this nginx rejects with 400)'
        throw e
      }
      put(v.metric, 'rust', res.rps)
      log(`  s4 round ${round} rust (upstream ${v.upstream}): ${res.rps.toFixed(0)} req/s`)
      return { ...res, upstream: v.upstream }
    })
  }
  const runDirect = (round) =>
    attempt('s4', round, 'direct', variants.map((v) => v.metric), async () => {
      const res = await h2load(`https://127.0.0.1:${nginx.ports.h2}/small`, CFG.h2Requests)
      for (const v of variants) put(v.metric, 'direct', res.rps)
      log(`  s4 round ${round} direct: ${res.rps.toFixed(0)} req/s`)
      return res
    })
  for (let round = 1; round <= CFG.rounds; round++) {
    const steps = [() => runDirect(round), ...variants.map((v) => () => runRust(round, v))]
    for (const step of rotate(steps, round - 1)) await step()
  }
}
