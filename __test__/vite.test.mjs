// The test that counts: a real Vite dev server (hundreds of ES modules and its
// HMR WebSocket) previewed through the proxy in headless Chromium, behind a TLS
// HTTP/2 stand-in for the cloud dev box. Every module arrives, reload after
// reload; HMR updates the page in place; and the proxy is a well-behaved
// HTTP/2 client of the dev box: one connection, no RST_STREAM on streams that
// completed, no 5xx.
//
// Ports: the page is http://localhost:<P>/ with P a port where nothing listens,
// so a request that bypassed the proxy would fail. The proxy rewrites it to
// https://cmux-m-base-<P>.devbox.test/, which `resolve` sends to the stand-in,
// which forwards to Vite on its own port. Vite's HMR client connects to the
// page's host, ws://localhost:<P>/: CONNECT through the proxy, which looks
// inside the tunnel and sends the upgrade to the dev box over HTTP/1.1 TLS.
//
// Chromium is configured as the Electron app configures a preview session:
// --proxy-server and <-loopback> (localhost goes through the proxy too), and
// the proxy login answered with the context's credentials (over CDP, as
// app.on('login') does; not Playwright's proxy credentials, which pause every
// request and disable the cache).

import { writeFile } from 'node:fs/promises'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA } from '../support/certs.mjs'
import { closedPort } from '../support/servers.mjs'
import { startVite } from '../support/vite.mjs'
import { sleep, waitFor } from '../support/wait.mjs'
import { launchChromium, requireChromium } from './browser-helpers.mjs'
import { generateApp, hotModule, HOT_V1, openPreviewPage, recordByDocument, startViteDevBox } from './vite-helpers.mjs'

const ROUTE = { morphId: 'm', scope: 'base', domainSuffix: 'devbox.test' }
/** Chromium's background connections right after launch: let them settle before counting. */
const SETTLE_MS = 500
/** How long to keep watching for frames the proxy might still send after a load. */
const QUIET_MS = 300
const LOAD_TIMEOUT = 15000

let app, vite, devBox, proxy, browser, preview, rec
let origin
let startSnapshot

const isOrigin = (url) => url.startsWith(`${origin}/`)
const isModule = (url) => isOrigin(url) && new URL(url).pathname.startsWith('/src/')
const h2ConnectionsSoFar = () => devBox.stats.tls.filter((t) => t.alpn === 'h2').length

beforeAll(async () => {
  requireChromium()
  const ca = makeCA('cmux vite test CA')
  const P = await closedPort()
  origin = `http://localhost:${P}`
  const devboxHost = `cmux-${ROUTE.morphId}-${ROUTE.scope}-${P}.${ROUTE.domainSuffix}`
  app = await generateApp()
  let vitePort
  do vitePort = await closedPort()
  while (vitePort === P)
  vite = await startVite(app.root, vitePort)
  devBox = await startViteDevBox({ ca, names: [devboxHost], vitePort })
  proxy = await ProxyServer.start('127.0.0.1:0', true, {
    resolve: { [`${devboxHost}:443`]: `127.0.0.1:${devBox.port}` },
    upstreamCaPem: [ca.certPem],
    logging: !!process.env.CMUX_PROXY_LOG,
  })
  const credentials = proxy.createContext(1, ROUTE)
  browser = await launchChromium({
    args: [`--proxy-server=http://127.0.0.1:${proxy.port()}`, '--proxy-bypass-list=<-loopback>'],
  })
  preview = await openPreviewPage(browser, { origin, credentials })
  rec = recordByDocument(preview.page, isOrigin)
  await sleep(SETTLE_MS)
  startSnapshot = devBox.snapshot()
}, 60000)

afterAll(async () => {
  await preview?.context.close().catch(() => {})
  await browser?.close().catch(() => {})
  await proxy?.stop().catch(() => {})
  await devBox?.close().catch(() => {})
  await vite?.close().catch(() => {})
  await app?.cleanup().catch(() => {})
}, 20000)

function countBy(values) {
  const out = {}
  for (const v of values) out[v] = (out[v] ?? 0) + 1
  return out
}

