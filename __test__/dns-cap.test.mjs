// `maxConcurrentDnsLookups` bounds the DNS lookups under way at once (each
// holds a thread of the blocking pool until the resolver answers), and
// `maxConcurrentDnsLookupsPerContext` one preview's share of them; lookups
// past a cap wait their turn within the connect timeout. Seen from a DNS
// server: in a network namespace the test makes, getaddrinfo asks a server of
// the scenario's own on 127.0.0.1:53 (netns/dns-cap.mjs), which answers after
// a delay and counts the names it is answering at once.

import { describe, expect, test } from 'vitest'
import { canUseNamespaces, runInNamespace } from './netns-helpers.mjs'

const NAMES = 24
const DELAY_MS = 300

function run(maxConcurrentDnsLookups, { delayMs = DELAY_MS, upstreamConnectTimeoutMs = 20000, names = NAMES, perContext, ...stagger } = {}) {
  return runInNamespace('dns-cap', {
    // The names live in DNS only: /etc/hosts has localhost alone.
    resolvConf: 'nameserver 127.0.0.1\noptions timeout:5 attempts:1\n',
    input: {
      names,
      delayMs,
      ...stagger,
      // Generous by default: 24 lookups 4 at a time take ~1.8 s, all within one connect timeout.
      proxyOptions: { maxConcurrentDnsLookups, maxConcurrentDnsLookupsPerContext: perContext ?? maxConcurrentDnsLookups, upstreamConnectTimeoutMs },
    },
  })
}

const allNames = Array.from({ length: NAMES }, (_, i) => `n${i}.dns.test`).sort()

describe.skipIf(!canUseNamespaces)('DNS lookups at once', () => {
  test('with maxConcurrentDnsLookups: 4, 24 names at once are looked up at most 4 at a time, and all are served', async () => {
    const result = await run(4)
    expect(result.statuses).toEqual(Array(NAMES).fill(200))
    // The lookups went to the scenario's DNS server, every name, A and AAAA.
    expect(result.asked).toEqual(allNames)
    expect(result.queries.A).toBe(NAMES)
    expect(result.peak).toBeLessThanOrEqual(4)
    // ...and more than one at a time: the cap is what holds them back, not something else.
    expect(result.peak).toBeGreaterThanOrEqual(2)
  })

  test('control: with the default-sized cap (64) the same 24 lookups run more than 4 at a time', async () => {
    const result = await run(64)
    expect(result.statuses).toEqual(Array(NAMES).fill(200))
    expect(result.asked).toEqual(allNames)
    expect(result.peak).toBeGreaterThan(4)
  })

  test("one preview's slow lookups hold its share (maxConcurrentDnsLookupsPerContext) only: another preview's lookup goes through meanwhile", async () => {
    const result = await run(8, { perContext: 4, names: 8, delayMs: 1500, late: { afterMs: 300 } })
    expect(result.statuses).toEqual(Array(8).fill(200))
    expect(result.late).toEqual({ status: 200, beforeSlowAnswers: true })
    expect(result.peak).toBeLessThanOrEqual(5) // four of the first preview's names, and the other's
  })

  test("control: with one preview's share as large as the whole cap, the other preview's lookup waits for the slow ones", async () => {
    const result = await run(8, { perContext: 8, names: 8, delayMs: 1500, late: { afterMs: 300 } })
    expect(result.statuses).toEqual(Array(8).fill(200))
    expect(result.late).toEqual({ status: 200, beforeSlowAnswers: false })
  })

  test('a lookup the request gave up on (connect timeout) keeps its place until the resolver answers', async () => {
    // Answers take 2.5 s, requests give up after 0.5 s, and 4 more come every 0.3 s: were a place freed
    // with its request, the resolver threads would pile up past the cap.
    const result = await run(4, { delayMs: 2500, upstreamConnectTimeoutMs: 500, batch: 4, everyMs: 300 })
    expect(result.statuses).toEqual(Array(NAMES).fill(504))
    expect(result.peak).toBeLessThanOrEqual(4)
    expect(result.peak).toBeGreaterThanOrEqual(2)
  }, 60000)
})
