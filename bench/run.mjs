// `npm run bench`: direct vs this proxy (Rust addon) vs a Node.js peer proxy
// (npm package `proxy`), in one run, on loopback only. Prints one markdown table of
// medians and ratios, writes bench/RESULTS.md (with the charts in bench/charts/)
// and bench/results.json.
//
// Everything it needs is installed when missing: the npm packages and the addon
// (scripts/setup.mjs), and wrk, nginx-light, nghttp2-client (h2load), curl and
// openssl with apt-get. Each proxy runs in a Node child process of its own
// (fixtures/proxy-child.mjs) so that its CPU time and RSS can be read from /proc/<pid>.
// The environment knobs are in config.mjs; the scenarios in scenarios/, what they
// run against in fixtures/, the tables, charts and RESULTS.md in report/.
//
// s1 and s2 (and s6, CPU per request) also measure a fourth target, the "nginx relay":
// a second nginx, one process (master_process off), that relays the same absolute-form
// proxy requests to the same upstream nginx through a keep-alive pool: a reference for
// what an L7 relay costs on this machine (issue #13). It has no CONNECT, so it has no
// row in s3-s5.
//
// s7 (scenarios/pageload.mjs) is the page load a user feels: a Vite app of 501 modules in
// headless Chromium through the proxy (http:// and https://), straight to the dev box,
// and through the peer. A run of only s7 (or only s1-s6) rewrites its own section of
// bench/RESULTS.md and bench/results.json and keeps the other's from the last run.
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import os from 'node:os'
import { join } from 'node:path'
import { buildAddon, installNodePackages } from '../scripts/setup.mjs'
import { CFG, DEV_BOX, DEV_BOX_H1, enabled, log, MAIN_SCENARIOS, ONLY, QUICK, RELAY } from './config.mjs'
import { makeCerts } from './fixtures/certs.mjs'
import { makeBulkFile, startNginx, startNginxRelay } from './fixtures/nginx.mjs'
import { cpuTimes, stealPercent } from './fixtures/proc.mjs'
import { children, killGroup, launch, nextJson, NOFILE_EFFECTIVE, stop } from './fixtures/processes.mjs'
import { addon, snapshotAddon, startProxyChild } from './fixtures/proxies.mjs'
import { ensureTools, need } from './fixtures/tools.mjs'
import { machineDescription } from './report/machine.mjs'
import { writeResults } from './report/results-md.mjs'
import { record } from './report/results.mjs'
import { scenarioBulk } from './scenarios/bulk.mjs'
import { scenarioH2 } from './scenarios/h2.mjs'
import { scenarioMemory } from './scenarios/memory.mjs'
import { scenarioPageLoad } from './scenarios/pageload.mjs'
import { scenarioSmall } from './scenarios/small.mjs'

const ctx = { cleanups: [], proxyErrors: {} }
let tmpDir = null
let shuttingDown = false

async function shutdown() {
  if (shuttingDown) return
  shuttingDown = true
  for (const fn of ctx.cleanups.splice(0)) {
    try {
      fn()
    } catch {}
  }
  await Promise.all([...children].map((c) => stop(c, 1500)))
  if (tmpDir) rmSync(tmpDir, { recursive: true, force: true })
}

process.on('exit', () => {
  for (const c of children) killGroup(c, 'SIGKILL')
  if (tmpDir) rmSync(tmpDir, { recursive: true, force: true })
})
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    console.error(`\n${sig}: stopping every child process`)
    shutdown().finally(() => process.exit(130))
  })
}

/** s7, with the machinery of this run; its result goes to ctx.pageload. */
async function runPageLoad(ctx) {
  const loadAtStart = os.loadavg().map((x) => x.toFixed(2)).join(' ')
  const t = Date.now()
  ctx.pageload = await scenarioPageLoad({
    loads: CFG.s7Loads,
    quick: QUICK,
    log,
    launch,
    nextJson,
    stop,
    addonEnv: addon.env,
    dir: tmpDir,
    openssl: need('openssl'),
    cleanups: ctx.cleanups,
  })
  ctx.pageload.seconds = (Date.now() - t) / 1000
  ctx.pageload.loadAverage = { start: loadAtStart, end: os.loadavg().map((x) => x.toFixed(2)).join(' ') }
}

