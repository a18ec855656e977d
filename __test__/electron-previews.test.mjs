// @cmux/preview-proxy/electron: previews and their sessions, against the
// module's real proxy.
// - Chromium caches proxy credentials per session: two WebContents of one
//   preview on one session share its context (released with the last), a
//   preview of another route on that session is refused;
// - cmux's own test double (a session with setProxy only) is configured;
// - *.cmux.local / *.manaflow.local tunnels are intercepted, and the module's
//   verify proc accepts the proxy's leaves for them.
// Nothing leaves the machine: loopback and *.cmux.local tunnels of a routed
// context are served by the proxy itself, and no request is sent through them
// to the dev box.

import crypto from 'node:crypto'
import { describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { portState } from '../support/ports.mjs'
import {
  addon, configureView, connectStatus, derToPem, fakeApp, fakeSession, fakeWebContents, ownPortOf, recordingLogger,
  resignLeaf, RULES, sessionDouble, tunnelLeaf, useFreshModule, verifyRequest, withEnv,
} from './electron-helpers.mjs'

let mod

useFreshModule((loaded) => (mod = loaded))

const configured = (id, options) => configureView(mod, id, options)
const OTHER_PREVIEW_URL = 'https://cmux-m2-feature-3000.cmux.app/'

function proxyChallenge(port) {
  return { isProxy: true, scheme: 'basic', host: '127.0.0.1', port, realm: 'Cmux Preview Proxy' }
}

const rules = (scheme, port) => ({ mode: 'fixed_servers', proxyRules: RULES(scheme, port), proxyBypassRules: '<-loopback>' })

describe('one session, one route', () => {
  // The shared port with Basic credentials (setPreviewProxyOwnPorts(false)): what Chromium caches per session.
  test('on the shared port, a second WebContents of the same preview (another port of it) shares the context; the login handler answers both; 407 only after the last', async () => {
    mod.setPreviewProxyOwnPorts(false)
    const app = fakeApp()
    const shared = fakeSession('shared')
    const a = await configured(101, { app: app.app, sessionControl: shared })
    // Same morphId, scope and domainSuffix: the port is not part of the route.
    const b = await configured(102, { app: app.app, sessionControl: shared, url: 'https://cmux-m1-base-5173.cmux.app/x' })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(b.credentials).toEqual(a.credentials)
    expect(app.login(a.wc.webContents, proxyChallenge(port))).toEqual({ prevented: true, answer: [a.credentials.username, a.credentials.password] })
    expect(app.login(b.wc.webContents, proxyChallenge(port))).toEqual({ prevented: true, answer: [a.credentials.username, a.credentials.password] })
    expect(await connectStatus(port, a.credentials)).toBe(200)

    // The first one goes (its cleanup): the context lives on for the second.
    a.cleanup()
    expect(mod.getProxyCredentialsForWebContents(101)).toBeNull()
    expect(app.login(a.wc.webContents, proxyChallenge(port)).answer).toBeNull()
    expect(app.login(b.wc.webContents, proxyChallenge(port)).answer).toEqual([a.credentials.username, a.credentials.password])
    expect(await connectStatus(port, a.credentials)).toBe(200)

    // The last one goes (destroyed): 407, nothing to answer with, no direct reset.
    b.wc.destroy()
    expect(await connectStatus(port, a.credentials)).toBe(407)
    expect(app.login(b.wc.webContents, proxyChallenge(port)).answer).toBeNull()
    expect(shared.proxies()).toEqual([rules('http', port), rules('http', port)])
  })

  test("with own ports (the default), two WebContents of one preview on one session get the same own port; it is refused only after the last is released, and the session goes back to the shared port", async () => {
    const app = fakeApp()
    const shared = fakeSession('shared-own')
    const a = await configured(103, { app: app.app, sessionControl: shared })
    const b = await configured(104, { app: app.app, sessionControl: shared, url: 'https://cmux-m1-base-5173.cmux.app/x' })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const own = ownPortOf(shared)
    expect(own).not.toBe(port)
    expect(shared.proxies()).toEqual([rules('http', own), rules('http', own)])
    expect(b.credentials).toEqual(a.credentials)
    expect(await connectStatus(own, null)).toBe(200)

    // The first one goes: the port stays, the session is not touched.
    a.wc.destroy()
    expect(mod.getProxyCredentialsForWebContents(103)).toBeNull()
    expect(await connectStatus(own, null)).toBe(200)
    expect(await connectStatus(port, b.credentials)).toBe(200)
    expect(shared.proxies()).toHaveLength(2)

    // The last one goes: the port is closed, the credentials revoked, the session on the shared port (never direct).
    b.cleanup()
    expect(await portState(own)).toBe('ECONNREFUSED')
    expect(await connectStatus(port, b.credentials)).toBe(407)
    expect(app.login(b.wc.webContents, proxyChallenge(port)).answer).toBeNull()
    expect(shared.proxies()).toEqual([rules('http', own), rules('http', own), rules('http', port)])
  })

  test('a preview of another route on that session throws, naming both routes, and configures nothing', async () => {
    const shared = fakeSession('shared')
    const a = await configured(111, { sessionControl: shared })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const before = shared.calls.length
    const wc = fakeWebContents(112, shared.session)
    const { logger, calls } = recordingLogger()
    const attempt = mod.configurePreviewProxyForView({ webContents: wc.webContents, initialUrl: OTHER_PREVIEW_URL, persistKey: 'task-run-preview:b', logger })
    await expect(attempt).rejects.toThrow(Error)
    const error = await attempt.catch((e) => e)
    expect(error.message).toMatch(/"m1"/)
    expect(error.message).toMatch(/"base"/)
    expect(error.message).toMatch(/"m2"/)
    expect(error.message).toMatch(/"feature"/)
    expect(error.message).toMatch(/one partition per preview/)
    // Nothing configured: no session call, no listener, no credentials, the first preview untouched.
    expect(shared.calls).toHaveLength(before)
    expect(wc.listeners).toEqual([])
    expect(mod.getProxyCredentialsForWebContents(112)).toBeNull()
    expect(mod.getProxyCredentialsForWebContents(111)).toEqual(a.credentials)
    expect(await connectStatus(port, a.credentials)).toBe(200)
    expect(calls).toEqual([{ level: 'warn', message: 'Failed to configure preview proxy', data: { webContentsId: 112, persistKey: 'task-run-preview:b', error: error.message } }])

    // Once the first is released, the other preview takes the session: a new context.
    a.wc.destroy()
    const b = await configured(112, { sessionControl: shared, url: OTHER_PREVIEW_URL })
    expect(b.credentials.username).toMatch(/^wc-112-/)
    expect(await connectStatus(port, b.credentials)).toBe(200)
    expect(await connectStatus(port, a.credentials)).toBe(407)
  })

  test('the route compares domainSuffix and cmuxProxyOrigin too', async () => {
    const shared = fakeSession('shared')
    await configured(121, { sessionControl: shared })
    await expect(configured(122, { sessionControl: shared, url: 'https://cmux-m1-base-3000.cmux.sh/' })).rejects.toThrow(/cmux\.sh.*one partition per preview/s)
    // The same names through another cmux-proxy origin (cmux's TEST_CMUX_PROXY_ORIGIN hook).
    await withEnv({ TEST_CMUX_PROXY_ORIGIN: 'http://127.0.0.1:9' }, async () => {
      await expect(configured(123, { sessionControl: shared })).rejects.toThrow(/one partition per preview/)
    })
    expect(mod.getProxyCredentialsForWebContents(122)).toBeNull()
    expect(mod.getProxyCredentialsForWebContents(123)).toBeNull()
  })

  test('configuring a sharing WebContents again: same route keeps the shared context; another route throws while the other lives', async () => {
    const shared = fakeSession('shared')
    const a = await configured(131, { sessionControl: shared })
    const b = await configured(132, { sessionControl: shared })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    // Again, same route: it stays in the context b uses (replacing it would revoke b's credentials).
    const again = await configured(131, { sessionControl: shared })
    expect(again.credentials).toEqual(a.credentials)
    // Another route while b lives: refused, and 131 keeps its part.
    await expect(configured(131, { sessionControl: shared, url: OTHER_PREVIEW_URL })).rejects.toThrow(/one partition per preview/)
    expect(mod.getProxyCredentialsForWebContents(131)).toEqual(a.credentials)
    // The first configure's cleanup no longer owns 131's part: nothing is released.
    a.cleanup()
    expect(mod.getProxyCredentialsForWebContents(131)).toEqual(a.credentials)
    again.cleanup()
    expect(await connectStatus(port, b.credentials)).toBe(200)
    b.cleanup()
    expect(await connectStatus(port, b.credentials)).toBe(407)
  })

  test('previews of different routes on sessions of their own get contexts of their own', async () => {
    const a = await configured(141)
    const b = await configured(142, { url: OTHER_PREVIEW_URL })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    expect(b.credentials.username).not.toBe(a.credentials.username)
    a.cleanup()
    expect(await connectStatus(port, a.credentials)).toBe(407)
    expect(await connectStatus(port, b.credentials)).toBe(200)
  })
})

describe("cmux's test double: a session with setProxy only", () => {
  test('configure resolves, warns once that the session lacks the rest, and its credentials work through the proxy', async () => {
    const { logger, calls } = recordingLogger({ error: true })
    mod.installPreviewProxyLoginHandler(fakeApp().app)
    const first = sessionDouble(123)
    const cleanup = await mod.configurePreviewProxyForView({ webContents: first.webContents, initialUrl: 'http://cmux-test-base-8080.cmux.local', persistKey: 'test-persist-key', logger })
    const port = await mod.startPreviewProxy(logger)
    const own = ownPortOf(first.proxies)
    expect(own).not.toBe(port)
    expect(first.proxies).toEqual([rules('http', own)])
    expect(first.listeners.map((l) => l.event)).toEqual(['destroyed'])
    const credentials = mod.getProxyCredentialsForWebContents(123)
    expect(credentials).toEqual({ username: expect.stringMatching(/^wc-123-[0-9a-f]{8}$/), password: expect.stringMatching(/^[0-9a-f]{32}$/) })
    expect(await connectStatus(own, null)).toBe(200)
    expect(await connectStatus(port, credentials)).toBe(200)

    // A second double: no second warning.
    const second = sessionDouble(124)
    await mod.configurePreviewProxyForView({ webContents: second.webContents, initialUrl: OTHER_PREVIEW_URL, logger })
    expect(await connectStatus(port, mod.getProxyCredentialsForWebContents(124))).toBe(200)
    const warnings = calls.filter((c) => c.level === 'warn')
    expect(warnings).toEqual([
      {
        level: 'warn',
        message: expect.stringMatching(/setCertificateVerifyProc.*clearAuthCache/),
        data: { missing: ['setCertificateVerifyProc', 'clearAuthCache'] },
      },
    ])

    // Released: 407, the own port refused, and the double's session is pointed at the shared port
    // with the one member it has (setProxy).
    cleanup()
    expect(await connectStatus(port, credentials)).toBe(407)
    expect(await portState(own)).toBe('ECONNREFUSED')
    expect(first.proxies).toEqual([rules('http', own), rules('http', port)])
  })

  test('with setPreviewProxyOwnPorts(false): the shared port, and a release leaves the double\'s session alone', async () => {
    mod.setPreviewProxyOwnPorts(false)
    const logger = recordingLogger().logger
    const double = sessionDouble(125)
    const cleanup = await mod.configurePreviewProxyForView({ webContents: double.webContents, initialUrl: 'http://cmux-test-base-8080.cmux.local', persistKey: 'test-persist-key', logger })
    const port = await mod.startPreviewProxy(logger)
    expect(double.proxies).toEqual([rules('http', port)])
    const credentials = mod.getProxyCredentialsForWebContents(125)
    expect(await connectStatus(port, credentials)).toBe(200)
    cleanup()
    expect(await connectStatus(port, credentials)).toBe(407)
    expect(double.proxies).toHaveLength(1)
  })
})

describe('*.cmux.local and *.manaflow.local', () => {
  test("a routed context's CONNECT app.cmux.local:443 gets a leaf of the proxy CA for that name (h2), which the verify proc accepts", async () => {
    // Checked before any CONNECT: an addon that does not intercept these names would look them up.
    expect(addon.isInterceptedHost('app.cmux.local')).toBe(true)
    expect(addon.isInterceptedHost('x.manaflow.local')).toBe(true)
    // The CA handed in (its key lets the test sign a leaf the proxy never issues).
    const ca = ProxyServer.generateCa()
    mod.setPreviewProxyCertificateAuthority(ca)
    const { control, credentials } = await configured(151)
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const caCert = new crypto.X509Certificate(ca.certPem)

    // Verified by Node against the proxy's CA, for that name.
    const leaf = await tunnelLeaf(port, credentials, 'app.cmux.local:443', { servername: 'app.cmux.local', ca: ca.certPem, rejectUnauthorized: true })
    expect(leaf.alpn).toBe('h2')
    const cert = new crypto.X509Certificate(leaf.pem)
    expect(cert.checkIssued(caCert)).toBe(true)
    expect(cert.checkHost('app.cmux.local')).toBe('app.cmux.local')
    expect(await control.verify(verifyRequest('app.cmux.local', leaf.pem))).toBe(0)
    // Not for a name the leaf does not carry.
    expect(await control.verify(verifyRequest('web.cmux.local', leaf.pem))).toBe(-3)

    const manaflow = await tunnelLeaf(port, credentials, 'x.manaflow.local:443', { servername: 'x.manaflow.local', ca: ca.certPem, rejectUnauthorized: true })
    expect(await control.verify(verifyRequest('x.manaflow.local', manaflow.pem))).toBe(0)

    // A leaf of the same CA for a name the proxy does not intercept: Chromium's verdict.
    const der = Buffer.from(leaf.pem.replace(/-----[^-]+-----|\s/g, ''), 'base64')
    const other = derToPem(resignLeaf(der, ca.keyPem, 'app.cmux.local', 'app.cmux.other'))
    expect(new crypto.X509Certificate(other).checkHost('app.cmux.other')).toBe('app.cmux.other')
    expect(new crypto.X509Certificate(other).verify(caCert.publicKey)).toBe(true)
    expect(addon.isInterceptedHost('app.cmux.other')).toBe(false)
    expect(await control.verify(verifyRequest('app.cmux.other', other))).toBe(-3)
  })

  test('a leaf of the proxy CA for 127.0.0.1 (IP SAN), and [::1]-style hostnames, go through the addon\'s host rule', async () => {
    const ca = ProxyServer.generateCa()
    mod.setPreviewProxyCertificateAuthority(ca)
    const { control, credentials } = await configured(152)
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const leaf = await tunnelLeaf(port, credentials, '127.0.0.1:3000', { host: '127.0.0.1', ca: ca.certPem, rejectUnauthorized: true })
    expect(leaf.subjectaltname).toContain('IP Address:127.0.0.1')
    expect(await control.verify(verifyRequest('127.0.0.1', leaf.pem))).toBe(0)
    expect(await control.verify(verifyRequest('127.0.0.2', leaf.pem))).toBe(-3)
    const v6 = await tunnelLeaf(port, credentials, '[::1]:3000', { host: '::1', ca: ca.certPem, rejectUnauthorized: true })
    expect(await control.verify(verifyRequest('[::1]', v6.pem))).toBe(0)
    expect(await control.verify(verifyRequest('::1', v6.pem))).toBe(0)
  })
})
