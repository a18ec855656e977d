// @cmux/preview-proxy/electron: the switches it reads from the environment,
// each in a child process that loads electron/index.js with that environment
// (electron-helpers.mjs startModuleProcess):
// - CMUX_PREVIEW_TLS_MITM (at load): interception of TLS in loopback tunnels, or a blind relay;
// - CMUX_PREVIEW_PROXY_LOG ?? CMUX_PREVIEW_PROXY_LOGGING (at load): logging by default;
// - TEST_CMUX_PROXY_ORIGIN and TEST_ALLOW_INSECURE_UPSTREAM (when used): cmux's
//   scripts/test-preview-proxy.ts scenario, against an https h2 upstream on 127.0.0.1.
// Everything stays on loopback: the previews' origin is a local server
// (TEST_CMUX_PROXY_ORIGIN) wherever a request or blind tunnel would leave the proxy.

import crypto from 'node:crypto'
import http from 'node:http'
import http2 from 'node:http2'
import net from 'node:net'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { basicAuth, proxyRequest } from '../support/http-client.mjs'
import { closer, listen, trackSockets } from '../support/servers.mjs'
import { sleep, waitFor } from '../support/wait.mjs'
import { connectStatus, PREVIEW_URL, selfSigned, startModuleProcess, tunnelLeaf } from './electron-helpers.mjs'
import { h2Over, h2request, startTlsServer, tlsTunnel } from './tls-helpers.mjs'

const children = []
async function moduleProcess(env) {
  const child = await startModuleProcess(env)
  children.push(child)
  return child
}
afterEach(async () => {
  await Promise.all(children.splice(0).map((c) => c.stop()))
})

/**
 * Started, with one configured preview: { child, port, credentials, ca }. The child is stopped
 * after the test (`onFinished`: the test context's onTestFinished, for concurrent tests).
 */
async function previewIn(env, { url = PREVIEW_URL, onFinished } = {}) {
  let child
  if (onFinished) {
    child = await startModuleProcess(env)
    onFinished(() => child.stop())
  } else {
    child = await moduleProcess(env)
  }
  const port = await child.call('start')
  const credentials = await child.call('configure', 1, url)
  const ca = (await child.call('ca')).certPem
  return { child, port, credentials, ca }
}

describe('CMUX_PREVIEW_TLS_MITM', () => {
  // The dev box as the blind tunnel reaches it: the preview's origin (TEST_CMUX_PROXY_ORIGIN)
  // answers the proxy's CONNECT and joins it to a local TLS server with a certificate of its own.
  let devBox, origin, originClose
  const originConnects = []
  beforeAll(async () => {
    devBox = await startTlsServer((req, res) => res.end('dev box'), { names: ['localhost'] })
    origin = http.createServer((req, res) => res.writeHead(500).end())
    origin.on('connect', (req, socket, head) => {
      originConnects.push(req.url)
      socket.on('error', () => {})
      const upstream = net.connect(devBox.port, '127.0.0.1', () => {
        socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
        if (head.length) upstream.write(head)
        socket.pipe(upstream).pipe(socket)
      })
      upstream.on('error', () => socket.destroy())
      socket.on('close', () => upstream.destroy())
    })
    const sockets = trackSockets(origin)
    await listen(origin)
    originClose = closer(origin, sockets)
  })
  afterAll(async () => {
    await originClose?.()
    await devBox?.close()
  })

  const devBoxFingerprint = () => new crypto.X509Certificate(devBox.leaf.cert).fingerprint256

  // Unset, empty or exactly `1`: intercepted; anything else: relayed blind.
  test.each([
    ['unset', 'intercepted', undefined],
    ['empty', 'intercepted', ''],
    ['"1"', 'intercepted', '1'],
    ['"0"', 'blind', '0'],
    ['"true"', 'blind', 'true'],
    ['" 1"', 'blind', ' 1'],
    ['"yes"', 'blind', 'yes'],
  ])('%s: TLS inside a CONNECT localhost:3000 is %s', async (_name, handling, value) => {
    const { child, port, credentials, ca } = await previewIn({
      CMUX_PREVIEW_TLS_MITM: value,
      TEST_CMUX_PROXY_ORIGIN: `http://127.0.0.1:${origin.address().port}`,
    })
    const before = originConnects.length
    const leaf = await tunnelLeaf(port, credentials, 'localhost:3000', { servername: 'localhost' })
    const cert = new crypto.X509Certificate(leaf.pem)
    if (handling === 'intercepted') {
      // A leaf of the proxy's CA; the tunnel never left the proxy.
      expect(cert.checkIssued(new crypto.X509Certificate(ca))).toBe(true)
      expect(cert.fingerprint256).not.toBe(devBoxFingerprint())
      expect(originConnects.length).toBe(before)
    } else {
      // The dev box's own certificate, through the origin's CONNECT: relayed blind.
      expect(cert.fingerprint256).toBe(devBoxFingerprint())
      expect(cert.checkIssued(new crypto.X509Certificate(ca))).toBe(false)
      expect(originConnects.length).toBe(before + 1)
    }
    // As cmux does, on the console.
    expect(child.stdout()).toContain(`[cmux-preview-proxy] listening on port ${port}\n`)
  })
})

