// `npm run bench`: direct vs this proxy (Rust addon) vs a Node.js peer proxy
// (npm package `proxy`), in one run, on loopback only. Prints one markdown table of
// medians and ratios, writes bench/RESULTS.md and bench/results.json.
//
// Everything it needs is installed when missing: the npm packages and the addon
// (scripts/setup.mjs), and wrk, nginx-light, nghttp2-client (h2load), curl and
// openssl with apt-get. Each proxy runs in a Node child process of its own
// (bench/child.mjs) so that its CPU time and RSS can be read from /proc/<pid>.
//
// Environment knobs (for development; the defaults are the benchmark):
//   BENCH_SKIP_BUILD=1      do not run the addon build (use the .node already there)
//   BENCH_QUICK=1           short runs, one round (checks the script, not the proxy)
//   BENCH_ONLY=s1,s3        run only these scenarios (s6 is measured inside s1)
//
// s1 and s2 (and s6, CPU per request) also measure a fourth target, the "nginx relay":
// a second nginx, one process (master_process off), that relays the same absolute-form
// proxy requests to the same upstream nginx through a keep-alive pool: a reference for
// what an L7 relay costs on this machine (issue #13). It has no CONNECT, so it has no
// row in s3-s5.
//   BENCH_ROUNDS=N          rounds per scenario (default 3); for s7, cold + warm page
//                           loads per variant and delay (default 9, BENCH_QUICK 1)
//
// s7 (bench/pageload.mjs) is the page load a user feels: a Vite app of 501 modules in
// headless Chromium through the proxy (http:// and https://), straight to the dev box,
// and through the peer. A run of only s7 (or only s1-s6) rewrites its own section of
// bench/RESULTS.md and bench/results.json and keeps the other's from the last run.
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs'
import { createHash, randomBytes } from 'node:crypto'
import http from 'node:http'
import net from 'node:net'
import os from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { buildAddon, installNodePackages, root } from '../scripts/setup.mjs'
import { renderPageLoad, scenarioPageLoad } from './pageload.mjs'

const BENCH = join(root, 'bench')
const QUICK = process.env.BENCH_QUICK === '1'
const ONLY = process.env.BENCH_ONLY ? new Set(process.env.BENCH_ONLY.split(',').map((s) => s.trim())) : null
const CFG = {
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
const enabled = (s) => !ONLY || ONLY.has(s)
/** The scenarios of the main table (s6 is measured inside s1); s7 has a section of its own. */
const MAIN_SCENARIOS = ['s1', 's2', 's3', 's4', 's5', 's6']
const TARGETS = ['direct', 'rust', 'peer']
/** s1/s2 (and s6) also run through the nginx relay. */
const RELAY = 'nginx-relay'
const SMALL_TARGETS = [...TARGETS, RELAY]
// What one s1 round records per target (s6 is its proxy CPU, read around the same wrk run).
const S1_METRICS = ['s1_rps', 's1_p50', 's1_p99', 's6_cpu', 's6_us', 's6_user', 's6_kernel']
const ALL_TARGETS = SMALL_TARGETS
const started = Date.now()
const log = (...args) => console.log(`[bench ${((Date.now() - started) / 1000).toFixed(0).padStart(3)}s]`, ...args)

// ---------------------------------------------------------------------------
// Child processes: every one in its own process group (killed as a group at the
// end, also on failure or Ctrl-C), with a raised `ulimit -n`, and with
// PR_SET_PDEATHSIG (setpriv) so that none outlives this script even if it is
// SIGKILLed. Node children also exit when their stdin (the lifeline) closes.

const children = new Set()
const HAVE_SETPRIV = spawnSync('sh', ['-c', 'setpriv --help 2>/dev/null | grep -q pdeathsig']).status === 0
const NOFILE = 65536
const RAISE_NOFILE = `ulimit -n ${NOFILE} 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null`
/** The open-file limit the children get. */
const NOFILE_EFFECTIVE = Number(spawnSync('sh', ['-c', `${RAISE_NOFILE}; ulimit -n`]).stdout?.toString().trim()) || 0

function cleanEnv(extra = {}) {
  const env = { ...process.env, ...extra }
  for (const k of Object.keys(env)) if (/^(https?|all|no|ftp)_proxy$/i.test(k)) delete env[k]
  return env
}

function launch(name, cmd, args, { env, pdeathsig = true } = {}) {
  let argv = ['sh', '-c', `${RAISE_NOFILE}; exec "$@"`, 'sh', cmd, ...args]
  if (HAVE_SETPRIV && pdeathsig) argv = ['setpriv', '--pdeathsig', 'KILL', '--', ...argv]
  const proc = spawn(argv[0], argv.slice(1), { cwd: root, env: cleanEnv(env), stdio: ['pipe', 'pipe', 'pipe'], detached: true })
  const child = { name, proc, pid: proc.pid, stdout: '', stderr: '', lineWaiters: [], lines: [], exit: null }
  child.exited = new Promise((resolve) => {
    proc.on('close', (code, signal) => {
      child.exit = { code, signal }
      children.delete(child)
      for (const w of child.lineWaiters.splice(0)) w.reject(new Error(`${name} exited (${signal ?? `code ${code}`}): ${tail(child.stderr || child.stdout)}`))
      resolve(child.exit)
    })
    proc.on('error', (e) => {
      child.exit = { code: -1, signal: null, error: e }
      children.delete(child)
      child.stderr += String(e)
      for (const w of child.lineWaiters.splice(0)) w.reject(e)
      resolve(child.exit)
    })
  })
  let partial = ''
  proc.stdout.on('data', (d) => {
    const s = d.toString()
    child.stdout += s
    if (child.stdout.length > 1 << 20) child.stdout = child.stdout.slice(-(1 << 19))
    partial += s
    let nl
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl)
      partial = partial.slice(nl + 1)
      const w = child.lineWaiters.find((x) => x.test(line))
      if (w) {
        child.lineWaiters.splice(child.lineWaiters.indexOf(w), 1)
        w.resolve(line)
      } else child.lines.push(line)
    }
  })
  proc.stderr.on('data', (d) => {
    child.stderr += d.toString()
    if (child.stderr.length > 1 << 20) child.stderr = child.stderr.slice(-(1 << 19))
  })
  proc.stdin.on('error', () => {})
  children.add(child)
  return child
}

