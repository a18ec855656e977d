// bench/RESULTS.md and bench/results.json from what a run measured: the main
// table (s1-s6) with its targets, machine and method, s7's section, and the
// charts beside them. A run of only s7 (or only s1-s6) rewrites its own section
// and keeps the other's from the last run; notes written by hand between
// <!-- notes:begin --> and <!-- notes:end --> are kept as they are.

import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { BENCH, CFG, enabled, MAIN_SCENARIOS, ONLY, QUICK } from '../config.mjs'
import { writeCharts } from './charts.mjs'
import { renderPageLoad } from './pageload.mjs'
import { errors, raw, values } from './results.mjs'
import { buildReport } from './table.mjs'

/**
 * Writes the results of the run: `machine` (report/machine.mjs, with the load at its end),
 * `ctx.pageload` (s7's result, if it ran), the time and steal of each scenario.
 */
export async function writeResults({ machine, ctx, benchSeconds, scenarioTimes, scenarioSteal }) {
  const report = buildReport()
  const ranMain = MAIN_SCENARIOS.some(enabled)
  // The charts of what ran: the other section keeps its chart from the last run, as it keeps its table.
  const charts = await writeCharts(BENCH, { pageload: enabled('s7') ? ctx.pageload : null, med: ranMain ? report.med : null })
  const date = new Date().toISOString()
  const machineLines = [
    `- CPUs (nproc): ${machine.nproc}, ${machine.cpuModel}`,
    `- MemTotal: ${machine.memTotal}`,
    `- kernel: ${machine.kernel}`,
    `- node: ${machine.node}; \`proxy\` package ${machine.tools.proxyPackage}`,
    `- addon measured: ${machine.addon}`,
    `- tools: wrk ${machine.tools.wrk}, nginx ${machine.tools.nginx}, h2load (nghttp2) ${machine.tools.h2load}, curl ${machine.tools.curl}, OpenSSL ${machine.tools.openssl}`,
    `- load average (1, 5, 15 min) when the run started: ${machine.loadAverageAtStart}; when it ended: ${machine.loadAverageAtEnd}`,
    `- open-file limit of the child processes: ${machine.childrenNofile}`,
    `- CPU time taken by the hypervisor for other guests (steal, /proc/stat) during each scenario: ${
      Object.entries(scenarioSteal).map(([name, pct]) => `${name} ${pct.toFixed(1)} %`).join(', ') || 'n/a'}`,
  ]
  const md = [
    '# Benchmark: direct vs this proxy (Rust addon) vs a Node.js peer (`proxy` package)',
    '',
    `Command: \`npm run bench\` (\`node bench/run.mjs\`)${QUICK ? ' with BENCH_QUICK=1 (short runs: not representative)' : ''}${ONLY ? `, BENCH_ONLY=${[...ONLY].join(',')}` : ''}  `,
    `Date: ${date}; the measurements took ${benchSeconds.toFixed(0)} s.`,
    '',
    report.table,
    '',
    ...report.footnotes.map((f) => `${f}  `),
    '',
    ...(charts.throughput ? [`![Throughput of s1, s3 and s4: direct, this proxy, the Node.js peer and the nginx relay (median of rounds)](${charts.throughput})`, ''] : []),
    '## Targets',
    '',
    ...report.targetLines,
    '',
    '## Machine',
    '',
    ...machineLines,
    '',
    '## How each number is measured',
    '',
    ...report.how.map((h) => `- ${h}`),
    '',
  ].join('\n')
  const mainJson = {
    date, command: 'npm run bench', quick: QUICK, only: ONLY ? [...ONLY] : null, config: CFG, machine,
    seconds: { total: benchSeconds, ...scenarioTimes },
    stealPercent: scenarioSteal,
    medians: report.med, values, errors, rounds: raw, targets: report.targets, footnotes: report.footnotes,
  }

  // s7's section: this run's when s7 ran, else the last run's, kept as it was.
  const mdPath = join(BENCH, 'RESULTS.md')
  const jsonPath = join(BENCH, 'results.json')
  const prevMd = existsSync(mdPath) ? readFileSync(mdPath, 'utf8') : ''
  let prevJson = null
  try {
    prevJson = JSON.parse(readFileSync(jsonPath, 'utf8'))
  } catch {}
  const S7_SECTION = /<!-- s7:begin -->[\s\S]*?<!-- s7:end -->\n*/
  let s7Section = null
  let s7Json = prevJson?.pageload ?? null
  if (enabled('s7')) {
    const envs = ['BENCH_SKIP_BUILD', 'BENCH_QUICK', 'BENCH_ONLY', 'BENCH_ROUNDS'].filter((k) => process.env[k]).map((k) => `${k}=${process.env[k]}`)
    const command = `${envs.length ? envs.join(' ') + ' ' : ''}npm run bench`
    const machineLine = `Machine: ${machine.nproc} CPUs (${machine.cpuModel}), ${machine.memTotal}, node ${machine.node}; ` +
      `load average when s7 started ${ctx.pageload?.loadAverage?.start ?? '?'}, when it ended ${ctx.pageload?.loadAverage?.end ?? '?'}`
    if (ctx.pageload) {
      s7Section = renderPageLoad(ctx.pageload, { date, command, machineLine, quick: QUICK, chart: charts.pageload }).join('\n') + '\n\n'
      console.log('\n' + s7Section)
    } else {
      const message = raw.s7?.find((r) => r.error)?.error ?? 'no result'
      s7Section = ['<!-- s7:begin -->', '## s7: preview page load in Chromium (what a user feels)', '',
        `Command: \`${command}\`  `, `Date: ${date}. ${machineLine}.`, '', `**The scenario failed:** ${message}`, '<!-- s7:end -->'].join('\n') + '\n\n'
    }
    s7Json = { date, command, quick: QUICK, machine: { nproc: machine.nproc, cpuModel: machine.cpuModel, memTotal: machine.memTotal, kernel: machine.kernel, node: machine.node, addon: machine.addon },
      ...(ctx.pageload ?? { error: raw.s7?.find((r) => r.error)?.error ?? 'no result' }) }
  } else {
    s7Section = S7_SECTION.exec(prevMd)?.[0] ?? null
  }
  // The s7 section sits after the main table and its footnotes, before the main targets.
  const withS7 = (text) => placeSection(text, S7_SECTION, s7Section, '## Targets')
  // Notes written by hand (what each change bought, runs compared): kept as they are, before "Machine".
  const NOTES_SECTION = /<!-- notes:begin -->[\s\S]*?<!-- notes:end -->\n*/
  const notes = NOTES_SECTION.exec(prevMd)?.[0] ?? null
  const withNotes = (text) => placeSection(text, NOTES_SECTION, notes, '## Machine')
  if (ranMain || !prevMd) {
    writeFileSync(mdPath, withNotes(withS7(md)))
    writeFileSync(jsonPath, JSON.stringify({ ...mainJson, pageload: s7Json }, null, 2) + '\n')
  } else {
    // Only s7 ran: the main table, its targets and notes stay as the last run wrote them.
    writeFileSync(mdPath, withNotes(withS7(prevMd)))
    writeFileSync(jsonPath, JSON.stringify({ ...(prevJson ?? mainJson), pageload: s7Json }, null, 2) + '\n')
  }

  if (ranMain) {
    console.log('\n' + report.table + '\n')
    for (const f of report.footnotes) console.log(f)
    console.log('\nTargets:')
    for (const t of report.targetLines) console.log(t)
  }
  const drawn = Object.values(charts).map((file) => `, bench/${file}`).join('')
  console.log(`\nMeasurements took ${benchSeconds.toFixed(0)} s. Wrote bench/RESULTS.md${drawn} and bench/results.json.`)
}

/** `text` without what `pattern` matches, and with `section` (if any) put back before `heading`, or at the end. */
function placeSection(text, pattern, section, heading) {
  const base = text.replace(pattern, '')
  if (!section) return base
  const at = base.indexOf(`\n${heading}`)
  return at < 0 ? `${base.trimEnd()}\n\n${section}` : `${base.slice(0, at + 1)}${section}${base.slice(at + 1)}`
}