async function main() {
  installNodePackages()
  if (process.env.BENCH_SKIP_BUILD !== '1') buildAddon()
  ensureTools()
  const machine = machineDescription()
  const benchStarted = Date.now()
  log(`machine: ${machine.nproc} CPUs (${machine.cpuModel}), ${machine.memTotal}, ${machine.kernel}, node ${machine.node}; load ${machine.loadAverageAtStart}`)
  log(`config: ${JSON.stringify(CFG)}${ONLY ? ` only ${[...ONLY].join(',')}` : ''}; children's ulimit -n: ${NOFILE_EFFECTIVE}`)

  tmpDir = mkdtempSync(join(os.tmpdir(), 'cmux-bench-'))
  chmodSync(tmpDir, 0o755)
  snapshotAddon(tmpDir)
  machine.addon = addon.file ? `${addon.file} (built ${addon.built}, sha256 ${addon.sha256}…)` : 'as index.js finds it'
  log(`addon: ${machine.addon}`)
  if (MAIN_SCENARIOS.some(enabled)) {
    ctx.certs = makeCerts(tmpDir, {
      openssl: need('openssl'),
      caName: 'cmux bench CA',
      leafName: 'localhost',
      altNames: ['DNS:localhost', 'IP:127.0.0.1', `DNS:${DEV_BOX}`, `DNS:${DEV_BOX_H1}`],
    })
    mkdirSync(join(tmpDir, 'www'), { recursive: true })
    if (enabled('s3')) makeBulkFile(join(tmpDir, 'www', 'bulk'), CFG.bulkMiB)
    ctx.nginx = await startNginx(tmpDir, ctx.certs)
    log(`nginx: http ${ctx.nginx.ports.http}, https ${ctx.nginx.ports.tls}, h2 ${ctx.nginx.ports.h2}`)
  }

  if (ctx.nginx) ctx.proxyOptions = {
    resolve: { [`${DEV_BOX}:443`]: `127.0.0.1:${ctx.nginx.ports.h2}`, [`${DEV_BOX_H1}:443`]: `127.0.0.1:${ctx.nginx.ports.tls}` },
    upstreamCaPem: [ctx.certs.caPem],
    route: { morphId: 'b', scope: 's', domainSuffix: 'bench.test' },
  }
  const perf = ['s1', 's2', 's3', 's4'].some(enabled)
  if (perf) {
    for (const mode of ['rust', 'peer']) {
      try {
        ctx[mode] = await startProxyChild(mode, mode === 'rust' ? ctx.proxyOptions : {})
        log(`${mode} proxy: pid ${ctx[mode].pid}, port ${ctx[mode].info.port}`)
      } catch (e) {
        ctx.proxyErrors[mode] = `the ${mode} proxy did not start: ${e.message}`
        log(ctx.proxyErrors[mode])
      }
    }
  }
  if (enabled('s1') || enabled('s2')) {
    // The relay checks the same Proxy-Authorization value as the rust proxy's (a random
    // one of the same shape if the rust proxy did not start).
    const auth = ctx.rust?.auth ?? 'Basic ' + Buffer.from(`${randomBytes(8).toString('hex')}:${randomBytes(16).toString('hex')}`).toString('base64')
    try {
      ctx.relay = await startNginxRelay(tmpDir, ctx.nginx.ports.http, auth)
      log(`nginx relay: pid ${ctx.relay.pid} (${ctx.relay.info.threads} thread${ctx.relay.info.threads === 1 ? '' : 's'}), port ${ctx.relay.info.port}`)
    } catch (e) {
      ctx.proxyErrors[RELAY] = e.message
      log(e.message)
    }
  }
  const scenarioTimes = {}
  const scenarioSteal = {}
  const timed = async (name, fn) => {
    const t = Date.now()
    const cpu0 = cpuTimes()
    try {
      await fn(ctx)
    } catch (e) {
      log(`${name}: ERROR ${e.message}`)
      record(name, { error: e.message })
    }
    scenarioTimes[name] = (Date.now() - t) / 1000
    scenarioSteal[name] = stealPercent(cpu0, cpuTimes())
  }
  if (enabled('s1') || enabled('s2')) await timed('s1+s2', scenarioSmall)
  await stop(ctx.relay)
  if (enabled('s3')) await timed('s3', scenarioBulk)
  if (enabled('s4')) await timed('s4', scenarioH2)
  await stop(ctx.rust)
  await stop(ctx.peer)
  if (enabled('s5')) await timed('s5', scenarioMemory)
  if (enabled('s7')) await timed('s7', runPageLoad)
  const benchSeconds = (Date.now() - benchStarted) / 1000
  machine.loadAverageAtEnd = os.loadavg().map((x) => x.toFixed(2)).join(' ')

  await writeResults({ machine, ctx, benchSeconds, scenarioTimes, scenarioSteal })
}

let exitCode = 0
try {
  await main()
} catch (e) {
  console.error(`bench failed: ${e?.stack ?? e}`)
  exitCode = 1
} finally {
  await shutdown()
}
process.exit(exitCode)