const describeResets = (resets) =>
  resets.map((x) => `conn ${x.connection} stream ${x.streamId} code ${x.code} ` +
    `${x.completed ? `${x.msAfterEnd} ms after the dev box's END_STREAM` : 'in flight'}, ` +
    `request ${x.requestEnded ? 'ended' : 'not ended'}, ${x.path ?? '?'} (${x.status ?? 'no status'})`)

/**
 * Runs one page load (`navigate` starts it), waits for __appReady, a quiet
 * network and QUIET_MS more, and returns what the page and the dev box saw.
 */
async function completeLoad(label, navigate) {
  const { page } = preview
  const before = devBox.snapshot()
  const t0 = Date.now()
  await navigate()
  await page.waitForFunction(() => window.__appReady === true, null, { timeout: LOAD_TIMEOUT })
  const readyMs = Date.now() - t0
  const state = await page.evaluate(() => ({
    sum: document.getElementById('sum').textContent,
    hot: document.getElementById('hot').textContent,
  }))
  const doc = rec.doc()
  await page.waitForLoadState('networkidle', { timeout: LOAD_TIMEOUT }).catch(() => {})
  await sleep(QUIET_MS)
  const mine = rec.responses.filter((r) => r.doc === doc)
  const modules = new Set(mine.filter((r) => isModule(r.url)).map((r) => new URL(r.url).pathname))
  const d = devBox.since(before)
  const result = {
    label,
    doc,
    readyMs,
    ...state,
    modules: modules.size,
    statuses: countBy(mine.map((r) => r.status)),
    failed: rec.failures.filter((f) => f.doc === doc),
    errors: rec.errors.filter((e) => e.doc === doc),
    devbox: d,
  }
  console.log(
    `[vite] ${label}: __appReady after ${readyMs} ms, ${modules.size} modules, page statuses ${JSON.stringify(result.statuses)}; ` +
      `dev box: ${d.h2Streams} h2 streams, statuses ${JSON.stringify(countBy(d.responses.map((r) => r.status)))}, ` +
      `new TLS connections h2=${d.h2Connections} http/1.1=${d.h1Connections} (h2 connections so far ${h2ConnectionsSoFar()}), ` +
      `RST_STREAM ${d.resets.length}, GOAWAY ${d.goaways.length}, WebSocket upgrades ${d.upgrades}`,
  )
  return result
}

function expectGoodLoad(r, { minModules = 0 } = {}) {
  expect(r.sum, `${r.label}: #sum`).toBe(String(app.expectedSum))
  expect(r.failed, `${r.label}: failed requests`).toEqual([])
  expect(r.errors, `${r.label}: page errors`).toEqual([])
  expect(Object.keys(r.statuses).filter((s) => Number(s) >= 500), `${r.label}: 5xx seen by the page`).toEqual([])
  expect(r.devbox.responses.filter((x) => x.status >= 500), `${r.label}: 5xx sent by the dev box`).toEqual([])
  expect(r.modules, `${r.label}: distinct /src/ modules`).toBeGreaterThanOrEqual(minModules)
}

