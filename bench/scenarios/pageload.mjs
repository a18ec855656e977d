// Scenario s7 of `npm run bench`: what a user feels. The Vite app of
// fixtures/vite-app.mjs behind a TLS HTTP/2 stand-in for the cloud dev box
// (fixtures/pageload-servers.mjs) that delays every response by D ms, loaded in
// headless Chromium cold (a new browser context) and warm (a reload in the same
// context) through:
//   (a) this proxy as a plain HTTP/1.1 proxy (--proxy-server=http://…),
//   (b) this proxy in its HTTPS proxy mode (--proxy-server=https://…, its CA trusted by SPKI),
//   (c) no proxy: Chromium straight to https://cmux-m-base-<P>.devbox.test/ (the reference),
//   (d) the Node.js peer (npm `proxy`) relaying Chromium's CONNECT to that https:// URL blindly.
// The scenario runs in bench/run.mjs's process and drives Chromium with
// playwright-core; the servers run in processes of their own.

import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { spkiHash } from '../../support/certs.mjs'
import { closedPort } from '../../support/servers.mjs'
import { makeCerts } from '../fixtures/certs.mjs'
import { ROUTE } from '../fixtures/pageload-servers.mjs'
import { chromiumCpu, chromiumCpuSpent, chromiumProfileArg, cpuOf } from '../fixtures/proc.mjs'
import { APP, MODULES } from '../fixtures/vite-app.mjs'
import { summarizePageLoad, sumOf, VARIANTS } from '../report/pageload.mjs'

const SERVERS = fileURLToPath(new URL('../fixtures/pageload-servers.mjs', import.meta.url))
export const DELAYS = [0, 25]

/** `after` − `before`, key by key (nested objects too): what one load added to a process's counters. */
function diffCounts(after, before) {
  if (!after || !before) return null
  const out = {}
  for (const [k, v] of Object.entries(after)) {
    if (typeof v === 'number') out[k] = v - (before[k] ?? 0)
    else if (v && typeof v === 'object' && !Array.isArray(v)) out[k] = diffCounts(v, before[k] ?? {})
  }
  return out
}

/**
 * Runs s7. `h` carries run.mjs's machinery: { loads, quick, log, launch, nextJson, stop,
 * addonEnv, dir, openssl, cleanups }. Returns a JSON-able result (see renderPageLoad).
 */
