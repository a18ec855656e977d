// Headless Chromium using the proxy as an HTTPS proxy
// (--proxy-server=https://127.0.0.1:PORT), the way the Electron app sets
// proxyRules() in the HTTPS proxy mode: the browser trusts the proxy's CA by
// its SPKI hash, speaks HTTP/2 to the proxy, and the proxy's 407 is answered
// through CDP (Fetch.authRequired, the app.on('login') stand-in). The preview
// scenarios of browser.test.mjs run through it, and a 500-module page shows
// what the mode is for: a handful of multiplexed connections instead of six
// HTTP/1.1 ones.

import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { makeCA, makeLeaf, ProxyServer, sleep, startHttpServer, waitFor } from './helpers.mjs'
import {
  devHost,
  inspectPage,
  launchChromium,
  recordFailures,
  requireChromium,
  startDevBox,
  TITLE_COLOR,
  waitForHmrText,
} from './browser-helpers.mjs'
import { answerProxyAuth, serveTree, TREE_MODULES } from './https-proxy-helpers.mjs'

const SUFFIX = 'test.local'
const R1 = { morphId: 'm1', scope: 'base', domainSuffix: SUFFIX } // HTTP/1.1 stand-in
const R2 = { morphId: 'm2', scope: 'base', domainSuffix: SUFFIX } // same stand-in, other name
const R4 = { morphId: 'm4', scope: 'h2', domainSuffix: SUFFIX } // HTTP/2 stand-in
// The module tree is served by a plain HTTP upstream, as a cmux-proxy origin.
const RT = { morphId: 'm9', scope: 'tree', domainSuffix: SUFFIX, cmuxProxyOrigin: 'http://tree.test' }
const isStandIn = (url) => /^(https?|wss?):\/\/localhost:3000\//.test(url)
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
let setupError
function browserTest(name, fn, timeout) {
  test(name, async () => {
    if (setupError) throw setupError
    await fn()
  }, timeout)
}

