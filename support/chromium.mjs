// Headless Debian Chromium driven by playwright-core, for the browser tests,
// the bench and the demo: configured the way the Electron app configures a
// preview session (proxy rules, the proxy login answered, the proxy's CA
// trusted by its key).

import { existsSync } from 'node:fs'
import { spkiHash } from './certs.mjs'

export const CHROMIUM_PATH = process.env.CMUX_CHROMIUM ?? '/usr/bin/chromium'

/** Throws a clear error when Debian's chromium is not installed (never skips). */
export function requireChromium() {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM_PATH}: the browser tests need Debian's chromium ` +
        '(`apt-get install -y chromium`; `npm test` installs it via scripts/setup.mjs installChromium()).',
    )
  }
  return CHROMIUM_PATH
}

/**
 * Launches headless Chromium trusting (only) certificates whose chain contains
 * the key of `caPem`, the proxy's CA: the test stand-in for the preview
 * session's setCertificateVerifyProc.
 */
export async function launchChromium({ caPem, args = [] } = {}) {
  const executablePath = requireChromium()
  const { chromium } = await import('playwright-core')
  const spki = caPem ? [`--ignore-certificate-errors-spki-list=${spkiHash(caPem)}`] : []
  return chromium.launch({ executablePath, headless: true, args: chromiumArgs([...spki, ...args]) })
}

/**
 * launchChromium with a profile kept in `userDataDir` (a preview's persistent
 * partition: its service workers survive a restart). Resolves the
 * BrowserContext of playwright-core's launchPersistentContext; closing it
 * quits the browser.
 */
export async function launchPersistentChromium(userDataDir, { args = [] } = {}) {
  const executablePath = requireChromium()
  const { chromium } = await import('playwright-core')
  return chromium.launchPersistentContext(userDataDir, { executablePath, headless: true, args: chromiumArgs(args) })
}

/** Chromium's switches for every test browser, then `args`. */
function chromiumArgs(args) {
  // Debugging aid: CMUX_CHROMIUM_NETLOG=/tmp/netlog.json records Chromium's network events (HTTP/2 frames included).
  const netlog = process.env.CMUX_CHROMIUM_NETLOG
    ? [`--log-net-log=${process.env.CMUX_CHROMIUM_NETLOG}`, '--net-log-capture-mode=Everything']
    : []
  // Chromium resolves no name itself: what it would fetch directly (its own background requests, outside
  // any proxy) fails at once instead of asking the machine's DNS server. A caller's own rules come first.
  const ownRules = args.filter((a) => a.startsWith(RULES_SWITCH)).map((a) => a.slice(RULES_SWITCH.length))
  const resolverRules = `${RULES_SWITCH}${[...ownRules, 'MAP * ~NOTFOUND', 'EXCLUDE localhost', 'EXCLUDE 127.0.0.1', 'EXCLUDE [::1]'].join(', ')}`
  return [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    ...netlog,
    ...args.filter((a) => !a.startsWith(RULES_SWITCH)),
    resolverRules,
  ]
}

const RULES_SWITCH = '--host-resolver-rules='

/**
 * One browser context per preview "session": its proxy is the addon's
 * listener, loopback is NOT bypassed, and the 407 is answered with the
 * proxy context's credentials (session.setProxy + app.on('login')).
 */
export function newPreviewContext(browser, proxyPort, credentials, options = {}) {
  return browser.newContext({
    proxy: {
      server: `http://127.0.0.1:${proxyPort}`,
      username: credentials.username,
      password: credentials.password,
      bypass: '<-loopback>',
    },
    viewport: { width: 900, height: 600 },
    ...options,
  })
}

/** Records the page's failed requests (url, failure text) whose URL matches `filter`. */
export function recordFailures(page, filter = () => true) {
  const failures = []
  page.on('requestfailed', (request) => {
    if (filter(request.url())) failures.push({ url: request.url(), error: request.failure()?.errorText ?? '?' })
  })
  return failures
}

/**
 * Answers the proxy's 407 for `page` through CDP (the Electron app's
 * app.on('login')): Fetch.enable with handleAuthRequests for `patterns`;
 * every paused request continues unchanged. Returns a record of the
 * challenges answered.
 */
export async function answerProxyAuth(page, credentials, patterns = [{ urlPattern: '*' }]) {
  const cdp = await page.context().newCDPSession(page)
  const record = { challenges: [], paused: 0, errors: [] }
  const answered = new Set()
  cdp.on('Fetch.authRequired', ({ requestId, request, authChallenge }) => {
    // The same request challenged again: the credentials were refused; give up (as Electron's login does).
    const retry = answered.has(requestId)
    answered.add(requestId)
    record.challenges.push({ url: request.url, source: authChallenge.source, scheme: authChallenge.scheme, realm: authChallenge.realm, retry })
    const response = authChallenge.source === 'Proxy' && !retry
      ? { response: 'ProvideCredentials', username: credentials.username, password: credentials.password }
      : { response: 'CancelAuth' }
    cdp.send('Fetch.continueWithAuth', { requestId, authChallengeResponse: response })
      .catch((e) => record.errors.push(`continueWithAuth: ${e.message}`))
  })
  cdp.on('Fetch.requestPaused', ({ requestId }) => {
    record.paused++
    cdp.send('Fetch.continueRequest', { requestId }).catch((e) => record.errors.push(`continueRequest: ${e.message}`))
  })
  await cdp.send('Fetch.enable', { handleAuthRequests: true, patterns })
  record.cdp = cdp
  return record
}
