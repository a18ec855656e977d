// Headless Chromium through a context's own port (issue 19):
// createContext(webContentsId, route, { ownPort: true }) gives the context a
// listener of its own, every connection there is that context's and no 407 is
// ever sent. The two first requests Chromium will not authenticate through
// the shared port, a WebSocket and a service worker's fetch after an app
// restart, work through it; the same two through the shared port (credentials
// answered by CDP, the app.on('login') stand-in) are the controls. Nothing
// listens on localhost:3000: the routes send it to local stand-ins.

import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA, makeLeaf } from '../support/certs.mjs'
import { portState } from '../support/ports.mjs'
import { startTcpServer } from '../support/servers.mjs'
import { sleep, waitFor } from '../support/wait.mjs'
import { answerProxyAuth } from './browser-helpers.mjs'
import {
  CHROMIUM_BACKGROUND_HOSTS, devHost, launchChromium, launchPersistentChromium, pageWebSocket, requireChromium,
  startStandInDevBox, startServiceWorkerOrigin, waitForHmrText,
} from './browser-helpers.mjs'
import { browserSuite, expectStandInPage, openStandInPage } from './browser-scenarios.mjs'

const SUFFIX = 'test.local'
const R1 = { morphId: 'm1', scope: 'base', domainSuffix: SUFFIX } // the dev box stand-in (HTTPS, /hmr echo)
const RS = { morphId: 'm7', scope: 'sw', domainSuffix: SUFFIX, cmuxProxyOrigin: 'http://sw.test' } // the service worker origin
const HMR = 'ws://localhost:3000/hmr'
const SW_PAGE = 'http://localhost:3000/sw-page.html'

let ca, devBox, swOrigin, sink, proxy
const events = [] // every event of every proxy of this file
const browsers = []
const proxies = []
const profiles = []

/**
 * Every name the proxies may be asked to reach: the stand-ins, and Chromium's
 * own background hosts (an own port authenticates them too) to a sink that
 * closes every connection.
 */
const resolveMap = () => ({
  [`${devHost(R1)}:443`]: `127.0.0.1:${devBox.port}`,
  'sw.test:80': `127.0.0.1:${swOrigin.port}`,
  ...Object.fromEntries(CHROMIUM_BACKGROUND_HOSTS.map((h) => [h, `127.0.0.1:${sink.port}`])),
})

/** Nothing was looked up in DNS: no DNS failure, and every upstream any proxy went to is a name of resolveMap(). */
function expectOnlyMappedNames() {
  expect(events.filter((e) => e.cause === 'dns')).toEqual([])
  const mapped = Object.keys(resolveMap())
  for (const e of events.filter((e) => e.upstream)) expect(mapped, e.upstream).toContain(e.upstream.replace(/^[a-z]+:\/\//, ''))
}

/** A proxy (HTTPS proxy mode, the default) whose every name resolves to a local server. */
async function startProxy() {
  const started = await ProxyServer.start('127.0.0.1:0', true, {
    resolve: resolveMap(),
    upstreamCaPem: [ca.certPem],
    logging: !!process.env.CMUX_PROXY_LOG,
  })
  proxies.push(started)
  started.onEvent((e) => events.push(e))
  return started
}

/** Chromium's proxy switches: `rules` (what session.setProxy gets), loopback not bypassed, the proxy's CA trusted by key. */
const proxyArgs = (via, rules) => [`--proxy-server=${rules}`, '--proxy-bypass-list=<-loopback>', `--ignore-certificate-errors-spki-list=${via.caSpkiSha256()}`]

/**
 * A page of `browser` (a Browser or a persistent BrowserContext, launched
 * ~500 ms ago so that its own background connections settled) with every
 * request's 407 answered with `ctx`'s credentials, as the app's login handler would.
 */
async function loginPage(browser, ctx) {
  browsers.push(browser)
  await sleep(500)
  const page = browser.pages?.()[0] ?? (await browser.newPage())
  const consoleErrors = []
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()))
  return { page, consoleErrors, login: await answerProxyAuth(page, ctx) }
}

const firstLine = (e) => String(e?.message ?? e).split('\n')[0]