/** The next stdout line of `child` that parses as a JSON object. */
function nextJson(child, timeoutMs, what = 'an answer') {
  const test = (line) => line.trim().startsWith('{')
  const queued = child.lines.findIndex(test)
  if (queued >= 0) return Promise.resolve(JSON.parse(child.lines.splice(queued, 1)[0]))
  if (child.exit) return Promise.reject(new Error(`${child.name} exited: ${tail(child.stderr || child.stdout)}`))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.lineWaiters.splice(child.lineWaiters.indexOf(waiter), 1)
      reject(new Error(`${child.name}: no ${what} within ${timeoutMs} ms; stderr: ${tail(child.stderr)}`))
    }, timeoutMs)
    const waiter = {
      test,
      resolve: (line) => (clearTimeout(timer), resolve(JSON.parse(line))),
      reject: (e) => (clearTimeout(timer), reject(e)),
    }
    child.lineWaiters.push(waiter)
  })
}

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal)
  } catch {
    try {
      process.kill(child.pid, signal)
    } catch {}
  }
}

async function stop(child, graceMs = 2000) {
  if (!child || child.exit) return
  try {
    child.proc.stdin.end()
  } catch {}
  killGroup(child, 'SIGTERM')
  const done = await Promise.race([child.exited, sleep(graceMs).then(() => null)])
  if (!done) {
    killGroup(child, 'SIGKILL')
    await child.exited
  }
}

/** Runs a bounded command to completion (killed after `timeoutMs`). */
async function runTool(name, cmd, args, { timeoutMs = 120000, env } = {}) {
  const child = launch(name, cmd, args, { env })
  child.proc.stdin.end()
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    killGroup(child, 'SIGKILL')
  }, timeoutMs)
  const { code, signal, error } = await child.exited
  clearTimeout(timer)
  return { code, signal, error, timedOut, stdout: child.stdout, stderr: child.stderr }
}

function tail(text, n = 300) {
  const t = String(text ?? '').trim().replace(/\s+/g, ' ')
  return t.length > n ? '…' + t.slice(-n) : t
}

function failure(what, r) {
  if (r.timedOut) return `${what} timed out`
  if (r.error) return `${what} could not start: ${r.error.message}`
  return `${what} failed (${r.signal ?? `exit ${r.code}`}): ${tail(r.stderr || r.stdout)}`
}

// ---------------------------------------------------------------------------
// /proc readings

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK']).stdout?.toString().trim()) || 100

/** A process's CPU time, all threads: user, kernel and their sum, in seconds. */
function cpuSplit(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  const user = Number(fields[11]) / CLK_TCK
  const kernel = Number(fields[12]) / CLK_TCK
  return { user, kernel, total: user + kernel }
}

function cpuSeconds(pid) {
  return cpuSplit(pid).total
}

/** The machine's CPU time counters (/proc/stat, all CPUs, in ticks). */
function cpuTimes() {
  const [, ...fields] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/)
  const ticks = fields.map(Number)
  return { total: ticks.slice(0, 8).reduce((a, b) => a + b, 0), steal: ticks[7] ?? 0 }
}

/**
 * Share of the machine's CPU time the hypervisor gave to others between two readings: on a
 * VM shared with busy neighbours, runs of the same binary differ by a third.
 */
function stealPercent(before, after) {
  const total = after.total - before.total
  return total > 0 ? ((after.steal - before.steal) / total) * 100 : 0
}

function rssKiB(pid) {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))[1])
}

// ---------------------------------------------------------------------------
// Tools

const TOOLS = { wrk: 'wrk', nginx: 'nginx-light', h2load: 'nghttp2-client', curl: 'curl', openssl: 'openssl' }
const toolPath = {}

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`])
  if (r.status === 0) return r.stdout.toString().trim()
  for (const dir of ['/usr/sbin', '/usr/local/sbin', '/sbin']) if (existsSync(join(dir, cmd))) return join(dir, cmd)
  return null
}

function ensureTools() {
  for (const cmd of Object.keys(TOOLS)) toolPath[cmd] = which(cmd)
  const missing = Object.keys(TOOLS).filter((c) => !toolPath[c])
  if (missing.length === 0) return
  const packages = [...new Set(missing.map((c) => TOOLS[c]))]
  log(`installing ${packages.join(' ')} with apt-get (missing: ${missing.join(', ')})`)
  const asRoot = process.getuid?.() === 0
  const apt = asRoot ? ['apt-get'] : ['sudo', '-n', 'apt-get']
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  // Keep the package's own nginx service from starting on port 80 while it installs.
  const policy = '/usr/sbin/policy-rc.d'
  const addedPolicy = asRoot && !existsSync(policy)
  if (addedPolicy) writeFileSync(policy, '#!/bin/sh\nexit 101\n', { mode: 0o755 })
  try {
    const opts = { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }
    for (const args of [['update', '-qq'], ['install', '-y', '-qq', '--no-install-recommends', ...packages]]) {
      const r = spawnSync(apt[0], [...apt.slice(1), ...args], opts)
      if (r.status !== 0) log(`${apt.join(' ')} ${args[0]} failed (${r.signal ?? `exit ${r.status}`}): ${tail(r.stderr || r.stdout, 600)}`)
    }
  } finally {
    if (addedPolicy) rmSync(policy, { force: true })
  }
  for (const cmd of missing) toolPath[cmd] = which(cmd)
}

function need(cmd) {
  if (!toolPath[cmd]) throw new Error(`${cmd} is not installed (apt-get install ${TOOLS[cmd]} failed)`)
  return toolPath[cmd]
}

function versionOf(cmd, args, re) {
  if (!toolPath[cmd]) return 'missing'
  const r = spawnSync(toolPath[cmd], args)
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`
  return (re.exec(text)?.[1] ?? tail(text, 60)).trim()
}

// ---------------------------------------------------------------------------
// Fixtures: certificates, the 200 MiB file, nginx

