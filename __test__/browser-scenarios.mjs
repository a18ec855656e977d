// The preview scenarios that browser.test.mjs (Chromium with the proxy as an
// http:// proxy) and https-proxy-browser.test.mjs (the same through the
// HTTPS proxy mode) both run against the dev box stand-in of
// browser-helpers.mjs: the checks of its page, two previews side by side, and
// a released context. Vitest-only (browser-helpers.mjs is also used outside it).

import { beforeAll, expect, test } from 'vitest'
import { sleep } from '../support/wait.mjs'
import { devHost, inspectPage, recordFailures, TITLE_COLOR, waitForHmrText } from './browser-helpers.mjs'

/** Whether a URL is the page's own origin (what the proxy rewrites to a dev box), any scheme. */
export const isStandIn = (url) => /^(https?|wss?):\/\/localhost:3000\//.test(url)

/**
 * Runs `setup` before all tests (within `timeout` ms) and returns the `test`
 * of the browser tests: a setup failure (above all: no Chromium) fails every
 * one of them with its message; nothing is skipped.
 */
export function browserSuite(setup, timeout = 60000) {
  let setupError
  beforeAll(async () => {
    try {
      await setup()
    } catch (error) {
      setupError = error
    }
  }, timeout)
  return function browserTest(name, fn, testTimeout) {
    test(name, async () => {
      if (setupError) throw setupError
      await fn()
    }, testTimeout)
  }
}

/**
 * Loads `url` (the stand-in's index page through the proxy) in `page`,
 * recording its failed stand-in requests; expects a 200 and waits until the
 * page's module and image ran (inspectPage). Returns { failures, response,
 * seen, requestsBefore: how many requests `devBox` had seen before, ms: from
 * the navigation to the page inspected }.
 */
export async function openStandInPage(page, url, devBox) {
  const failures = recordFailures(page, isStandIn)
  const requestsBefore = devBox.requests.length
  const start = performance.now()
  const response = await page.goto(url, { timeout: 20000 })
  expect(response.status()).toBe(200)
  const seen = await inspectPage(page)
  return { failures, response, seen, requestsBefore, ms: performance.now() - start }
}

/** "m1-base": a route as the stand-in names it (its CSS, its HMR greeting, x-dev-box-route). */
const routeName = (route) => `${route.morphId}-${route.scope}`

/**
 * Expects the fields `fields` (in that order) of what inspectPage saw to be
 * those of the stand-in's index page for `route` loaded from `origin`
 * (`http://localhost:3000`): its URL, dev box name, CSS, module and image.
 */
export function expectStandInPage(seen, route, origin, fields) {
  const want = {
    url: `${origin}/`,
    servedBy: devHost(route),
    titleColor: TITLE_COLOR,
    routeFromCss: `"${routeName(route)}"`,
    js: `module ran at ${origin}`,
    imgNaturalWidth: 24,
    imgNaturalHeight: 16,
  }
  for (const field of fields) {
    if (!(field in want)) throw new Error(`expectStandInPage: no expected value for ${field}`)
    expect(seen[field], field).toBe(want[field])
  }
}

/** Waits for the page's fetch('/whoami') and expects it answered by `route`'s dev box over HTTP/1.1. */
export async function expectWhoami(page, route) {
  await page.waitForFunction(() => document.getElementById('whoami').textContent.startsWith('whoami:'))
  expect(await page.textContent('#whoami')).toBe(`whoami: ${devHost(route)} (1.1)`)
}

/** Expects the page and every one of its stand-in resources to have come over HTTP/2. */
export function expectAllH2(seen) {
  expect(seen.nextHopProtocol).toBe('h2')
  for (const r of seen.resources.filter((e) => isStandIn(e.name))) expect(r.protocol, r.name).toBe('h2')
}