/** The proxy events of context `ctx` as lines: "request GET http://localhost:3000/x 200", "tunnel open localhost:3000". */
const eventLines = (ctx) => events.filter((e) => e.contextId === ctx.id && e.kind !== 'context')
  .map((e) => [e.kind, e.phase ?? e.method, e.url, e.status].filter((x) => x !== undefined).join(' '))

/** A new context with its own port on the main proxy, and a Chromium whose only proxy is that port (plain http:// rules). */
async function ownPortBrowser(webContentsId, { https = false } = {}) {
  const ctx = proxy.createContext(webContentsId, R1, { ownPort: true })
  expect(ctx.port).toBeGreaterThan(0)
  expect(ctx.port).not.toBe(proxy.port())
  const rules = proxy.proxyRules({ https, contextId: ctx.id })
  const scheme = https ? 'https' : 'http'
  expect(rules).toBe(`http=${scheme}://127.0.0.1:${ctx.port};https=${scheme}://127.0.0.1:${ctx.port}`)
  const browser = await launchChromium({ args: proxyArgs(proxy, rules) })
  return { ctx, browser, ...await loginPage(browser, ctx) }
}

/**
 * One run of the app with a preview whose partition persists in `dir`: a new
 * proxy and context (with its own port or not), Chromium on the profile
 * through it, a navigation to SW_PAGE; then the app quits (browser closed,
 * proxy stopped). Returns what the page and the service worker origin saw.
 */
async function swRun(dir, { ownPort, webContentsId }) {
  const via = await startProxy()
  const ctx = via.createContext(webContentsId, RS, { ownPort })
  const rules = via.proxyRules({ https: false, ...(ownPort ? { contextId: ctx.id } : {}) })
  const browser = await launchPersistentChromium(dir, { args: proxyArgs(via, rules) })
  const { page, login, consoleErrors } = await loginPage(browser, ctx)
  const before = swOrigin.requests.length
  const run = { ctx, error: null, status: null, fromServiceWorker: null, page: null }
  try {
    const response = await page.goto(SW_PAGE, { timeout: 15000 })
    run.status = response?.status() ?? null
    run.fromServiceWorker = response?.fromServiceWorker() ?? null
  } catch (e) {
    run.error = firstLine(e)
  }
  if (run.error) {
    await waitFor(() => consoleErrors.length, { timeout: 2000 }).catch(() => {})
  } else {
    await page.waitForFunction(() => /^sw: (controlling|failed)/.test(document.getElementById('sw').textContent), null, { timeout: 10000 })
    run.page = await page.evaluate(() => ({
      load: document.getElementById('load').textContent,
      sw: document.getElementById('sw').textContent,
      controlledAtLoad: window.controlledAtLoad,
    }))
  }
  await sleep(300) // late requests: the favicon, the worker's update check
  run.challenges = login.challenges
  run.consoleErrors = consoleErrors
  run.stats = via.stats()
  run.seen = swOrigin.requests.slice(before)
  run.contextStats = via.contextStats(ctx.id)
  run.events = eventLines(ctx)
  await browser.close()
  await via.stop()
  return run
}

function newProfile() {
  const dir = mkdtempSync(join(tmpdir(), 'cmux-own-port-profile-'))
  profiles.push(dir)
  return dir
}

// A setup failure (above all: no Chromium) fails every test with its message; nothing is skipped.
const browserTest = browserSuite(async () => {
  requireChromium()
  ca = makeCA('cmux own-port browser tests CA')
  devBox = await startStandInDevBox({ tls: makeLeaf(ca, [devHost(R1)]) })
  swOrigin = await startServiceWorkerOrigin()
  sink = await startTcpServer((socket) => socket.destroy())
  proxy = await startProxy()
}, 60000)

afterAll(async () => {
  for (const b of browsers) await b.close().catch(() => {})
  for (const p of proxies) await p.stop()
  await devBox?.close()
  await swOrigin?.close()
  await sink?.close()
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true })
})

