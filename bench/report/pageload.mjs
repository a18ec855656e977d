// The report of s7 (scenarios/pageload.mjs): medians, ratios and targets from
// its samples, and its section of RESULTS.md.

import { APP } from '../fixtures/vite-app.mjs'
import { median } from './results.mjs'

export const VARIANTS = ['a', 'b', 'c', 'd']
/** What each variant is, as the tables and the chart name it. */
export const VARIANT_TITLES = {
  a: '(a) proxy, `http://` (HTTP/1.1)',
  b: '(b) proxy, `https://` (h2)',
  c: '(c) direct to the dev box',
  d: '(d) node peer, CONNECT tunnel',
}

export const sumOf = (o) => Object.values(o ?? {}).reduce((x, y) => x + (Number(y) || 0), 0)

/** Medians, ratios and targets from result.samples (in place). */
export function summarizePageLoad(result) {
  const rec = result.samples.filter((s) => s.recorded)
  const medians = {}
  const ranges = {}
  const connections = {}
  const errors = {}
  for (const D of result.config.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const key = `${D}:${kind}`
      medians[key] = {}
      connections[key] = {}
      errors[key] = {}
      for (const id of VARIANTS) {
        const mine = rec.filter((s) => s.delayMs === D && s.kind === kind && s.variant === id)
        const ok = mine.filter((s) => !s.error && s.ms != null)
        medians[key][id] = median(ok.map((s) => s.ms))
        ranges[key] ??= {}
        ranges[key][id] = ok.length ? [Math.min(...ok.map((s) => s.ms)), Math.max(...ok.map((s) => s.ms))] : null
        const failed = mine.filter((s) => s.error || s.failures || s.badStatuses)
        errors[key][id] = { loads: mine.length, ok: ok.length, failed: failed.length, first: failed[0] ? (failed[0].error ?? failed[0].failures?.[0] ?? failed[0].badStatuses?.[0]) : null }
        const m = (f) => median(mine.map(f))
        connections[key][id] = {
          proxyAccepted: id === 'a' || id === 'b' ? m((s) => (s.server ? sumOf(s.server.accepted) : null)) : id === 'd' ? m((s) => s.server?.accepted) : null,
          proxyAcceptedBy: id === 'a' || id === 'b' ? mine[Math.floor(mine.length / 2)]?.server?.accepted ?? null : null,
          h2Streams: id === 'a' || id === 'b' ? m((s) => s.server?.http2Streams) : null,
          peerConnects: id === 'd' ? m((s) => s.server?.connects) : null,
          devboxTlsH2: m((s) => s.devbox?.tlsH2),
          devboxTlsHttp1: m((s) => s.devbox?.tlsHttp1),
          devboxRequests: m((s) => (s.devbox ? s.devbox.requestsH2 + s.devbox.requestsHttp1 : null)),
          responses: m((s) => s.responses),
          cpuMs: {
            chromium: m((s) => s.cpuMs?.chromium),
            devbox: m((s) => s.cpuMs?.devbox),
            server: m((s) => s.cpuMs?.server),
            driver: m((s) => s.cpuMs?.driver),
          },
        }
      }
    }
  }
  const ratio = (x, y) => (x == null || y == null || y === 0 ? null : x / y)
  const ratios = {}
  for (const key of Object.keys(medians)) {
    const t = medians[key]
    ratios[key] = { bc: ratio(t.b, t.c), ab: ratio(t.a, t.b), dc: ratio(t.d, t.c) }
  }
  const targets = []
  for (const kind of ['cold', 'warm']) {
    const r = ratios[`25:${kind}`] ?? {}
    targets.push({ name: `s7 D=25 ${kind}: (b) within 1.1× of (c)`, value: r.bc, met: r.bc == null ? null : r.bc <= 1.1, shown: r.bc == null ? 'error' : `${r.bc.toFixed(2)}×` })
    targets.push({ name: `s7 D=25 ${kind}: (a) ÷ (b) ≥ 1.6×`, value: r.ab, met: r.ab == null ? null : r.ab >= 1.6, shown: r.ab == null ? 'error' : `${r.ab.toFixed(2)}×` })
  }
  Object.assign(result, { medians, ranges, ratios, connections, errors, targets })
}

/**
 * The RESULTS.md section of s7 (markdown lines) from a result of scenarioPageLoad;
 * `chart`: the path (relative to RESULTS.md) of the chart of its first table, if drawn.
 */
