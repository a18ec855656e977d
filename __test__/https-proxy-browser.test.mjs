// Headless Chromium using the proxy as an HTTPS proxy
// (--proxy-server=https://127.0.0.1:PORT), the way the Electron app sets
// proxyRules() in the HTTPS proxy mode: the browser trusts the proxy's CA by
// its SPKI hash, speaks HTTP/2 to the proxy, and the proxy's 407 is answered
// through CDP (Fetch.authRequired, the app.on('login') stand-in). The preview
// scenarios of browser.test.mjs run through it, and a 500-module page shows
// what the mode is for: a handful of multiplexed connections instead of six
// HTTP/1.1 ones.

import { afterAll, describe, expect } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA, makeLeaf } from '../support/certs.mjs'
import { serveTree, TREE_MODULES } from '../support/module-tree.mjs'
import { startHttpServer } from '../support/servers.mjs'
import { sleep, waitFor } from '../support/wait.mjs'
import { answerProxyAuth } from './browser-helpers.mjs'
import { devHost, launchChromium, recordFailures, requireChromium, startStandInDevBox, waitForHmrText } from './browser-helpers.mjs'
import {
  browserSuite, expectAllH2, expectRefusedAfterRelease, expectSeparatePreviews, expectStandInPage, expectWhoami,
  isStandIn, openStandInPage,
} from './browser-scenarios.mjs'

const SUFFIX = 'test.local'
const R1 = { morphId: 'm1', scope: 'base', domainSuffix: SUFFIX } // HTTP/1.1 stand-in
const R2 = { morphId: 'm2', scope: 'base', domainSuffix: SUFFIX } // same stand-in, other name
const R4 = { morphId: 'm4', scope: 'h2', domainSuffix: SUFFIX } // HTTP/2 stand-in
// The module tree is served by a plain HTTP upstream, as a cmux-proxy origin.
const RT = { morphId: 'm9', scope: 'tree', domainSuffix: SUFFIX, cmuxProxyOrigin: 'http://tree.test' }
const DOCUMENTS = [{ urlPattern: '*', resourceType: 'Document' }]

let ca, devBox, devBoxH2, tree, proxy, browser, baseline
const treeSeen = []
const contexts = []
const extraBrowsers = []
const extraProxies = []

/** The proxy's start options: dev box names and the tree origin resolve to the local stand-ins. */
function proxyOptions() {
  return {
    resolve: {
      [`${devHost(R1)}:443`]: `127.0.0.1:${devBox.port}`,
      [`${devHost(R2)}:443`]: `127.0.0.1:${devBox.port}`,
      [`${devHost(R4)}:443`]: `127.0.0.1:${devBoxH2.port}`,
      'tree.test:80': `127.0.0.1:${tree.port}`,
    },
    upstreamCaPem: [ca.certPem],
    logging: !!process.env.CMUX_PROXY_LOG,
  }
}

/** Chromium with `proxyUrl` as its only proxy, loopback not bypassed, trusting `spki` (the proxy's CA). */
function launchWithProxy(proxyUrl, spki) {
  return launchChromium({
    args: [`--proxy-server=${proxyUrl}`, '--proxy-bypass-list=<-loopback>', `--ignore-certificate-errors-spki-list=${spki}`],
  })
}

/** One browser context (one Electron session partition) per preview, with its proxy context and CDP login. */
async function preview(webContentsId, route, { on = browser, via = proxy, patterns = DOCUMENTS } = {}) {
  const ctx = via.createContext(webContentsId, route)
  const context = await on.newContext({ viewport: { width: 900, height: 600 } })
  contexts.push(context)
  const page = await context.newPage()
  const login = await answerProxyAuth(page, ctx, patterns)
  return { ctx, context, page, login }
}

const delta = (after, before) => ({
  http1: after.accepted.http1 - before.accepted.http1,
  h2c: after.accepted.h2c - before.accepted.h2c,
  tlsHttp1: after.accepted.tlsHttp1 - before.accepted.tlsHttp1,
  tlsH2: after.accepted.tlsH2 - before.accepted.tlsH2,
  http2Streams: after.http2Streams - before.http2Streams,
  totalRequests: after.totalRequests - before.totalRequests,
})

// A setup failure (above all: no Chromium) fails every test with its message; nothing is skipped.
const browserTest = browserSuite(async () => {
  requireChromium()
  ca = makeCA('cmux https-proxy browser tests CA')
  const leaf = makeLeaf(ca, [devHost(R1), devHost(R2), devHost(R4)])
  devBox = await startStandInDevBox({ tls: leaf })
  devBoxH2 = await startStandInDevBox({ tls: leaf, h2: true })
  tree = await startHttpServer((req, res) => {
    if (!serveTree(req, res, treeSeen)) {
      res.writeHead(404, { 'content-type': 'text/plain' })
      res.end(`not found: ${req.url}`)
    }
  })
  proxy = await ProxyServer.start('127.0.0.1:0', true, proxyOptions())
  browser = await launchWithProxy(`https://127.0.0.1:${proxy.port()}`, proxy.caSpkiSha256())
  // Chromium opens its own background connections right after launch: count from after them.
  await sleep(500)
  baseline = proxy.stats()
  console.log('[setup] proxy stats after launch', baseline)
}, 60000)