describe('CMUX_PREVIEW_PROXY_LOG ?? CMUX_PREVIEW_PROXY_LOGGING', () => {
  const requestLogged = (logs, url) => logs.some((c) => c.message === 'Preview proxy' && c.data?.event === 'request' && c.data.url === url)

  // [LOG, LOGGING, logging on by default]: cmux's envFlagEnabled(LOG ?? LOGGING, false).
  describe.concurrent.each([
    [undefined, undefined, false],
    ['', undefined, true],
    ['1', undefined, true],
    ['true', undefined, true],
    [' YES ', undefined, true],
    ['On', undefined, true],
    ['0', undefined, false],
    ['false', undefined, false],
    ['no', undefined, false],
    [' OFF', undefined, false],
    ['maybe', undefined, false],
    [undefined, '1', true],
    [undefined, '', true],
    [undefined, 'off', false],
    ['0', '1', false],
    ['', '0', true],
    ['maybe', 'true', false],
  ])('LOG=%j LOGGING=%j', (log, logging, on) => {
    test(`logging is ${on ? 'on' : 'off'} by default; setPreviewProxyLoggingEnabled overrides it`, async ({ expect, onTestFinished }) => {
      const env = { CMUX_PREVIEW_PROXY_LOG: log, CMUX_PREVIEW_PROXY_LOGGING: logging }
      const { child, port, credentials } = await previewIn(env, { onFinished: onTestFinished })
      expect(await connectStatus(port, credentials, 'localhost:3000')).toBe(200)
      if (on) {
        await waitFor(async () => requestLogged(await child.call('logs'), 'localhost:3000'), { timeout: 5000 })
        await child.call('setLogging', false)
        expect(await connectStatus(port, credentials, 'localhost:3001')).toBe(200)
        await sleep(500)
        expect(requestLogged(await child.call('logs'), 'localhost:3001')).toBe(false)
      } else {
        await sleep(500)
        expect((await child.call('logs')).filter((c) => c.message === 'Preview proxy')).toEqual([])
        await child.call('setLogging', true)
        expect(await connectStatus(port, credentials, 'localhost:3001')).toBe(200)
        await waitFor(async () => requestLogged(await child.call('logs'), 'localhost:3001'), { timeout: 5000 })
        expect(requestLogged(await child.call('logs'), 'localhost:3000')).toBe(false)
      }
    })
  })
})

