// The proxy in front of a real Chromium, configured like an Electron preview
// session: per-context proxy (session.setProxy), proxy login answered with the
// context's credentials (app.on('login')), and trust of the proxy's CA via its
// SPKI hash (setCertificateVerifyProc). Nothing listens on localhost:3000: the
// proxy rewrites the page's loopback traffic to "cloud dev box" stand-ins.

import { mkdirSync, rmSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { afterAll, describe, expect } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA, makeLeaf } from '../support/certs.mjs'
import { waitFor } from '../support/wait.mjs'
import {
  BURST_MODULES, devHost, inspectPage, launchChromium, newPreviewContext, recordFailures, requireChromium,
  startStandInDevBox, waitForHmrText,
} from './browser-helpers.mjs'
import {
  browserSuite, expectAllH2, expectRefusedAfterRelease, expectSeparatePreviews, expectStandInPage, expectWhoami,
  isStandIn, openStandInPage,
} from './browser-scenarios.mjs'

const OUTPUT_DIR = join(dirname(fileURLToPath(import.meta.url)), 'output')
const SUFFIX = 'test.local'
const R1 = { morphId: 'm1', scope: 'base', domainSuffix: SUFFIX } // HTTP/1.1 stand-in
const R2 = { morphId: 'm2', scope: 'base', domainSuffix: SUFFIX } // same stand-in, other name
const R4 = { morphId: 'm4', scope: 'h2', domainSuffix: SUFFIX } // HTTP/2 stand-in

let ca, devBox, devBoxH2, proxy, browser
const contexts = []

/** A browser context bound to a fresh proxy context (one Electron session partition per preview). */
async function preview(webContentsId, route) {
  const ctx = proxy.createContext(webContentsId, route)
  const context = await newPreviewContext(browser, proxy.port(), ctx)
  contexts.push(context)
  return { ctx, context }
}

// A setup failure (above all: no Chromium) fails every test with its message; nothing is skipped.
const browserTest = browserSuite(setup, 60000)

async function setup() {
  requireChromium()
  ca = makeCA('cmux browser tests CA')
  const leaf = makeLeaf(ca, [devHost(R1), devHost(R2), devHost(R4)])
  devBox = await startStandInDevBox({ tls: leaf })
  // Module responses leave the h2 stand-in in batches, as a dev server's transform pass answers a burst.
  devBoxH2 = await startStandInDevBox({ tls: leaf, h2: true, batchMs: 150 })
  proxy = await ProxyServer.start('127.0.0.1:0', true, {
    resolve: {
      [`${devHost(R1)}:443`]: `127.0.0.1:${devBox.port}`,
      [`${devHost(R2)}:443`]: `127.0.0.1:${devBox.port}`,
      [`${devHost(R4)}:443`]: `127.0.0.1:${devBoxH2.port}`,
    },
    upstreamCaPem: [ca.certPem],
    logging: !!process.env.CMUX_PROXY_LOG,
  })
  browser = await launchChromium({ caPem: proxy.caCertificatePem() })
}

afterAll(async () => {
  for (const context of contexts) await context.close().catch(() => {})
  await browser?.close().catch(() => {})
  await proxy?.stop()
  await devBox?.close()
  await devBoxH2?.close()
})

