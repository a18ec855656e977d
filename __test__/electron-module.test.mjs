// @cmux/preview-proxy/electron (electron/index.js): its types checked against
// Electron's own definitions, and its behaviour in Node with objects that
// implement exactly the Electron members it calls (electron-helpers.mjs),
// against its real proxy: credentials are checked with real requests, the
// certificate verifier with leaves the proxy really issued. Chromium itself is
// not launched here; the browser tests prove the network side.
// More of the module: electron-previews.test.mjs (sessions shared by one
// preview, cmux's session double, *.cmux.local), electron-ca.test.mjs (the
// app's own CA), electron-switches.test.mjs (the environment, in child
// processes), electron-app-shape.test.mjs (cmux's call sites, with tsc).

import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import tls from 'node:tls'
import { afterAll, beforeAll, describe, expect, onTestFinished, test, vi } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA, makeLeaf, spkiHash } from '../support/certs.mjs'
import { basicAuth, proxyRequest } from '../support/http-client.mjs'
import { portState } from '../support/ports.mjs'
import { closedPort } from '../support/servers.mjs'
import { sleep, waitFor } from '../support/wait.mjs'
import {
  configureView, connectStatus, derToPem, expectedErrors, fakeApp, fakeSession, fakeWebContents, FIRST_PORT, forgeCa,
  LAST_PORT, listeningPorts, loadModule, occupy, ownPortOf, PREVIEW_URL, recordingLogger, recordProxyStarts,
  reportedErrors, resignLeaf, ROOT, RULES, typesProject, useFreshModule, verifyRequest, withEnv,
} from './electron-helpers.mjs'
import { connectOn, h2Connect, h2ToProxy, tlsToProxy } from './https-proxy-helpers.mjs'
import { tlsConnect, tlsTunnel } from './tls-helpers.mjs'

let mod
const held = []

useFreshModule((loaded) => (mod = loaded), {
  afterStop: async () => {
    for (const server of held.splice(0)) await new Promise((resolve) => server.close(resolve))
  },
})

/** A configured preview: its fakes, the cleanup, and its credentials. */
const configured = (id, options) => configureView(mod, id, options)

describe('persist keys and partitions', () => {
  test.each([
    ['task-run-preview:abc', true, 'persist:cmux-preview-'],
    ['task-run-preview:', true, 'persist:cmux-preview-'],
    ['task-run-preview', false, null],
    ['Task-Run-Preview:abc', false, null],
    [' task-run-preview:abc', false, null],
    ['other:abc', false, null],
    ['', false, null],
    [undefined, false, null],
  ])('%j', (key, isPreview, prefix) => {
    expect(mod.isTaskRunPreviewPersistKey(key)).toBe(isPreview)
    const partition = mod.getPreviewPartitionForPersistKey(key)
    if (!prefix) return expect(partition).toBeNull()
    expect(partition).toMatch(/^persist:cmux-preview-[0-9a-f]{24}$/)
  })

  test('the partition is persist:cmux-preview- and the first 24 hex characters of SHA-256 of the whole key', () => {
    const key = 'task-run-preview:abc'
    const hex = crypto.createHash('sha256').update(key).digest('hex')
    expect(mod.getPreviewPartitionForPersistKey(key)).toBe(`persist:cmux-preview-${hex.slice(0, 24)}`)
    expect(mod.getPreviewPartitionForPersistKey('task-run-preview:abd')).not.toBe(mod.getPreviewPartitionForPersistKey(key))
  })
})

describe('startPreviewProxy', () => {
  test('concurrent calls start one proxy, on the first free port of 39385..39434; one console line, as cmux writes it', async () => {
    const log = vi.spyOn(console, 'log').mockImplementation(() => {})
    onTestFinished(() => log.mockRestore())
    const starts = recordProxyStarts()
    onTestFinished(() => starts.restore())
    const { logger, calls } = recordingLogger()
    const ports = await Promise.all(Array.from({ length: 8 }, () => mod.startPreviewProxy(logger)))
    const port = ports[0]
    expect(new Set(ports)).toEqual(new Set([port]))
    expect(port).toBeGreaterThanOrEqual(FIRST_PORT)
    expect(port).toBeLessThanOrEqual(LAST_PORT)
    // One start, trying 39385 upwards: every port before its own was taken (EADDRINUSE).
    const tried = Array.from({ length: port - FIRST_PORT + 1 }, (_, i) => `127.0.0.1:${FIRST_PORT + i}`)
    expect(starts.attempts.map((a) => a.addr)).toEqual(tried)
    expect(starts.attempts.map((a) => a.outcome)).toEqual(tried.map((_, i) => (i === tried.length - 1 ? 'ok' : 'EADDRINUSE')))
    expect(starts.attempts.at(-1).server.port()).toBe(port)
    expect(await listeningPorts()).toContain(port)
    expect(calls.filter((c) => c.message === 'Preview proxy listening')).toEqual([{ level: 'log', message: 'Preview proxy listening', data: { port, https: false } }])
    expect(log.mock.calls.filter(([line]) => String(line).startsWith('[cmux-preview-proxy]'))).toEqual([[`[cmux-preview-proxy] listening on port ${port}`]])
    // A later call gives the same port without starting anything.
    expect(await mod.startPreviewProxy(logger)).toBe(port)
    expect(starts.attempts).toHaveLength(tried.length)
  })

  test('EADDRINUSE on the first ports moves on to the next one', async () => {
    // 39385 held by a listener of our own (or, if it is already taken, by someone else: the same for the module).
    const first = await occupy(FIRST_PORT)
    if (first) held.push(first)
    const second = await occupy(FIRST_PORT + 1)
    if (second) held.push(second)
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(port).toBeGreaterThan(FIRST_PORT + 1)
    expect(port).toBeLessThanOrEqual(LAST_PORT)
    // Our listeners are untouched.
    if (first) expect(first.address().port).toBe(FIRST_PORT)
  })

  test('stopPreviewProxy stops the proxy, is idempotent, and waits for a start in flight', async () => {
    const starts = recordProxyStarts()
    onTestFinished(() => starts.restore())
    const starting = mod.startPreviewProxy(recordingLogger().logger)
    await mod.stopPreviewProxy()
    const port = await starting
    // The proxy that start made is stopped (its methods throw; stop() resolves once the port is free).
    const server = starts.attempts.find((a) => a.outcome === 'ok').server
    expect(() => server.port()).toThrow()
    expect(mod.getProxyCredentialsForWebContents(1)).toBeNull()
    expect(port).toBeGreaterThanOrEqual(FIRST_PORT)
    await mod.stopPreviewProxy()
    expect(mod.getPreviewProxyCertificateAuthorityInfo()).toBeNull()
    // A new start works.
    const again = await mod.startPreviewProxy(recordingLogger().logger)
    expect((await listeningPorts()).includes(again)).toBe(true)
  })
})

