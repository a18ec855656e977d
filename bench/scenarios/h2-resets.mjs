// Measures what Chromium's reload pattern needs of the proxy's HTTP/2 reset
// allowance (StartOptions.http2MaxResets): headless Chromium uses the proxy
// as an HTTPS proxy (h2), loads the 500-module tree page behind a dev box
// that answers each module after a delay, and reloads it mid-load again and
// again. For each allowance it reports whether the proxy ever called the
// browser abusive (a GOAWAY closes its connection, Chromium opens a new one
// and the page's requests fail with ERR_HTTP2_*) and whether every load
// after the reloads completes. The lowest allowance with no failure, and the
// margin over it, is what src/proxy/server.rs sets.
//
//   node bench/scenarios/h2-resets.mjs [allowance...]     (default: 1 2 5 10 20 50 100 200)

import { ProxyServer } from '../../support/addon.mjs'
import { answerProxyAuth, launchChromium } from '../../support/chromium.mjs'
import { serveTree, TREE_MODULES } from '../../support/module-tree.mjs'
import { startHttpServer } from '../../support/servers.mjs'
import { sleep } from '../../support/wait.mjs'

const ALLOWANCES = process.argv.slice(2).map(Number)
const RELOADS = Number(process.env.RELOADS ?? 30)
const MODULE_DELAY_MS = 15
const ROUTE = { morphId: 'm9', scope: 'tree', domainSuffix: 'test.local', cmuxProxyOrigin: 'http://tree.test' }

const tree = await startHttpServer((req, res) => {
  setTimeout(() => {
    if (!serveTree(req, res)) res.writeHead(404).end()
  }, req.url.endsWith('.html') ? 0 : MODULE_DELAY_MS)
})

async function measure(allowance) {
  const proxy = await ProxyServer.start('127.0.0.1:0', true, {
    resolve: { 'tree.test:80': `127.0.0.1:${tree.port}` },
    http2MaxResets: allowance,
  })
  const browser = await launchChromium({
    args: [`--proxy-server=https://127.0.0.1:${proxy.port()}`, '--proxy-bypass-list=<-loopback>', `--ignore-certificate-errors-spki-list=${proxy.caSpkiSha256()}`],
  })
  await sleep(500)
  const before = proxy.stats()
  const context = await browser.newContext()
  const page = await context.newPage()
  await answerProxyAuth(page, proxy.createContext(1, ROUTE), [{ urlPattern: 'http://localhost:3000/tree/index.html' }])
  const h2Failures = []
  page.on('requestfailed', (r) => {
    const reason = r.failure()?.errorText ?? ''
    if (/HTTP2|PROTOCOL|CONNECTION/.test(reason)) h2Failures.push(reason)
  })
  const url = 'http://localhost:3000/tree/index.html'
  for (let i = 0; i < RELOADS; i++) {
    await page.goto(url, { waitUntil: 'commit' }).catch(() => {})
    await sleep(30 + ((i * 37) % 200)) // mid-load: modules in flight
  }
  await page.goto(url)
  const complete = await page
    .waitForFunction(() => !document.getElementById('tree').textContent.endsWith('loading'), null, { timeout: 30000 })
    .then(() => page.textContent('#tree'))
    .catch((e) => `not loaded: ${e.message.split('\n')[0]}`)
  const after = proxy.stats()
  await browser.close()
  await proxy.stop()
  return {
    allowance,
    h2Connections: after.accepted.tlsH2 - before.accepted.tlsH2,
    streams: after.http2Streams - before.http2Streams,
    h2Failures: h2Failures.length,
    lastLoad: complete === `tree: ${TREE_MODULES}` ? 'complete' : complete,
  }
}

for (const allowance of ALLOWANCES.length ? ALLOWANCES : [1, 2, 5, 10, 20, 50, 100, 200]) {
  console.log(JSON.stringify(await measure(allowance)))
}
await tree.close()