export function renderPageLoad(result, { date, command, machineLine, quick, chart }) {
  const cfg = result.config
  const ms = (v) => (v == null ? 'error' : Math.round(v).toLocaleString('en-US'))
  const x = (v) => (v == null ? '—' : `${v.toFixed(2)}×`)
  const notes = []
  const note = (text) => {
    let i = notes.indexOf(text)
    if (i < 0) i = notes.push(text) - 1
    return ` [s7-${i + 1}]`
  }
  const cell = (key, id) => {
    const e = result.errors[key][id]
    let text = ms(result.medians[key][id])
    if (e.failed) text += note(`D=${key.replace(':', ' ms, ')}, ${id}: ${e.failed} of ${e.loads} loads had an error or failed requests; first: ${e.first}`)
    return text
  }
  const lines = [
    '| D (dev box delay) | load | (a) proxy http:// | (b) proxy https:// | (c) direct | (d) node peer | b ÷ c | a ÷ b | d ÷ c |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  for (const D of cfg.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const key = `${D}:${kind}`
      const r = result.ratios[key]
      lines.push(`| ${D} ms | ${kind} | ${VARIANTS.map((id) => cell(key, id)).join(' | ')} | ${x(r.bc)} | ${x(r.ab)} | ${x(r.dc)} |`)
    }
  }
  const spread = [
    '| D | load | (a) | (b) | (c) | (d) |',
    '| --- | --- | ---: | ---: | ---: | ---: |',
  ]
  for (const D of cfg.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const r = result.ranges[`${D}:${kind}`]
      spread.push(`| ${D} ms | ${kind} | ${VARIANTS.map((id) => (r[id] ? `${ms(r[id][0])}–${ms(r[id][1])}` : '—')).join(' | ')} |`)
    }
  }
  const conn = [
    '| D | load | (a) client connections / h2 streams | (b) client connections / h2 streams | (c) TLS connections to the dev box (h2 + http/1.1) | (d) peer connections / CONNECTs | dev box connections opened by (a), (b), (d) | responses the page got (document + resource timing entries; a, b, c, d) |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
  ]
  const n = (v) => (v == null ? '—' : String(v))
  for (const D of cfg.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const c = result.connections[`${D}:${kind}`]
      const box = (id) => (c[id].devboxTlsH2 == null ? '—' : `${c[id].devboxTlsH2 + c[id].devboxTlsHttp1}`)
      conn.push(`| ${D} ms | ${kind} | ${n(c.a.proxyAccepted)} / ${n(c.a.h2Streams)} | ${n(c.b.proxyAccepted)} / ${n(c.b.h2Streams)} | ` +
        `${n(c.c.devboxTlsH2)} + ${n(c.c.devboxTlsHttp1)} | ${n(c.d.proxyAccepted)} / ${n(c.d.peerConnects)} | ${box('a')}, ${box('b')}, ${box('d')} | ` +
        `${VARIANTS.map((id) => n(c[id].responses)).join(', ')} |`)
    }
  }
  const cpu = [
    '| D | load | (a) Chromium / dev box / proxy | (b) Chromium / dev box / proxy | (c) Chromium / dev box | (d) Chromium / dev box / peer |',
    '| --- | --- | ---: | ---: | ---: | ---: |',
  ]
  for (const D of cfg.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const c = result.connections[`${D}:${kind}`]
      const cell = (id) => [c[id].cpuMs.chromium, c[id].cpuMs.devbox, ...(id === 'c' ? [] : [c[id].cpuMs.server])].map(n).join(' / ')
      cpu.push(`| ${D} ms | ${kind} | ${VARIANTS.map(cell).join(' | ')} |`)
    }
  }
  const targetLines = result.targets.map((t) => `- ${t.met == null ? '❔ unknown' : t.met ? '✅ met' : '❌ missed'} — ${t.name}: ${t.shown}`)
  return [
    '<!-- s7:begin -->',
    '## s7: preview page load in Chromium (what a user feels)',
    '',
    `Command: \`${command}\`${quick ? ' with BENCH_QUICK=1 (one load each: not representative)' : ''}  `,
    `Date: ${date}. ${machineLine}; Chromium ${result.chromium}, Vite ${result.vite}.`,
    '',
    `Time (ms, median of ${cfg.loads} loads) from navigation start to the app's "all modules evaluated" marker, for a Vite app of ${cfg.modules} ES modules (${cfg.graph}) plus CSS and the HMR WebSocket, behind a TLS HTTP/2 dev box stand-in that holds every response D ms:`,
    '',
    ...lines,
    '',
    ...notes.map((t, i) => `[s7-${i + 1}] ${t}  `),
    ...(notes.length ? [''] : []),
    ...(chart ? [`![s7: page load time of each variant, cold and warm, at each dev box delay (ms, median)](${chart})`, ''] : []),
    `Spread of the same loads (fastest–slowest of ${cfg.loads}, ms):`,
    '',
    ...spread,
    '',
    'Connections per load (median): client connections the proxy accepted (`stats().accepted`, all kinds) and HTTP/2 streams it served (`stats().http2Streams`); for (c) and (d), what the dev box or the peer saw:',
    '',
    ...conn,
    '',
    'CPU time per load (ms, median; from /proc, between the reading before the navigation and the one after the marker): every process of that Chromium, the dev box process (Vite and the stand-in), and the proxy or peer process:',
    '',
    ...cpu,
    '',
    ...(result.notes.length ? [...result.notes.map((t) => `Note: ${t}.`), ''] : []),
    'Targets (the proxy is not tuned for them here):',
    '',
    ...targetLines,
    '',
    'How it is measured:',
    '',
    `- The app: a generated Vite project, \`src/main.js\` importing ${APP.a} modules that import ${APP.b} more that import ${APP.c} leaves (each a few hundred bytes to 1.5 KiB, exporting a number), a stylesheet linked from index.html and one imported by main.js; Vite's \`/@vite/client\` opens the HMR WebSocket. The last line of main.js's body sets \`window.__appReady = performance.now()\`, which runs once every module of the graph has been evaluated; that value (ms since the document's navigation start, the 407 round trip included) is the time, read the same way for every variant, and the page's sum of all exported numbers is checked each load. A module or stylesheet that fails to load ends the load as an error (an \`error\` listener in the page), as do failed requests; responses are counted and their statuses checked from the page's resource timing entries, so that no Playwright per-request event is subscribed (they cost CPU in the driver and in Chromium).`,
    `- The dev box: a real Vite ${result.vite} dev server (\`createServer\`, its own port) behind a stand-in for \`https://cmux-m-base-<P>.devbox.test\`: Node \`http2.createSecureServer({ allowHTTP1: true })\`, a test CA's EC leaf (CA in the chain), each request and WebSocket upgrade held D ms and then forwarded to Vite over keep-alive HTTP/1.1. Vite, the stand-in, each proxy and the driver are separate processes; all share the machine's CPUs with Chromium.`,
    `- Variants, each its own headless Chromium (\`launchChromium\` of support/chromium.mjs plus the flags below), alternating in rotated order each round: (a) \`--proxy-server=http://127.0.0.1:PORT --proxy-bypass-list=<-loopback>\`, page \`http://localhost:<P>/\` (nothing listens on P) with a routed context \`{ morphId: 'm', scope: 'base', domainSuffix: 'devbox.test' }\`, start options \`resolve\` (dev box name → stand-in) and \`upstreamCaPem\`, HTTP/2 on; (b) the same with \`--proxy-server=https://127.0.0.1:PORT\` and \`--ignore-certificate-errors-spki-list=<proxy.caSpkiSha256()>\` (a second proxy process, so that each one's counters belong to one browser); (c) \`https://cmux-m-base-<P>.devbox.test/\` with \`--host-resolver-rules="MAP <name> 127.0.0.1:<stand-in port>"\` and the test CA trusted by SPKI; (d) the same URL through the npm \`proxy\` package (Basic auth as in bench/fixtures/proxy-child.mjs; its CONNECT to <name>:443 is sent to the stand-in's port), which relays the TLS (and h2) between Chromium and the dev box blindly.`,
    `- Each round, per variant: a new browser context (cold: empty cache, no connections, no proxy credentials), \`page.goto\`; ${cfg.quietMs} ms later a \`page.reload()\` in the same context (warm: Vite answers the revalidations with 304). The 407 is answered over CDP (\`Fetch.enable({ handleAuthRequests: true, patterns: [{ urlPattern: <document URL> }] })\`, \`Fetch.authRequired\` → \`continueWithAuth\`), not with Playwright's proxy credentials (they pause every request and disable the cache); Fetch is enabled before each navigation and disabled once it committed, the same way for all four variants ((c) never gets a 407), because while it is enabled every request of the page passes through DevTools' interception, patterns or not, which made a direct load 20-30 % slower in a trial here. Later connections carry the credentials Chromium cached (the proxy's 407 count per load is in results.json). Vite's transforms are cached before the first load (every URL of the page requested once), and ${cfg.warmupLoads ? 'one unrecorded cold + warm load per variant precedes each D (the proxies\' upstream connections, Chromium\'s own caches)' : 'no unrecorded load precedes the rounds (BENCH_QUICK)'}. Chromium's background connections were let settle ${cfg.settleMs} ms after launch. Counters are read before each load and ${cfg.quietMs} ms after its marker.`,
    '<!-- s7:end -->',
  ]
}