describe('configurePreviewProxyForView', () => {
  test("sets the proxy (rules of the context's own port, <-loopback>), trusts the CA, clears the auth cache, creates the context", async () => {
    const app = fakeApp()
    const { control, wc, credentials } = await configured(7, { app: app.app, persistKey: 'task-run-preview:x' })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(control.calls.map((c) => c.method)).toEqual(['setProxy', 'setCertificateVerifyProc', 'clearAuthCache'])
    const own = ownPortOf(control)
    expect(own).not.toBe(port)
    expect(control.proxies()).toEqual([{ mode: 'fixed_servers', proxyRules: RULES('http', own), proxyBypassRules: '<-loopback>' }])
    expect(credentials).toEqual({ username: expect.stringMatching(/^wc-7-[0-9a-f]{8}$/), password: expect.stringMatching(/^[0-9a-f]{32}$/) })
    // The own port serves the context with no Proxy-Authorization at all.
    expect(await connectStatus(own, null)).toBe(200)
    // The credentials are live in the proxy, on the shared port.
    expect(await connectStatus(port, credentials)).toBe(200)
    expect(await connectStatus(port, null)).toBe(407)
    // Released on `destroyed`: one listener was added.
    expect(wc.listeners.map((l) => l.event)).toEqual(['destroyed'])
  })

  test('a URL without a cmux route: logger.warn, nothing configured, a no-op cleanup, no proxy started', async () => {
    const { logger, calls } = recordingLogger()
    const control = fakeSession()
    const wc = fakeWebContents(3, control.session)
    const cleanup = await mod.configurePreviewProxyForView({ webContents: wc.webContents, initialUrl: 'http://localhost:3000/', persistKey: 'task-run-preview:y', logger })
    expect(calls).toEqual([{ level: 'warn', message: 'Preview proxy skipped; unable to parse cmux host', data: { url: 'http://localhost:3000/', persistKey: 'task-run-preview:y' } }])
    expect(control.calls).toEqual([])
    expect(wc.listeners).toEqual([])
    cleanup()
    expect(control.calls).toEqual([])
    expect(mod.getPreviewProxyCertificateAuthorityInfo()).toBeNull()
    expect(mod.getProxyCredentialsForWebContents(3)).toBeNull()
  })

  test('a setProxy that rejects releases the context (its credentials then get 407, its own port closes) and rethrows', async () => {
    const app = fakeApp()
    mod.installPreviewProxyLoginHandler(app.app)
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    let during
    let duringOwn
    const failure = new Error('setProxy failed')
    // Every setProxy of this session rejects: the release's too (pointing it back at the shared port).
    const control = fakeSession('failing', {
      setProxyImpl: async () => {
        if (during === undefined) {
          // The context exists while the session is being configured.
          during = mod.getProxyCredentialsForWebContents(9)
          duringOwn = ownPortOf(control)
          expect(await connectStatus(port, during)).toBe(200)
          expect(await connectStatus(duringOwn, null)).toBe(200)
        }
        throw failure
      },
    })
    const wc = fakeWebContents(9, control.session)
    const { logger, calls } = recordingLogger()
    await expect(mod.configurePreviewProxyForView({ webContents: wc.webContents, initialUrl: PREVIEW_URL, logger })).rejects.toBe(failure)
    expect(during).toEqual({ username: expect.stringMatching(/^wc-9-/), password: expect.any(String) })
    expect(mod.getProxyCredentialsForWebContents(9)).toBeNull()
    expect(await connectStatus(port, during)).toBe(407)
    expect(await portState(duringOwn)).toBe('ECONNREFUSED')
    // The release pointed the session back at the shared port (that setProxy rejected too: warned, not thrown).
    await waitFor(() => calls.length >= 2)
    expect(calls).toEqual([
      { level: 'warn', message: 'Failed to configure preview proxy', data: { webContentsId: 9, error: 'setProxy failed' } },
      { level: 'warn', message: 'Failed to point a released preview at the shared port', data: { error: 'setProxy failed' } },
    ])
    // Nothing else was done to the session, and the login handler has nothing to answer.
    expect(control.calls.map((c) => c.method)).toEqual(['setProxy', 'setProxy'])
    expect(control.proxies()).toEqual([
      { mode: 'fixed_servers', proxyRules: RULES('http', duringOwn), proxyBypassRules: '<-loopback>' },
      { mode: 'fixed_servers', proxyRules: RULES('http', port), proxyBypassRules: '<-loopback>' },
    ])
    expect(app.login(wc.webContents, { isProxy: true, scheme: 'basic', host: '127.0.0.1', port, realm: 'Cmux Preview Proxy' })).toEqual({ prevented: false, answer: null })
    // A later destroyed is harmless.
    wc.destroy()
    expect(control.calls.map((c) => c.method)).toEqual(['setProxy', 'setProxy'])
  })

  // A release fails closed: the session keeps pointing at the proxy, which answers 407 and has no
  // credentials to give; it is never set back to a direct connection. From a context's own port
  // (closed with the context, its number free for another listener) it goes back to the shared port.
  test('cleanup releases the context (407, its own port refused), points the session at the shared port (no direct reset), and is idempotent', async () => {
    const app = fakeApp()
    const { control, wc, cleanup, credentials } = await configured(11, { app: app.app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const own = ownPortOf(control)
    expect(await connectStatus(port, credentials)).toBe(200)
    expect(await connectStatus(own, null)).toBe(200)
    const callsBefore = control.calls.length
    cleanup()
    expect(await portState(own)).toBe('ECONNREFUSED')
    expect(await connectStatus(port, credentials)).toBe(407)
    expect(mod.getProxyCredentialsForWebContents(11)).toBeNull()
    // One thing was done to the session: its last proxy setting is the shared port.
    expect(control.calls.slice(callsBefore).map((c) => c.method)).toEqual(['setProxy'])
    expect(control.proxies()).toEqual([
      { mode: 'fixed_servers', proxyRules: RULES('http', own), proxyBypassRules: '<-loopback>' },
      { mode: 'fixed_servers', proxyRules: RULES('http', port), proxyBypassRules: '<-loopback>' },
    ])
    // The login handler has nothing to answer the shared port's 407 with.
    expect(app.login(wc.webContents, { isProxy: true, scheme: 'basic', host: '127.0.0.1', port, realm: '' })).toEqual({ prevented: false, answer: null })
    cleanup()
    cleanup()
    expect(control.calls).toHaveLength(callsBefore + 1)
    expect(control.proxies().some((p) => p.mode === 'direct')).toBe(false)
  })

  test('destroyed releases the context (407, its own port refused), back to the shared port without a direct reset; the cleanup afterwards does nothing', async () => {
    const { control, wc, cleanup, credentials } = await configured(12, { app: fakeApp().app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const own = ownPortOf(control)
    wc.destroy()
    expect(await connectStatus(port, credentials)).toBe(407)
    expect(await portState(own)).toBe('ECONNREFUSED')
    cleanup()
    expect(control.proxies()).toEqual([
      { mode: 'fixed_servers', proxyRules: RULES('http', own), proxyBypassRules: '<-loopback>' },
      { mode: 'fixed_servers', proxyRules: RULES('http', port), proxyBypassRules: '<-loopback>' },
    ])
  })

  test('releasePreviewProxy releases (407, its own port refused), back to the shared port without a direct reset; unknown ids are ignored', async () => {
    const { control, credentials } = await configured(13, { app: fakeApp().app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const own = ownPortOf(control)
    mod.releasePreviewProxy(13)
    expect(await connectStatus(port, credentials)).toBe(407)
    expect(await portState(own)).toBe('ECONNREFUSED')
    mod.releasePreviewProxy(13)
    mod.releasePreviewProxy(999)
    expect(control.proxies()).toEqual([
      { mode: 'fixed_servers', proxyRules: RULES('http', own), proxyBypassRules: '<-loopback>' },
      { mode: 'fixed_servers', proxyRules: RULES('http', port), proxyBypassRules: '<-loopback>' },
    ])
  })

  test('a WebContents destroyed while the proxy starts gets no context (its destroyed has fired: nothing would release one)', async () => {
    const control = fakeSession('destroyed-early')
    const wc = fakeWebContents(14, control.session)
    const configuring = mod.configurePreviewProxyForView({ webContents: wc.webContents, initialUrl: PREVIEW_URL, logger: recordingLogger().logger })
    wc.destroy()
    const cleanup = await configuring
    cleanup()
    expect(mod.getProxyCredentialsForWebContents(14)).toBeNull()
    expect(control.calls).toEqual([])
  })

  test('the released partition is configured again: a new context, credentials that work', async () => {
    const control = fakeSession('again-after-release')
    const first = await configured(14, { sessionControl: control })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    first.cleanup()
    expect(await connectStatus(port, first.credentials)).toBe(407)
    const second = await configured(15, { sessionControl: control })
    expect(second.credentials.username).toMatch(/^wc-15-/)
    expect(await connectStatus(port, second.credentials)).toBe(200)
    expect(await connectStatus(port, first.credentials)).toBe(407)
    // A new context clears the session's cached credentials (the released ones).
    expect(control.calls.filter((c) => c.method === 'clearAuthCache')).toHaveLength(2)
    expect(control.proxies().some((p) => p.mode === 'direct')).toBe(false)
  })

  test('two WebContents of one preview on one session share its context, released with the last', async () => {
    const shared = fakeSession('shared')
    const app = fakeApp()
    const a = await configured(21, { app: app.app, sessionControl: shared })
    const b = await configured(22, { app: app.app, sessionControl: shared })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    // Chromium caches the credentials per session: both get the same ones.
    expect(b.credentials).toEqual(a.credentials)
    expect(a.credentials.username).toMatch(/^wc-21-/)
    const ours = { isProxy: true, scheme: 'basic', host: '127.0.0.1', port, realm: 'Cmux Preview Proxy' }
    expect(app.login(a.wc.webContents, ours).answer).toEqual([a.credentials.username, a.credentials.password])
    expect(app.login(b.wc.webContents, ours).answer).toEqual([a.credentials.username, a.credentials.password])
    // The verify proc is set once per session; the auth cache is cleared for the new context only.
    expect(shared.calls.filter((c) => c.method === 'setCertificateVerifyProc')).toHaveLength(1)
    expect(shared.calls.filter((c) => c.method === 'clearAuthCache')).toHaveLength(1)
    a.wc.destroy()
    expect(mod.getProxyCredentialsForWebContents(21)).toBeNull()
    expect(mod.getProxyCredentialsForWebContents(22)).toEqual(a.credentials)
    expect(await connectStatus(port, b.credentials)).toBe(200)
    b.cleanup()
    expect(await connectStatus(port, b.credentials)).toBe(407)
    expect(shared.proxies().some((p) => p.mode === 'direct')).toBe(false)
  })

  test('configuring the same WebContents again replaces its context; the first cleanup does not touch the second', async () => {
    const app = fakeApp().app
    const control = fakeSession('again')
    const first = await configured(31, { app, sessionControl: control })
    const wc = fakeWebContents(31, control.session)
    const cleanup = await mod.configurePreviewProxyForView({ webContents: wc.webContents, initialUrl: PREVIEW_URL, logger: recordingLogger().logger })
    const second = mod.getProxyCredentialsForWebContents(31)
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(second.username).not.toBe(first.credentials.username)
    expect(await connectStatus(port, first.credentials)).toBe(407)
    first.cleanup()
    expect(await connectStatus(port, second)).toBe(200)
    cleanup()
    expect(await connectStatus(port, second)).toBe(407)
  })
})

/** The proxy's Basic challenge for 127.0.0.1:`port`, as Electron gives it to app.on('login'). */
const challenge = (port) => ({ isProxy: true, scheme: 'basic', host: '127.0.0.1', port, realm: 'Cmux Preview Proxy' })
const rules = (scheme, port) => ({ mode: 'fixed_servers', proxyRules: RULES(scheme, port), proxyBypassRules: '<-loopback>' })

describe("a context's own port (the default; setPreviewProxyOwnPorts)", () => {
  test("the session's rules name the context's own port, not the shared one; every connection there is the context's, with no Proxy-Authorization; the shared port still takes its credentials", async () => {
    const { logger, calls } = recordingLogger()
    mod.setPreviewProxyLoggingEnabled(true)
    // The preview's origin is a closed port on loopback (cmux's TEST_CMUX_PROXY_ORIGIN hook): a
    // request forwarded for the context fails with 502 without leaving the machine.
    const origin = `http://127.0.0.1:${await closedPort()}`
    const { control, credentials } = await withEnv({ TEST_CMUX_PROXY_ORIGIN: origin }, () => configured(301, { app: fakeApp().app, logger }))
    const port = await mod.startPreviewProxy(logger)
    const own = ownPortOf(control)
    expect(own).not.toBe(port)
    expect(control.proxies()).toEqual([rules('http', own)])
    const requests = (filter) => calls.filter((c) => c.message === 'Preview proxy' && c.data.event === 'request' && filter(c.data)).map((c) => c.data)

    // CONNECT localhost:3000 with no Proxy-Authorization at all: 200, the routed context looks
    // inside the tunnel itself (nothing is connected upstream). The event names the context.
    expect(await connectStatus(own, null)).toBe(200)
    const tunnel = await waitFor(() => requests((r) => r.method === 'CONNECT')[0], { timeout: 5000 })
    expect(tunnel).toMatchObject({ url: 'localhost:3000', status: 200, webContentsId: 301, contextId: expect.any(String) })
    // A plain request with no Proxy-Authorization: the context's route (its origin refuses: 502), no 407.
    const forwarded = await proxyRequest(own, 'http://localhost:3000/')
    expect(forwarded.status).toBe(502)
    expect(forwarded.headers['proxy-authenticate']).toBeUndefined()
    await waitFor(() => requests((r) => r.status === 502 && r.contextId === tunnel.contextId).length === 1, { timeout: 5000 })

    // The shared port is as it was: 407 without credentials; the context's credentials valid there.
    expect(await connectStatus(port, null)).toBe(407)
    expect(mod.getProxyCredentialsForWebContents(301)).toEqual(credentials)
    expect(await connectStatus(port, credentials)).toBe(200)
    await waitFor(() => requests((r) => r.method === 'CONNECT' && r.status === 200).length === 2, { timeout: 5000 })
    expect(requests((r) => r.status === 200).map((r) => r.contextId)).toEqual([tunnel.contextId, tunnel.contextId])
  })

  test("the login handler stays installed and harmless: it answers the shared port's challenge for a configured WebContents, never one naming its own port", async () => {
    const app = fakeApp()
    const { control, wc, credentials } = await configured(311, { app: app.app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const own = ownPortOf(control)
    expect(app.listeners.map((l) => l.event)).toEqual(['login'])
    expect(app.login(wc.webContents, challenge(port))).toEqual({ prevented: true, answer: [credentials.username, credentials.password] })
    expect(await connectStatus(port, credentials)).toBe(200)
    // The own port never sends a 407: a challenge naming its number is someone else's, left alone.
    expect(app.login(wc.webContents, challenge(own))).toEqual({ prevented: false, answer: null })
    expect(await connectStatus(own, null)).toBe(200)
  })

  test('setPreviewProxyOwnPorts(false): the shared port with Basic credentials, as before; a release leaves the session alone', async () => {
    mod.setPreviewProxyOwnPorts(false)
    const app = fakeApp()
    const { control, wc, cleanup, credentials } = await configured(321, { app: app.app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(control.calls.map((c) => c.method)).toEqual(['setProxy', 'setCertificateVerifyProc', 'clearAuthCache'])
    expect(control.proxies()).toEqual([rules('http', port)])
    expect(await connectStatus(port, credentials)).toBe(200)
    expect(await connectStatus(port, null)).toBe(407)
    expect(app.login(wc.webContents, challenge(port))).toEqual({ prevented: true, answer: [credentials.username, credentials.password] })
    const callsBefore = control.calls.length
    cleanup()
    expect(await connectStatus(port, credentials)).toBe(407)
    expect(app.login(wc.webContents, challenge(port))).toEqual({ prevented: false, answer: null })
    // Nothing was done to the session: its last proxy setting is still the shared port.
    expect(control.calls).toHaveLength(callsBefore)
    expect(control.proxies()).toEqual([rules('http', port)])
  })

  test.each(['destroyed', 'releasePreviewProxy', 'a setProxy that rejects'])('setPreviewProxyOwnPorts(false), released by %s: the session is left on the shared port', async (how) => {
    mod.setPreviewProxyOwnPorts(false)
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const failure = new Error('setProxy failed')
    const control = fakeSession(how, { setProxyImpl: how === 'a setProxy that rejects' ? async () => { throw failure } : undefined })
    const wc = fakeWebContents(322, control.session)
    const configuring = mod.configurePreviewProxyForView({ webContents: wc.webContents, initialUrl: PREVIEW_URL, logger: recordingLogger().logger })
    let credentials
    if (how === 'a setProxy that rejects') {
      await expect(configuring).rejects.toBe(failure)
    } else {
      await configuring
      credentials = mod.getProxyCredentialsForWebContents(322)
      expect(await connectStatus(port, credentials)).toBe(200)
      if (how === 'destroyed') wc.destroy()
      else mod.releasePreviewProxy(322)
      expect(await connectStatus(port, credentials)).toBe(407)
    }
    expect(mod.getProxyCredentialsForWebContents(322)).toBeNull()
    expect(control.proxies()).toEqual([rules('http', port)])
  })

  test('it applies to contexts created from then on: a WebContents joining an own-port context gets that port; a new preview gets the shared one', async () => {
    const session = fakeSession('own-then-shared')
    const a = await configured(331, { sessionControl: session })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const own = ownPortOf(session)
    mod.setPreviewProxyOwnPorts(false)
    // Another view of the same preview on that session: the same context, so its own port.
    const b = await configured(332, { sessionControl: session })
    expect(b.credentials).toEqual(a.credentials)
    expect(session.proxies()).toEqual([rules('http', own), rules('http', own)])
    // A preview on a session of its own: the shared port.
    const c = await configured(333, { url: 'https://cmux-m2-base-3000.cmux.app/' })
    expect(c.control.proxies()).toEqual([rules('http', port)])
    expect(await connectStatus(port, c.credentials)).toBe(200)
    expect(await connectStatus(own, null)).toBe(200)
    // On again: the next new context has a port of its own, another one.
    mod.setPreviewProxyOwnPorts(true)
    const d = await configured(334, { url: 'https://cmux-m3-base-3000.cmux.app/' })
    const next = ownPortOf(d.control)
    expect(next).not.toBe(own)
    expect(next).not.toBe(port)
    expect(await connectStatus(next, null)).toBe(200)
    // Released (a's part, then b's, the last): the own port closes, the session goes to the shared port.
    a.cleanup()
    expect(await connectStatus(own, null)).toBe(200)
    b.cleanup()
    expect(await portState(own)).toBe('ECONNREFUSED')
    expect(session.proxies().at(-1)).toEqual(rules('http', port))
  })

  test('the HTTPS proxy mode: https://127.0.0.1:<own port> rules; TLS there (h2, a certificate of the proxy CA the verify proc trusts) and CONNECT with no Proxy-Authorization', async () => {
    const app = fakeApp()
    const info = mod.enablePreviewProxyHttpsMode(app.app)
    const { control, cleanup } = await configured(341, { app: app.app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const own = ownPortOf(control)
    expect(own).not.toBe(port)
    expect(control.proxies()).toEqual([rules('https', own)])
    // What Chromium does with an https:// proxy: TLS verified against this launch's CA, HTTP/2, CONNECT.
    const h2 = await h2ToProxy(own, info.certPem)
    onTestFinished(() => h2.destroy())
    const { stream, headers } = await h2Connect(h2, 'localhost:3000')
    expect(headers[':status']).toBe(200)
    stream.destroy()
    // HTTP/1.1 over TLS, the same.
    const socket = await tlsToProxy(own, { ca: info.certPem, ALPNProtocols: ['http/1.1'] })
    onTestFinished(() => socket.destroy())
    expect(socket.alpnProtocol).toBe('http/1.1')
    await connectOn(socket, 'localhost:3000')
    // The port's certificate is one the session's verify proc trusts, for 127.0.0.1 only.
    const ownCert = derToPem(socket.getPeerCertificate(true).raw)
    expect(await control.verify(verifyRequest('127.0.0.1', ownCert))).toBe(0)
    expect(await control.verify(verifyRequest('example.com', ownCert))).toBe(-3)
    // Released: the port refuses, the session gets the shared port's https:// rules.
    cleanup()
    expect(await portState(own)).toBe('ECONNREFUSED')
    expect(control.proxies()).toEqual([rules('https', own), rules('https', port)])
  })

  test('past maxContextPorts (256) a new preview uses the shared port, with a warning, rather than failing; a port freed is used again', async () => {
    const views = []
    for (let id = 600; id < 856; id++) views.push(await configured(id))
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(new Set(views.map((v) => ownPortOf(v.control))).size).toBe(256)
    const { logger, calls } = recordingLogger()
    const extra = await configured(856, { logger })
    expect(extra.control.proxies()).toEqual([rules('http', port)])
    expect(await connectStatus(port, extra.credentials)).toBe(200)
    expect(calls).toEqual([
      {
        level: 'warn',
        message: 'Preview proxy: no port of its own for this preview; it uses the shared port',
        data: { webContentsId: 856, error: expect.stringMatching(/maxContextPorts/) },
      },
    ])
    views.shift().cleanup()
    const next = await configured(857)
    expect(ownPortOf(next.control)).not.toBe(port)
    expect(await portState(ownPortOf(next.control))).toBe('open')
  })

  test('stopPreviewProxy first points the sessions on own ports at the shared port (their numbers may be reused), never direct; shared-port sessions are left alone', async () => {
    const a = await configured(351)
    const b = await configured(352)
    mod.setPreviewProxyOwnPorts(false)
    const c = await configured(353)
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const [ownA, ownB] = [ownPortOf(a.control), ownPortOf(b.control)]
    expect(ownA).not.toBe(ownB)
    await mod.stopPreviewProxy()
    expect(await portState(ownA)).toBe('ECONNREFUSED')
    expect(await portState(ownB)).toBe('ECONNREFUSED')
    expect(a.control.proxies()).toEqual([rules('http', ownA), rules('http', port)])
    expect(b.control.proxies()).toEqual([rules('http', ownB), rules('http', port)])
    expect(c.control.proxies()).toEqual([rules('http', port)])
  })
})

describe('the login handler', () => {
  test('answers our proxy challenge only: not another host or port, not a non-proxy auth, not unknown WebContents', async () => {
    const app = fakeApp()
    const { wc, credentials } = await configured(41, { app: app.app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const ours = { isProxy: true, scheme: 'basic', host: '127.0.0.1', port, realm: 'Cmux Preview Proxy' }
    expect(app.login(wc.webContents, ours)).toEqual({ prevented: true, answer: [credentials.username, credentials.password] })

    const left = { prevented: false, answer: null }
    expect(app.login(wc.webContents, { ...ours, port: port + 1 })).toEqual(left)
    expect(app.login(wc.webContents, { ...ours, host: 'localhost' })).toEqual(left)
    expect(app.login(wc.webContents, { ...ours, host: 'proxy.example.com', port: 8080 })).toEqual(left)
    expect(app.login(wc.webContents, { ...ours, isProxy: false })).toEqual(left)
    expect(app.login(wc.webContents, { ...ours, isProxy: false, host: 'localhost', port: 3000 })).toEqual(left)
    expect(app.login(fakeWebContents(4242, fakeSession().session).webContents, ours)).toEqual(left)
    expect(app.login(null, ours)).toEqual(left)
    // Another listener answered first: left alone.
    expect(app.login(wc.webContents, ours, { alreadyPrevented: true })).toEqual({ prevented: true, answer: null })
    // Released: nothing to answer with.
    mod.releasePreviewProxy(41)
    expect(app.login(wc.webContents, ours)).toEqual(left)
  })

  test('one listener per app, also when configure installs it again', async () => {
    const app = fakeApp()
    mod.installPreviewProxyLoginHandler(app.app)
    mod.installPreviewProxyLoginHandler(app.app)
    await configured(51, { app: app.app })
    await configured(52, { app: app.app })
    expect(app.listeners.map((l) => l.event)).toEqual(['login'])
  })

  test('configure installs it on first use on the app given to enablePreviewProxyHttpsMode', async () => {
    const app = fakeApp()
    mod.enablePreviewProxyHttpsMode(app.app)
    expect(app.listeners).toEqual([])
    const { wc, credentials } = await configured(53)
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(app.listeners.map((l) => l.event)).toEqual(['login'])
    expect(app.login(wc.webContents, { isProxy: true, scheme: 'basic', host: '127.0.0.1', port, realm: '' }).answer).toEqual([credentials.username, credentials.password])
  })

  test('outside Electron with no app given, configure warns once and still configures', async () => {
    const { logger, calls } = recordingLogger()
    await configured(54, { logger })
    // (Another route: previews on sessions of their own.)
    await configured(55, { logger, url: 'https://cmux-m2-base-3000.cmux.app/' })
    const warnings = calls.filter((c) => c.level === 'warn')
    expect(warnings).toEqual([{ level: 'warn', message: 'Preview proxy login handler not installed: call installPreviewProxyLoginHandler(app)', data: {} }])
    expect(mod.getProxyCredentialsForWebContents(55)).not.toBeNull()
  })
})

describe('the certificate verify proc', () => {
  test('accepts a leaf the proxy issued for an intercepted https://localhost, for localhost only', async () => {
    const { control, credentials } = await configured(61, { app: fakeApp().app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const socket = await tlsTunnel(port, 'localhost:3000', basicAuth(credentials.username, credentials.password), {
      servername: 'localhost',
      rejectUnauthorized: false,
    })
    const leaf = derToPem(socket.getPeerCertificate(true).raw)
    socket.destroy()
    expect(new crypto.X509Certificate(leaf).checkIssued(new crypto.X509Certificate(mod.getPreviewProxyCertificateAuthorityInfo().certPem))).toBe(true)

    expect(await control.verify(verifyRequest('localhost', leaf))).toBe(0)
    // Not for another host (Chromium's verdict stands), not for a loopback name the leaf does not carry.
    expect(await control.verify(verifyRequest('example.com', leaf))).toBe(-3)
    expect(await control.verify(verifyRequest('localhost.example.com', leaf))).toBe(-3)
    expect(await control.verify(verifyRequest('127.0.0.1', leaf))).toBe(-3)
    expect(await control.verify(verifyRequest('app.localhost', leaf))).toBe(-3)
    // A leaf for localhost from another CA: Chromium's verdict.
    const other = makeLeaf(makeCA('someone else'), ['localhost'])
    expect(await control.verify(verifyRequest('localhost', other.cert))).toBe(-3)
    // Garbage: Chromium's verdict, no throw.
    expect(await control.verify(verifyRequest('localhost', 'not a certificate'))).toBe(-3)
  })

  test('after a restart of the proxy (a new CA without the HTTPS mode) the same session trusts the new CA only', async () => {
    const { control, credentials } = await configured(62, { app: fakeApp().app })
    let port = await mod.startPreviewProxy(recordingLogger().logger)
    const leafOf = async (creds) => {
      const socket = await tlsTunnel(port, 'localhost:3000', basicAuth(creds.username, creds.password), { servername: 'localhost', rejectUnauthorized: false })
      const pem = derToPem(socket.getPeerCertificate(true).raw)
      socket.destroy()
      return pem
    }
    const oldLeaf = await leafOf(credentials)
    await mod.stopPreviewProxy()
    expect(await control.verify(verifyRequest('localhost', oldLeaf))).toBe(-3)
    const wc = fakeWebContents(62, control.session)
    await mod.configurePreviewProxyForView({ webContents: wc.webContents, initialUrl: PREVIEW_URL, logger: recordingLogger().logger })
    port = await mod.startPreviewProxy(recordingLogger().logger)
    const newLeaf = await leafOf(mod.getProxyCredentialsForWebContents(62))
    expect(await control.verify(verifyRequest('localhost', newLeaf))).toBe(0)
    expect(await control.verify(verifyRequest('localhost', oldLeaf))).toBe(-3)
  })
})

describe('logging', () => {
  test('on: the proxy events go to the Logger (request through log, failures through warn), never a password; off: nothing more', async () => {
    const { logger, calls } = recordingLogger()
    mod.setPreviewProxyLoggingEnabled(true)
    // The preview's origin is a closed port on loopback (cmux's TEST_CMUX_PROXY_ORIGIN hook, read
    // when the route is derived): its requests fail with 502 without leaving the machine.
    const origin = `http://127.0.0.1:${await closedPort()}`
    const { credentials } = await withEnv({ TEST_CMUX_PROXY_ORIGIN: origin }, () => configured(71, { app: fakeApp().app, logger }))
    const port = await mod.startPreviewProxy(logger)
    expect(await connectStatus(port, credentials)).toBe(200)
    const request = await waitFor(() => calls.find((c) => c.message === 'Preview proxy' && c.data.event === 'request'), { timeout: 5000 })
    expect(request).toEqual({
      level: 'log',
      message: 'Preview proxy',
      data: expect.objectContaining({ event: 'request', method: 'CONNECT', url: 'localhost:3000', status: 200, webContentsId: 71, contextId: expect.any(String) }),
    })
    expect(calls.some((c) => c.data?.event === 'context' && c.data.phase === 'created' && c.data.webContentsId === 71)).toBe(true)

    // A request the proxy fails (its preview's origin refuses: 502): an `error` event and the request, through warn.
    const failed = await proxyRequest(port, 'http://localhost:3000/', { auth: basicAuth(credentials.username, credentials.password) })
    expect(failed.status).toBe(502)
    await waitFor(() => calls.some((c) => c.level === 'warn' && c.data?.event === 'request' && c.data.status === 502), { timeout: 5000 })
    expect(calls.find((c) => c.data?.event === 'error')).toMatchObject({ level: 'warn', message: 'Preview proxy', data: { event: 'error', cause: 'refused', status: 502 } })

    const logged = JSON.stringify(calls)
    expect(logged).not.toContain(credentials.password)
    expect(logged).not.toContain(Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64'))

    mod.setPreviewProxyLoggingEnabled(false)
    await sleep(100)
    const count = calls.length
    expect(await connectStatus(port, credentials)).toBe(200)
    mod.releasePreviewProxy(71)
    await sleep(300)
    expect(calls.slice(count)).toEqual([])
  })

  test('turned on after the start, it subscribes then; off by default', async () => {
    const { logger, calls } = recordingLogger()
    const { credentials } = await configured(72, { app: fakeApp().app, logger })
    const port = await mod.startPreviewProxy(logger)
    expect(await connectStatus(port, credentials)).toBe(200)
    await sleep(200)
    expect(calls.filter((c) => c.message === 'Preview proxy')).toEqual([])
    mod.setPreviewProxyLoggingEnabled(true)
    expect(await connectStatus(port, credentials)).toBe(200)
    await waitFor(() => calls.some((c) => c.message === 'Preview proxy' && c.data.event === 'request'), { timeout: 5000 })
  })

  test("an `error` event goes to logger.error when the logger has one (cmux's has), a request answered 502 to warn, the rest to log", async () => {
    const { logger, calls } = recordingLogger({ error: true })
    mod.setPreviewProxyLoggingEnabled(true)
    const origin = `http://127.0.0.1:${await closedPort()}`
    const { credentials } = await withEnv({ TEST_CMUX_PROXY_ORIGIN: origin }, () => configured(73, { logger }))
    const port = await mod.startPreviewProxy(logger)
    const auth = basicAuth(credentials.username, credentials.password)
    expect((await proxyRequest(port, 'http://localhost:3000/', { auth })).status).toBe(502)
    const failedRequest = await waitFor(() => calls.find((c) => c.data?.event === 'request' && c.data.status === 502), { timeout: 5000 })
    expect(failedRequest.level).toBe('warn')
    const errors = calls.filter((c) => c.data?.event === 'error')
    expect(errors.length).toBeGreaterThan(0)
    expect(errors.map((c) => c.level)).toEqual(errors.map(() => 'error'))
    expect(errors[0]).toMatchObject({ message: 'Preview proxy', data: { event: 'error', cause: 'refused' } })
    // Nothing of the proxy's went to warn but the failed request.
    expect(calls.filter((c) => c.level === 'warn' && c.message === 'Preview proxy').map((c) => c.data.event)).toEqual(['request'])
    expect(await connectStatus(port, credentials)).toBe(200)
    const ok = await waitFor(() => calls.find((c) => c.data?.event === 'request' && c.data.method === 'CONNECT' && c.data.status === 200), { timeout: 5000 })
    expect(ok.level).toBe('log')
  })
})

describe('the HTTPS proxy mode (enablePreviewProxyHttpsMode)', () => {
  let dir
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'cmux-electron-https-'))
  })
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  const DAY = 24 * 60 * 60 * 1000
  const SPKI_SWITCH = 'ignore-certificate-errors-spki-list'
  /** DER of the OID id-ce-nameConstraints (2.5.29.30). */
  const NAME_CONSTRAINTS_OID = Buffer.from([0x06, 0x03, 0x55, 0x1d, 0x1e])
  const validity = (certPem) => {
    const cert = new crypto.X509Certificate(certPem)
    const notBefore = Date.parse(cert.validFrom)
    const notAfter = Date.parse(cert.validTo)
    return { notBefore, notAfter, span: notAfter - notBefore, left: notAfter - Date.now() }
  }
  /** A directory of its own under `dir`, created. */
  const fresh = (name) => mkdtempSync(join(dir, `${name}-`))
  /** The CA the module (a new instance: a new launch) keeps in `caFile`, after writing `ca` there first. */
  const launchWith = (caFile, ca) => {
    mkdirSync(dirname(caFile), { recursive: true })
    writeFileSync(caFile, JSON.stringify(ca), { mode: 0o600 })
    return loadModule().enablePreviewProxyHttpsMode(fakeApp().app, { caFile })
  }
  /** `launchWith` and what the file then holds. */
  const replacedOrKept = (name, ca) => {
    const caFile = join(fresh(name), 'ca.json')
    const info = launchWith(caFile, ca)
    const stored = JSON.parse(readFileSync(caFile, 'utf8'))
    expect(stored.certPem).toBe(info.certPem)
    return { info, stored, kept: info.certPem === ca.certPem }
  }

  test('by default: a CA for this launch only (generateCa, 30 days), nothing on disk, no getPath; the switch names it, the proxy uses it, sessions get https:// rules', async () => {
    const starts = recordProxyStarts()
    onTestFinished(() => starts.restore())
    // The app's real user data directory: the module must leave it alone.
    const userData = fresh('user-data')
    const app = fakeApp({ userData })
    const info = mod.enablePreviewProxyHttpsMode(app.app)
    expect(readdirSync(userData)).toEqual([])
    expect(app.pathsAsked).toEqual([])
    expect(mod.PER_LAUNCH_CA_VALIDITY_DAYS).toBe(30)
    expect(starts.generated.map((g) => g.args)).toEqual([[{ validityDays: 30 }]])
    const generated = starts.generated[0].ca
    expect(info).toEqual({ certPem: generated.certPem, spkiSha256: spkiHash(generated.certPem) })
    expect(app.appended).toEqual([[SPKI_SWITCH, info.spkiSha256]])
    // Short-lived (generateCa backdates a day: a span of 31 days at most), constrained to the proxy's names.
    const cert = new crypto.X509Certificate(info.certPem)
    expect(cert.ca).toBe(true)
    const { span, left } = validity(info.certPem)
    expect(span).toBeLessThanOrEqual(31 * DAY)
    expect(left).toBeLessThanOrEqual(30 * DAY)
    expect(left).toBeGreaterThan(29 * DAY)
    expect(cert.raw.includes(NAME_CONSTRAINTS_OID)).toBe(true)
    // Known before the start.
    expect(mod.getPreviewProxyCertificateAuthorityInfo()).toEqual(info)

    const { control, credentials } = await configured(81, { app: app.app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    // The running proxy has that CA: its SPKI is the switch's value.
    expect(mod.getPreviewProxyCertificateAuthorityInfo()).toEqual(info)
    const ownPort = ownPortOf(control)
    expect(ownPort).not.toBe(port)
    expect(control.proxies()).toEqual([{ mode: 'fixed_servers', proxyRules: RULES('https', ownPort), proxyBypassRules: '<-loopback>' }])
    expect(starts.attempts.at(-1)).toMatchObject({ outcome: 'ok' })

    // The proxy's own certificate (TLS on its listener), issued from that CA, trusted by the verify proc for 127.0.0.1 only.
    const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['h2', 'http/1.1'] })
    await new Promise((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject))
    expect(socket.alpnProtocol).toBe('h2')
    const own = derToPem(socket.getPeerCertificate(true).raw)
    socket.destroy()
    expect(new crypto.X509Certificate(own).verify(cert.publicKey)).toBe(true)
    expect(await control.verify(verifyRequest('127.0.0.1', own))).toBe(0)
    expect(await control.verify(verifyRequest('example.com', own))).toBe(-3)
    expect(await control.verify(verifyRequest('10.0.0.1', own))).toBe(-3)
    // And the credentials work over TLS too.
    expect(await connectStatus(port, credentials)).toBe(200)

    // A leaf of this CA for a name that is not loopback (the proxy never issues one; the CA key
    // can sign one): the verify proc leaves it to Chromium.
    const intercepted = await tlsTunnel(port, 'localhost:3000', basicAuth(credentials.username, credentials.password), {
      servername: 'localhost',
      rejectUnauthorized: false,
    })
    const leafDer = intercepted.getPeerCertificate(true).raw
    intercepted.destroy()
    const resigned = derToPem(resignLeaf(leafDer, generated.keyPem))
    expect(await control.verify(verifyRequest('localhost', resigned))).toBe(0)
    const forged = derToPem(resignLeaf(leafDer, generated.keyPem, 'localhost', 'evil.test'))
    const forgedCert = new crypto.X509Certificate(forged)
    expect(forgedCert.checkHost('evil.test')).toBe('evil.test')
    expect(forgedCert.verify(cert.publicKey)).toBe(true)
    expect(await control.verify(verifyRequest('evil.test', forged))).toBe(-3)

    // Still nothing on disk once the proxy ran.
    expect(readdirSync(userData)).toEqual([])
    expect(app.pathsAsked).toEqual([])
  })

  test('by default, each launch (a new module instance) has a new CA; other SPKI hashes of the switch are kept', () => {
    const first = fakeApp({ switches: { [SPKI_SWITCH]: 'AAAA=' } })
    const a = mod.enablePreviewProxyHttpsMode(first.app)
    const next = fakeApp({ switches: { [SPKI_SWITCH]: 'AAAA=' } })
    const b = loadModule().enablePreviewProxyHttpsMode(next.app)
    expect(b.spkiSha256).not.toBe(a.spkiSha256)
    expect(b.certPem).not.toBe(a.certPem)
    expect(first.appended).toEqual([[SPKI_SWITCH, `AAAA=,${a.spkiSha256}`]])
    expect(next.appended).toEqual([[SPKI_SWITCH, `AAAA=,${b.spkiSha256}`]])
    expect([...first.pathsAsked, ...next.pathsAsked]).toEqual([])
  })

  test('by default, the file older versions kept (<userData>/preview-proxy-ca.json) is neither used nor touched', () => {
    const userData = fresh('old-user-data')
    const legacy = join(userData, 'preview-proxy-ca.json')
    const old = ProxyServer.generateCa()
    writeFileSync(legacy, JSON.stringify(old), { mode: 0o600 })
    const before = statSync(legacy)
    const app = fakeApp({ userData })
    const info = mod.enablePreviewProxyHttpsMode(app.app)
    expect(info.spkiSha256).not.toBe(spkiHash(old.certPem))
    expect(readFileSync(legacy, 'utf8')).toBe(JSON.stringify(old))
    expect(statSync(legacy).mtimeMs).toBe(before.mtimeMs)
    expect(readdirSync(userData)).toEqual(['preview-proxy-ca.json'])
    expect(app.pathsAsked).toEqual([])
  })

  test('enabled again in the same launch: the same CA, no second hash; another caFile, or a caFile that is not a path, throws', () => {
    const app = fakeApp()
    const info = mod.enablePreviewProxyHttpsMode(app.app)
    expect(mod.enablePreviewProxyHttpsMode(app.app)).toEqual(info)
    expect(app.appended).toEqual([[SPKI_SWITCH, info.spkiSha256]])
    const caFile = join(fresh('again'), 'ca.json')
    expect(() => mod.enablePreviewProxyHttpsMode(app.app, { caFile })).toThrow(/already called without caFile/)
    expect(existsSync(caFile)).toBe(false)

    const other = loadModule()
    expect(() => other.enablePreviewProxyHttpsMode(fakeApp().app, { caFile: '' })).toThrow(TypeError)
    expect(() => other.enablePreviewProxyHttpsMode(fakeApp().app, { caFile: 1 })).toThrow(TypeError)
    const kept = other.enablePreviewProxyHttpsMode(fakeApp().app, { caFile })
    expect(other.enablePreviewProxyHttpsMode(fakeApp().app, { caFile })).toEqual(kept)
    expect(() => other.enablePreviewProxyHttpsMode(fakeApp().app)).toThrow(/already called with caFile/)
  })

  test('with caFile: the CA is created there (0600, generateCa for 365 days: a span of 366 days at most, name constraints), and the proxy uses it', async () => {
    const starts = recordProxyStarts()
    onTestFinished(() => starts.restore())
    const userData = fresh('user-data-kept')
    const caFile = join(userData, 'kept', 'ca.json')
    const app = fakeApp({ userData })
    const info = mod.enablePreviewProxyHttpsMode(app.app, { caFile })
    expect(app.pathsAsked).toEqual([])
    expect(starts.generated.map((g) => g.args)).toEqual([[{ validityDays: 365 }]])
    const stored = JSON.parse(readFileSync(caFile, 'utf8'))
    expect(stored).toEqual({ certPem: info.certPem, keyPem: expect.stringContaining('PRIVATE KEY') })
    expect(stored).toEqual(starts.generated[0].ca)
    if (process.platform !== 'win32') expect(statSync(caFile).mode & 0o777).toBe(0o600)
    // No temporary file left behind.
    expect(readdirSync(dirname(caFile))).toEqual(['ca.json'])
    const { span, left } = validity(info.certPem)
    expect(span).toBeLessThanOrEqual(366 * DAY)
    expect(left).toBeGreaterThan(364 * DAY)
    expect(new crypto.X509Certificate(info.certPem).raw.includes(NAME_CONSTRAINTS_OID)).toBe(true)
    expect(app.appended).toEqual([[SPKI_SWITCH, info.spkiSha256]])

    await configured(82, { app: app.app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(mod.getPreviewProxyCertificateAuthorityInfo()).toEqual(info)
    // The listener's certificate verifies against the file's CA.
    const socket = await tlsConnect({ host: '127.0.0.1', port, ca: info.certPem, rejectUnauthorized: true, ALPNProtocols: ['h2'] })
    expect(socket.alpnProtocol).toBe('h2')
    socket.destroy()
  })

  test('with caFile: a new launch (module instance) loads the same CA, restores 0600, and keeps the other SPKI hashes', () => {
    const caFile = join(fresh('kept'), 'ca.json')
    const first = mod.enablePreviewProxyHttpsMode(fakeApp().app, { caFile })
    if (process.platform !== 'win32') chmodSync(caFile, 0o644)
    const again = loadModule()
    const app = fakeApp({ switches: { [SPKI_SWITCH]: 'AAAA=' } })
    const second = again.enablePreviewProxyHttpsMode(app.app, { caFile })
    expect(second).toEqual(first)
    expect(app.appended).toEqual([[SPKI_SWITCH, `AAAA=,${first.spkiSha256}`]])
    if (process.platform !== 'win32') expect(statSync(caFile).mode & 0o777).toBe(0o600)
    // Enabling twice does not append twice.
    again.enablePreviewProxyHttpsMode(app.app, { caFile })
    expect(app.appended).toHaveLength(1)
  })

  test('with caFile: an unusable file is replaced (bad JSON, a key not its own, expired, not yet valid, not a CA)', () => {
    const caFile = join(fresh('broken'), 'ca.json')
    mkdirSync(dirname(caFile), { recursive: true })
    writeFileSync(caFile, '{"certPem": "garbage"')
    const info = mod.enablePreviewProxyHttpsMode(fakeApp().app, { caFile })
    expect(JSON.parse(readFileSync(caFile, 'utf8')).certPem).toBe(info.certPem)
    // A cert with someone else's key.
    const other = makeCA('mismatch')
    writeFileSync(caFile, JSON.stringify({ certPem: info.certPem, keyPem: other.keyPem }))
    const replaced = loadModule().enablePreviewProxyHttpsMode(fakeApp().app, { caFile })
    expect(replaced.spkiSha256).not.toBe(info.spkiSha256)
    const now = Date.now()
    for (const [name, ca] of [
      ['expired', forgeCa({ notBefore: new Date(now - 100 * DAY), notAfter: new Date(now - DAY) })],
      ['not yet valid', forgeCa({ notBefore: new Date(now + DAY), notAfter: new Date(now + 200 * DAY) })],
      ['not a CA', forgeCa({ notBefore: new Date(now - DAY), notAfter: new Date(now + 200 * DAY), ca: false })],
    ]) {
      const outcome = replacedOrKept(name.replaceAll(' ', '-'), ca)
      expect(outcome.kept, name).toBe(false)
    }
  })

  test('with caFile: a CA of a year (366 days from notBefore) with name constraints, made elsewhere, is kept', () => {
    // The control of the next tests: they differ from this CA in one property each.
    const now = Date.now()
    const ca = forgeCa({ notBefore: new Date(now - DAY), notAfter: new Date(now + 365 * DAY) })
    const outcome = replacedOrKept('year', ca)
    expect(outcome.kept).toBe(true)
    expect(outcome.stored).toEqual(ca)
  })

  test('with caFile: a ten-year CA (what older versions wrote) is replaced by one of a year, even with name constraints', () => {
    const now = Date.now()
    for (const nameConstraints of [true, false]) {
      const tenYears = forgeCa({ notBefore: new Date(now - DAY), notAfter: new Date(now + 3650 * DAY), nameConstraints })
      const outcome = replacedOrKept('ten-years', tenYears)
      expect(outcome.kept).toBe(false)
      expect(validity(outcome.info.certPem).span).toBeLessThanOrEqual(366 * DAY)
      expect(outcome.stored.keyPem).not.toBe(tenYears.keyPem)
    }
    // Just over the limit: a span of 366 days and an hour.
    const over = forgeCa({ notBefore: new Date(now - DAY - 3600 * 1000), notAfter: new Date(now + 365 * DAY) })
    expect(replacedOrKept('over', over).kept).toBe(false)
  })

  test('with caFile: a CA without name constraints is replaced (the OID in its name does not count)', () => {
    const now = Date.now()
    const unconstrained = forgeCa({ notBefore: new Date(now - DAY), notAfter: new Date(now + 300 * DAY), nameConstraints: false })
    const outcome = replacedOrKept('unconstrained', unconstrained)
    expect(outcome.kept).toBe(false)
    expect(new crypto.X509Certificate(outcome.info.certPem).raw.includes(NAME_CONSTRAINTS_OID)).toBe(true)
    // The bytes of the OID in the subject's common name, and no such extension.
    const named = forgeCa({ notBefore: new Date(now - DAY), notAfter: new Date(now + 300 * DAY), nameConstraints: false, commonName: 'CA \x06\x03\x55\x1d\x1e' })
    expect(new crypto.X509Certificate(named.certPem).raw.includes(NAME_CONSTRAINTS_OID)).toBe(true)
    expect(replacedOrKept('oid-in-name', named).kept).toBe(false)
  })

  test('with caFile: a CA that expires within 30 days is renewed; one with more left is kept', () => {
    expect(mod.CA_FILE_RENEW_DAYS).toBe(30)
    const soon = ProxyServer.generateCa({ validityDays: 20 })
    const renewed = replacedOrKept('soon', soon)
    expect(renewed.kept).toBe(false)
    expect(validity(renewed.info.certPem).left).toBeGreaterThan(364 * DAY)
    const now = Date.now()
    const almost = forgeCa({ notBefore: new Date(now - DAY), notAfter: new Date(now + 30 * DAY - 60 * 1000) })
    expect(replacedOrKept('almost', almost).kept).toBe(false)
    const enough = ProxyServer.generateCa({ validityDays: 35 })
    expect(replacedOrKept('enough', enough).kept).toBe(true)
  })

  test('refused after ready and after the proxy started', async () => {
    const app = fakeApp({ ready: true })
    expect(() => mod.enablePreviewProxyHttpsMode(app.app)).toThrow(/before the app is ready/)
    expect(app.appended).toEqual([])
    await mod.startPreviewProxy(recordingLogger().logger)
    const late = fakeApp()
    expect(() => mod.enablePreviewProxyHttpsMode(late.app)).toThrow(/before the preview proxy starts/)
    expect(late.appended).toEqual([])
  })
})

// ---------------------------------------------------------------------------
// Types, as a project that installed the package and electron sees them

const GOOD = `import { app, session, WebContentsView, type WebContents } from 'electron'
import {
  configurePreviewProxyForView,
  enablePreviewProxyHttpsMode,
  getPreviewPartitionForPersistKey,
  getPreviewProxyCertificateAuthorityInfo,
  getProxyCredentialsForWebContents,
  installPreviewProxyLoginHandler,
  isTaskRunPreviewPersistKey,
  releasePreviewProxy,
  setPreviewProxyLoggingEnabled,
  setPreviewProxyOwnPorts,
  startPreviewProxy,
  setPreviewProxyCertificateAuthority,
  stopPreviewProxy,
  CA_FILE_RENEW_DAYS,
  CA_FILE_VALIDITY_DAYS,
  PER_LAUNCH_CA_VALIDITY_DAYS,
  type ConfigurePreviewProxyOptions,
  type Logger,
  type PreviewProxyCertificateAuthority,
  type PreviewProxyCertificateAuthorityInfo,
  type PreviewProxyHttpsModeOptions,
} from '@cmux/preview-proxy/electron'

// If the package's types were not found, everything would be \`any\` and this directive unused (TS2578).
// @ts-expect-error a Logger needs warn too
const notALogger: Logger = { log: () => {} }
void notALogger

export const logger: Logger = {
  log: (message: string, data?: object) => console.log(message, data),
  warn: (message: string, data?: object) => console.warn(message, data),
}
export const consoleLogger: Logger = console
// cmux's Logger (chrome-camouflage.ts): variadic, with error.
interface CmuxLogger {
  log: (...args: unknown[]) => void
  warn: (...args: unknown[]) => void
  error: (...args: unknown[]) => void
}
const cmuxLogger: CmuxLogger = { log: (...args) => console.log(...args), warn: (...args) => console.warn(...args), error: (...args) => console.error(...args) }
export const fromCmux: Logger = cmuxLogger
export const withError: Logger = { log: () => {}, warn: () => {}, error: (...args: unknown[]) => console.error(...args) }
void startPreviewProxy({ log: cmuxLogger.log, warn: cmuxLogger.warn, error: cmuxLogger.error })

const appCa: PreviewProxyCertificateAuthority = { certPem: '-----BEGIN CERTIFICATE-----', keyPem: '-----BEGIN RSA PRIVATE KEY-----' }
const nothing: void = setPreviewProxyCertificateAuthority(appCa)
void nothing

const httpsOptions: PreviewProxyHttpsModeOptions = { caFile: '/tmp/ca.json' }
const ca: PreviewProxyCertificateAuthorityInfo = enablePreviewProxyHttpsMode(app, httpsOptions)
enablePreviewProxyHttpsMode(app)
enablePreviewProxyHttpsMode(app, {})
const days: number = PER_LAUNCH_CA_VALIDITY_DAYS + CA_FILE_VALIDITY_DAYS + CA_FILE_RENEW_DAYS
void days
const spki: string = ca.spkiSha256
installPreviewProxyLoginHandler(app)
setPreviewProxyLoggingEnabled(true)
const ownPorts: void = setPreviewProxyOwnPorts(!app.isPackaged)
void ownPorts
setPreviewProxyOwnPorts(true)

app.on('will-quit', (event) => {
  event.preventDefault()
  void stopPreviewProxy().finally(() => app.exit(0))
})

export async function openPreview(persistKey: string | undefined, url: string): Promise<() => void> {
  const port: number = await startPreviewProxy(logger)
  let partition: string | null = null
  if (isTaskRunPreviewPersistKey(persistKey)) {
    const key: string = persistKey
    partition = getPreviewPartitionForPersistKey(key)
  }
  const view = new WebContentsView({ webPreferences: { partition: partition ?? undefined } })
  const webContents: WebContents = view.webContents
  const options: ConfigurePreviewProxyOptions = { webContents, initialUrl: url, persistKey, logger }
  const cleanup: () => void = await configurePreviewProxyForView(options)
  await configurePreviewProxyForView({ webContents, initialUrl: url, logger: console })
  app.on('login', (event, contents, _details, authInfo, callback) => {
    const credentials = getProxyCredentialsForWebContents(contents.id)
    if (!authInfo.isProxy || authInfo.port !== port || !credentials) return
    event.preventDefault()
    callback(credentials.username, credentials.password)
  })
  const info = getPreviewProxyCertificateAuthorityInfo()
  const pem: string | undefined = info?.certPem
  void pem
  void spki
  void session.defaultSession
  webContents.once('destroyed', () => releasePreviewProxy(webContents.id))
  return cleanup
}
`

// Each line marked `// expect TSnnnn` must produce exactly that error, and no other line any.
const BAD = `import { app, session, type WebContents } from 'electron'
import {
  configurePreviewProxyForView,
  enablePreviewProxyHttpsMode,
  getPreviewPartitionForPersistKey,
  getProxyCredentialsForWebContents,
  installPreviewProxyLoginHandler,
  isTaskRunPreviewPersistKey,
  releasePreviewProxy,
  setPreviewProxyCertificateAuthority,
  setPreviewProxyLoggingEnabled,
  setPreviewProxyOwnPorts,
  startPreviewProxy,
  PER_LAUNCH_CA_VALIDITY_DAYS,
  type Logger,
} from '@cmux/preview-proxy/electron'

export async function wrong(logger: Logger, webContents: WebContents): Promise<void> {
  await startPreviewProxy() // expect TS2554
  await startPreviewProxy({ log: () => {} }) // expect TS2345
  const port: string = await startPreviewProxy(logger) // expect TS2322
  await configurePreviewProxyForView({ webContents: webContents.id, initialUrl: 'x', logger }) // expect TS2322
  await configurePreviewProxyForView({ webContents, logger }) // expect TS2345
  const cleanup: () => Promise<void> = await configurePreviewProxyForView({ webContents, initialUrl: 'x', logger }) // expect TS2322
  const user: string = getProxyCredentialsForWebContents(1).username // expect TS2531
  releasePreviewProxy('1') // expect TS2345
  setPreviewProxyLoggingEnabled('yes') // expect TS2345
  setPreviewProxyOwnPorts('no') // expect TS2345
  setPreviewProxyOwnPorts() // expect TS2554
  const ownPorts: boolean = setPreviewProxyOwnPorts(true) // expect TS2322
  isTaskRunPreviewPersistKey(1) // expect TS2345
  const partition: string = getPreviewPartitionForPersistKey('task-run-preview:x') // expect TS2322
  installPreviewProxyLoginHandler(session.defaultSession) // expect TS2345
  enablePreviewProxyHttpsMode(app, { caFile: 1 }) // expect TS2322
  enablePreviewProxyHttpsMode(app, { file: '/tmp/ca.json' }) // expect TS2353
  const perLaunch: 365 = PER_LAUNCH_CA_VALIDITY_DAYS // expect TS2322
  await startPreviewProxy({ log: () => {}, warn: () => {}, error: 'no' }) // expect TS2322
  setPreviewProxyCertificateAuthority({ certPem: 'x' }) // expect TS2345
  setPreviewProxyCertificateAuthority('x') // expect TS2345
  void port
  void cleanup
  void user
  void partition
  void perLaunch
  void ownPorts
}
`

describe('types (tsc against Electron\'s own definitions, the package resolved through its exports map)', () => {
  let project
  beforeAll(() => {
    // A project with the package and electron in node_modules (links to this repository and its electron).
    project = typesProject()
    project.write('good.mts', GOOD)
    project.write('bad.mts', BAD)
    project.config('nodenext', { module: 'nodenext', moduleResolution: 'nodenext' }, ['good.mts'])
    // The declaration files are checked by the nodenext project already.
    project.config('bundler', { module: 'esnext', moduleResolution: 'bundler', skipLibCheck: true }, ['good.mts'])
    project.config('bad', { module: 'nodenext', moduleResolution: 'nodenext' }, ['bad.mts'])
  })
  afterAll(() => project?.remove())

  for (const resolution of ['nodenext', 'bundler']) {
    test(`every export used with real Electron types type-checks (moduleResolution ${resolution})`, async () => {
      const { code, output } = await project.tsc(resolution)
      expect(output).toBe('')
      expect(code).toBe(0)
    }, 120000)
  }

  test('wrong uses fail to compile, each with its expected error and nothing else', async () => {
    const { code, output } = await project.tsc('bad')
    expect(code).not.toBe(0)
    expect(reportedErrors(output).sort(), output).toEqual(expectedErrors('bad.mts', BAD).sort())
  }, 120000)

  test('import and require of @cmux/preview-proxy/electron give the same module, with every export', async () => {
    writeFileSync(
      join(project.dir, 'load.mjs'),
      `import * as esm from '@cmux/preview-proxy/electron'
import { createRequire } from 'node:module'
const cjs = createRequire(import.meta.url)('@cmux/preview-proxy/electron')
const names = Object.keys(cjs).sort()
console.log(JSON.stringify({ names, same: names.every((n) => esm[n] === cjs[n]) }))
`,
    )
    const out = await new Promise((resolve, reject) => {
      execFile(process.execPath, ['load.mjs'], { cwd: project.dir, timeout: 60000 }, (error, stdout, stderr) => (error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve(stdout)))
    })
    const { names, same } = JSON.parse(out.trim().split('\n').pop())
    expect(names).toEqual([
      'CA_FILE_RENEW_DAYS',
      'CA_FILE_VALIDITY_DAYS',
      'PER_LAUNCH_CA_VALIDITY_DAYS',
      'configurePreviewProxyForView',
      'enablePreviewProxyHttpsMode',
      'getPreviewPartitionForPersistKey',
      'getPreviewProxyCertificateAuthorityInfo',
      'getProxyCredentialsForWebContents',
      'installPreviewProxyLoginHandler',
      'isTaskRunPreviewPersistKey',
      'releasePreviewProxy',
      'setPreviewProxyCertificateAuthority',
      'setPreviewProxyLoggingEnabled',
      'setPreviewProxyOwnPorts',
      'startPreviewProxy',
      'stopPreviewProxy',
    ])
    expect(same).toBe(true)
  }, 60000)

  test('package.json exports "./electron" with types first, and publishes its files', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'))
    expect(pkg.exports['./electron']).toEqual({
      types: './electron/index.d.ts',
      import: './electron/index.js',
      require: './electron/index.js',
      default: './electron/index.js',
    })
    expect(Object.keys(pkg.exports['./electron'])[0]).toBe('types')
    expect(pkg.files).toEqual(expect.arrayContaining(['electron/index.js', 'electron/index.d.ts']))
  })
})
