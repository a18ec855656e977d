// The charts of the bench's report (bench/report/charts.mjs), drawn from a
// small sample of results as `npm run bench` records them: one labelled bar per
// median, none for a missing one, a panel per delay and load (s7) or per
// metric (throughput), and the files RESULTS.md links to.

import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, test } from 'vitest'
import { CHART_FILES, pageLoadSpec, throughputSpec, toSvg, writeCharts } from '../bench/report/charts.mjs'

/** s7's result, as scenarios/pageload.mjs leaves it: one delay, (d) failed on its warm load. */
const PAGELOAD = {
  config: { delaysMs: [25] },
  medians: {
    '25:cold': { a: 3549.9, b: 1843.5, c: 1703.9, d: 1713.9 },
    '25:warm': { a: 2752.2, b: 1249.1, c: 1353.3, d: null },
  },
}

/** Medians of the main table (metric → target → value); s4 has no peer, s3 no relay. */
const MEDIANS = {
  s1_rps: { direct: 109222.3, rust: 32068.5, peer: 6568.7, 'nginx-relay': 42904.4 },
  s1_p50: { direct: 216, rust: 1470, peer: 6808, 'nginx-relay': 1135 },
  s3_tunnel: { direct: 953.23, rust: 698.47, peer: 574.26, 'nginx-relay': null },
  s4_rps: { direct: 123105.8, rust: 37746.6, peer: null, 'nginx-relay': null },
}

/** The bars of an SVG drawn by Vega: the rect marks of each panel, counted. */
const barsPerPanel = (svg) => [...svg.matchAll(/<g class="mark-rect role-mark[^>]*>(.*?)<\/g>/g)].map((m) => m[1].split('<path').length - 1)
/** Every text the SVG shows. */
const texts = (svg) => [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1])

const dirs = []
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})

describe('the page-load chart of s7', () => {
  test('a panel per delay and load, a labelled bar per median, none for the failed load, the variants in the legend', async () => {
    const svg = await toSvg(pageLoadSpec(PAGELOAD))
    expect(svg).toMatch(/^<svg [^>]*xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
    expect(barsPerPanel(svg)).toEqual([4, 3])
    const shown = texts(svg)
    expect(shown).toEqual(expect.arrayContaining(['D = 25 ms, cold', 'D = 25 ms, warm']))
    expect(shown).toEqual(expect.arrayContaining(['3,550', '1,844', '1,704', '1,714', '2,752', '1,249', '1,353']))
    expect(shown).toEqual(expect.arrayContaining([
      '(a) proxy, http:// (HTTP/1.1)', '(b) proxy, https:// (h2)', '(c) direct to the dev box', '(d) node peer, CONNECT tunnel',
    ]))
  })

  test('nothing to draw when every load failed', () => {
    expect(pageLoadSpec({ config: { delaysMs: [25] }, medians: { '25:cold': {}, '25:warm': {} } })).toBeNull()
  })
})

describe('the throughput chart of the main table', () => {
  test('a panel per throughput row measured (not the latency rows), a labelled bar per target measured', async () => {
    const svg = await toSvg(throughputSpec(MEDIANS))
    expect(barsPerPanel(svg)).toEqual([4, 3, 2])
    const shown = texts(svg)
    expect(shown).toEqual(expect.arrayContaining(['s1 small GETs: req/s', 's3a TLS via CONNECT: MiB/s', 's4 h2, h2 upstream: req/s']))
    expect(shown).toEqual(expect.arrayContaining(['109,222', '32,069', '6,569', '42,904', '953.2', '698.5', '574.3', '123,106', '37,747']))
    expect(shown).toEqual(expect.arrayContaining(['direct', 'rust proxy', 'node peer', 'nginx relay']))
    expect(shown.join(' ')).not.toMatch(/p50/)
  })
})

test('writeCharts writes both SVG files where RESULTS.md links them, and only what it has data for', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cmux-bench-charts-'))
  dirs.push(dir)
  expect(await writeCharts(dir, { pageload: PAGELOAD, med: MEDIANS })).toEqual(CHART_FILES)
  for (const file of Object.values(CHART_FILES)) expect(readFileSync(join(dir, file), 'utf8')).toMatch(/^<svg [\s\S]*<\/svg>\n$/)

  const other = mkdtempSync(join(tmpdir(), 'cmux-bench-charts-'))
  dirs.push(other)
  expect(await writeCharts(other, { pageload: null, med: { s1_p50: MEDIANS.s1_p50 } })).toEqual({})
  expect(existsSync(join(other, CHART_FILES.pageload))).toBe(false)
  expect(existsSync(join(other, CHART_FILES.throughput))).toBe(false)
})
