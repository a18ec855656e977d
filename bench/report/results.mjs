// What the scenarios measured, round by round, for the report: every round's
// record, the numbers of each metric and target, and the errors in their place.

import { log } from '../config.mjs'

export const raw = {} // scenario -> list of round records
export const values = {} // metric -> target -> [numbers]
export const errors = {} // metric -> target -> [messages]

export function record(scenario, entry) {
  ;(raw[scenario] ??= []).push(entry)
}
export function put(metric, target, value) {
  ;((values[metric] ??= {})[target] ??= []).push(value)
}
export function putError(metric, target, message) {
  ;((errors[metric] ??= {})[target] ??= []).push(message)
}

/** Runs one measurement; on failure, every metric it feeds gets the error. */
export async function attempt(scenario, round, target, metrics, fn) {
  try {
    const res = await fn()
    record(scenario, { round, target, ...res })
    return res
  } catch (e) {
    const message = String(e?.message ?? e)
    log(`  ${scenario} round ${round} ${target}: ERROR ${message}`)
    record(scenario, { round, target, error: message })
    for (const m of metrics) putError(m, target, message)
    return null
  }
}

/** The median of the numbers in `xs` (nulls left out), or null when there is none. */
export function median(xs) {
  const v = (xs ?? []).filter((x) => x != null)
  if (v.length === 0) return null
  const s = [...v].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

/** `list` rotated by `n`: each round starts with another target. */
export const rotate = (list, n) => list.map((_, i) => list[(i + n) % list.length])