describe('a context with its own port (issue 19)', () => {
  browserTest('1. a page whose first proxied request is a WebSocket gets its echo through its own port', async () => {
    const { ctx, browser, page, login } = await ownPortBrowser(401)
    expect(page.url()).toBe('about:blank') // not proxied
    const seenBefore = devBox.requests.length
    const log = await pageWebSocket(page, HMR, 'hello first')
    // The page's traffic on the context (Chromium's own background requests aside): the WebSocket's CONNECT came first.
    const pageEvents = eventLines(ctx).filter((line) => line.includes('localhost:3000'))
    console.log('[1] websocket', log, pageEvents)
    expect(log).toEqual(['open', 'message: connected to m1-base', 'message: echo: hello first'])
    expect(devBox.requests.slice(seenBefore)).toMatchObject([{ kind: 'ws', path: '/hmr', host: devHost(R1) }])
    expect(pageEvents[0]).toBe('request CONNECT localhost:3000 200')
    expect(pageEvents).toEqual(expect.arrayContaining(['request GET http://localhost:3000/hmr 101', 'websocket open http://localhost:3000/hmr']))
    expect(login.challenges).toEqual([])
    expect(login.errors).toEqual([])
    expect(proxy.contextStats(ctx.id).openTunnels).toBeGreaterThanOrEqual(1)
    await browser.close()
    expectOnlyMappedNames()
  }, 30000)

  browserTest('2. a service worker after an app restart loads the page through the new own port', async () => {
    const dir = newProfile()
    const first = await swRun(dir, { ownPort: true, webContentsId: 402 })
    console.log('[2] first run', first)
    const firstLoad = first.seen.find((r) => r.path === '/sw-page.html')
    expect(first).toMatchObject({ error: null, status: 200, fromServiceWorker: false, challenges: [] })
    expect(first.page).toEqual({ load: `load ${firstLoad.load}`, sw: 'sw: controlling', controlledAtLoad: false })
    expect(first.seen.map((r) => r.path)).toContain('/sw.js')

    // "Restart": the browser closed, the proxy stopped; a new proxy, a new context with a new own port.
    const second = await swRun(dir, { ownPort: true, webContentsId: 402 })
    console.log('[2] after the restart', second)
    const load = second.seen.find((r) => r.path === '/sw-page.html')
    expect(load, 'the origin saw the second load').toBeTruthy()
    expect(load).toMatchObject({ portInternal: '3000', load: firstLoad.load + 1 })
    // The worker answered the navigation with its fetch, which went through the new own port: the new page.
    expect(second).toMatchObject({ error: null, status: 200, fromServiceWorker: true, challenges: [] })
    expect(second.page).toEqual({ load: `load ${load.load}`, sw: 'sw: controlling', controlledAtLoad: true })
    expect(second.events).toContain('request GET http://localhost:3000/sw-page.html 200')
    expect(second.contextStats.requests).toBeGreaterThanOrEqual(1)
    expectOnlyMappedNames()
  }, 60000)
})

// What Chromium 156 (headless, playwright-core) does through the shared port, as issue 19 says:
// - 3a: the WebSocket's CONNECT gets the 407 and Chromium gives up: the page sees `error` then `close 1006`,
//   its console says "WebSocket connection to 'ws://localhost:3000/hmr' failed: Proxy authentication failed",
//   CDP's Fetch.authRequired never fires (no challenge for the app to answer), nothing reaches the dev box.
// - 3b: after the restart the worker's fetch of the navigation gets the 407, no challenge reaches the page's
//   login handler, Chromium does not retry: page.goto fails with net::ERR_INVALID_AUTH_CREDENTIALS (the page's
//   console: "Failed to load resource: the server responded with a status of 407 ()"), and the origin sees no
//   request at all. The first run, before the restart, loads (one Proxy challenge, answered).
describe('the same through the shared port (controls: what issue 19 describes)', () => {
  browserTest('3a. a WebSocket-first page through the shared port fails, and no challenge reaches the app', async () => {
    const ctx = proxy.createContext(403, R1)
    const rules = proxy.proxyRules({ https: false })
    expect(rules).toBe(`http=http://127.0.0.1:${proxy.port()};https=http://127.0.0.1:${proxy.port()}`)
    const browser = await launchChromium({ args: proxyArgs(proxy, rules) })
    const { page, login, consoleErrors } = await loginPage(browser, ctx)
    const seenBefore = devBox.requests.length
    const log = await pageWebSocket(page, HMR, 'hello shared', 5000)
    await waitFor(() => consoleErrors.length, { timeout: 2000, message: 'the page logged the WebSocket failure' })
    console.log('[3a] websocket through the shared port', { log, challenges: login.challenges, consoleErrors })
    expect(log).toEqual(['error', 'close 1006'])
    expect(consoleErrors).toEqual(["WebSocket connection to 'ws://localhost:3000/hmr' failed: Proxy authentication failed"])
    expect(login.challenges).toEqual([])
    expect(login.paused).toBe(0)
    expect(proxy.contextStats(ctx.id).requests).toBe(0)
    expect(devBox.requests.slice(seenBefore)).toEqual([])
    await browser.close()
    expectOnlyMappedNames()
  }, 30000)

  browserTest('3b. a service worker after an app restart through the shared port does not load the new page', async () => {
    const dir = newProfile()
    const first = await swRun(dir, { ownPort: false, webContentsId: 404 })
    console.log('[3b] first run', first)
    expect(first).toMatchObject({ error: null, status: 200, fromServiceWorker: false })
    expect(first.page).toMatchObject({ sw: 'sw: controlling', controlledAtLoad: false })
    expect(first.challenges).toMatchObject([{ url: SW_PAGE, source: 'Proxy', retry: false }])

    const second = await swRun(dir, { ownPort: false, webContentsId: 404 })
    console.log('[3b] after the restart', second)
    expect(second.error).toBe(`page.goto: net::ERR_INVALID_AUTH_CREDENTIALS at ${SW_PAGE}`)
    expect(second.consoleErrors).toContain('Failed to load resource: the server responded with a status of 407 ()')
    expect(second.challenges).toEqual([])
    expect(second.seen).toEqual([])
    expect(second.contextStats.requests).toBe(0)
    expect(second.stats.accepted.http1, 'Chromium did connect to the new proxy').toBeGreaterThanOrEqual(1)
    expectOnlyMappedNames()
  }, 60000)
})