afterAll(async () => {
  for (const context of contexts) await context.close().catch(() => {})
  for (const b of [browser, ...extraBrowsers]) await b?.close().catch(() => {})
  for (const p of [proxy, ...extraProxies]) await p?.stop()
  await devBox?.close()
  await devBoxH2?.close()
  await tree?.close()
})

describe('Chromium through the HTTPS proxy (--proxy-server=https://)', () => {
  let page1

  browserTest('1. http://localhost:3000/ loads page, CSS, module and image over an h2 connection to the proxy', async () => {
    const before = proxy.stats()
    const { page, login } = await preview(201, R1)
    page1 = page
    const { failures, response, seen, requestsBefore: seenBefore, ms } = await openStandInPage(page, 'http://localhost:3000/', devBox)
    expect(response.headers()['x-dev-box-route']).toBe('m1-base')
    const d = delta(proxy.stats(), before)
    console.log(`[1] loaded in ${ms.toFixed(0)} ms`, {
      nextHopProtocol: seen.nextHopProtocol,
      resources: seen.resources.length,
      proxyDelta: d,
      challenges: login.challenges,
    })
    expect(login.errors).toEqual([])
    expect(login.challenges.map((c) => `${c.source} ${c.scheme} ${c.realm} retry=${c.retry}`)).toEqual(['Proxy basic Cmux Preview Proxy retry=false'])
    expectStandInPage(seen, R1, 'http://localhost:3000', ['servedBy', 'titleColor', 'routeFromCss', 'js', 'imgNaturalWidth', 'imgNaturalHeight'])
    await expectWhoami(page, R1)
    expect(failures).toEqual([])
    const paths = devBox.requests.slice(seenBefore).filter((r) => r.kind === 'http').map((r) => r.path)
    for (const p of ['/', '/style.css', '/app.js', '/lib.js', '/pixel.png', '/whoami']) expect(paths).toContain(p)
    // The page came over TLS+h2 to the proxy: new h2 connections and streams, no plain or TLS HTTP/1.1 ones.
    expect(d.tlsH2).toBeGreaterThanOrEqual(1)
    expect(d.http2Streams).toBeGreaterThanOrEqual(6)
    expect(d.http1).toBe(0)
    expect(d.h2c).toBe(0)
  }, 30000)

  browserTest('2. hot reload: ws://localhost:3000/hmr carries messages both ways', async () => {
    expect(page1, 'scenario 1 page').toBeTruthy()
    const page = page1
    await page.waitForFunction(() => document.getElementById('hmr-state').textContent === 'hmr: open', null, { timeout: 10000 })
    await waitForHmrText(page, 'connected to m1-base')
    await waitForHmrText(page, 'echo: hello from the page')
    const upgrade = devBox.requests.find((r) => r.kind === 'ws' && r.route === 'm1-base')
    expect(upgrade).toMatchObject({ path: '/hmr', host: devHost(R1) })
    await page.evaluate(() => window.hmrSocket.send('file saved: src/App.tsx'))
    await waitFor(() => devBox.wsMessages.some((m) => m.route === 'm1-base' && m.data === 'file saved: src/App.tsx'), {
      timeout: 5000,
      message: 'dev box got "file saved"',
    })
    expect(devBox.push('update: /src/App.tsx', 'm1-base')).toBeGreaterThanOrEqual(1)
    const lines = await waitForHmrText(page, 'update: /src/App.tsx')
    expect(lines).toEqual(expect.arrayContaining(['connected to m1-base', 'echo: hello from the page',
      'echo: file saved: src/App.tsx', 'update: /src/App.tsx']))
    console.log('[2] proxy stats', proxy.stats())
  }, 30000)

  browserTest('3. https://localhost:3000/ intercepted (h2 inside the tunnel) with a wss:// HMR socket', async () => {
    const { page } = await preview(204, R4)
    const { failures, response, seen, requestsBefore: before } = await openStandInPage(page, 'https://localhost:3000/', devBoxH2)
    const security = await response.securityDetails()
    console.log('[3]', { nextHopProtocol: seen.nextHopProtocol, security })
    expectStandInPage(seen, R4, 'https://localhost:3000', ['url', 'servedBy', 'routeFromCss', 'js', 'imgNaturalWidth'])
    expectAllH2(seen)
    // The page's certificate is the proxy's leaf for localhost, issued by its CA.
    expect(security?.subjectName).toBe('localhost')
    expect(security?.issuer).toBe('Cmux Preview Proxy Local CA')

    await waitForHmrText(page, 'connected to m4-h2')
    await waitForHmrText(page, 'echo: hello from the page')
    expect(devBoxH2.push('update over wss', 'm4-h2')).toBeGreaterThanOrEqual(1)
    await waitForHmrText(page, 'update over wss')
    expect(failures).toEqual([])
    const log = devBoxH2.requests.slice(before)
    for (const p of ['/', '/style.css', '/app.js', '/lib.js', '/pixel.png', '/hmr']) expect(log.map((r) => r.path)).toContain(p)
    for (const r of log) expect(r.host).toBe(devHost(R4))
  }, 40000)

  browserTest('4. two previews, two proxy contexts: each page only sees its own route', async () => {
    const a = await preview(205, R1)
    const b = await preview(206, R2)
    await expectSeparatePreviews(devBox, [a.page, R1], [b.page, R2])
  }, 40000)

  browserTest('5. after releaseContext the HMR socket closes and the next loads are refused', async () => {
    const { ctx, page } = await preview(207, R1)
    await expectRefusedAfterRelease({ proxy, ctx, page, devBox, label: '[5]' })
  }, 60000)

  browserTest('6. the browser only ever used the HTTPS listener (no plain HTTP/1.1 or h2c connections)', async () => {
    const stats = proxy.stats()
    console.log('[6] proxy stats', stats)
    expect(stats.accepted.http1).toBe(0)
    expect(stats.accepted.h2c).toBe(0)
    expect(stats.accepted.tlsH2).toBeGreaterThanOrEqual(4)
  })
})

