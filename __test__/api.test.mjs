// ProxyServer.start / createContext / releaseContext / credentialsForWebContents
// / route validation / logging.

import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import net from 'node:net'
import { afterAll, beforeAll, describe, expect } from 'vitest'
import { ADDON_PATH, ProxyServer } from '../support/addon.mjs'
import { authOf, proxyRequest } from '../support/http-client.mjs'
import { startError, test, withProxy } from './fixtures.mjs'

const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'test.local' }

/** Turns a synchronous throw into a rejection, so both count as "start failed". */
const startAsync = (...args) => (async () => ProxyServer.start(...args))()

let proxy

beforeAll(async () => {
  proxy = await ProxyServer.start('127.0.0.1:0')
})

afterAll(async () => {
  await proxy?.stop()
})

describe('start', () => {
  test('127.0.0.1:0 picks a free port that accepts TCP connections', async () => {
    const port = proxy.port()
    expect(Number.isInteger(port)).toBe(true)
    expect(port).toBeGreaterThan(0)
    expect(port).toBeLessThan(65536)
    await new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy()
        resolve()
      })
      s.on('error', reject)
    })
  })

  test('two servers get two ports and contexts of their own: credentials of one get 407 at the other', async ({ proxy: other }) => {
    expect(other.port()).not.toBe(proxy.port())
    const ctx = proxy.createContext(41)
    const res = await proxyRequest(other.port(), 'http://example.test/', { auth: authOf(ctx) })
    expect(res.status).toBe(407)
    expect(other.contextStats(ctx.id)).toBeNull()
    proxy.releaseContext(ctx.id)
  })

  test('a taken port rejects with EADDRINUSE', async () => {
    const blocker = net.createServer()
    await new Promise((resolve) => blocker.listen(0, '127.0.0.1', resolve))
    const { port } = blocker.address()
    try {
      const err = await startError(`127.0.0.1:${port}`)
      expect(err).toBeInstanceOf(Error)
      expect(err.message).toContain('EADDRINUSE')
    } finally {
      await new Promise((resolve) => blocker.close(resolve))
    }
  })

  test.each(['nope', '127.0.0.1:99999', '127.0.0.1', ''])('malformed listen address %j rejects with a clear Error', async (addr) => {
    const err = await startError(addr)
    expect(err).toBeInstanceOf(Error)
    expect(err.message.length).toBeGreaterThan(5)
    expect(err.message).toMatch(/address|invalid|listen|port/i)
  })

  test('an upstreamCaPem entry without a certificate rejects', async () => {
    const err = await startError('127.0.0.1:0', false, { upstreamCaPem: ['not a pem'] })
    expect(err).toBeInstanceOf(Error)
    expect(err.message).toMatch(/upstreamCaPem/)
  })

  test('the HTTPS proxy mode (on by default) needs a loopback listen address; it is refused before anything is bound', async () => {
    for (const addr of ['0.0.0.0:0', '[::]:0']) {
      await expect(startAsync(addr, true)).rejects.toThrow(/httpsProxy: needs a loopback listen address/)
      await expect(startAsync(addr, true, { httpsProxy: true })).rejects.toThrow(/set httpsProxy: false/)
    }
    await withProxy({ listen: '127.0.0.2:0', enableHttp2: true, httpsProxy: true }, (other) => {
      expect(other.proxyRules()).toMatch(/^http=https:\/\/127\.0\.0\.2:\d+;/)
    })
  })

  test('generateCa: validityDays from 1 to 365 (default 365), anything else refused naming the option', () => {
    const days = (pem) => {
      const cert = new crypto.X509Certificate(pem)
      return (Date.parse(cert.validTo) - Date.now()) / 86_400_000
    }
    expect(days(ProxyServer.generateCa().certPem)).toBeGreaterThan(364)
    expect(days(ProxyServer.generateCa().certPem)).toBeLessThanOrEqual(365)
    expect(days(ProxyServer.generateCa({ validityDays: 7 }).certPem)).toBeLessThanOrEqual(7)
    expect(days(ProxyServer.generateCa({ validityDays: 7 }).certPem)).toBeGreaterThan(6)
    for (const validityDays of [0, 366, 3650, 1.5, -1]) {
      expect(() => ProxyServer.generateCa({ validityDays })).toThrow(/validityDays/)
    }
  })

  test('a malformed resolve entry rejects', async () => {
    const err = await startError('127.0.0.1:0', false, { resolve: { 'a.test:80': 'not-an-address' } })
    expect(err).toBeInstanceOf(Error)
    expect(err.message).toMatch(/resolve/)
  })
})