function openssl(args) {
  const r = spawnSync(need('openssl'), args, { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${tail(r.stderr)}`)
}

// The routed context rewrites a loopback CONNECT to localhost:<port> to this dev box
// name; the resolve option sends it to nginx: port 3000 to the TLS + HTTP/2 server
// (the upstream pool speaks h2), port 3001 to the TLS server without HTTP/2 (the
// upstream pool speaks HTTP/1.1).
const DEV_BOX = 'cmux-b-s-3000.bench.test'
const DEV_BOX_H1 = 'cmux-b-s-3001.bench.test'

function makeCerts(dir) {
  const ca = { cert: join(dir, 'ca.pem'), key: join(dir, 'ca.key') }
  const leaf = { cert: join(dir, 'leaf.pem'), key: join(dir, 'leaf.key'), csr: join(dir, 'leaf.csr') }
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  openssl(['req', '-x509', ...ec, '-keyout', ca.key, '-out', ca.cert, '-days', '2', '-subj', '/CN=cmux bench CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
  openssl(['req', '-new', ...ec, '-keyout', leaf.key, '-out', leaf.csr, '-subj', '/CN=localhost'])
  const ext = join(dir, 'leaf.ext')
  writeFileSync(ext, [
    `subjectAltName=DNS:localhost,IP:127.0.0.1,DNS:${DEV_BOX},DNS:${DEV_BOX_H1}`,
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
  ].join('\n') + '\n')
  openssl(['x509', '-req', '-in', leaf.csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '2',
    '-sha256', '-extfile', ext, '-out', leaf.cert])
  return { ca, leaf, caPem: readFileSync(ca.cert, 'utf8') }
}

function makeBulkFile(path, mib) {
  const chunk = randomBytes(1 << 20)
  const fd = openSync(path, 'w')
  try {
    for (let i = 0; i < mib; i++) writeSync(fd, chunk)
  } finally {
    closeSync(fd)
  }
}

async function freePort() {
  const server = net.createServer()
  await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

async function waitForPort(port, timeoutMs, isAlive) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (isAlive && !isAlive()) return false
    const ok = await new Promise((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port })
      s.once('connect', () => (s.destroy(), resolve(true)))
      s.once('error', () => resolve(false))
    })
    if (ok) return true
    await sleep(50)
  }
  return false
}

/** nginx's temp directories, inside `dir` (nginx's defaults are under /var). */
function nginxTempPaths(dir) {
  return ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
    .map((kind) => `${kind}_temp_path ${dir}/tmp/${kind === 'client_body' ? 'body' : kind};`)
    .join(' ')
}

async function startNginx(dir, certs) {
  const nginx = need('nginx')
  const ports = { http: await freePort(), tls: await freePort(), h2: await freePort() }
  for (const d of ['www', 'tmp']) mkdirSync(join(dir, d), { recursive: true })
  const small = 'location = /small { return 200 "ok"; }'
  const tls = `ssl_certificate ${certs.leaf.cert}; ssl_certificate_key ${certs.leaf.key}; ssl_protocols TLSv1.2 TLSv1.3;`
  const conf = `
${process.getuid?.() === 0 ? 'user root;' : ''}
worker_processes ${Math.min(2, os.availableParallelism())};
worker_rlimit_nofile ${NOFILE_EFFECTIVE || NOFILE};
daemon off;
master_process on;
pid ${dir}/nginx.pid;
error_log ${dir}/nginx-error.log info;
events { worker_connections 16384; }
http {
  access_log off;
  default_type application/octet-stream;
  ${nginxTempPaths(dir)}
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  client_header_timeout 300s;
  root ${dir}/www;
  server { listen 127.0.0.1:${ports.http}; ${small} }
  server { listen 127.0.0.1:${ports.tls} ssl; ${tls} ${small} }
  server { listen 127.0.0.1:${ports.h2} ssl http2; ${tls} http2_max_concurrent_streams 256; ${small} }
}
`
  const confPath = join(dir, 'nginx.conf')
  writeFileSync(confPath, conf)
  const test = spawnSync(nginx, ['-t', '-q', '-p', dir, '-c', confPath], { encoding: 'utf8' })
  if (test.status !== 0) throw new Error(`nginx -t failed: ${tail(test.stderr)}`)
  // nginx's workers would outlive a SIGKILLed master: a shell leads the process group,
  // runs nginx in the background and, once its stdin (our lifeline) closes, signals the
  // whole group.
  const child = launch('nginx', 'sh', ['-c', '"$@" & read _; kill -TERM 0', 'sh', nginx, '-p', dir, '-c', confPath], { pdeathsig: false })
  for (const port of Object.values(ports)) {
    if (!(await waitForPort(port, 10000, () => !child.exit))) {
      const errLog = existsSync(join(dir, 'nginx-error.log')) ? readFileSync(join(dir, 'nginx-error.log'), 'utf8') : ''
      await stop(child)
      throw new Error(`nginx did not listen on ${port}: ${tail(child.stderr + errLog)}`)
    }
  }
  return { child, ports, errorLog: join(dir, 'nginx-error.log') }
}

/**
 * The nginx relay: a second nginx in ONE process (`master_process off`, so that its CPU
 * is read from /proc/<pid>/stat the same way as a proxy child's), an L7 relay of the
 * absolute-form `GET http://127.0.0.1:<upstream>/small` that wrk sends to the proxies,
 * with the same Proxy-Authorization check (the rust proxy's credentials, so wrk sends
 * the same bytes) and a keep-alive pool to the upstream nginx. No CONNECT.
 */
async function startNginxRelay(dir, upstreamPort, auth) {
  const nginx = need('nginx')
  const rdir = join(dir, 'relay')
  mkdirSync(join(rdir, 'tmp'), { recursive: true })
  const port = await freePort()
  const conf = `
master_process off;
worker_processes 1;
daemon off;
worker_rlimit_nofile ${NOFILE_EFFECTIVE || NOFILE};
pid ${rdir}/nginx.pid;
error_log ${rdir}/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  ${nginxTempPaths(rdir)}
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 1000000000;
  client_header_timeout 300s;
  upstream upstream_pool {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      if ($http_proxy_authorization != "${auth}") { return 407; }
      proxy_pass http://upstream_pool;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Proxy-Authorization "";
    }
  }
}
`
  const confPath = join(rdir, 'nginx.conf')
  writeFileSync(confPath, conf)
  const test = spawnSync(nginx, ['-t', '-q', '-p', rdir, '-c', confPath], { encoding: 'utf8' })
  if (test.status !== 0) throw new Error(`nginx -t (relay) failed: ${tail(test.stderr)}`)
  // One process: launch() execs nginx in place, so child.pid is nginx itself (checked).
  const child = launch('nginx relay', nginx, ['-p', rdir, '-c', confPath])
  const errLog = () => (existsSync(join(rdir, 'error.log')) ? readFileSync(join(rdir, 'error.log'), 'utf8') : '')
  try {
    if (!(await waitForPort(port, 10000, () => !child.exit))) throw new Error(`it did not listen on ${port}: ${tail(child.stderr + errLog())}`)
    const comm = readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim()
    if (comm !== 'nginx') throw new Error(`pid ${child.pid} is ${comm}, not nginx`)
    const threads = Number(/Threads:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))[1])
    const path = `http://127.0.0.1:${upstreamPort}/small`
    const host = `127.0.0.1:${upstreamPort}`
    // The check works both ways: 407 without the credentials, nginx's "ok" with them.
    const denied = await httpGet(port, path, { Host: host })
    if (denied.status !== 407) throw new Error(`a request without Proxy-Authorization got ${denied.status}, not 407`)
    const ok = await httpGet(port, path, { Host: host, 'Proxy-Authorization': auth })
    if (ok.status !== 200 || ok.body !== 'ok') throw new Error(`a proxied request got ${ok.status} "${tail(ok.body, 60)}", not 200 "ok"`)
    child.info = { pid: child.pid, port, threads }
    child.auth = auth
    child.errorLog = join(rdir, 'error.log')
    return child
  } catch (e) {
    await stop(child)
    throw new Error(`the nginx relay did not start: ${e.message}`)
  }
}

function httpGet(port, path, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.setTimeout(5000, () => req.destroy(new Error('timed out')))
    req.on('error', reject)
    req.end()
  })
}