describe("TEST_CMUX_PROXY_ORIGIN and TEST_ALLOW_INSECURE_UPSTREAM: cmux's scripts/test-preview-proxy.ts", () => {
  const TEST_HOST = 'cmux-test-base-8080.cmux.local'
  // An https h2 upstream on 127.0.0.1 with a self-signed certificate, as the script's dummy upstream.
  let upstream, upstreamClose
  const seen = []
  beforeAll(async () => {
    const { cert, key } = selfSigned(['127.0.0.1', 'localhost'])
    upstream = http2.createSecureServer({ cert, key, allowHTTP1: true })
    upstream.on('request', (req, res) => {
      seen.push({ headers: req.headers, connection: req.stream?.session ?? req.socket, httpVersion: req.httpVersion })
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=3600', etag: '"test-etag"' })
      res.end('Hello from dummy upstream!')
    })
    upstream.on('session', (s) => s.on('error', () => {}))
    const sockets = trackSockets(upstream)
    await listen(upstream)
    upstreamClose = closer(upstream, sockets)
  })
  afterAll(async () => {
    await upstreamClose?.()
  })

  /** The script's order: the module is loaded, then the variables are set, then the proxy starts. */
  async function scriptPreview(allowInsecure) {
    const child = await moduleProcess({})
    // Checked before any CONNECT to a *.cmux.local name: an addon that does not intercept it would look it up.
    expect(await child.call('features')).toEqual({ isLoopbackHost: 'function', isInterceptedHost: 'function' })
    await child.call('setEnv', 'TEST_CMUX_PROXY_ORIGIN', `https://127.0.0.1:${upstream.address().port}`)
    if (allowInsecure) await child.call('setEnv', 'TEST_ALLOW_INSECURE_UPSTREAM', 'true')
    await child.call('setLogging', true)
    const port = await child.call('start')
    const credentials = await child.call('configure', 123, `http://${TEST_HOST}`, { double: true })
    const ca = (await child.call('ca')).certPem
    return { child, port, credentials, ca }
  }

  test(`CONNECT ${TEST_HOST}:443 is intercepted (h2, the proxy's CA); two h2 GETs reach the upstream with X-Cmux headers; CONNECT 127.0.0.1 gets an IP SAN`, async () => {
    const { child, port, credentials, ca } = await scriptPreview(true)
    const auth = basicAuth(credentials.username, credentials.password)
    const before = seen.length

    // Test 1 and 2: TLS validated against the proxy's CA, ALPN h2, two GETs on it.
    const tunnel = await tlsTunnel(port, `${TEST_HOST}:443`, auth, { servername: TEST_HOST, ca, rejectUnauthorized: true, ALPNProtocols: ['h2', 'http/1.1'] })
    expect(tunnel.alpnProtocol).toBe('h2')
    const session = h2Over(tunnel, `https://${TEST_HOST}`)
    try {
      for (let i = 0; i < 2; i++) {
        const res = await h2request(session, { ':method': 'GET', ':path': '/' })
        expect(res.status).toBe(200)
        expect(res.headers['cache-control']).toBe('max-age=3600')
        expect(res.text).toBe('Hello from dummy upstream!')
      }
    } finally {
      session.destroy()
      tunnel.destroy()
    }
    const requests = seen.slice(before)
    expect(requests).toHaveLength(2)
    for (const r of requests) {
      expect(r.headers['x-cmux-host-override']).toBe(`${TEST_HOST}:443`)
      expect(r.headers['x-cmux-port-internal']).toBe('443')
    }
    // One upstream connection for both (the script checks the session is reused).
    expect(requests[1].connection).toBe(requests[0].connection)

    // Test 3: CONNECT to the upstream's own address, intercepted with a leaf for the IP.
    const ip = await tunnelLeaf(port, credentials, `127.0.0.1:${upstream.address().port}`, { host: '127.0.0.1', ca, rejectUnauthorized: true })
    expect(ip.subjectaltname).toContain('IP Address:127.0.0.1')
    expect(seen.length).toBe(before + 2)

    // The script turns logging on: the requests were logged, through log.
    const logs = await child.call('logs')
    expect(logs.some((c) => c.level === 'log' && c.data?.event === 'request' && c.data.status === 200 && c.data.protocol === 'h2')).toBe(true)
  })

  test('an absolute-form request of the routed preview goes through the origin too', async () => {
    const { port, credentials } = await scriptPreview(true)
    const before = seen.length
    const res = await proxyRequest(port, 'http://localhost:3000/a?b=1', { auth: basicAuth(credentials.username, credentials.password) })
    expect(res.status).toBe(200)
    expect(res.text).toBe('Hello from dummy upstream!')
    expect(seen.length).toBe(before + 1)
    expect(seen.at(-1).headers['x-cmux-host-override']).toBe('localhost:3000')
  })

  test('without TEST_ALLOW_INSECURE_UPSTREAM the self-signed upstream gives 502, inside the tunnel and outside', async () => {
    const { port, credentials, ca } = await scriptPreview(false)
    const auth = basicAuth(credentials.username, credentials.password)
    const before = seen.length
    const tunnel = await tlsTunnel(port, `${TEST_HOST}:443`, auth, { servername: TEST_HOST, ca, rejectUnauthorized: true, ALPNProtocols: ['h2'] })
    const session = h2Over(tunnel, `https://${TEST_HOST}`)
    try {
      const res = await h2request(session, { ':method': 'GET', ':path': '/' })
      expect(res.status).toBe(502)
    } finally {
      session.destroy()
      tunnel.destroy()
    }
    expect((await proxyRequest(port, 'http://localhost:3000/', { auth })).status).toBe(502)
    expect(seen.length).toBe(before)
  })
})