describe('Chromium through the preview proxy', () => {
  let page1 // scenario 1's page, reused by scenarios 2 and 7
  let context1
  let context4 // scenario 4's session (https, h2), reused by 4b

  browserTest('1. http://localhost:3000/ loads page, CSS, JS module and image from the dev box', async () => {
    const { context } = await preview(101, R1)
    context1 = context
    const page = await context.newPage()
    page1 = page
    const { failures, response, seen, requestsBefore: before, ms } = await openStandInPage(page, 'http://localhost:3000/', devBox)
    expect(response.headers()['x-dev-box-route']).toBe('m1-base')
    console.log(`[scenario 1] loaded in ${ms.toFixed(0)} ms`, {
      ...seen,
      resources: seen.resources.length,
    })

    expectStandInPage(seen, R1, 'http://localhost:3000', [
      'url', 'servedBy', 'titleColor', 'routeFromCss', 'js', 'imgNaturalWidth', 'imgNaturalHeight',
    ])
    await expectWhoami(page, R1)
    expect(failures).toEqual([])

    // The stand-in saw every asset, under its own name (the rewrite), never "localhost".
    const log = devBox.requests.slice(before).filter((r) => r.kind === 'http')
    const paths = log.map((r) => r.path)
    for (const p of ['/', '/style.css', '/app.js', '/lib.js', '/pixel.png', '/whoami']) expect(paths).toContain(p)
    for (const r of log) {
      expect(r.host).toBe(devHost(R1))
      expect(r.route).toBe('m1-base')
    }
  }, 30000)

  browserTest('2. hot reload: ws://localhost:3000/hmr carries messages both ways', async () => {
    expect(page1, 'scenario 1 page').toBeTruthy()
    const page = page1
    // The page's client opened the socket itself after the (authenticated) page load.
    await page.waitForFunction(() => document.getElementById('hmr-state').textContent === 'hmr: open', null, {
      timeout: 10000,
    })
    await waitForHmrText(page, 'connected to m1-base')
    await waitForHmrText(page, 'echo: hello from the page')
    await waitFor(() => devBox.wsMessages.some((m) => m.route === 'm1-base' && m.data === 'hello from the page'), {
      timeout: 5000,
      message: 'dev box got the page message',
    })
    const upgrade = devBox.requests.find((r) => r.kind === 'ws' && r.route === 'm1-base')
    expect(upgrade).toMatchObject({ path: '/hmr', host: devHost(R1) })

    // Page -> server, sent by page code.
    await page.evaluate(() => window.hmrSocket.send('file saved: src/App.tsx'))
    await waitFor(() => devBox.wsMessages.some((m) => m.data === 'file saved: src/App.tsx'), {
      timeout: 5000,
      message: 'dev box got "file saved"',
    })
    // Server -> page, pushed by the dev server and shown in the DOM.
    const start = performance.now()
    expect(devBox.push('update: /src/App.tsx', 'm1-base')).toBeGreaterThanOrEqual(1)
    const lines = await waitForHmrText(page, 'update: /src/App.tsx')
    console.log(`[scenario 2] push shown after ${(performance.now() - start).toFixed(1)} ms; page shows`, lines)
    expect(lines).toEqual(expect.arrayContaining(['connected to m1-base', 'echo: hello from the page',
      'echo: file saved: src/App.tsx', 'update: /src/App.tsx']))
  }, 30000)

  browserTest('2b. hot reload over server-sent events: each event arrives while the stream stays open', async () => {
    expect(context1, 'scenario 1 context').toBeTruthy()
    const page = await context1.newPage()
    await page.goto('http://localhost:3000/', { timeout: 20000 })
    await inspectPage(page)
    // Ticks are 250 ms apart: a proxy that buffered the streamed body would deliver none (or all at once at the end).
    const events = await page.evaluate(() => new Promise((resolve) => {
      const t0 = performance.now()
      const got = []
      const source = new EventSource('/events')
      const done = (extra) => {
        source.close()
        resolve(extra ? [...got, extra] : got)
      }
      source.onmessage = (e) => {
        got.push({ data: e.data, at: Math.round(performance.now() - t0) })
        if (got.length === 3) done()
      }
      source.onerror = () => done({ data: 'error' })
      setTimeout(() => done({ data: 'timeout' }), 5000)
    }))
    console.log('[scenario 2b] server-sent events', events)
    await page.close()
    expect(events.map((e) => e.data)).toEqual(['tick 1 from m1-base', 'tick 2 from m1-base', 'tick 3 from m1-base'])
    expect(events[2].at - events[0].at).toBeGreaterThanOrEqual(350)
  }, 30000)

  browserTest(`3. burst: ${BURST_MODULES} ES modules in parallel all load`, async () => {
    expect(context1, 'scenario 1 context').toBeTruthy()
    const page = await context1.newPage()
    const failures = recordFailures(page, isStandIn)
    const statsBefore = proxy.stats()
    const upstreamBefore = { ...devBox.counters }
    const modsBefore = devBox.requests.filter((r) => r.path.startsWith('/mods/')).length
    let peak = { activeConnections: 0, activeTunnels: 0 }
    const sampler = setInterval(() => {
      const s = proxy.stats()
      peak = {
        activeConnections: Math.max(peak.activeConnections, s.activeConnections),
        activeTunnels: Math.max(peak.activeTunnels, s.activeTunnels),
      }
    }, 5)
    const start = performance.now()
    try {
      await page.goto('http://localhost:3000/burst.html', { timeout: 30000 })
      await page.waitForFunction(() => !document.getElementById('burst').textContent.endsWith('loading'), null, {
        timeout: 30000,
      })
    } finally {
      clearInterval(sampler)
    }
    const elapsed = performance.now() - start
    const text = await page.textContent('#burst')
    const statsAfter = proxy.stats()
    const report = {
      page: text,
      elapsedMs: Math.round(elapsed),
      proxyTotalRequestsDelta: statsAfter.totalRequests - statsBefore.totalRequests,
      proxyPeak: peak,
      proxyAfter: statsAfter,
      upstreamTcpConnections: devBox.counters.tcp - upstreamBefore.tcp,
      upstreamTlsHandshakes: devBox.counters.tls - upstreamBefore.tls,
      failures: failures.length,
    }
    console.log('[scenario 3] burst', report)
    await page.close()

    expect(failures).toEqual([])
    expect(text).toBe(`burst: ${BURST_MODULES}/${BURST_MODULES}`)
    const mods = devBox.requests.filter((r) => r.path.startsWith('/mods/')).slice(modsBefore)
    expect(new Set(mods.map((r) => r.path)).size).toBe(BURST_MODULES)
    expect(mods.every((r) => r.host === devHost(R1))).toBe(true)
    expect(report.proxyTotalRequestsDelta).toBeGreaterThanOrEqual(BURST_MODULES + 1)
  }, 60000)

  browserTest('4. https://localhost:3000/ over h2 (intercepted TLS) with a wss:// HMR socket', async () => {
    const { context } = await preview(104, R4)
    context4 = context
    const page = await context.newPage()
    const { failures, response, seen, requestsBefore: before } = await openStandInPage(page, 'https://localhost:3000/', devBoxH2)
    const security = await response.securityDetails()
    console.log('[scenario 4]', { ...seen, resources: seen.resources, security })

    expectStandInPage(seen, R4, 'https://localhost:3000', ['url', 'servedBy', 'titleColor', 'routeFromCss', 'js', 'imgNaturalWidth'])
    // Chromium negotiated HTTP/2 with the proxy's TLS endpoint, for the page and its assets.
    expectAllH2(seen)
    expect(security?.issuer).toBeTruthy()

    await waitForHmrText(page, 'connected to m4-h2')
    await waitForHmrText(page, 'echo: hello from the page')
    expect(devBoxH2.push('update over wss', 'm4-h2')).toBeGreaterThanOrEqual(1)
    await waitForHmrText(page, 'update over wss')
    await page.evaluate(() => window.hmrSocket.send('saved over wss'))
    await waitFor(() => devBoxH2.wsMessages.some((m) => m.data === 'saved over wss'), {
      timeout: 5000,
      message: 'h2 dev box got the wss message',
    })
    expect(failures).toEqual([])

    const log = devBoxH2.requests.slice(before)
    for (const p of ['/', '/style.css', '/app.js', '/lib.js', '/pixel.png', '/hmr']) {
      expect(log.map((r) => r.path)).toContain(p)
    }
    for (const r of log) expect(r.host).toBe(devHost(R4))
    // Upstream: HTTP/2 by ALPN for requests, an HTTP/1.1 upgrade for the WebSocket.
    expect(log.find((r) => r.path === '/').httpVersion).toBe('2.0')
    expect(log.find((r) => r.kind === 'ws').httpVersion).toBe('1.1')
  }, 40000)

  browserTest(`4b. burst over https/h2: ${BURST_MODULES} ES modules multiplexed through the intercepted tunnel`, async () => {
    expect(context4, 'scenario 4 context').toBeTruthy()
    const page = await context4.newPage()
    const failures = recordFailures(page, isStandIn)
    const statsBefore = proxy.stats()
    const upstreamBefore = { ...devBoxH2.counters }
    const modsBefore = devBoxH2.requests.filter((r) => r.path.startsWith('/mods/')).length
    const goawaysBefore = devBoxH2.h2Goaways.length
    const start = performance.now()
    await page.goto('https://localhost:3000/burst.html', { timeout: 30000 })
    await page.waitForFunction(() => !document.getElementById('burst').textContent.endsWith('loading'), null, {
      timeout: 30000,
    })
    const text = await page.textContent('#burst')
    const protocols = await page.evaluate(() => [...new Set(performance.getEntriesByType('resource').map((e) => e.nextHopProtocol))])
    const statsAfter = proxy.stats()
    console.log('[scenario 4b] burst over h2', {
      page: text,
      elapsedMs: Math.round(performance.now() - start),
      protocols,
      proxyTotalRequestsDelta: statsAfter.totalRequests - statsBefore.totalRequests,
      proxyAfter: statsAfter,
      upstreamTcpConnections: devBoxH2.counters.tcp - upstreamBefore.tcp,
      upstreamH2Sessions: devBoxH2.counters.h2Sessions - upstreamBefore.h2Sessions,
      upstreamGoaways: devBoxH2.h2Goaways.slice(goawaysBefore),
      failures: failures.length,
      failureKinds: [...new Set(failures.map((f) => f.error))],
    })
    await page.close()
    // The proxy's upstream HTTP/2 client must not tear the multiplexed connection down under a burst
    // (code 11 = ENHANCE_YOUR_CALM): every stream in flight on it would fail in the page.
    const errorGoaways = devBoxH2.h2Goaways.slice(goawaysBefore).filter((g) => g.code !== 0)
    expect(errorGoaways, 'GOAWAY frames with an error code the proxy sent to the dev box').toEqual([])
    expect(failures).toEqual([])
    expect(text).toBe(`burst: ${BURST_MODULES}/${BURST_MODULES}`)
    expect(protocols).toEqual(['h2'])
    const mods = devBoxH2.requests.filter((r) => r.path.startsWith('/mods/')).slice(modsBefore)
    expect(new Set(mods.map((r) => r.path)).size).toBe(BURST_MODULES)
    expect(mods.every((r) => r.host === devHost(R4))).toBe(true)
  }, 60000)

  browserTest('5. two sessions, two proxy contexts: each page only ever sees its own route', async () => {
    const a = await preview(105, R1)
    const b = await preview(106, R2)
    const [pageA, pageB] = await Promise.all([a.context.newPage(), b.context.newPage()])
    await expectSeparatePreviews(devBox, [pageA, R1], [pageB, R2], { whoami: true })
  }, 40000)

  browserTest('6. after releaseContext the session is refused and nothing reaches the dev box', async () => {
    const { ctx, context } = await preview(107, R1)
    const page = await context.newPage()
    await expectRefusedAfterRelease({ proxy, ctx, page, devBox, label: '[scenario 6]', contextCount: true })
  }, 60000)

  browserTest('7. screenshot of scenario 1', async () => {
    expect(page1, 'scenario 1 page').toBeTruthy()
    mkdirSync(OUTPUT_DIR, { recursive: true })
    const file = join(OUTPUT_DIR, 'scenario-1.png')
    rmSync(file, { force: true })
    await page1.screenshot({ path: file, fullPage: true })
    const size = statSync(file).size
    console.log(`[scenario 7] ${file} (${size} bytes)`)
    expect(size).toBeGreaterThan(1000)
  }, 20000)
})