/** Distinct reasons nginx gave for rejecting requests ("client sent ..."), logged after byte `offset`. */
function nginxRejections(nginx, offset) {
  let text = ''
  try {
    text = readFileSync(nginx.errorLog).subarray(offset).toString()
  } catch {}
  const reasons = new Set()
  for (const m of text.matchAll(/\[info\] [^:]*: \*\d+ (client sent [^\n]*?)(?:, client: |\n)/g)) reasons.add(m[1])
  return [...reasons]
}

function fileSize(path) {
  try {
    return statSync(path).size
  } catch {
    return 0
  }
}

// ---------------------------------------------------------------------------
// The proxies under test

/**
 * A copy of the addon taken once at the start, loaded by every rust child (through the
 * loader's NAPI_RS_NATIVE_LIBRARY_PATH override), so that all scenarios measure the same
 * binary even if something rebuilds the addon in the work tree during the run.
 */
const addon = { env: {} }

function snapshotAddon(dir) {
  const tag = `${process.platform}-${process.arch}`
  const candidates = readdirSync(root).filter((f) => f.endsWith('.node'))
  const file = candidates.length === 1 ? candidates[0] : candidates.find((f) => f.includes(tag))
  if (!file) return
  const copy = join(dir, file)
  copyFileSync(join(root, file), copy)
  const bytes = readFileSync(copy)
  addon.file = file
  addon.built = statSync(join(root, file)).mtime.toISOString()
  addon.sha256 = createHash('sha256').update(bytes).digest('hex').slice(0, 16)
  addon.env = { NAPI_RS_NATIVE_LIBRARY_PATH: copy }
}

async function startProxy(mode, options = {}) {
  const env = mode === 'rust' ? addon.env : {}
  const child = launch(`${mode} child`, process.execPath, [join(BENCH, 'child.mjs'), mode, JSON.stringify(options)], { env })
  try {
    child.info = await nextJson(child, 20000, 'ready line')
    if (child.info.error) {
      const hint = /Cannot find (module|package) 'proxy'/.test(child.info.error)
        ? ' (the peer is the npm package `proxy`, a devDependency: npm install)'
        : ''
      throw new Error(child.info.error + hint)
    }
  } catch (e) {
    await stop(child)
    throw e
  }
  const { username, password } = child.info
  if (username) child.auth = 'Basic ' + Buffer.from(`${username}:${password}`).toString('base64')
  if (child.info.routed) {
    const r = child.info.routed
    child.routedAuth = 'Basic ' + Buffer.from(`${r.username}:${r.password}`).toString('base64')
  }
  return child
}

async function childStats(child) {
  child.proc.stdin.write('stats\n')
  return nextJson(child, 5000, 'stats')
}

// ---------------------------------------------------------------------------
// Measurements. Each returns numbers or throws an Error whose message is the footnote.

async function wrk({ target, proxy, nginx, connections, threads, seconds }) {
  const wrkPath = need('wrk')
  const url = target === 'direct' ? `http://127.0.0.1:${nginx.ports.http}/small` : `http://127.0.0.1:${proxy.info.port}/`
  const env = {
    BENCH_PATH: target === 'direct' ? '/small' : `http://127.0.0.1:${nginx.ports.http}/small`,
    BENCH_HOST: `127.0.0.1:${nginx.ports.http}`,
    BENCH_AUTH: target === 'direct' ? '' : proxy.auth,
  }
  const args = ['-t', String(threads), '-c', String(connections), '-d', `${seconds}s`, '--timeout', '5s', '-s', join(BENCH, 'wrk.lua'), url]
  const r = await runTool('wrk', wrkPath, args, { env, timeoutMs: (seconds + 30) * 1000 })
  if (r.code !== 0 || r.timedOut) throw new Error(failure('wrk', r))
  const m = /BENCH_RESULT (\{.*\})/.exec(r.stdout)
  if (!m) throw new Error(`wrk printed no result: ${tail(r.stdout + r.stderr)}`)
  const res = JSON.parse(m[1])
  if (res.requests === 0) throw new Error(`wrk completed no request: ${tail(r.stdout)}`)
  if (res.status_errors > 0) throw new Error(`wrk: ${res.status_errors} of ${res.requests} responses were not 2xx/3xx`)
  const socketErrors = res.connect_errors + res.read_errors + res.write_errors + res.timeouts
  if (res.connect_errors > 0 || socketErrors > res.requests * 0.001)
    throw new Error(`wrk socket errors: connect ${res.connect_errors}, read ${res.read_errors}, write ${res.write_errors}, timeout ${res.timeouts}`)
  res.rps = res.requests / (res.duration_us / 1e6)
  return res
}

async function curlDownload({ target, proxy, nginx, tunnel, certs, expectBytes }) {
  const curlPath = need('curl')
  const url = tunnel ? `https://127.0.0.1:${nginx.ports.tls}/bulk` : `http://127.0.0.1:${nginx.ports.http}/bulk`
  const args = ['-sS', '-o', '/dev/null', '--max-time', '120', '-w', '%{http_code} %{size_download} %{speed_download}']
  if (target === 'direct') args.push('--noproxy', '*')
  else {
    args.push('--proxy', `http://127.0.0.1:${proxy.info.port}`, '--proxy-user', `${proxy.info.username}:${proxy.info.password}`)
    if (tunnel) args.push('-p')
  }
  if (tunnel) args.push('--cacert', certs.ca.cert)
  args.push(url)
  const r = await runTool('curl', curlPath, args, { timeoutMs: 130000 })
  if (r.code !== 0 || r.timedOut) throw new Error(failure('curl', r))
  const [code, size, speed] = r.stdout.trim().split(/\s+/).map(Number)
  if (code !== 200) throw new Error(`curl got HTTP ${code}`)
  if (size !== expectBytes) throw new Error(`curl got ${size} bytes, expected ${expectBytes}`)
  return { mibps: speed / 1048576, bytes: size }
}