export async function scenarioPageLoad(h) {
  const { log } = h
  const { launchChromium, requireChromium } = await import('../../support/chromium.mjs')
  requireChromium()
  const cfg = {
    loads: h.loads,
    warmupLoads: !h.quick,
    // BENCH_QUICK checks the scenario end to end in under a minute: the delay of the targets only.
    // BENCH_S7_DELAYS=0,25,100 (a development knob) measures other delays.
    delaysMs: process.env.BENCH_S7_DELAYS ? process.env.BENCH_S7_DELAYS.split(',').map(Number) : h.quick ? [25] : DELAYS,
    settleMs: h.quick ? 1000 : 2000,
    quietMs: 300,
    loadTimeoutMs: 30000,
    modules: MODULES,
    graph: `main → ${APP.a} → ${APP.b} → ${APP.c}`,
  }
  const dir = join(h.dir, 's7')
  mkdirSync(join(dir, 'app'), { recursive: true })
  const P = await closedPort() // nothing listens here: a request that bypassed the proxy fails
  const name = `cmux-${ROUTE.morphId}-${ROUTE.scope}-${P}.${ROUTE.domainSuffix}`
  const made = makeCerts(dir, { openssl: h.openssl, caName: 'cmux s7 dev box test CA', leafName: name, altNames: [`DNS:${name}`] })
  // The CA goes in the chain the dev box sends: Chromium matches --ignore-certificate-errors-spki-list
  // against the chain it was given when the chain does not verify against the system roots.
  const certs = { caPem: made.caPem, certPem: made.leafPem + made.caPem, keyPem: made.keyPem }
  const testCaSpki = spkiHash(certs.caPem)

  const children = []
  const browsers = []
  const contexts = new Set()
  const start = async (label, mode, opts, env) => {
    const child = h.launch(label, process.execPath, [SERVERS, mode, JSON.stringify(opts)], { env })
    children.push(child)
    const info = await h.nextJson(child, 60000, `${label}'s ready line`)
    if (info.error) throw new Error(`${label}: ${info.error}`)
    child.info = info
    return child
  }
  const ask = (child, cmd) => {
    child.proc.stdin.write(JSON.stringify(cmd) + '\n')
    return h.nextJson(child, 10000, `an answer to ${cmd.cmd}`)
  }
  const closeAll = async () => {
    for (const c of contexts) await c.close().catch(() => {})
    for (const b of browsers) await b.close().catch(() => {})
    for (const c of children) await h.stop(c)
  }
  h.cleanups.push(() => {
    closeAll()
  })

  const result = { config: cfg, samples: [], notes: [] }
  try {
    const devbox = await start('s7 dev box', 'devbox', { dir: join(dir, 'app'), name, certPem: certs.certPem, keyPem: certs.keyPem })
    result.vite = devbox.info.vite
    log(`s7: Vite ${devbox.info.vite} on ${devbox.info.vitePort}, dev box stand-in ${name} on ${devbox.info.port}, ${devbox.info.modules} modules; page port ${P}`)
    const proxyOpts = { name, devboxPort: devbox.info.port, caPem: certs.caPem }
    const proxyA = await start('s7 rust proxy (a)', 'rust', proxyOpts, h.addonEnv)
    const proxyB = await start('s7 rust proxy (b)', 'rust', proxyOpts, h.addonEnv)
    const peer = await start('s7 node peer (d)', 'peer', { name, devboxPort: devbox.info.port })

    const pageUrl = `http://localhost:${P}/`
    const boxUrl = `https://${name}/`
    const variants = {
      a: {
        url: pageUrl,
        server: proxyA,
        args: [`--proxy-server=http://127.0.0.1:${proxyA.info.port}`, '--proxy-bypass-list=<-loopback>'],
      },
      b: {
        url: pageUrl,
        server: proxyB,
        args: [`--proxy-server=https://127.0.0.1:${proxyB.info.port}`, '--proxy-bypass-list=<-loopback>',
          `--ignore-certificate-errors-spki-list=${proxyB.info.spki}`],
      },
      c: {
        url: boxUrl,
        server: null,
        args: [`--host-resolver-rules=MAP ${name} 127.0.0.1:${devbox.info.port}`, `--ignore-certificate-errors-spki-list=${testCaSpki}`],
      },
      d: {
        url: boxUrl,
        server: peer,
        args: [`--proxy-server=http://127.0.0.1:${peer.info.port}`, `--ignore-certificate-errors-spki-list=${testCaSpki}`],
      },
    }
    for (const id of VARIANTS) {
      const v = variants[id]
      v.browser = await launchChromium({ args: v.args })
      browsers.push(v.browser)
      v.chromium = v.browser.version()
      v.profileArg = chromiumProfileArg(v.args[0])
      if (!v.profileArg) result.notes.push(`the processes of Chromium (${id}) were not found in /proc: its CPU time is not reported`)
    }
    result.chromium = variants.a.chromium
    result.flags = Object.fromEntries(VARIANTS.map((id) => [id, variants[id].args]))
    // Chromium's own connections right after launch (through the proxies too): let them settle.
    await sleep(cfg.settleMs)

    const snapshot = async (v) => ({
      devbox: (await ask(devbox, { cmd: 'stats' })).stats,
      server: v.server ? (await ask(v.server, { cmd: 'stats' })).stats : null,
      cpu: {
        chromium: chromiumCpu(v.profileArg),
        devbox: cpuOf(devbox.info.pid),
        server: v.server ? cpuOf(v.server.info.pid) : null,
        driver: process.cpuUsage(),
      },
    })

    /** One new context: a cold load, a pause, a warm reload. Returns [cold, warm]. */
    const sample = async (id, D, round, recorded) => {
      const v = variants[id]
      const context = await v.browser.newContext({ viewport: { width: 900, height: 600 } })
      contexts.add(context)
      const out = []
      try {
        const page = await context.newPage()
        // Failures only: the page's responses are counted from its resource timing entries, not from
        // Playwright's per-request events (which cost the driver and Chromium CPU on every request).
        const seen = { failures: [], errors: [] }
        page.on('requestfailed', (r) => seen.failures.push(`${r.url()} ${r.failure()?.errorText ?? '?'}`))
        page.on('pageerror', (e) => seen.errors.push(String(e)))
        // The proxy login, answered over CDP as app.on('login') answers it, for the document URL only. Every
        // variant gets the same CDP treatment ((c) never sees a 407): Fetch is enabled for each navigation and
        // disabled once it committed, because while it is enabled every request of the page passes through
        // DevTools' interception (even those no pattern matches), which made a load 20-30 % slower here.
        const cdp = await context.newCDPSession(page)
        const { username, password } = v.server?.info ?? { username: 'none', password: 'none' }
        const ignore = () => {}
        cdp.on('Fetch.authRequired', ({ requestId }) => {
          seen.authRequired++
          cdp.send('Fetch.continueWithAuth', {
            requestId,
            authChallengeResponse: { response: 'ProvideCredentials', username, password },
          }).catch(ignore)
        })
        cdp.on('Fetch.requestPaused', ({ requestId }) => cdp.send('Fetch.continueRequest', { requestId }).catch(ignore))
        seen.authRequired = 0
        for (const kind of ['cold', 'warm']) {
          if (kind === 'warm') await sleep(cfg.quietMs)
          const mark = { failures: seen.failures.length, errors: seen.errors.length }
          const before = await snapshot(v)
          const entry = { variant: id, delayMs: D, round, kind, recorded }
          try {
            await cdp.send('Fetch.enable', { handleAuthRequests: true, patterns: [{ urlPattern: v.url }] })
            const authBefore = seen.authRequired
            try {
              if (kind === 'cold') await page.goto(v.url, { waitUntil: 'commit', timeout: cfg.loadTimeoutMs })
              else await page.reload({ waitUntil: 'commit', timeout: cfg.loadTimeoutMs })
            } finally {
              await cdp.send('Fetch.disable').catch(ignore)
              entry.authChallenges = seen.authRequired - authBefore
            }
            await page.waitForFunction(() => typeof window.__appReady === 'number' || window.__appFailed, null, { timeout: cfg.loadTimeoutMs })
            const info = await page.evaluate(() => {
              const protocols = {}
              const bad = []
              const entries = performance.getEntriesByType('resource')
              for (const e of entries) {
                protocols[e.nextHopProtocol || '?'] = (protocols[e.nextHopProtocol || '?'] ?? 0) + 1
                if (e.responseStatus >= 400) bad.push(`${e.responseStatus} ${e.name}`)
              }
              const nav = performance.getEntriesByType('navigation')[0]
              return {
                readyMs: window.__appReady,
                failed: window.__appFailed ?? null,
                sum: document.getElementById('sum')?.textContent,
                document: nav?.nextHopProtocol ?? null,
                documentStatus: nav?.responseStatus ?? null,
                resources: protocols,
                responses: entries.length + 1,
                bad,
              }
            })
            entry.responses = info.responses
            entry.protocols = { document: info.document, resources: info.resources }
            if (info.bad.length) entry.badStatuses = info.bad.slice(0, 5).concat(info.bad.length > 5 ? [`… ${info.bad.length} in all`] : [])
            if (info.failed) entry.error = info.failed
            else {
              entry.ms = Math.round(info.readyMs * 10) / 10
              if (info.sum !== String(devbox.info.expectedSum)) entry.error = `#sum is ${info.sum}, expected ${devbox.info.expectedSum}`
            }
          } catch (e) {
            entry.error = String(e?.message ?? e).split('\n')[0]
          }
          await sleep(cfg.quietMs)
          const after = await snapshot(v)
          const ms = (x) => (x == null ? null : Math.round(x * 1000))
          entry.cpuMs = {
            chromium: v.profileArg ? ms(chromiumCpuSpent(after.cpu.chromium, before.cpu.chromium)) : null,
            devbox: ms(after.cpu.devbox - before.cpu.devbox),
            server: v.server ? ms(after.cpu.server - before.cpu.server) : null,
            driver: ms((after.cpu.driver.user + after.cpu.driver.system - before.cpu.driver.user - before.cpu.driver.system) / 1e6),
          }
          entry.devbox = diffCounts(after.devbox, before.devbox)
          delete entry.devbox?.lastErrors
          if (v.server) entry.server = diffCounts(after.server, before.server)
          const failures = seen.failures.slice(mark.failures)
          const bad = entry.badStatuses ?? []
          const errors = seen.errors.slice(mark.errors)
          if (failures.length) entry.failures = failures.slice(0, 5).concat(failures.length > 5 ? [`… ${failures.length} in all`] : [])
          if (errors.length) entry.pageErrors = errors.slice(0, 3)
          if (after.devbox.errors > before.devbox.errors) entry.devboxErrors = after.devbox.lastErrors
          out.push(entry)
          const conn = v.server
            ? id === 'd'
              ? `peer accepted ${entry.server?.accepted}, CONNECTs ${entry.server?.connects}`
              : `proxy accepted ${sumOf(entry.server?.accepted)} ${JSON.stringify(entry.server?.accepted)}, h2 streams ${entry.server?.http2Streams}`
            : `dev box TLS h2 ${entry.devbox?.tlsH2}, http/1.1 ${entry.devbox?.tlsHttp1}`
          log(`  s7 D=${D} ${recorded ? `round ${round}` : 'warm-up'} ${id} ${kind}: ${entry.ms != null ? `${entry.ms} ms` : 'no time'}` +
            `${entry.error ? ` ERROR ${entry.error}` : ''}; ${entry.responses} responses, ${entry.authChallenges} 407 answered, ${conn}` +
            `${failures.length ? `; ${failures.length} failed requests (${failures[0]})` : ''}${bad.length ? `; ≥ 400: ${bad.join(', ')}` : ''}` +
            `${entry.devboxErrors ? `; dev box → Vite errors: ${entry.devboxErrors.join(', ')}` : ''}; ` +
            `CPU ms: chromium ${entry.cpuMs.chromium}, dev box ${entry.cpuMs.devbox}, ${id === 'd' ? 'peer' : 'proxy'} ${entry.cpuMs.server ?? '—'}, driver ${entry.cpuMs.driver}`)
          if (entry.error && kind === 'cold') break
        }
      } finally {
        contexts.delete(context)
        await context.close().catch(() => {})
      }
      return out
    }

    for (const D of cfg.delaysMs) {
      await ask(devbox, { cmd: 'delay', ms: D })
      log(`s7: D = ${D} ms, ${cfg.loads} cold + warm loads per variant, variants alternating`)
      // Unrecorded warm-up, each variant once: Vite's transforms, the proxies' upstream connections, Chromium's caches.
      if (cfg.warmupLoads) for (const id of VARIANTS) result.samples.push(...(await sample(id, D, 0, false)))
      for (let round = 1; round <= cfg.loads; round++) {
        const order = VARIANTS.map((_, i) => VARIANTS[(i + round - 1) % VARIANTS.length])
        for (const id of order) result.samples.push(...(await sample(id, D, round, true)))
      }
    }
    result.devboxTotals = (await ask(devbox, { cmd: 'stats' })).stats
  } finally {
    await closeAll()
  }
  summarizePageLoad(result)
  return result
}