describe('own port lifecycle and the HTTPS proxy mode', () => {
  browserTest('4. after releaseContext the own port refuses connections and the open WebSocket closes', async () => {
    const { ctx, browser, page, login } = await ownPortBrowser(405)
    expect(await pageWebSocket(page, HMR, 'before release')).toEqual(['open', 'message: connected to m1-base', 'message: echo: before release'])
    expect(await portState(ctx.port)).toBe('open')
    expect(proxy.releaseContext(ctx.id)).toBe(true)
    await page.waitForFunction(() => window.wsLog.some((e) => e.startsWith('close')), null, { timeout: 5000 })
    const log = await page.evaluate(() => window.wsLog)
    console.log('[4] after release', log)
    expect(log.at(-1)).toMatch(/^close \d+$/)
    expect(await portState(ctx.port)).toBe('ECONNREFUSED')
    expect(proxy.contextStats(ctx.id)).toBeNull()
    expect(login.challenges).toEqual([])
    await browser.close()
    expectOnlyMappedNames()
  }, 30000)

  browserTest('5. the HTTPS proxy mode on an own port: a preview page over h2 to the proxy, no 407', async () => {
    const { ctx, browser, page, login } = await ownPortBrowser(406, { https: true })
    const before = proxy.stats()
    const ctxBefore = proxy.contextStats(ctx.id)
    const { failures, seen } = await openStandInPage(page, 'http://localhost:3000/', devBox)
    expectStandInPage(seen, R1, 'http://localhost:3000', ['url', 'servedBy', 'titleColor', 'routeFromCss', 'js', 'imgNaturalWidth'])
    await waitForHmrText(page, 'echo: hello from the page')
    const after = proxy.stats()
    const ctxAfter = proxy.contextStats(ctx.id)
    console.log('[5] https own port', { nextHopProtocol: seen.nextHopProtocol, before, after, ctxBefore, ctxAfter })
    expect(seen.nextHopProtocol).toBe('h2')
    expect(after.accepted.tlsH2 - before.accepted.tlsH2).toBeGreaterThanOrEqual(1)
    expect(after.accepted.http1 - before.accepted.http1).toBe(0)
    expect(after.http2Streams - before.http2Streams).toBeGreaterThanOrEqual(6)
    // page, CSS, two modules, image, /whoami (the HMR socket is a tunnel)
    expect(ctxAfter.requests - ctxBefore.requests).toBeGreaterThanOrEqual(6)
    expect(failures).toEqual([])
    expect(login.challenges).toEqual([])
    expect(login.errors).toEqual([])
    await browser.close()
    expectOnlyMappedNames()
  }, 30000)
})
