// The charts beside RESULTS.md's tables, as SVG files: the page load of s7
// and the throughput of s1, s3 and s4, drawn by Vega-Lite (compiled to Vega,
// rendered headless to SVG: no browser, no native module). Run as a script,
// it draws both again from a results.json: `node bench/report/charts.mjs [results.json]`.

import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import * as vega from 'vega'
import { compile } from 'vega-lite'
import { VARIANT_TITLES, VARIANTS } from './pageload.mjs'

/** Where RESULTS.md finds them (relative to it), and where they are written. */
export const CHART_FILES = { pageload: 'charts/pageload.svg', throughput: 'charts/throughput.svg' }

/** The rows of the main table that measure throughput, as the chart's panels name them. */
export const THROUGHPUT = [
  { metric: 's1_rps', title: 's1 small GETs: req/s', digits: 0 },
  { metric: 's3_tunnel', title: 's3a TLS via CONNECT: MiB/s', digits: 1 },
  { metric: 's3_forward', title: 's3b forwarded: MiB/s', digits: 1 },
  { metric: 's4_rps', title: 's4 h2, h2 upstream: req/s', digits: 0 },
  { metric: 's4h1_rps', title: 's4 h2, HTTP/1.1 upstream: req/s', digits: 0 },
]
export const TARGET_TITLES = { direct: 'direct', rust: 'rust proxy', peer: 'node peer', 'nginx-relay': 'nginx relay' }

const number = (v, digits) => v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
const plain = (title) => title.replaceAll('`', '')

/** Bars of `value` per `group`, one panel per `panel` value, each bar labelled with `label`. */
function barPanels({ rows, groups, panels, columns, independentY, yTitle }) {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    data: { values: rows },
    columns,
    facet: { field: 'panel', type: 'nominal', sort: panels, header: { title: null, labelFontSize: 12, labelFontWeight: 'bold' } },
    spec: {
      width: 200,
      height: 150,
      encoding: {
        x: { field: 'group', type: 'nominal', sort: groups, axis: null },
        y: { field: 'value', type: 'quantitative', title: yTitle, axis: { grid: true, format: ',~f' } },
      },
      layer: [
        { mark: { type: 'bar', tooltip: true }, encoding: { color: { field: 'group', type: 'nominal', sort: groups, title: null, legend: { orient: 'bottom', columns: 2, labelLimit: 400, columnPadding: 24 } } } },
        { mark: { type: 'text', dy: -5, fontSize: 10 }, encoding: { text: { field: 'label' } } },
      ],
    },
    resolve: { scale: { y: independentY ? 'independent' : 'shared' } },
    config: { font: 'sans-serif', view: { stroke: null } },
  }
}

/** The Vega-Lite spec of s7's first table: load time per variant, one panel per delay and load (null: no time to draw). */
export function pageLoadSpec(result) {
  const rows = []
  const panels = []
  for (const D of result.config.delaysMs) {
    for (const kind of ['cold', 'warm']) {
      const panel = `D = ${D} ms, ${kind}`
      panels.push(panel)
      for (const id of VARIANTS) {
        const ms = result.medians[`${D}:${kind}`]?.[id]
        if (ms != null) rows.push({ panel, group: plain(VARIANT_TITLES[id]), value: ms, label: number(Math.round(ms), 0) })
      }
    }
  }
  if (rows.length === 0) return null
  const groups = VARIANTS.map((id) => plain(VARIANT_TITLES[id]))
  return barPanels({ rows, groups, panels, columns: 2, independentY: false, yTitle: 'ms to all modules evaluated' })
}

/** The Vega-Lite spec of the throughput rows of the main table (`med`: metric → target → median; null: nothing to draw). */
export function throughputSpec(med) {
  const rows = []
  const shown = THROUGHPUT.filter((t) => med[t.metric])
  for (const { metric, title, digits } of shown) {
    for (const [target, name] of Object.entries(TARGET_TITLES)) {
      const v = med[metric][target]
      if (v != null) rows.push({ panel: title, group: name, value: v, label: number(v, digits) })
    }
  }
  if (rows.length === 0) return null
  return barPanels({ rows, groups: Object.values(TARGET_TITLES), panels: shown.map((t) => t.title), columns: 3, independentY: true, yTitle: null })
}

/** A Vega-Lite spec drawn as an SVG document. */
export async function toSvg(spec) {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}

/**
 * Writes the charts of what this run measured into `benchDir` (CHART_FILES):
 * the page load when `pageload` is a result of s7, the throughput when `med`
 * has a throughput row. Returns which it wrote: { pageload, throughput } (paths relative to benchDir).
 */
export async function writeCharts(benchDir, { pageload, med }) {
  const written = {}
  const write = async (name, spec) => {
    if (!spec) return
    const file = join(benchDir, CHART_FILES[name])
    mkdirSync(dirname(file), { recursive: true })
    writeFileSync(file, (await toSvg(spec)) + '\n')
    written[name] = CHART_FILES[name]
  }
  if (pageload?.medians) await write('pageload', pageLoadSpec(pageload))
  if (med) await write('throughput', throughputSpec(med))
  return written
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const benchDir = fileURLToPath(new URL('..', import.meta.url))
  const json = JSON.parse(readFileSync(process.argv[2] ?? join(benchDir, 'results.json'), 'utf8'))
  const written = await writeCharts(benchDir, { pageload: json.pageload, med: json.medians })
  console.log(`wrote ${Object.values(written).map((f) => `bench/${f}`).join(', ') || 'nothing (no results to draw)'}`)
}