/** A local TCP forwarder for h2load: each connection becomes a CONNECT tunnel through the proxy. */
async function startForwarder(proxyPort, auth, connectTarget) {
  const state = { failures: [], connections: 0 }
  const onConnection = (client) => {
    state.connections++
    client.setNoDelay(true)
    client.pause()
    const up = net.connect({ host: '127.0.0.1', port: proxyPort })
    up.setNoDelay(true)
    const kill = () => (client.destroy(), up.destroy())
    client.on('error', kill)
    up.on('error', kill)
    client.on('close', () => up.destroy())
    up.on('close', () => client.destroy())
    up.on('connect', () =>
      up.write(`CONNECT ${connectTarget} HTTP/1.1\r\nHost: ${connectTarget}\r\nProxy-Authorization: ${auth}\r\n\r\n`),
    )
    let head = Buffer.alloc(0)
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk])
      const end = head.indexOf('\r\n\r\n')
      if (end < 0) return
      up.removeListener('data', onData)
      up.pause()
      const status = head.subarray(0, head.indexOf('\r\n')).toString('latin1')
      if (!/^HTTP\/1\.[01] 200\b/.test(status)) {
        state.failures.push(status)
        return kill()
      }
      const rest = head.subarray(end + 4)
      if (rest.length) client.write(rest)
      client.pipe(up)
      up.pipe(client)
      client.resume()
      up.resume()
    }
    up.on('data', onData)
  }
  const v4 = net.createServer(onConnection)
  await new Promise((resolve, reject) => v4.once('error', reject).listen(0, '127.0.0.1', resolve))
  const port = v4.address().port
  // `localhost` may resolve to ::1 first: listen there too when possible.
  const v6 = net.createServer(onConnection)
  await new Promise((resolve) => v6.once('error', () => resolve()).listen(port, '::1', resolve))
  state.port = port
  state.close = () => {
    v4.close()
    v6.close()
  }
  return state
}

async function h2load(url, requests) {
  const h2Path = need('h2load')
  const args = ['-n', String(requests), '-c', String(CFG.h2Clients), '-m', String(CFG.h2Streams), url]
  const r = await runTool('h2load', h2Path, args, { timeoutMs: 150000 })
  if (r.code !== 0 || r.timedOut) throw new Error(failure('h2load', r))
  const out = r.stdout
  const proto = /Application protocol:\s*(\S+)/.exec(out)?.[1]
  if (proto !== 'h2') throw new Error(`h2load negotiated ${proto ?? 'nothing'} instead of h2: ${tail(out)}`)
  const fin = /finished in ([\d.]+)(m?s), ([\d.]+) req\/s/.exec(out)
  const req = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(out)
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out)
  if (!fin || !req || !codes) throw new Error(`unexpected h2load output: ${tail(out)}`)
  const succeeded = Number(req[4])
  const ok2xx = Number(codes[1])
  if (succeeded !== requests || ok2xx !== requests)
    throw new Error(`h2load: ${succeeded} of ${requests} requests succeeded; status codes ${codes[1]} 2xx, ${codes[2]} 3xx, ${codes[3]} 4xx, ${codes[4]} 5xx; ${req[6]} errored, ${req[7]} timed out`)
  const seconds = Number(fin[1]) / (fin[2] === 'ms' ? 1000 : 1)
  return { rps: Number(fin[3]), seconds, succeeded }
}

// ---------------------------------------------------------------------------
// Results

const raw = {} // scenario -> list of round records
const values = {} // metric -> target -> [numbers]
const errors = {} // metric -> target -> [messages]

function record(scenario, entry) {
  ;(raw[scenario] ??= []).push(entry)
}
function put(metric, target, value) {
  ;((values[metric] ??= {})[target] ??= []).push(value)
}
function putError(metric, target, message) {
  ;((errors[metric] ??= {})[target] ??= []).push(message)
}