describe('createContext', () => {
  test('returns a UUID v4 id, a wc-<id>-<8 hex> username and a long hex password', () => {
    const ctx = proxy.createContext(41)
    try {
      expect(ctx.id).toMatch(UUID_V4)
      expect(ctx.username).toMatch(/^wc-41-[0-9a-f]{8}$/)
      expect(ctx.password).toMatch(/^[0-9a-f]{24,}$/)
      expect(ctx.webContentsId).toBe(41)
    } finally {
      proxy.releaseContext(ctx.id)
    }
  })

  test('accepts a null route and a valid route', () => {
    const a = proxy.createContext(42, null)
    const b = proxy.createContext(43, ROUTE)
    const c = proxy.createContext(44, { ...ROUTE, cmuxProxyOrigin: 'https://origin.test.local' })
    try {
      for (const ctx of [a, b, c]) expect(ctx.id).toMatch(UUID_V4)
    } finally {
      for (const ctx of [a, b, c]) proxy.releaseContext(ctx.id)
    }
  })

  test('two contexts have different ids, usernames and passwords', () => {
    const a = proxy.createContext(50)
    const b = proxy.createContext(51)
    try {
      expect(a.id).not.toBe(b.id)
      expect(a.username).not.toBe(b.username)
      expect(a.password).not.toBe(b.password)
    } finally {
      proxy.releaseContext(a.id)
      proxy.releaseContext(b.id)
    }
  })

  test('a second context for the same webContentsId replaces the first', () => {
    const before = proxy.stats().contexts
    const first = proxy.createContext(60)
    const second = proxy.createContext(60)
    try {
      expect(second.id).not.toBe(first.id)
      expect(second.password).not.toBe(first.password)
      expect(proxy.stats().contexts).toBe(before + 1)
      expect(proxy.credentialsForWebContents(60)).toEqual({ username: second.username, password: second.password })
      // The replaced context is gone.
      expect(proxy.releaseContext(first.id)).toBe(false)
    } finally {
      proxy.releaseContext(second.id)
    }
    expect(proxy.stats().contexts).toBe(before)
  })

  test.each([
    ['morphId', { ...ROUTE, morphId: 'UPPER' }],
    ['morphId', { ...ROUTE, morphId: '' }],
    ['morphId', { ...ROUTE, morphId: 'a.b' }],
    ['scope', { ...ROUTE, scope: 'a$b' }],
    ['allowedNetworks', { ...ROUTE, allowedNetworks: ['10.0.0.0/33'] }],
    ['scope', { ...ROUTE, scope: '' }],
    ['domainSuffix', { ...ROUTE, domainSuffix: 'bad host' }],
    ['domainSuffix', { ...ROUTE, domainSuffix: '' }],
    ['cmuxProxyOrigin', { ...ROUTE, cmuxProxyOrigin: 'ftp://x' }],
    ['cmuxProxyOrigin', { ...ROUTE, cmuxProxyOrigin: 'not a url' }],
    ['cmuxProxyOrigin', { ...ROUTE, cmuxProxyOrigin: 'https://x.test/some/path' }],
  ])('an invalid route names the field %s and creates nothing', (field, route) => {
    const before = proxy.stats().contexts
    let err
    try {
      const ctx = proxy.createContext(70, route)
      proxy.releaseContext(ctx.id)
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(Error)
    expect(err.message).toContain(field)
    expect(proxy.stats().contexts).toBe(before)
    expect(proxy.credentialsForWebContents(70)).toBeNull()
  })
})

describe('releaseContext / credentialsForWebContents / stats().contexts', () => {
  test('releaseContext returns true once, then false; unknown ids give false', () => {
    const ctx = proxy.createContext(80)
    expect(proxy.releaseContext(ctx.id)).toBe(true)
    expect(proxy.releaseContext(ctx.id)).toBe(false)
    expect(proxy.releaseContext('00000000-0000-4000-8000-000000000000')).toBe(false)
    expect(proxy.releaseContext('')).toBe(false)
  })

  test('credentialsForWebContents returns the live credentials or null', () => {
    expect(proxy.credentialsForWebContents(81)).toBeNull()
    const ctx = proxy.createContext(81)
    expect(proxy.credentialsForWebContents(81)).toEqual({ username: ctx.username, password: ctx.password })
    expect(proxy.credentialsForWebContents(82)).toBeNull()
    proxy.releaseContext(ctx.id)
    expect(proxy.credentialsForWebContents(81)).toBeNull()
  })

  test('stats().contexts follows creates and releases', () => {
    const base = proxy.stats().contexts
    const a = proxy.createContext(90)
    expect(proxy.stats().contexts).toBe(base + 1)
    const b = proxy.createContext(91, ROUTE)
    expect(proxy.stats().contexts).toBe(base + 2)
    proxy.releaseContext(a.id)
    expect(proxy.stats().contexts).toBe(base + 1)
    proxy.releaseContext(b.id)
    expect(proxy.stats().contexts).toBe(base)
  })

  test('stats() has the documented numeric fields', () => {
    const s = proxy.stats()
    for (const k of ['contexts', 'activeConnections', 'activeTunnels', 'totalRequests']) {
      expect(typeof s[k]).toBe('number')
      expect(s[k]).toBeGreaterThanOrEqual(0)
    }
  })
})

// Logging writes to the process' stderr from native code, so it is observed in a child process.
const LOG_CHILD = String.raw`
const http = require('node:http')
const { ProxyServer } = require(process.env.ADDON_PATH)
const { setTimeout: sleep } = require('node:timers/promises')
const get = (proxyPort, upstreamPort, auth) => new Promise((resolve, reject) => {
  const req = http.request({ host: '127.0.0.1', port: proxyPort, path: 'http://127.0.0.1:' + upstreamPort + '/logged', agent: false,
    headers: { host: '127.0.0.1:' + upstreamPort, 'proxy-authorization': auth } }, (res) => {
    res.resume(); res.on('end', () => resolve(res.statusCode))
  })
  req.on('error', reject); req.end()
})
;(async () => {
  const upstream = http.createServer((req, res) => res.end('ok'))
  await new Promise((r) => upstream.listen(0, '127.0.0.1', r))
  const up = upstream.address().port
  const logging = process.env.START_LOGGING === '1'
  const proxy = await ProxyServer.start('127.0.0.1:0', false, logging ? { logging: true } : {})
  const ctx = proxy.createContext(7)
  const auth = 'Basic ' + Buffer.from(ctx.username + ':' + ctx.password).toString('base64')
  process.stdout.write(JSON.stringify({ password: ctx.password }) + '\n')
  let wc = 100
  const phase = async (name) => {
    process.stderr.write('@@PHASE ' + name + '\n')
    // Events in each phase: a context is created and released, a request goes through.
    const extra = proxy.createContext(wc++)
    proxy.releaseContext(extra.id)
    const status = await get(proxy.port(), up, auth)
    if (status !== 200) throw new Error('request failed with ' + status)
    await sleep(300)
  }
  await phase('initial')
  proxy.setLoggingEnabled(true)
  await phase('enabled')
  proxy.setLoggingEnabled(false)
  await sleep(100)
  await phase('disabled')
  await proxy.stop()
  upstream.close()
  process.stderr.write('@@DONE\n')
})().catch((e) => { console.error('CHILD FAILED', e); process.exit(1) })
`

function runLogChild(startLogging) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', LOG_CHILD], {
      env: { ...process.env, ADDON_PATH, START_LOGGING: startLogging ? '1' : '0' },
      timeout: 20000,
    }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`child failed: ${err.message}\n${stderr}`))
      const phases = {}
      let current = 'start'
      for (const line of stderr.split('\n')) {
        const m = /^@@PHASE (\w+)$/.exec(line)
        if (m) {
          current = m[1]
          continue
        }
        if (line === '@@DONE') {
          current = 'done'
          continue
        }
        ;(phases[current] ??= []).push(line)
      }
      resolve({ password: JSON.parse(stdout.trim().split('\n')[0]).password, stderr, phases })
    })
  })
}

const proxyLines = (lines = []) => lines.filter((l) => l.includes('[cmux-preview-proxy]'))

describe('logging', () => {
  test('off by default; setLoggingEnabled turns it on and off; passwords never logged', async () => {
    const { password, stderr, phases } = await runLogChild(false)
    expect(proxyLines(phases.start)).toEqual([])
    expect(proxyLines(phases.initial)).toEqual([])
    const enabled = proxyLines(phases.enabled)
    expect(enabled.length).toBeGreaterThan(0)
    for (const line of enabled) expect(line.startsWith('[cmux-preview-proxy]')).toBe(true)
    expect(proxyLines(phases.disabled)).toEqual([])
    expect(proxyLines(phases.done)).toEqual([])
    expect(stderr).not.toContain(password)
  })

  test('start option logging: true logs from the start', async () => {
    const { password, stderr, phases } = await runLogChild(true)
    expect(proxyLines(phases.initial).length).toBeGreaterThan(0)
    expect(proxyLines(phases.enabled).length).toBeGreaterThan(0)
    expect(proxyLines(phases.disabled)).toEqual([])
    expect(stderr).not.toContain(password)
  })
})