describe(`${TREE_MODULES} ES modules (a waterfall of depth 3): HTTPS proxy vs plain proxy`, () => {
  async function loadTree(page) {
    const start = performance.now()
    const response = await page.goto('http://localhost:3000/tree/index.html', { timeout: 30000 })
    expect(response.status()).toBe(200)
    await page.waitForFunction(() => !document.getElementById('tree').textContent.endsWith('loading'), null, { timeout: 30000 })
    return { text: await page.textContent('#tree'), ms: Math.round(performance.now() - start) }
  }

  /**
   * A preview of the tree on browser `on` through proxy `via`: its login and
   * failures, the load, the proxy's connection counts for it, the tree paths served.
   */
  async function treeRun(webContentsId, { on = browser, via = proxy } = {}) {
    const run = await preview(webContentsId, RT, { on, via, patterns: [{ urlPattern: 'http://localhost:3000/tree/index.html' }] })
    const failures = recordFailures(run.page, isStandIn)
    const seenBefore = treeSeen.length
    const before = via.stats()
    const load = await loadTree(run.page)
    const connections = delta(via.stats(), before)
    return { login: run.login, failures, load, connections, paths: new Set(treeSeen.slice(seenBefore)) }
  }

  browserTest('through the HTTPS proxy: at most 2 new h2 connections carry ≥ 500 streams; through the plain proxy: ≥ 6 HTTP/1.1 connections', async () => {
    // HTTPS proxy (the browser launched above).
    const h2Run = await treeRun(301)
    const h2Delta = h2Run.connections

    // Plain proxy: a second proxy and a second browser using it as an http:// proxy.
    const plainProxy = await ProxyServer.start('127.0.0.1:0', true, proxyOptions())
    extraProxies.push(plainProxy)
    const plainBrowser = await launchWithProxy(`http://127.0.0.1:${plainProxy.port()}`, plainProxy.caSpkiSha256())
    extraBrowsers.push(plainBrowser)
    await sleep(500)
    const plainRun = await treeRun(302, { on: plainBrowser, via: plainProxy })
    const plainDelta = plainRun.connections

    console.log(`[tree] ${TREE_MODULES} modules, for information:`, {
      httpsProxy: { ...h2Run.load, connections: h2Delta },
      plainProxy: { ...plainRun.load, connections: plainDelta },
    })
    await plainBrowser.close()

    expect(h2Run.login.errors).toEqual([])
    expect(h2Run.failures).toEqual([])
    expect(h2Run.load.text).toBe(`tree: ${TREE_MODULES}`)
    expect(h2Run.paths.size).toBe(TREE_MODULES + 1)
    expect(h2Delta.tlsH2, 'new TLS+h2 client connections for the page').toBeLessThanOrEqual(2)
    expect(h2Delta.tlsH2).toBeGreaterThanOrEqual(1)
    expect(h2Delta.http2Streams, 'requests served over HTTP/2').toBeGreaterThanOrEqual(TREE_MODULES)
    expect(h2Delta.http1 + h2Delta.tlsHttp1 + h2Delta.h2c).toBe(0)

    expect(plainRun.login.errors).toEqual([])
    expect(plainRun.failures).toEqual([])
    expect(plainRun.load.text).toBe(`tree: ${TREE_MODULES}`)
    expect(plainRun.paths.size).toBe(TREE_MODULES + 1)
    expect(plainDelta.http1, 'plain HTTP/1.1 client connections for the page').toBeGreaterThanOrEqual(6)
    expect(plainDelta.tlsH2 + plainDelta.tlsHttp1 + plainDelta.h2c).toBe(0)
    expect(plainDelta.http2Streams).toBe(0)
  }, 90000)
})