describe('a Vite dev server previewed through the proxy', () => {
  test('400+ modules arrive on the first load and on 3 reloads; one h2 connection to the dev box, no RST_STREAM, no 5xx', async () => {
    const { page } = preview
    const start = devBox.snapshot()
    const loads = []
    loads.push(await completeLoad('load 1 (goto)', () => page.goto(`${origin}/`, { waitUntil: 'commit', timeout: LOAD_TIMEOUT })))
    for (let i = 2; i <= 4; i++) {
      loads.push(await completeLoad(`load ${i} (reload)`, () => page.reload({ waitUntil: 'commit', timeout: LOAD_TIMEOUT })))
    }
    expectGoodLoad(loads[0], { minModules: app.moduleCount })
    for (const r of loads.slice(1)) expectGoodLoad(r)
    // Nothing of these documents failed later either (after the next load started).
    expect(rec.failures.filter((f) => loads.some((l) => l.doc === f.doc)), 'failed requests').toEqual([])

    const d = devBox.since(start)
    const all = devBox.since(startSnapshot)
    console.log(
      `[vite] plain loads: ${d.h2Streams} h2 streams on ${h2ConnectionsSoFar()} h2 connection(s), ` +
        `${d.h1Connections} TLS connections (ALPN ${JSON.stringify(countBy(d.tls.filter((t) => t.alpn !== 'h2').map((t) => t.alpn)))}) ` +
        `for ${d.upgrades} WebSocket upgrades, open now ${JSON.stringify(devBox.openConnections())}, ${d.resets.length} resets, ` +
        `${d.aborted} requests abandoned mid-response`,
    )
    // Nothing was cancelled: no reset at all, no GOAWAY, no request abandoned, no 5xx.
    expect(describeResets(d.resets), 'RST_STREAM frames from the proxy').toEqual([])
    expect(d.goaways, 'GOAWAY frames from the proxy').toEqual([])
    expect(d.aborted, 'requests the proxy abandoned before their response ended').toBe(0)
    expect(d.responses.filter((x) => x.status >= 500)).toEqual([])
    // Every HTTP request came as an h2 stream of one TLS connection; the HMR sockets over HTTP/1.1 TLS, one each.
    expect(all.h2Connections, `h2 TLS connections (${JSON.stringify(all.tls)})`).toBe(1)
    expect(d.responses.filter((x) => x.proto === 'http/1.1'), 'plain requests over HTTP/1.1').toEqual([])
    expect(d.h2Streams).toBeGreaterThanOrEqual(4 * app.moduleCount)
    expect(d.upgrades, 'HMR WebSocket upgrades (one per load)').toBe(loads.length)
    expect(d.h1Connections).toBe(d.upgrades)
    expect(d.responses.filter((x) => x.proto === 'ws').map((x) => x.status)).toEqual(loads.map(() => 101))
    // The HMR sockets of the pages reloaded away are closed towards the dev box too: only the current page's is open.
    await waitFor(() => (devBox.openConnections()['http/1.1'] ?? 0) <= 1, {
      timeout: 3000,
      message: `the replaced pages' HMR connections to close (open: ${JSON.stringify(devBox.openConnections())})`,
    }).catch(() => {})
    expect(devBox.openConnections(), 'TLS connections open to the dev box').toEqual({ h2: 1, 'http/1.1': 1 })
  }, 45000)

  test('a navigation replacing a load midway: the next load is complete, and the proxy resets only streams the browser cancelled', async () => {
    const { page } = preview
    const start = devBox.snapshot()
    // A load starts, and is replaced by a fresh navigation once part of its module graph has arrived.
    await page.goto(`${origin}/`, { waitUntil: 'commit', timeout: LOAD_TIMEOUT })
    const replaced = rec.doc()
    await waitFor(() => rec.responses.filter((r) => r.doc === replaced && isModule(r.url)).length >= 60, {
      timeout: LOAD_TIMEOUT,
      interval: 2,
      message: 'the first 60 modules of the load to replace',
    })
    const readyWhenReplaced = await page.evaluate(() => window.__appReady === true)
    const inFlightWhenReplaced = devBox.inFlight().length
    const r = await completeLoad('load 5 (goto during a load)', () =>
      page.goto(`${origin}/`, { waitUntil: 'commit', timeout: LOAD_TIMEOUT }))
    const replacedFailures = rec.failures.filter((f) => f.doc === replaced)
    const d = devBox.since(start)
    const afterEnd = d.resets.filter((x) => x.completed)
    console.log(
      `[vite] replaced load: app ready when replaced: ${readyWhenReplaced}, dev box streams in flight then: ${inFlightWhenReplaced}; ` +
        `${rec.responses.filter((x) => x.doc === replaced).length} responses and ${replacedFailures.length} failed requests ` +
        `${JSON.stringify(countBy(replacedFailures.map((f) => f.error)))} in the replaced page; dev box: ` +
        `${d.aborted} requests abandoned mid-response, ${d.resets.length} RST_STREAM ` +
        `(${d.resets.length - afterEnd.length} in flight, ${afterEnd.length} after END_STREAM) ` +
        JSON.stringify(describeResets(d.resets).slice(0, 10)) +
        (d.upstreamErrors.length ? `; dev box → Vite errors: ${JSON.stringify(d.upstreamErrors)}` : ''),
    )
    expect(r.doc).toBe(replaced + 1)
    expectGoodLoad(r)
    // The replaced page's requests were cancelled by the browser, nothing else.
    expect(replacedFailures.filter((f) => f.error !== 'net::ERR_ABORTED')).toEqual([])
    // Resets here are cancellations the browser asked for: no more streams reset than requests it aborted, and
    // each reset stream (whose request reached the dev box's HTTP/2 server) is one of the aborted URLs. A reset
    // may cross the dev box's END_STREAM on the wire (the proxy had not read it yet when the browser hung up:
    // RFC 9113 §5.1 allows RST_STREAM shortly after END_STREAM); those are reported with the gap.
    const abortedPaths = new Set(replacedFailures.map((f) => new URL(f.url).pathname))
    expect(d.resets.length, 'RST_STREAM frames vs requests the browser aborted').toBeLessThanOrEqual(replacedFailures.length)
    expect(describeResets(d.resets.filter((x) => x.path !== null && !abortedPaths.has(x.path.split('?')[0]))),
      'RST_STREAM frames on streams the browser did not cancel').toEqual([])
    expect(d.resets.filter((x) => x.code !== 8).map((x) => x.code), 'reset codes other than CANCEL').toEqual([])
    expect(d.goaways, 'GOAWAY frames from the proxy').toEqual([])
    expect(d.responses.filter((x) => x.status >= 500)).toEqual([])
    expect(h2ConnectionsSoFar(), 'h2 TLS connections so far').toBe(1)
  }, 30000)

  test('HMR: the Vite client connects through the proxy, and an edit of src/hot.js updates the page without a reload', async () => {
    const { page } = preview
    // Run on its own (-t HMR), there is no page yet.
    if (rec.doc() === 0) expectGoodLoad(await completeLoad('load (goto)', () => page.goto(`${origin}/`, { waitUntil: 'commit' })))
    // The page of the last load has its HMR socket up.
    const doc = rec.doc()
    await waitFor(() => rec.console.some((l) => l.doc === doc && l.text.includes('[vite] connected.')), {
      timeout: 10000,
      message: `"[vite] connected." on the page (console: ${JSON.stringify(rec.console.filter((l) => l.doc === doc).map((l) => l.text))})`,
    })
    await page.evaluate(() => {
      window.__marker = 'set before the edit'
    })
    expect(await page.textContent('#hot')).toBe(HOT_V1)
    const start = devBox.snapshot()
    const text = `hot module v2 ${Date.now()}`
    await writeFile(app.hotFile, hotModule(text))
    await page.waitForFunction((t) => document.getElementById('hot').textContent === t, text, { timeout: 10000 })
    expect(await page.evaluate(() => window.__marker), 'the page was not reloaded').toBe('set before the edit')
    expect(rec.doc(), 'no navigation').toBe(doc)
    expect(await page.textContent('#sum')).toBe(String(app.expectedSum))
    await sleep(QUIET_MS)

    const d = devBox.since(start)
    const hotRequests = d.responses.filter((x) => x.path.startsWith('/src/hot.js'))
    console.log(
      `[vite] HMR: update fetched as ${JSON.stringify(hotRequests.map((x) => `${x.proto} ${x.path} ${x.status}`))}; ` +
        `${d.h2Streams} h2 streams, ${d.resets.length} resets, new TLS connections ${d.tls.length}`,
    )
    expect(hotRequests.some((x) => x.proto === 'h2' && x.status === 200)).toBe(true)
    expect(describeResets(d.resets)).toEqual([])
    expect(d.responses.filter((x) => x.status >= 500)).toEqual([])
    expect(d.tls, 'no new connection to the dev box for the update').toEqual([])
    expect(rec.errors).toEqual([])
    expect(rec.failures.filter((f) => f.doc === doc)).toEqual([])
  }, 20000)
})
