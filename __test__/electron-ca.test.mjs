// @cmux/preview-proxy/electron: the app's own CA (setPreviewProxyCertificateAuthority).
// cmux keeps one in ~/.cmux/certs, made by node-forge (RSA, the key in PKCS#1);
// the proxy must issue its leaves from it, so that what trusts that CA (cmux's
// SPKI switch, its certificate-error handler) trusts the proxy's leaves. Each
// leaf here is verified by Node's TLS client against the CA handed in.

import crypto from 'node:crypto'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { makeCA, makeLeaf, spkiHash } from '../support/certs.mjs'
import {
  cmuxStyleCa, configureView, connectStatus, derToPem, fakeApp, ownPortOf, recordingLogger, RULES, tunnelLeaf,
  useFreshModule, verifyRequest,
} from './electron-helpers.mjs'
import { tlsConnect } from './tls-helpers.mjs'

let mod
let dir

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'cmux-electron-ca-'))
})
afterAll(() => rmSync(dir, { recursive: true, force: true }))

useFreshModule((loaded) => (mod = loaded))

/** A CA's key in another encoding. */
function reencode(ca, type) {
  return { certPem: ca.certPem, keyPem: crypto.createPrivateKey(ca.keyPem).export({ type, format: 'pem' }) }
}

// One cmux-style CA for the file (RSA key generation is the slow part).
let cmuxCa
const cas = {
  'RSA, PKCS#1 (cmux ~/.cmux/certs, node-forge)': () => cmuxCa,
  'RSA, PKCS#8': () => reencode(cmuxCa, 'pkcs8'),
  'ECDSA P-256, PKCS#8 (ProxyServer.generateCa)': () => ProxyServer.generateCa(),
  'ECDSA P-256, SEC1': () => reencode(ProxyServer.generateCa(), 'sec1'),
}
beforeAll(() => {
  cmuxCa = cmuxStyleCa()
})