/**
 * Two previews at once on the HTTP/1.1 stand-in `devBox`, each page in its
 * own proxy context: `pageA` (route `routeA`) and `pageB` load
 * http://localhost:3000/?who=a and ?who=b concurrently, so that the proxy has
 * both contexts' traffic in flight; each page only ever sees its own route
 * (page, CSS, HMR socket; and /whoami when `whoami`), and the stand-in got
 * each document under its route.
 */
export async function expectSeparatePreviews(devBox, [pageA, routeA], [pageB, routeB], { whoami = false } = {}) {
  const failA = recordFailures(pageA, isStandIn)
  const failB = recordFailures(pageB, isStandIn)
  const [resA, resB] = await Promise.all([
    pageA.goto('http://localhost:3000/?who=a', { timeout: 20000 }),
    pageB.goto('http://localhost:3000/?who=b', { timeout: 20000 }),
  ])
  expect(resA.status()).toBe(200)
  expect(resB.status()).toBe(200)
  const [seenA, seenB] = await Promise.all([inspectPage(pageA), inspectPage(pageB)])
  for (const [page, seen, route, other] of [
    [pageA, seenA, routeA, routeName(routeB)],
    [pageB, seenB, routeB, routeName(routeA)],
  ]) {
    expectStandInPage(seen, route, 'http://localhost:3000', ['servedBy', 'routeFromCss'])
    if (whoami) await expectWhoami(page, route)
    const lines = await waitForHmrText(page, `connected to ${routeName(route)}`)
    expect(lines.join('\n')).not.toContain(other)
    expect(await page.content()).not.toContain(other)
  }
  expect(failA).toEqual([])
  expect(failB).toEqual([])
  const docs = devBox.requests.filter((r) => r.path === '/?who=a' || r.path === '/?who=b')
  expect(docs.map((r) => `${r.path} ${r.route}`).sort()).toEqual([`/?who=a ${routeName(routeA)}`, `/?who=b ${routeName(routeB)}`])
}

/**
 * `page` of proxy context `ctx` loads the stand-in's page and opens its HMR
 * socket; then `proxy.releaseContext(ctx.id)` (one fewer context in
 * proxy.stats() when `contextCount`): the socket closes, the next loads
 * (http and https) are refused, by the proxy's 407 or a failed navigation,
 * and nothing more reaches `devBox`. `label` prefixes the log line.
 */
export async function expectRefusedAfterRelease({ proxy, ctx, page, devBox, label, contextCount = false }) {
  const response = await page.goto('http://localhost:3000/?who=released', { timeout: 20000 })
  expect(response.status()).toBe(200)
  await inspectPage(page)
  await waitForHmrText(page, 'echo: hello from the page')
  const contextsBefore = proxy.stats().contexts
  await sleep(200) // let late assets and favicons settle
  const seenBefore = devBox.requests.length

  expect(proxy.releaseContext(ctx.id)).toBe(true)
  if (contextCount) expect(proxy.stats().contexts).toBe(contextsBefore - 1)
  // The page's open HMR tunnel authenticated with the released credentials: it is closed.
  await page.waitForFunction(() => document.getElementById('hmr-state').textContent.startsWith('hmr: closed'), null, {
    timeout: 5000,
  })

  const outcomes = []
  for (const url of ['http://localhost:3000/?after-release=1', 'https://localhost:3000/?after-release=2']) {
    try {
      const res = await page.goto(url, { timeout: 15000 })
      outcomes.push({ url, status: res?.status() ?? null })
    } catch (e) {
      outcomes.push({ url, error: String(e.message).split('\n')[0] })
    }
  }
  console.log(`${label} after release:`, outcomes)
  for (const o of outcomes) {
    // Refused: either the navigation failed, or Chromium shows the proxy's 407.
    if (o.error === undefined) expect(o.status, o.url).toBe(407)
    else expect(o.error).toMatch(/net::ERR_/)
  }
  await sleep(300)
  expect(devBox.requests.slice(seenBefore)).toEqual([])
}
