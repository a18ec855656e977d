// The main table of RESULTS.md (s1-s6): medians of every metric and target,
// the ratios, the targets met or missed, and how each number is measured.

import { ALL_TARGETS, CFG, DEV_BOX, DEV_BOX_H1, RELAY } from '../config.mjs'
import { versionOf } from '../fixtures/tools.mjs'
import { errors, median, values } from './results.mjs'

const fmt = {
  int: (v) => Math.round(v).toLocaleString('en-US'),
  us: (v) => Math.round(v).toLocaleString('en-US'),
  d1: (v) => v.toFixed(1),
  d2: (v) => v.toFixed(2),
  d3: (v) => v.toFixed(3),
}

/** { med, table, footnotes, targets, targetLines, how } of what the scenarios recorded. */
export function buildReport() {
  const med = {}
  for (const metric of Object.keys({ ...values, ...errors })) {
    med[metric] = {}
    for (const t of ALL_TARGETS) med[metric][t] = median(values[metric]?.[t])
  }
  // Derived metrics (from medians).
  const diff = (a, b) => (a == null || b == null ? null : a - b)
  med.s2_added = { direct: null }
  for (const t of ALL_TARGETS.slice(1)) med.s2_added[t] = diff(med.s2_p50?.[t], med.s2_p50?.direct)
  med.s5_cost = { direct: null, rust: diff(med.s5_idle?.rust, med.s5_idle?.direct), peer: diff(med.s5_idle?.peer, med.s5_idle?.direct) }

  const notes = []
  const noteFor = (text) => {
    let i = notes.indexOf(text)
    if (i < 0) i = notes.push(text) - 1
    return `[${i + 1}]`
  }
  const NA_S4 = 'n/a: the `proxy` package relays a CONNECT blindly; it cannot terminate TLS inside a tunnel, serve HTTP/2 there or rewrite to the dev box, so it has no counterpart of this scenario.'
  const NA_DIRECT = '—'
  const RELAY_NOTE = 'nginx relay: a second nginx in one process (`master_process off`), an L7 relay of the same absolute-form GETs with the same Proxy-Authorization check and a keep-alive upstream pool (see "How each number is measured"); measured in s1, s2 and s6 only, as it has no CONNECT.'

  function cell(metric, target, format, { derivedFrom } = {}) {
    if (metric.startsWith('s4') && target === 'peer') return `n/a ${noteFor(NA_S4)}`
    const v = med[metric]?.[target]
    const errs = (errors[derivedFrom ?? metric]?.[target] ?? []).filter(Boolean)
    const derivedErrs = derivedFrom
      ? [...errs, ...(errors[derivedFrom]?.direct ?? []).filter(Boolean)]
      : errs
    if (v == null) {
      if (derivedErrs.length) return `error ${noteFor(`${metricTitle(metric)}, ${target}: ${derivedErrs[0]}`)}`
      return NA_DIRECT
    }
    const n = values[derivedFrom ?? metric]?.[target]?.length ?? 0
    let text = format(v)
    if (errs.length && !derivedFrom) text += ` ${noteFor(`${metricTitle(metric)}, ${target}: median of ${n} rounds; ${errs.length} failed: ${errs[0]}`)}`
    return text
  }
  function ratio(metric, a, b) {
    const x = med[metric]?.[a]
    const y = med[metric]?.[b]
    if (x == null || y == null || y === 0) return '—'
    return `${(x / y).toFixed(2)}×`
  }

  const rows = [
    { metric: 's1_rps', title: 's1 small GET, 50 conns: req/s', f: fmt.int },
    { metric: 's1_p50', title: 's1 small GET, 50 conns: p50 latency (µs)', f: fmt.us },
    { metric: 's1_p99', title: 's1 small GET, 50 conns: p99 latency (µs)', f: fmt.us },
    { metric: 's2_p50', title: 's2 small GET, 1 conn: p50 latency (µs)', f: fmt.us },
    { metric: 's2_p99', title: 's2 small GET, 1 conn: p99 latency (µs)', f: fmt.us },
    { metric: 's2_added', title: 's2 p50 added over direct (µs)', f: fmt.us, derivedFrom: 's2_p50', noDirectRatio: true },
    { metric: 's3_tunnel', title: `s3a ${CFG.bulkMiB} MiB over TLS through CONNECT (MiB/s)`, f: fmt.d1 },
    { metric: 's3_forward', title: `s3b ${CFG.bulkMiB} MiB plain forwarding (MiB/s)`, f: fmt.d1 },
    { metric: 's3_tunnel_cpu', title: 's3a proxy CPU per GiB through CONNECT (s)', f: fmt.d2, noDirectRatio: true },
    { metric: 's3_forward_cpu', title: 's3b proxy CPU per GiB forwarded (s)', f: fmt.d2, noDirectRatio: true },
    { metric: 's4_rps', title: 's4 HTTP/2 in intercepted tunnel, h2 upstream: req/s', f: fmt.int, noPeerRatio: true },
    { metric: 's4h1_rps', title: 's4 HTTP/2 in intercepted tunnel, HTTP/1.1 upstream: req/s', f: fmt.int, noPeerRatio: true },
    { metric: 's5_idle', title: 's5 idle RSS (MiB; direct = bare Node)', f: fmt.d1 },
    { metric: 's5_cost', title: 's5 idle RSS over bare Node (MiB)', f: fmt.d1, derivedFrom: 's5_idle', noDirectRatio: true },
    { metric: 's5_tunnel', title: 's5 RSS per idle CONNECT tunnel (KiB)', f: fmt.d1, noDirectRatio: true },
    { metric: 's5_more', title: `s5 … per tunnel of ${CFG.tunnels} more (KiB)`, f: fmt.d1, noDirectRatio: true },
    { metric: 's6_cpu', title: 's6 proxy CPU per 100k small requests (s)', f: fmt.d2, noDirectRatio: true },
    { metric: 's6_us', title: 's6 proxy CPU per small request, all threads (µs)', f: fmt.d1, noDirectRatio: true },
    { metric: 's6_user', title: 's6 … of which in user space (µs)', f: fmt.d1, noDirectRatio: true },
    { metric: 's6_kernel', title: 's6 … of which in the kernel (µs)', f: fmt.d1, noDirectRatio: true },
  ]
  function metricTitle(metric) {
    return rows.find((r) => r.metric === metric)?.title ?? metric
  }
  const shown = rows.filter((r) => {
    const src = r.derivedFrom ?? r.metric
    return values[src] || errors[src]
  })
  const withRelay = shown.some((r) => values[r.derivedFrom ?? r.metric]?.[RELAY] || errors[r.derivedFrom ?? r.metric]?.[RELAY])
  const lines = withRelay
    ? [
        `| metric (median of rounds) | direct | rust proxy | node peer | nginx relay ${noteFor(RELAY_NOTE)} | rust ÷ direct | rust ÷ peer | rust ÷ nginx relay |`,
        '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      ]
    : [
        '| metric (median of rounds) | direct | rust proxy | node peer | rust ÷ direct | rust ÷ peer |',
        '| --- | ---: | ---: | ---: | ---: | ---: |',
      ]
  for (const r of shown) {
    const d = r.derivedFrom ? NA_DIRECT : cell(r.metric, 'direct', r.f)
    lines.push(`| ${r.title} | ${d} | ${cell(r.metric, 'rust', r.f, r)} | ${cell(r.metric, 'peer', r.f, r)} | ` +
      (withRelay ? `${cell(r.metric, RELAY, r.f, r)} | ` : '') +
      `${r.noDirectRatio ? '—' : ratio(r.metric, 'rust', 'direct')} | ${r.noPeerRatio ? '—' : ratio(r.metric, 'rust', 'peer')} |` +
      (withRelay ? ` ${ratio(r.metric, 'rust', RELAY)} |` : ''))
  }

  // Targets.
  const targets = []
  const check = (name, value, ok, shownValue) => targets.push({ name, value, met: value == null ? null : ok, shown: value == null ? 'error' : shownValue })
  if (med.s1_rps) {
    const r = med.s1_rps.rust != null && med.s1_rps.peer ? med.s1_rps.rust / med.s1_rps.peer : null
    check('s1: rust ≥ 4× peer req/s', r, r >= 4, r != null && `${r.toFixed(2)}×`)
  }
  if (med.s2_p50) {
    const a = med.s2_added.rust
    check('s2: added p50 ≤ 50 µs', a, a <= 50, a != null && `${a.toFixed(0)} µs`)
  }
  // Issue #13: against the nginx relay, and stricter latency and tunnel targets.
  const relayShown = (v) => (v == null ? 'error' : v)
  if (med.s1_rps) {
    const r = med.s1_rps.rust != null && med.s1_rps[RELAY] ? med.s1_rps.rust / med.s1_rps[RELAY] : null
    check('s1 (issue #13): rust req/s ≥ 0.8× the nginx relay\'s', r, r >= 0.8,
      r != null && `${r.toFixed(2)}× (${fmt.int(med.s1_rps.rust)} against ${relayShown(med.s1_rps[RELAY] && fmt.int(med.s1_rps[RELAY]))} req/s)`)
  }
  if (med.s6_us) {
    const r = med.s6_us.rust != null && med.s6_us[RELAY] ? med.s6_us.rust / med.s6_us[RELAY] : null
    check('s6 (issue #13): rust CPU per request ≤ 1.5× the nginx relay\'s', r, r <= 1.5,
      r != null && `${r.toFixed(2)}× (${med.s6_us.rust.toFixed(1)} against ${med.s6_us[RELAY].toFixed(1)} µs per request)`)
  }
  if (med.s2_p50) {
    const a = med.s2_added.rust
    const b = med.s2_added[RELAY]
    check('s2 (issue #13): added p50 at one connection ≤ 30 µs', a, a <= 30,
      a != null && `${a.toFixed(0)} µs (the nginx relay adds ${b == null ? 'error' : `${b.toFixed(0)} µs`})`)
  }
  if (med.s3_tunnel) {
    const r = med.s3_tunnel.rust != null && med.s3_tunnel.direct ? med.s3_tunnel.rust / med.s3_tunnel.direct : null
    check('s3a (issue #13): blind CONNECT tunnel ≥ 95 % of direct', r, r >= 0.95, r != null && `${(r * 100).toFixed(1)} %`)
  }
  for (const [metric, what] of [['s3_tunnel', 's3a: TLS through CONNECT ≥ 90 % of direct'], ['s3_forward', 's3b: plain forwarding ≥ 90 % of direct']]) {
    if (!med[metric]) continue
    const r = med[metric].rust != null && med[metric].direct ? med[metric].rust / med[metric].direct : null
    check(what, r, r >= 0.9, r != null && `${(r * 100).toFixed(1)} %`)
  }
  if (med.s4_rps) check('s4: ≥ 30,000 req/s (h2 upstream)', med.s4_rps.rust, med.s4_rps.rust >= 30000, med.s4_rps.rust != null && `${fmt.int(med.s4_rps.rust)} req/s`)
  if (med.s4h1_rps) check('s4 (extra): ≥ 30,000 req/s with an HTTP/1.1 upstream', med.s4h1_rps.rust, med.s4h1_rps.rust >= 30000, med.s4h1_rps.rust != null && `${fmt.int(med.s4h1_rps.rust)} req/s`)
  if (med.s5_tunnel) {
    const kib = med.s5_tunnel.rust
    const more = med.s5_more?.rust
    check('s5: ≤ 8 KiB per idle tunnel', kib, kib <= 8, kib != null && `${kib.toFixed(1)} KiB`)
    check('s5 (issue #13): ≤ 2 KiB per idle tunnel', kib, kib <= 2,
      kib != null && `${kib.toFixed(1)} KiB (${more == null ? 'error' : `${more.toFixed(1)} KiB`} per tunnel of ${CFG.tunnels} more)`)
  }
  if (med.s5_idle) check('s5: addon idle cost ≤ 10 MiB over bare Node', med.s5_cost.rust, med.s5_cost.rust <= 10, med.s5_cost.rust != null && `${med.s5_cost.rust.toFixed(1)} MiB`)
  const targetLines = targets.map((t) => `- ${t.met == null ? '❔ unknown' : t.met ? '✅ met' : '❌ missed'} — ${t.name}: ${t.shown}`)

  const how = [
    `Each scenario ran ${CFG.rounds} round(s), alternating direct / rust proxy / node peer (order rotated each round); the table shows medians. Ratios are of medians; "rust ÷ direct" above 1 means more (of req/s, MiB/s) or slower (of latency).`,
    `s1/s2: wrk against nginx \`return 200 "ok"\` (keep-alive; ${CFG.s1Connections} connections, ${CFG.s1Threads} threads, ${CFG.s1Seconds} s; then 1 connection, 1 thread, ${CFG.s2Seconds} s). Through a proxy wrk connects to the proxy and sends absolute-form \`GET http://127.0.0.1:<nginx>/small\` with Proxy-Authorization (bench/fixtures/wrk.lua). One unrecorded ${CFG.warmupSeconds} s warm-up per proxy before s1.`,
    `s3: curl \`%{speed_download}\` for a ${CFG.bulkMiB} MiB file from nginx: (a) https through a CONNECT tunnel (\`curl -p\`, TLS end to end, context without route, so relayed blindly), direct = curl to nginx's TLS port; (b) http, absolute-form forwarding.`,
    `s4: h2load -n ${CFG.h2Requests} -c ${CFG.h2Clients} -m ${CFG.h2Streams} (${CFG.h2Clients * CFG.h2Streams} concurrent streams) → a Node TCP forwarder (each connection opens \`CONNECT localhost:3000\` on the proxy with a routed context) → the proxy terminates TLS (its own CA, ALPN h2) and rewrites to \`https://${DEV_BOX}\`, resolved to nginx's TLS + HTTP/2 port (bench CA trusted), so its upstream pool speaks h2. The extra row does the same with \`CONNECT localhost:3001\` → \`https://${DEV_BOX_H1}\`, resolved to nginx's TLS port without HTTP/2, so the upstream pool speaks HTTP/1.1. Direct (both rows) = h2load straight to nginx's h2 port, so the rust column also pays for the Node forwarder and a second TLS session. All ${CFG.h2Requests} requests must get a 2xx, else the cell is an error.`,
    `s5: fresh processes of bench/fixtures/proxy-child.mjs: "bare" (Node, no addon), "rust" (addon loaded, proxy started, contexts created), "peer" (\`proxy\` package listening). VmRSS from /proc/<pid>/status ${CFG.settleMs / 1000} s after start; then ${CFG.tunnels} idle CONNECT tunnels to nginx's HTTP port are opened from another process (50 handshakes at a time), and (RSS with tunnels − idle RSS) / ${CFG.tunnels} is reported per tunnel; then ${CFG.tunnels} more the same way, and the RSS they add ÷ ${CFG.tunnels} is the next row: what one more tunnel costs once the allocator holds the first batch's high-water mark (each handshake briefly holds hyper's 8 KiB read and 8 KiB write buffers and its connection task; their memory stays with the process once freed). The "direct" column of the idle row is the bare Node process.`,
    `s6: utime+stime of the proxy process, all its threads (/proc/<pid>/stat ÷ CLK_TCK), across each s1 run, divided by the requests wrk completed: × 100k (s), and in µs per request, also split into utime (user space) and stime (the kernel: for a relay on loopback mostly the TCP work of its own four syscalls per request). The proxy child is a Node process: its main thread is idle during the run. For the nginx relay, the one nginx process.`,
    `nginx relay (s1, s2, s6): a second nginx ${versionOfNginx()} started for s1/s2 with its own config: \`master_process off; worker_processes 1; daemon off;\` (one process, one thread, so its CPU is read from /proc/<pid>/stat like a proxy child's), \`listen 127.0.0.1:<port>\`, \`location / { if ($http_proxy_authorization != "Basic …") { return 407; } proxy_pass http://upstream_pool; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Proxy-Authorization ""; }\` with \`upstream upstream_pool { server 127.0.0.1:<nginx http port>; keepalive 64; keepalive_requests 1000000000; keepalive_timeout 300s; }\`, access log off, client keep-alive as the upstream nginx's. wrk sends it exactly what it sends the proxies (absolute-form \`GET http://127.0.0.1:<nginx>/small\`, the rust proxy's Proxy-Authorization value); checked at start: 407 without the header, 200 "ok" with it. No CONNECT, so no s3-s5. Rounds rotate direct / rust / peer / nginx relay.`,
  ]

  const table = lines.join('\n')
  const footnotes = notes.map((n, i) => `[${i + 1}] ${n}`)
  return { med, table, footnotes, targets, targetLines, how }
}

export function versionOfNginx() {
  return versionOf('nginx', ['-v'], /nginx\/(\S+)/)
}