describe('setPreviewProxyCertificateAuthority', () => {
  test('a CA made like cmux\'s CertificateManager: PKCS#1 RSA', () => {
    expect(cmuxCa.keyPem).toMatch(/^-----BEGIN RSA PRIVATE KEY-----/)
    const cert = new crypto.X509Certificate(cmuxCa.certPem)
    expect(cert.ca).toBe(true)
    expect(cert.subject).toContain('CN=Cmux Preview Proxy CA')
    expect(cert.publicKey.asymmetricKeyType).toBe('rsa')
  })

  for (const [name, make] of Object.entries(cas)) {
    test(`${name}: the proxy issues its intercepted leaves from it (verified against it), and the verify proc accepts them`, async () => {
      const ca = make()
      mod.setPreviewProxyCertificateAuthority(ca)
      // Known before the start.
      expect(mod.getPreviewProxyCertificateAuthorityInfo()).toEqual({ certPem: ca.certPem, spkiSha256: spkiHash(ca.certPem) })
      const { control, credentials } = await configureView(mod, 201)
      const port = await mod.startPreviewProxy(recordingLogger().logger)
      // The running proxy has that CA (by its key), and the plain http:// rules (no HTTPS mode), of the context's own port.
      expect(mod.getPreviewProxyCertificateAuthorityInfo().spkiSha256).toBe(spkiHash(ca.certPem))
      const own = ownPortOf(control)
      expect(own).not.toBe(port)
      expect(control.proxies()).toEqual([{ mode: 'fixed_servers', proxyRules: RULES('http', own), proxyBypassRules: '<-loopback>' }])

      const leaf = await tunnelLeaf(port, credentials, 'localhost:3000', { servername: 'localhost', ca: ca.certPem, rejectUnauthorized: true })
      expect(new crypto.X509Certificate(leaf.pem).checkIssued(new crypto.X509Certificate(ca.certPem))).toBe(true)
      expect(await control.verify(verifyRequest('localhost', leaf.pem))).toBe(0)
      const ip = await tunnelLeaf(port, credentials, '127.0.0.1:3000', { host: '127.0.0.1', ca: ca.certPem, rejectUnauthorized: true })
      expect(ip.subjectaltname).toContain('IP Address:127.0.0.1')
      expect(await control.verify(verifyRequest('127.0.0.1', ip.pem))).toBe(0)
      expect(await connectStatus(port, credentials)).toBe(200)
      // The own port intercepts with the same CA, with no credentials.
      const viaOwn = await tunnelLeaf(own, null, 'localhost:3000', { servername: 'localhost', ca: ca.certPem, rejectUnauthorized: true })
      expect(new crypto.X509Certificate(viaOwn.pem).checkIssued(new crypto.X509Certificate(ca.certPem))).toBe(true)
      expect(await control.verify(verifyRequest('localhost', viaOwn.pem))).toBe(0)
    })
  }

  test('with the HTTPS proxy mode: called first, its CA wins (no CA file), the SPKI switch names it, the proxy\'s own certificate is issued from it', async () => {
    const ca = cmuxCa
    mod.setPreviewProxyCertificateAuthority(ca)
    const caFile = join(dir, 'https', 'preview-proxy-ca.json')
    const app = fakeApp({ switches: { 'ignore-certificate-errors-spki-list': 'AAAA=' } })
    const info = mod.enablePreviewProxyHttpsMode(app.app, { caFile })
    expect(info).toEqual({ certPem: ca.certPem, spkiSha256: spkiHash(ca.certPem) })
    expect(app.appended).toEqual([['ignore-certificate-errors-spki-list', `AAAA=,${spkiHash(ca.certPem)}`]])
    expect(existsSync(caFile)).toBe(false)

    const { control, credentials } = await configureView(mod, 202, { app: app.app })
    const port = await mod.startPreviewProxy(recordingLogger().logger)
    const ownPort = ownPortOf(control)
    expect(ownPort).not.toBe(port)
    expect(control.proxies()).toEqual([{ mode: 'fixed_servers', proxyRules: RULES('https', ownPort), proxyBypassRules: '<-loopback>' }])
    // TLS on the listeners (the shared port, and the context's own port the session uses), verified against the app's CA.
    for (const listener of [port, ownPort]) {
      const socket = await tlsConnect({ host: '127.0.0.1', port: listener, ca: ca.certPem, rejectUnauthorized: true, ALPNProtocols: ['h2'] })
      expect(socket.alpnProtocol).toBe('h2')
      const own = derToPem(socket.getPeerCertificate(true).raw)
      socket.destroy()
      expect(await control.verify(verifyRequest('127.0.0.1', own))).toBe(0)
    }
    expect(await connectStatus(port, credentials)).toBe(200)
  })

  test('with the HTTPS proxy mode by default (no caFile): its CA wins too, and nothing asks for a path', () => {
    mod.setPreviewProxyCertificateAuthority(cmuxCa)
    const app = fakeApp()
    expect(mod.enablePreviewProxyHttpsMode(app.app)).toEqual({ certPem: cmuxCa.certPem, spkiSha256: spkiHash(cmuxCa.certPem) })
    expect(app.appended).toEqual([['ignore-certificate-errors-spki-list', spkiHash(cmuxCa.certPem)]])
    expect(app.pathsAsked).toEqual([])
  })

  test('after enablePreviewProxyHttpsMode it throws (the switch already names that mode\'s CA)', () => {
    const info = mod.enablePreviewProxyHttpsMode(fakeApp().app)
    expect(() => mod.setPreviewProxyCertificateAuthority(cmuxCa)).toThrow(/before enablePreviewProxyHttpsMode/)
    expect(mod.getPreviewProxyCertificateAuthorityInfo()).toEqual(info)
  })

  test('throws while the proxy is starting and once it started; after stopPreviewProxy the next start uses it', async () => {
    const starting = mod.startPreviewProxy(recordingLogger().logger)
    expect(() => mod.setPreviewProxyCertificateAuthority(cmuxCa)).toThrow(/before the preview proxy starts/)
    await starting
    expect(() => mod.setPreviewProxyCertificateAuthority(cmuxCa)).toThrow(/before the preview proxy starts/)
    const generated = mod.getPreviewProxyCertificateAuthorityInfo()
    expect(generated.spkiSha256).not.toBe(spkiHash(cmuxCa.certPem))
    await mod.stopPreviewProxy()
    mod.setPreviewProxyCertificateAuthority(cmuxCa)
    await mod.startPreviewProxy(recordingLogger().logger)
    expect(mod.getPreviewProxyCertificateAuthorityInfo().spkiSha256).toBe(spkiHash(cmuxCa.certPem))
  })

  test('refuses what is not a current CA with its own key, and changes nothing', () => {
    const other = ProxyServer.generateCa()
    const notCa = makeLeaf(makeCA('leaf issuer'), ['localhost'])
    expect(() => mod.setPreviewProxyCertificateAuthority({ certPem: 'garbage', keyPem: other.keyPem })).toThrow(/certPem is not a PEM certificate/)
    expect(() => mod.setPreviewProxyCertificateAuthority({ certPem: notCa.cert, keyPem: notCa.key })).toThrow(/not a CA certificate/)
    expect(() => mod.setPreviewProxyCertificateAuthority({ certPem: cmuxCa.certPem, keyPem: other.keyPem })).toThrow(/not the key of certPem/)
    expect(() => mod.setPreviewProxyCertificateAuthority({ certPem: cmuxCa.certPem, keyPem: 'garbage' })).toThrow(/keyPem is not a PEM private key/)
    expect(() => mod.setPreviewProxyCertificateAuthority({ certPem: cmuxCa.certPem })).toThrow(TypeError)
    expect(() => mod.setPreviewProxyCertificateAuthority(null)).toThrow(TypeError)
    expect(mod.getPreviewProxyCertificateAuthorityInfo()).toBeNull()
  })
})
