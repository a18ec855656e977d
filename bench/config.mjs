// What `npm run bench` measures and how long: the environment knobs, the
// scenario settings, the targets, and the log every part of the bench writes to.
//
//   BENCH_SKIP_BUILD=1      do not run the addon build (use the .node already there)
//   BENCH_QUICK=1           short runs, one round (checks the script, not the proxy)
//   BENCH_ONLY=s1,s3        run only these scenarios (s6 is measured inside s1)
//   BENCH_ROUNDS=N          rounds per scenario (default 3); for s7, cold + warm page
//                           loads per variant and delay (default 9, BENCH_QUICK 1)

import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const BENCH = dirname(fileURLToPath(import.meta.url))
export const root = join(BENCH, '..')
export const QUICK = process.env.BENCH_QUICK === '1'
export const ONLY = process.env.BENCH_ONLY ? new Set(process.env.BENCH_ONLY.split(',').map((s) => s.trim())) : null
export const CFG = {
  rounds: Number(process.env.BENCH_ROUNDS || (QUICK ? 1 : 3)),
  s1Seconds: QUICK ? 2 : 8,
  s1Connections: 50,
  s1Threads: 2,
  s2Seconds: QUICK ? 2 : 6,
  warmupSeconds: QUICK ? 1 : 2,
  // 1 GiB: at 1-2 GiB/s a 200 MiB download lasted 0.1-0.2 s and varied ±30 % between rounds.
  bulkMiB: QUICK ? 20 : 1024,
  h2Requests: QUICK ? 20000 : 200000,
  h2Clients: 4,
  h2Streams: 25,
  tunnels: QUICK ? 200 : 1000,
  settleMs: 2000,
  s7Loads: Number(process.env.BENCH_ROUNDS || (QUICK ? 1 : 9)),
}
export const enabled = (s) => !ONLY || ONLY.has(s)
/** The scenarios of the main table (s6 is measured inside s1); s7 has a section of its own. */
export const MAIN_SCENARIOS = ['s1', 's2', 's3', 's4', 's5', 's6']
export const TARGETS = ['direct', 'rust', 'peer']
/** s1/s2 (and s6) also run through the nginx relay. */
export const RELAY = 'nginx-relay'
export const SMALL_TARGETS = [...TARGETS, RELAY]
export const ALL_TARGETS = SMALL_TARGETS

const started = Date.now()
export const log = (...args) => console.log(`[bench ${((Date.now() - started) / 1000).toFixed(0).padStart(3)}s]`, ...args)

// The routed context rewrites a loopback CONNECT to localhost:<port> to this dev box
// name; the resolve option sends it to nginx: port 3000 to the TLS + HTTP/2 server
// (the upstream pool speaks h2), port 3001 to the TLS server without HTTP/2 (the
// upstream pool speaks HTTP/1.1).
export const DEV_BOX = 'cmux-b-s-3000.bench.test'
export const DEV_BOX_H1 = 'cmux-b-s-3001.bench.test'
