// The page a preview shows when its dev box cannot be reached: with Node's
// client (which requests get it, what it says, how it is locked down, and
// what passes through untouched), then in headless Chromium: the page is
// shown, keeps checking, and reloads itself into the app once the dev box
// starts listening.

import http from 'node:http'
import { mkdirSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, proxyRequest, rawRequest } from '../support/http-client.mjs'
import { closedPort, closer, startHttpServer, trackSockets, UNRESOLVABLE_LABEL } from '../support/servers.mjs'
import { waitFor } from '../support/wait.mjs'
import { answerProxyAuth } from './browser-helpers.mjs'
import { launchChromium, requireChromium } from './browser-helpers.mjs'
import { DEVBOX_HOST, ROUTE } from './conduct-helpers.mjs'
import { collectEvents } from './events-helpers.mjs'

const NAVIGATE = { 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', accept: 'text/html,application/xhtml+xml,*/*;q=0.8' }

/** The CSP of a response as { directive: [values] }. */
function parseCsp(value = '') {
  const out = {}
  for (const part of value.split(';')) {
    const [name, ...values] = part.trim().split(/\s+/)
    if (name) out[name.toLowerCase()] = values
  }
  return out
}

/**
 * The checks every error page must pass: HTML, not cached, marked with its
 * cause, a strict CSP whose nonces are the page's, no external asset, and a
 * script that re-checks with HEAD and reloads. Returns { csp, nonce, html }.
 */
function expectErrorPage(res, { status, cause }) {
  expect(res.status).toBe(status)
  expect(res.headers['content-type']).toMatch(/^text\/html/)
  expect(res.headers['cache-control']).toBe('no-store')
  expect(res.headers['x-cmux-proxy-error']).toBe(cause)
  const csp = parseCsp(res.headers['content-security-policy'])
  expect(csp['default-src']).toEqual(["'none'"])
  const scriptNonces = (csp['script-src'] ?? []).filter((v) => /^'nonce-[A-Za-z0-9+/=_-]{16,}'$/.test(v))
  expect(scriptNonces.length, `script-src ${csp['script-src']}`).toBe(1)
  const nonce = scriptNonces[0].slice("'nonce-".length, -1)
  expect(csp['script-src']).toEqual([`'nonce-${nonce}'`])
  expect(csp['style-src']).toEqual([`'nonce-${nonce}'`])
  const everything = Object.values(csp).flat().join(' ')
  expect(everything).not.toMatch(/unsafe-inline|unsafe-eval|\*|https?:/)
  const html = res.text
  expect(html).toMatch(/^<!doctype html>/i)
  // Every script and style element carries the nonce; nothing is loaded from anywhere.
  const tags = [...html.matchAll(/<(script|style)\b([^>]*)>/gi)]
  expect(tags.length).toBeGreaterThanOrEqual(2)
  for (const [tag, , attrs] of tags) expect(attrs, tag).toContain(`nonce="${nonce}"`)
  expect(html).not.toMatch(/\b(src|href|action|srcset)\s*=|url\(|@import|<link\b|<img\b|<iframe\b|<object\b/i)
  // The re-check: HEAD of the page itself, reload when the answer is not the proxy's own failure.
  const script = /<script\b[^>]*>([\s\S]*?)<\/script>/i.exec(html)[1]
  expect(script).toMatch(/method:\s*'HEAD'/)
  expect(script).toContain('x-cmux-proxy-error')
  expect(script).toContain('location.reload')
  return { csp, nonce, html }
}

// ---------------------------------------------------------------------------

describe('the error page, seen by a Node client', () => {
  let proxy, port, refused, ownErrorBox, routedAuth, routed, dnsAuth, ownErrorCtx
  const OWN_502 = '<!doctype html><html><body><h1>the upstream\'s own 502</h1><script src="/own.js"></script></body></html>\n'

  beforeAll(async () => {
    refused = await closedPort()
    ownErrorBox = await startHttpServer((req, res) => {
      res.writeHead(502, { 'content-type': 'text/html; charset=utf-8', 'x-from-upstream': 'yes' })
      res.end(OWN_502)
    })
    proxy = await ProxyServer.start('127.0.0.1:0', true, {
      httpsProxy: false,
      resolve: {
        [`${DEVBOX_HOST}:443`]: `127.0.0.1:${refused}`,
        [`own-error.test:${ownErrorBox.port}`]: `127.0.0.1:${ownErrorBox.port}`,
      },
    })
    port = proxy.port()
    routed = proxy.createContext(1, ROUTE)
    routedAuth = authOf(routed)
    // A dev box whose name does not resolve at all (refused by the resolver itself: no DNS query leaves).
    dnsAuth = authOf(proxy.createContext(2, { morphId: UNRESOLVABLE_LABEL, scope: 'base', domainSuffix: 'devbox.invalid' }))
    ownErrorCtx = proxy.createContext(3, { ...ROUTE, morphId: 'own', cmuxProxyOrigin: `http://own-error.test:${ownErrorBox.port}` })
  })

  afterAll(async () => {
    await proxy?.stop()
    await ownErrorBox?.close()
  })

  test('a navigation to a dev box that refuses: 502 HTML page naming the URL (escaped), the dev box and the cause', async () => {
    // What a browser sends for ?q=<script>&x='y'&z=a&b (it percent-encodes < > " itself).
    const url = "http://localhost:3000/app?q=%3Cscript%3Ealert(1)%3C/script%3E&x='y'&z=a&b"
    const res = await proxyRequest(port, url, { auth: routedAuth, headers: NAVIGATE })
    const { html, nonce } = expectErrorPage(res, { status: 502, cause: 'refused' })
    const escapedUrl = "http://localhost:3000/app?q=%3Cscript%3Ealert(1)%3C/script%3E&amp;x=&#39;y&#39;&amp;z=a&amp;b"
    expect(html).toContain(escapedUrl)
    expect(html).not.toContain("x='y'")
    expect(html).toContain(`https://${DEVBOX_HOST}:443`)
    // The cause in plain words, not only the technical detail.
    expect(html).toMatch(/not running|accepted the connection|refused/i)
    // A fresh nonce per page.
    const again = expectErrorPage(await proxyRequest(port, url, { auth: routedAuth, headers: NAVIGATE }), { status: 502, cause: 'refused' })
    expect(again.nonce).not.toBe(nonce)
  })

  test('a raw <script> in the request target never reaches a page: the HTTP parser answers 400, nothing is reflected', async () => {
    const { conn, res } = await rawRequest(port, 'GET', 'http://localhost:3000/app?q=<script>alert(1)</script>', [
      ['Host', 'localhost:3000'],
      ['Proxy-Authorization', routedAuth],
      ['Sec-Fetch-Mode', 'navigate'],
    ])
    conn.destroy()
    expect(res.status).toBe(400)
    expect(res.text).not.toContain('<script>')
  })

  test('a navigation to a dev box whose name does not resolve: 502 page with the DNS cause', async () => {
    const res = await proxyRequest(port, 'http://localhost:3000/', { auth: dnsAuth, headers: NAVIGATE })
    const { html } = expectErrorPage(res, { status: 502, cause: 'dns' })
    expect(html).toContain(`cmux-${UNRESOLVABLE_LABEL}-base-3000.devbox.invalid`)
    expect(html).toMatch(/DNS|resolve/)
    expect(html).not.toMatch(/accepted the connection/)
  })

  test('the same request with Accept: */* and no fetch metadata keeps the one-line text answer', async () => {
    const res = await proxyRequest(port, 'http://localhost:3000/app', { auth: routedAuth, headers: { accept: '*/*' } })
    expect(res.status).toBe(502)
    expect(res.headers['content-type']).toMatch(/^text\/plain/)
    expect(res.headers['x-cmux-proxy-error']).toBe('refused')
    expect(res.headers['content-security-policy']).toBeUndefined()
    expect(res.text.endsWith('\n')).toBe(true)
    expect(res.text.trim()).not.toContain('\n')
    expect(res.text).not.toMatch(/<html|<!doctype/i)
  })

  test('a fetch (Sec-Fetch-Mode: cors) asking for HTML, and a POST navigation, keep the text answer too', async () => {
    const fetchLike = await proxyRequest(port, 'http://localhost:3000/partial', {
      auth: routedAuth,
      headers: { 'sec-fetch-mode': 'cors', accept: 'text/html' },
    })
    expect([fetchLike.status, fetchLike.headers['content-type']?.split(';')[0]]).toEqual([502, 'text/plain'])
    const post = await proxyRequest(port, 'http://localhost:3000/form', { method: 'POST', auth: routedAuth, headers: NAVIGATE, body: 'a=1' })
    expect([post.status, post.headers['content-type']?.split(';')[0]]).toEqual([502, 'text/plain'])
  })

  test("an upstream's own 502 HTML passes through untouched (no x-cmux-proxy-error, no CSP added, not counted as an error)", async () => {
    const res = await proxyRequest(port, 'http://localhost:3000/app', { auth: authOf(ownErrorCtx), headers: NAVIGATE })
    expect(res.status).toBe(502)
    expect(res.text).toBe(OWN_502)
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8')
    expect(res.headers['x-from-upstream']).toBe('yes')
    expect(res.headers['x-cmux-proxy-error']).toBeUndefined()
    expect(res.headers['content-security-policy']).toBeUndefined()
    expect(proxy.contextStats(ownErrorCtx.id)).toMatchObject({ requests: 1, errors: 0 })
    expect(proxy.contextStats(routed.id).errors).toBeGreaterThanOrEqual(2)
  })
})

// ---------------------------------------------------------------------------

describe('the error page in Chromium: shown while the dev box is down, reloads into the app once it is up', () => {
  const PAGE = 'http://localhost:3000/app?from=error-page-test'
  let devPort, proxy, collector, browser, context, devBox
  const devBoxSeen = []
  let setupError

  beforeAll(async () => {
    try {
      requireChromium()
      devPort = await closedPort()
      proxy = await ProxyServer.start('127.0.0.1:0', true, {
        httpsProxy: false,
        resolve: { [`devbox.test:${devPort}`]: `127.0.0.1:${devPort}` },
      })
      collector = collectEvents(proxy)
      browser = await launchChromium({
        args: [`--proxy-server=http://127.0.0.1:${proxy.port()}`, '--proxy-bypass-list=<-loopback>'],
      })
    } catch (error) {
      setupError = error
    }
  }, 60000)

  afterAll(async () => {
    collector?.unsubscribe()
    await context?.close().catch(() => {})
    await browser?.close().catch(() => {})
    await proxy?.stop()
    await devBox?.close()
  })

  /** The dev box: a plain HTTP server on the port the route names. */
  async function startDevBoxOnPort() {
    const server = http.createServer((req, res) => {
      devBoxSeen.push(`${req.method} ${req.url}`)
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' })
      res.end(req.method === 'HEAD' ? undefined : '<!doctype html><title>app</title><h1 id="app">the app is running</h1>\n')
    })
    const sockets = trackSockets(server)
    await new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(devPort, '127.0.0.1', resolve)
    })
    return { close: closer(server, sockets) }
  }

  test('the page names the URL and the dev box, re-checks, and reloads into the app within 15 s of the dev box starting', async () => {
    if (setupError) throw setupError
    const ctx = proxy.createContext(60, { morphId: 'm', scope: 'web', domainSuffix: 'devbox.test', cmuxProxyOrigin: `http://devbox.test:${devPort}` })
    context = await browser.newContext({ viewport: { width: 900, height: 600 } })
    const page = await context.newPage()
    const cspViolations = []
    page.on('console', (message) => {
      if (/Content Security Policy/i.test(message.text())) cspViolations.push(message.text())
    })
    await answerProxyAuth(page, ctx)

    const response = await page.goto(PAGE, { timeout: 20000 })
    expect(response.status()).toBe(502)
    expect(response.headers()['x-cmux-proxy-error']).toBe('refused')
    const text = await page.locator('body').innerText()
    expect(text).toContain(PAGE)
    expect(text).toContain(`devbox.test:${devPort}`)
    expect(await page.title()).toMatch(/unreachable/i)
    mkdirSync(new URL('./output/', import.meta.url), { recursive: true })
    await page.screenshot({ path: new URL('./output/error-page.png', import.meta.url).pathname })

    // Its script runs under its own CSP: the first re-check (after 2 s) finds the dev box still down.
    await page.locator('#status', { hasText: /still unreachable/i }).waitFor({ timeout: 10000 })
    const heads = collector.events.filter((e) => e.kind === 'request' && e.method === 'HEAD')
    expect(heads.length).toBeGreaterThanOrEqual(1)
    expect(heads[0]).toMatchObject({ url: PAGE, status: 502, contextId: ctx.id })

    devBox = await startDevBoxOnPort()
    const upAt = Date.now()
    await page.locator('#app').waitFor({ timeout: 15000 })
    console.log(`[error page] reloaded into the app ${Date.now() - upAt} ms after the dev box started`)
    expect(await page.locator('#app').innerText()).toBe('the app is running')
    expect(page.url()).toBe(PAGE)
    // The dev box saw the page's HEAD re-check answered without the proxy's mark, then the reload.
    const path = new URL(PAGE).pathname + new URL(PAGE).search
    expect(devBoxSeen).toContain(`HEAD ${path}`)
    expect(devBoxSeen.indexOf(`GET ${path}`)).toBeGreaterThan(devBoxSeen.indexOf(`HEAD ${path}`))
    expect(cspViolations).toEqual([])
    await waitFor(() => collector.events.some((e) => e.kind === 'request' && e.method === 'GET' && e.url === PAGE && e.status === 200), {
      message: 'the request event of the reload',
    })
  }, 60000)
})