beforeAll(async () => {
  try {
    requireChromium()
    ca = makeCA('cmux https-proxy browser tests CA')
    const leaf = makeLeaf(ca, [devHost(R1), devHost(R2), devHost(R4)])
    devBox = await startDevBox({ tls: leaf })
    devBoxH2 = await startDevBox({ tls: leaf, h2: true })
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
  } catch (error) {
    setupError = error
  }
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
    const failures = recordFailures(page, isStandIn)
    const seenBefore = devBox.requests.length
    const start = performance.now()
    const response = await page.goto('http://localhost:3000/', { timeout: 20000 })
    expect(response.status()).toBe(200)
    expect(response.headers()['x-dev-box-route']).toBe('m1-base')
    const seen = await inspectPage(page)
    const d = delta(proxy.stats(), before)
    console.log(`[1] loaded in ${(performance.now() - start).toFixed(0)} ms`, {
      nextHopProtocol: seen.nextHopProtocol,
      resources: seen.resources.length,
      proxyDelta: d,
      challenges: login.challenges,
    })
    expect(login.errors).toEqual([])
    expect(login.challenges.map((c) => `${c.source} ${c.scheme} ${c.realm} retry=${c.retry}`)).toEqual(['Proxy basic Cmux Preview Proxy retry=false'])
    expect(seen.servedBy).toBe(devHost(R1))
    expect(seen.titleColor).toBe(TITLE_COLOR)
    expect(seen.routeFromCss).toBe('"m1-base"')
    expect(seen.js).toBe('module ran at http://localhost:3000')
    expect(seen.imgNaturalWidth).toBe(24)
    expect(seen.imgNaturalHeight).toBe(16)
    await page.waitForFunction(() => document.getElementById('whoami').textContent.startsWith('whoami:'))
    expect(await page.textContent('#whoami')).toBe(`whoami: ${devHost(R1)} (1.1)`)
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
    const failures = recordFailures(page, isStandIn)
    const before = devBoxH2.requests.length
    const response = await page.goto('https://localhost:3000/', { timeout: 20000 })
    expect(response.status()).toBe(200)
    const seen = await inspectPage(page)
    const security = await response.securityDetails()
    console.log('[3]', { nextHopProtocol: seen.nextHopProtocol, security })
    expect(seen.url).toBe('https://localhost:3000/')
    expect(seen.servedBy).toBe(devHost(R4))
    expect(seen.routeFromCss).toBe('"m4-h2"')
    expect(seen.js).toBe('module ran at https://localhost:3000')
    expect(seen.imgNaturalWidth).toBe(24)
    expect(seen.nextHopProtocol).toBe('h2')
    for (const r of seen.resources.filter((e) => isStandIn(e.name))) expect(r.protocol, r.name).toBe('h2')
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
    const failA = recordFailures(a.page, isStandIn)
    const failB = recordFailures(b.page, isStandIn)
    const [resA, resB] = await Promise.all([
      a.page.goto('http://localhost:3000/?who=a', { timeout: 20000 }),
      b.page.goto('http://localhost:3000/?who=b', { timeout: 20000 }),
    ])
    expect(resA.status()).toBe(200)
    expect(resB.status()).toBe(200)
    const [seenA, seenB] = await Promise.all([inspectPage(a.page), inspectPage(b.page)])
    for (const [page, seen, route, other] of [
      [a.page, seenA, R1, 'm2-base'],
      [b.page, seenB, R2, 'm1-base'],
    ]) {
      const name = `${route.morphId}-${route.scope}`
      expect(seen.servedBy).toBe(devHost(route))
      expect(seen.routeFromCss).toBe(`"${name}"`)
      const lines = await waitForHmrText(page, `connected to ${name}`)
      expect(lines.join('\n')).not.toContain(other)
      expect(await page.content()).not.toContain(other)
    }
    expect(failA).toEqual([])
    expect(failB).toEqual([])
    const docs = devBox.requests.filter((r) => r.path === '/?who=a' || r.path === '/?who=b')
    expect(docs.map((r) => `${r.path} ${r.route}`).sort()).toEqual(['/?who=a m1-base', '/?who=b m2-base'])
  }, 40000)

  browserTest('5. after releaseContext the HMR socket closes and the next loads are refused', async () => {
    const { ctx, page } = await preview(207, R1)
    const response = await page.goto('http://localhost:3000/?who=released', { timeout: 20000 })
    expect(response.status()).toBe(200)
    await inspectPage(page)
    await waitForHmrText(page, 'echo: hello from the page')
    await sleep(200) // late assets settle
    const seenBefore = devBox.requests.length

    expect(proxy.releaseContext(ctx.id)).toBe(true)
    await page.waitForFunction(() => document.getElementById('hmr-state').textContent.startsWith('hmr: closed'), null, { timeout: 5000 })
    const outcomes = []
    for (const url of ['http://localhost:3000/?after-release=1', 'https://localhost:3000/?after-release=2']) {
      try {
        const res = await page.goto(url, { timeout: 15000 })
        outcomes.push({ url, status: res?.status() ?? null })
      } catch (e) {
        outcomes.push({ url, error: String(e.message).split('\n')[0] })
      }
    }
    console.log('[5] after release:', outcomes)
    for (const o of outcomes) {
      if (o.error === undefined) expect(o.status, o.url).toBe(407)
      else expect(o.error).toMatch(/net::ERR_/)
    }
    await sleep(300)
    expect(devBox.requests.slice(seenBefore)).toEqual([])
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

  browserTest('through the HTTPS proxy: at most 2 new h2 connections carry ≥ 500 streams; through the plain proxy: ≥ 6 HTTP/1.1 connections', async () => {
    // HTTPS proxy (the browser launched above).
    const h2Run = await preview(301, RT, { patterns: [{ urlPattern: 'http://localhost:3000/tree/index.html' }] })
    const failuresH2 = recordFailures(h2Run.page, isStandIn)
    const seenBefore = treeSeen.length
    const before = proxy.stats()
    const h2Load = await loadTree(h2Run.page)
    const h2Delta = delta(proxy.stats(), before)
    const h2Paths = new Set(treeSeen.slice(seenBefore))

    // Plain proxy: a second proxy and a second browser using it as an http:// proxy.
    const plainProxy = await ProxyServer.start('127.0.0.1:0', true, proxyOptions())
    extraProxies.push(plainProxy)
    const plainBrowser = await launchWithProxy(`http://127.0.0.1:${plainProxy.port()}`, plainProxy.caSpkiSha256())
    extraBrowsers.push(plainBrowser)
    await sleep(500)
    const plainRun = await preview(302, RT, { on: plainBrowser, via: plainProxy, patterns: [{ urlPattern: 'http://localhost:3000/tree/index.html' }] })
    const failuresPlain = recordFailures(plainRun.page, isStandIn)
    const plainSeenBefore = treeSeen.length
    const plainBefore = plainProxy.stats()
    const plainLoad = await loadTree(plainRun.page)
    const plainDelta = delta(plainProxy.stats(), plainBefore)
    const plainPaths = new Set(treeSeen.slice(plainSeenBefore))

    console.log(`[tree] ${TREE_MODULES} modules, for information:`, {
      httpsProxy: { ...h2Load, connections: h2Delta },
      plainProxy: { ...plainLoad, connections: plainDelta },
    })
    await plainBrowser.close()

    expect(h2Run.login.errors).toEqual([])
    expect(failuresH2).toEqual([])
    expect(h2Load.text).toBe(`tree: ${TREE_MODULES}`)
    expect(h2Paths.size).toBe(TREE_MODULES + 1)
    expect(h2Delta.tlsH2, 'new TLS+h2 client connections for the page').toBeLessThanOrEqual(2)
    expect(h2Delta.tlsH2).toBeGreaterThanOrEqual(1)
    expect(h2Delta.http2Streams, 'requests served over HTTP/2').toBeGreaterThanOrEqual(TREE_MODULES)
    expect(h2Delta.http1 + h2Delta.tlsHttp1 + h2Delta.h2c).toBe(0)

    expect(plainRun.login.errors).toEqual([])
    expect(failuresPlain).toEqual([])
    expect(plainLoad.text).toBe(`tree: ${TREE_MODULES}`)
    expect(plainPaths.size).toBe(TREE_MODULES + 1)
    expect(plainDelta.http1, 'plain HTTP/1.1 client connections for the page').toBeGreaterThanOrEqual(6)
    expect(plainDelta.tlsH2 + plainDelta.tlsHttp1 + plainDelta.h2c).toBe(0)
    expect(plainDelta.http2Streams).toBe(0)
  }, 90000)
})