/** Runs one measurement; on failure, every metric it feeds gets the error. */
async function attempt(scenario, round, target, metrics, fn) {
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

function median(xs) {
  if (!xs || xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}

const rotate = (list, n) => list.map((_, i) => list[(i + n) % list.length])

// ---------------------------------------------------------------------------
// Scenarios

async function scenarioSmall(ctx) {
  const { nginx, rust, peer } = ctx
  const proxies = { rust, peer, [RELAY]: ctx.relay }
  const s1 = { connections: CFG.s1Connections, threads: CFG.s1Threads, seconds: CFG.s1Seconds }
  const s2 = { connections: 1, threads: 1, seconds: CFG.s2Seconds }
  if (enabled('s1')) {
    log(`s1/s6: small responses, ${s1.connections} connections, ${s1.threads} threads, ${s1.seconds} s, ${CFG.rounds} rounds`)
    for (const target of ['rust', 'peer', RELAY]) {
      if (!proxies[target]) continue
      // Warm-up, not recorded: fills the upstream pools and lets V8 optimise the peer.
      await wrk({ target, proxy: proxies[target], nginx, ...s1, seconds: CFG.warmupSeconds }).catch(() => {})
    }
    for (let round = 1; round <= CFG.rounds; round++) {
      for (const target of rotate(SMALL_TARGETS, round - 1)) {
        const proxy = proxies[target]
        if (target !== 'direct' && !proxy) {
          for (const m of S1_METRICS) putError(m, target, ctx.proxyErrors[target])
          continue
        }
        await attempt('s1', round, target, S1_METRICS, async () => {
          const load1 = os.loadavg()[0]
          const stats0 = target === 'rust' ? await childStats(proxy).catch(() => null) : null
          const cpu0 = proxy ? cpuSplit(proxy.pid) : null
          const res = await wrk({ target, proxy, nginx, ...s1 })
          const cpu1 = proxy ? cpuSplit(proxy.pid) : null
          if (stats0) {
            // Sanity check: the proxy itself counted the requests wrk sent through it.
            const stats1 = await childStats(proxy).catch(() => null)
            if (stats1) res.proxy_counted_requests = stats1.stats.totalRequests - stats0.stats.totalRequests
          }
          put('s1_rps', target, res.rps)
          put('s1_p50', target, res.p50_us)
          put('s1_p99', target, res.p99_us)
          if (proxy) {
            res.proxy_cpu_s = cpu1.total - cpu0.total
            res.proxy_rss_kib = rssKiB(proxy.pid)
            res.cpu_s_per_100k = (res.proxy_cpu_s / res.requests) * 100000
            res.cpu_us_per_request = (res.proxy_cpu_s / res.requests) * 1e6
            res.kernel_us_per_request = ((cpu1.kernel - cpu0.kernel) / res.requests) * 1e6
            res.user_us_per_request = ((cpu1.user - cpu0.user) / res.requests) * 1e6
            put('s6_cpu', target, res.cpu_s_per_100k)
            put('s6_us', target, res.cpu_us_per_request)
            put('s6_user', target, res.user_us_per_request)
            put('s6_kernel', target, res.kernel_us_per_request)
          }
          res.load1_at_start = load1
          log(`  s1 round ${round} ${target}: ${res.rps.toFixed(0)} req/s, p50 ${res.p50_us} µs, p99 ${res.p99_us} µs` +
            (proxy ? `, CPU ${res.proxy_cpu_s.toFixed(2)} s for ${res.requests} requests (${res.cpu_us_per_request.toFixed(1)} µs each, ${res.user_us_per_request.toFixed(1)} user + ${res.kernel_us_per_request.toFixed(1)} kernel)` : '') +
            `; load ${load1.toFixed(2)}`)
          return res
        })
        await sleep(300)
      }
    }
  }
  if (enabled('s2')) {
    log(`s2: small responses, 1 connection, 1 thread, ${s2.seconds} s, ${CFG.rounds} rounds`)
    for (let round = 1; round <= CFG.rounds; round++) {
      for (const target of rotate(SMALL_TARGETS, round - 1)) {
        const proxy = proxies[target]
        if (target !== 'direct' && !proxy) {
          for (const m of ['s2_p50', 's2_p99']) putError(m, target, ctx.proxyErrors[target])
          continue
        }
        await attempt('s2', round, target, ['s2_p50', 's2_p99'], async () => {
          const res = await wrk({ target, proxy, nginx, ...s2 })
          put('s2_p50', target, res.p50_us)
          put('s2_p99', target, res.p99_us)
          log(`  s2 round ${round} ${target}: p50 ${res.p50_us} µs, p99 ${res.p99_us} µs (${res.rps.toFixed(0)} req/s)`)
          return res
        })
        await sleep(300)
      }
    }
  }
}

async function scenarioBulk(ctx) {
  const { nginx, rust, peer, certs } = ctx
  const proxies = { rust, peer }
  log(`s3: ${CFG.bulkMiB} MiB download, TLS through CONNECT and plain forwarding, ${CFG.rounds} rounds`)
  for (let round = 1; round <= CFG.rounds; round++) {
    for (const [tunnel, metric] of [[true, 's3_tunnel'], [false, 's3_forward']]) {
      for (const target of rotate(TARGETS, round - 1)) {
        const proxy = proxies[target]
        if (target !== 'direct' && !proxy) {
          for (const m of [metric, `${metric}_cpu`]) putError(m, target, ctx.proxyErrors[target])
          continue
        }
        const cpuMetric = `${metric}_cpu`
        await attempt(metric, round, target, [metric, cpuMetric], async () => {
          const cpu0 = proxy ? cpuSeconds(proxy.pid) : null
          const res = await curlDownload({ target, proxy, nginx, tunnel, certs, expectBytes: CFG.bulkMiB * 1048576 })
          put(metric, target, res.mibps)
          if (proxy) {
            // What relaying costs the proxy, apart from how the machine's 2 cores were shared.
            res.proxy_cpu_s_per_gib = (cpuSeconds(proxy.pid) - cpu0) / (res.bytes / 2 ** 30)
            put(cpuMetric, target, res.proxy_cpu_s_per_gib)
          }
          log(`  s3 ${tunnel ? 'tunnel ' : 'forward'} round ${round} ${target}: ${res.mibps.toFixed(1)} MiB/s` +
            (proxy ? `, proxy CPU ${res.proxy_cpu_s_per_gib.toFixed(2)} s per GiB` : ''))
          return res
        })
      }
    }
  }
}

async function scenarioH2(ctx) {
  const { nginx, rust } = ctx
  log(`s4: HTTP/2 in an intercepted tunnel, h2load -n ${CFG.h2Requests} -c ${CFG.h2Clients} -m ${CFG.h2Streams}, ${CFG.rounds} rounds`)
  // Two upstream flavours behind the same intercepted h2 tunnel: nginx over h2 (the
  // scenario as specified) and nginx over HTTP/1.1 (TLS port without http2).
  const variants = [
    { metric: 's4_rps', connect: 'localhost:3000', upstream: 'h2' },
    { metric: 's4h1_rps', connect: 'localhost:3001', upstream: 'http/1.1' },
  ]
  for (const v of variants) putError(v.metric, 'peer', null) // n/a, see footnote
  if (rust) {
    for (const v of variants) {
      v.forwarder = await startForwarder(rust.info.port, rust.routedAuth, v.connect)
      ctx.cleanups.push(() => v.forwarder.close())
      // Warm-up, not recorded: the leaf certificate for localhost and the upstream connections.
      await h2load(`https://localhost:${v.forwarder.port}/small`, Math.min(2000, CFG.h2Requests)).catch((e) =>
        log(`  s4 warm-up (upstream ${v.upstream}): ${e.message}`),
      )
    }
  }
  const runRust = async (round, v) => {
    if (!rust) return putError(v.metric, 'rust', ctx.proxyErrors.rust)
    await attempt(v.metric, round, 'rust', [v.metric], async () => {
      const failuresBefore = v.forwarder.failures.length
      const logOffset = fileSize(nginx.errorLog)
      let res
      try {
        res = await h2load(`https://localhost:${v.forwarder.port}/small`, CFG.h2Requests)
      } catch (e) {
        const refused = v.forwarder.failures.slice(failuresBefore)
        if (refused.length) e.message += `; the proxy answered the forwarder's CONNECT with "${refused[0]}"`
        const rejections = nginxRejections(nginx, logOffset)
        if (rejections.length) e.message += `; nginx's log: ${rejections.map((r) => r.replace(/ while reading client request headers$/, '')).join('; ')}`
        if (rejections.some((r) => r.includes('duplicate host header')))
          e.message += ' (the proxy sends a `host` header next to `:authority` on its upstream HTTP/2 requests, which this nginx rejects with 400)'
        throw e
      }
      put(v.metric, 'rust', res.rps)
      log(`  s4 round ${round} rust (upstream ${v.upstream}): ${res.rps.toFixed(0)} req/s`)
      return { ...res, upstream: v.upstream }
    })
  }
  const runDirect = (round) =>
    attempt('s4', round, 'direct', variants.map((v) => v.metric), async () => {
      const res = await h2load(`https://127.0.0.1:${nginx.ports.h2}/small`, CFG.h2Requests)
      for (const v of variants) put(v.metric, 'direct', res.rps)
      log(`  s4 round ${round} direct: ${res.rps.toFixed(0)} req/s`)
      return res
    })
  for (let round = 1; round <= CFG.rounds; round++) {
    const steps = [() => runDirect(round), ...variants.map((v) => () => runRust(round, v))]
    for (const step of rotate(steps, round - 1)) await step()
  }
}

async function scenarioMemory(ctx) {
  const { nginx, proxyOptions } = ctx
  log(`s5: idle RSS and RSS per idle CONNECT tunnel (${CFG.tunnels} tunnels), fresh processes, ${CFG.rounds} rounds`)
  for (let round = 1; round <= CFG.rounds; round++) {
    for (const mode of rotate(['bare', 'rust', 'peer'], round - 1)) {
      const target = mode === 'bare' ? 'direct' : mode
      const metrics = mode === 'bare' ? ['s5_idle'] : ['s5_idle', 's5_tunnel', 's5_more']
      let child = null
      let tunnels = null
      await attempt('s5', round, target, metrics, async () => {
        try {
          child = await startProxy(mode, mode === 'rust' ? proxyOptions : {})
          await sleep(CFG.settleMs)
          const idle = rssKiB(child.pid)
          put('s5_idle', target, idle / 1024)
          metrics.splice(metrics.indexOf('s5_idle'), 1) // a later failure is the tunnels' only
          if (mode === 'bare') {
            log(`  s5 round ${round} bare node: idle RSS ${(idle / 1024).toFixed(1)} MiB`)
            return { idle_rss_kib: idle }
          }
          tunnels = launch('tunnels', process.execPath, [join(BENCH, 'tunnels.mjs'), JSON.stringify({
            port: child.info.port, auth: child.auth, target: `127.0.0.1:${nginx.ports.http}`, count: CFG.tunnels, concurrency: 50,
          })])
          // A batch of CFG.tunnels more, then the RSS once they are all open and idle.
          const openBatch = async (batch) => {
            if (batch > 1) tunnels.proc.stdin.write('open\n')
            const opened = await nextJson(tunnels, 90000, 'tunnel count')
            if (opened.failed > 0) {
              const low = NOFILE_EFFECTIVE < 2 * batch * CFG.tunnels + 256 ? `; \`ulimit -n\` could only be raised to ${NOFILE_EFFECTIVE} (hard limit), which is too few for ${batch * CFG.tunnels} tunnels` : ''
              throw new Error(`${opened.failed} of ${CFG.tunnels} CONNECTs failed: ${JSON.stringify(opened.errors)}${low}`)
            }
            await sleep(1000)
            const rss = rssKiB(child.pid)
            tunnels.proc.stdin.write('status\n')
            const { open } = await nextJson(tunnels, 5000, 'tunnel status')
            if (open !== batch * CFG.tunnels) throw new Error(`only ${open} of ${batch * CFG.tunnels} tunnels were still open when RSS was read`)
            return rss
          }
          const loaded = await openBatch(1)
          const perTunnel = (loaded - idle) / CFG.tunnels
          put('s5_tunnel', target, perTunnel)
          metrics.splice(metrics.indexOf('s5_tunnel'), 1)
          const more = await openBatch(2)
          const perMoreTunnel = (more - loaded) / CFG.tunnels
          put('s5_more', target, perMoreTunnel)
          const stats = await childStats(child).catch(() => null)
          log(`  s5 round ${round} ${mode}: idle RSS ${(idle / 1024).toFixed(1)} MiB, with ${CFG.tunnels} tunnels ${(loaded / 1024).toFixed(1)} MiB → ${perTunnel.toFixed(1)} KiB/tunnel; with ${2 * CFG.tunnels} ${(more / 1024).toFixed(1)} MiB → ${perMoreTunnel.toFixed(1)} KiB per tunnel of the second ${CFG.tunnels}`)
          return { idle_rss_kib: idle, loaded_rss_kib: loaded, kib_per_tunnel: perTunnel, more_rss_kib: more, kib_per_more_tunnel: perMoreTunnel, proxy_stats: stats?.stats ?? null }
        } finally {
          await stop(tunnels)
          await stop(child)
        }
      })
    }
  }
}

async function scenarioPageLoadOf(ctx) {
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

// ---------------------------------------------------------------------------
// Report

const fmt = {
  int: (v) => Math.round(v).toLocaleString('en-US'),
  us: (v) => Math.round(v).toLocaleString('en-US'),
  d1: (v) => v.toFixed(1),
  d2: (v) => v.toFixed(2),
  d3: (v) => v.toFixed(3),
}

function buildReport(machine, ctx) {
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
    `s1/s2: wrk against nginx \`return 200 "ok"\` (keep-alive; ${CFG.s1Connections} connections, ${CFG.s1Threads} threads, ${CFG.s1Seconds} s; then 1 connection, 1 thread, ${CFG.s2Seconds} s). Through a proxy wrk connects to the proxy and sends absolute-form \`GET http://127.0.0.1:<nginx>/small\` with Proxy-Authorization (bench/wrk.lua). One unrecorded ${CFG.warmupSeconds} s warm-up per proxy before s1.`,
    `s3: curl \`%{speed_download}\` for a ${CFG.bulkMiB} MiB file from nginx: (a) https through a CONNECT tunnel (\`curl -p\`, TLS end to end, context without route, so relayed blindly), direct = curl to nginx's TLS port; (b) http, absolute-form forwarding.`,
    `s4: h2load -n ${CFG.h2Requests} -c ${CFG.h2Clients} -m ${CFG.h2Streams} (${CFG.h2Clients * CFG.h2Streams} concurrent streams) → a Node TCP forwarder (each connection opens \`CONNECT localhost:3000\` on the proxy with a routed context) → the proxy terminates TLS (its own CA, ALPN h2) and rewrites to \`https://${DEV_BOX}\`, resolved to nginx's TLS + HTTP/2 port (bench CA trusted), so its upstream pool speaks h2. The extra row does the same with \`CONNECT localhost:3001\` → \`https://${DEV_BOX_H1}\`, resolved to nginx's TLS port without HTTP/2, so the upstream pool speaks HTTP/1.1. Direct (both rows) = h2load straight to nginx's h2 port, so the rust column also pays for the Node forwarder and a second TLS session. All ${CFG.h2Requests} requests must get a 2xx, else the cell is an error.`,
    `s5: fresh processes of bench/child.mjs: "bare" (Node, no addon), "rust" (addon loaded, proxy started, contexts created), "peer" (\`proxy\` package listening). VmRSS from /proc/<pid>/status ${CFG.settleMs / 1000} s after start; then ${CFG.tunnels} idle CONNECT tunnels to nginx's HTTP port are opened from another process (50 handshakes at a time), and (RSS with tunnels − idle RSS) / ${CFG.tunnels} is reported per tunnel; then ${CFG.tunnels} more the same way, and the RSS they add ÷ ${CFG.tunnels} is the next row: what one more tunnel costs once the allocator holds the first batch's high-water mark (each handshake briefly holds hyper's 8 KiB read and 8 KiB write buffers and its connection task; their memory stays with the process once freed). The "direct" column of the idle row is the bare Node process.`,
    `s6: utime+stime of the proxy process, all its threads (/proc/<pid>/stat ÷ CLK_TCK), across each s1 run, divided by the requests wrk completed: × 100k (s), and in µs per request, also split into utime (user space) and stime (the kernel: for a relay on loopback mostly the TCP work of its own four syscalls per request). The proxy child is a Node process: its main thread is idle during the run. For the nginx relay, the one nginx process.`,
    `nginx relay (s1, s2, s6): a second nginx ${versionOfNginx()} started for s1/s2 with its own config: \`master_process off; worker_processes 1; daemon off;\` (one process, one thread, so its CPU is read from /proc/<pid>/stat like a proxy child's), \`listen 127.0.0.1:<port>\`, \`location / { if ($http_proxy_authorization != "Basic …") { return 407; } proxy_pass http://upstream_pool; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Proxy-Authorization ""; }\` with \`upstream upstream_pool { server 127.0.0.1:<nginx http port>; keepalive 64; keepalive_requests 1000000000; keepalive_timeout 300s; }\`, access log off, client keep-alive as the upstream nginx's. wrk sends it exactly what it sends the proxies (absolute-form \`GET http://127.0.0.1:<nginx>/small\`, the rust proxy's Proxy-Authorization value); checked at start: 407 without the header, 200 "ok" with it. No CONNECT, so no s3-s5. Rounds rotate direct / rust / peer / nginx relay.`,
  ]

  const table = lines.join('\n')
  const footnotes = notes.map((n, i) => `[${i + 1}] ${n}`)
  return { med, table, footnotes, targets, targetLines, how }
}

function versionOfNginx() {
  return versionOf('nginx', ['-v'], /nginx\/(\S+)/)
}

function machineDescription() {
  const cpuinfo = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : ''
  const meminfo = existsSync('/proc/meminfo') ? readFileSync('/proc/meminfo', 'utf8') : ''
  const nproc = spawnSync('nproc').stdout?.toString().trim()
  let peerVersion = 'not installed'
  try {
    peerVersion = JSON.parse(readFileSync(join(root, 'node_modules', 'proxy', 'package.json'), 'utf8')).version
  } catch {}
  return {
    nproc: Number(nproc) || os.availableParallelism(),
    cpuModel: /model name\s*:\s*(.*)/.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown',
    memTotal: /MemTotal:\s*(.*)/.exec(meminfo)?.[1]?.trim() ?? `${os.totalmem()} B`,
    kernel: `${os.type()} ${os.release()} ${os.version()}`,
    node: process.version,
    loadAverageAtStart: os.loadavg().map((x) => x.toFixed(2)).join(' '),
    childrenNofile: NOFILE_EFFECTIVE,
    tools: {
      wrk: versionOf('wrk', ['-v'], /wrk (\S+)/),
      nginx: versionOf('nginx', ['-v'], /nginx\/(\S+)/),
      h2load: versionOf('h2load', ['--version'], /nghttp2\/(\S+)/),
      curl: versionOf('curl', ['--version'], /curl (\S+)/),
      openssl: versionOf('openssl', ['version'], /OpenSSL (\S+)/),
      proxyPackage: peerVersion,
    },
  }
}

// ---------------------------------------------------------------------------
// Main

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
    ctx.certs = makeCerts(tmpDir)
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
        ctx[mode] = await startProxy(mode, mode === 'rust' ? ctx.proxyOptions : {})
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
  if (enabled('s7')) await timed('s7', scenarioPageLoadOf)
  const benchSeconds = (Date.now() - benchStarted) / 1000
  machine.loadAverageAtEnd = os.loadavg().map((x) => x.toFixed(2)).join(' ')

  const report = buildReport(machine, ctx)
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
      s7Section = renderPageLoad(ctx.pageload, { date, command, machineLine, quick: QUICK }).join('\n') + '\n\n'
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
  const withS7 = (text) => {
    const base = text.replace(S7_SECTION, '')
    if (!s7Section) return base
    const at = base.indexOf('\n## Targets')
    return at < 0 ? `${base.trimEnd()}\n\n${s7Section}` : `${base.slice(0, at + 1)}${s7Section}${base.slice(at + 1)}`
  }
  // Notes written by hand (what each change bought, runs compared): kept as they are, before "Machine".
  const NOTES_SECTION = /<!-- notes:begin -->[\s\S]*?<!-- notes:end -->\n*/
  const notes = NOTES_SECTION.exec(prevMd)?.[0] ?? null
  const withNotes = (text) => {
    const base = text.replace(NOTES_SECTION, '')
    if (!notes) return base
    const at = base.indexOf('\n## Machine')
    return at < 0 ? `${base.trimEnd()}\n\n${notes}` : `${base.slice(0, at + 1)}${notes}${base.slice(at + 1)}`
  }
  const ranMain = MAIN_SCENARIOS.some(enabled)
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
  console.log(`\nMeasurements took ${benchSeconds.toFixed(0)} s. Wrote bench/RESULTS.md and bench/results.json.`)
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
