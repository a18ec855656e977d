// A routed preview cannot reach the user's network (issue 18): every address
// that is not globally reachable (the IANA special-purpose registries) and
// every address of the machine's own interfaces gets 403 before any connect,
// on every path; the app's opt-ins (per server, per route) open private
// networks but never the machine. Run in network namespaces the test makes:
// the "network" is a peer namespace behind a veth pair, so no packet ever
// leaves this machine.

import { describe, expect, test } from 'vitest'
import { canUseNamespaces, runInNamespace } from './netns-helpers.mjs'

const PORT = 18080
const ROUTE = { morphId: 'm1', scope: 'base', domainSuffix: 'cmux.app' }
/** The network around the machine: private, shared (CGNAT/VPN), benchmarking, ULA, and one global address. */
const PEER = ['10.1.2.3', '172.16.5.5', '192.168.7.7', '100.64.1.1', '198.18.0.1', '192.0.0.8', 'fd00::7', '11.0.0.5']
/** An address of the machine's own (a LAN or docker address), with a server on it. */
const OWN = '192.168.50.1'
const HOSTS = {
  'private.example': '10.1.2.3',
  'vpn.example': '100.64.1.1',
  'ula.example': 'fd00::7',
  'public.example': '11.0.0.5',
  'own.example': OWN,
}

function run(contexts, probes, proxyOptions = {}) {
  return runInNamespace('probe', {
    addresses: [`${OWN}/32`],
    hosts: HOSTS,
    peer: { addresses: PEER, port: PORT },
    input: { listen: ['127.0.0.1', OWN], port: PORT, contexts, probes, proxyOptions },
  })
}

const rows = (results) => results.map((r) => [r.kind, r.target, r.context, r.status, r.reached])
const url = (host) => `http://${host}:${PORT}/`

describe.skipIf(!canUseNamespaces)('a routed preview and the user\'s network', () => {
  test('private, shared, special-purpose and own addresses get 403, by literal, by name, in mapped forms; public ones and route-less contexts connect', async () => {
    const probes = [
      ...PEER.filter((ip) => ip !== '11.0.0.5').map((ip) => ['get', url(ip.includes(':') ? `[${ip}]` : ip), 'routed']),
      ['get', url('[::ffff:10.1.2.3]'), 'routed'],
      ['get', url('[::ffff:a01:203]'), 'routed'],
      ['get', url('private.example'), 'routed'],
      ['get', url('vpn.example'), 'routed'],
      ['get', url('ula.example'), 'routed'],
      ['get', url(OWN), 'routed'],
      ['get', url('own.example'), 'routed'],
      ['get', url('11.0.0.5'), 'routed'],
      ['get', url('public.example'), 'routed'],
      ['get', url('10.1.2.3'), 'plain'],
      ['get', url(OWN), 'plain'],
    ].map(([kind, target, context]) => ({ kind, target, context }))
    const results = await run({ routed: ROUTE, plain: null }, probes)
    const expected = probes.map((p) => {
      const global = p.target.includes('11.0.0.5') || p.target.includes('public.example')
      if (p.context === 'plain') return [p.kind, p.target, p.context, 200, p.target.includes(OWN) ? OWN : '10.1.2.3']
      return [p.kind, p.target, p.context, global ? 200 : 403, global ? '11.0.0.5' : null]
    })
    expect(rows(results)).toEqual(expected)
    // The page learns that the address is off limits, not which address a name resolved to, nor whether it is
    // one of this machine's (the app's log and events say).
    const refused = results.filter((r) => r.status === 403)
    expect(refused.length).toBeGreaterThanOrEqual(12)
    for (const r of refused) {
      expect(r.refusal, r.target).toMatch(/is on this machine or a private network, which a preview may not reach/)
      expect(r.refusal, r.target).not.toMatch(/resolves to|an address of this machine/)
      if (r.target.includes('.example')) expect(r.refusal, r.target).not.toMatch(/10\.1\.2\.3|100\.64\.1\.1|fd00::|192\.168\.50\.1/)
    }
  })

  test('every path is checked: CONNECT, WebSocket upgrades and RFC 8441 WebSockets over HTTP/2 too', async () => {
    const results = await run({ routed: ROUTE }, [
      { kind: 'connect', target: `10.1.2.3:${PORT}`, context: 'routed' },
      { kind: 'connect', target: `private.example:${PORT}`, context: 'routed' },
      { kind: 'connect', target: `[fd00::7]:${PORT}`, context: 'routed' },
      { kind: 'connect', target: `${OWN}:${PORT}`, context: 'routed' },
      { kind: 'connect', target: `public.example:${PORT}`, context: 'routed' },
      { kind: 'websocket', target: `ws://private.example:${PORT}/hmr`, context: 'routed' },
      { kind: 'websocket', target: `ws://${OWN}:${PORT}/hmr`, context: 'routed' },
      { kind: 'websocket', target: `ws://public.example:${PORT}/hmr`, context: 'routed' },
      { kind: 'websocket-h2', target: `ws://private.example:${PORT}/hmr`, context: 'routed' },
      { kind: 'websocket-h2', target: `ws://${OWN}:${PORT}/hmr`, context: 'routed' },
      { kind: 'websocket-h2', target: `ws://public.example:${PORT}/hmr`, context: 'routed' },
    ])
    expect(rows(results)).toEqual([
      ['connect', `10.1.2.3:${PORT}`, 'routed', 403, null],
      ['connect', `private.example:${PORT}`, 'routed', 403, null],
      ['connect', `[fd00::7]:${PORT}`, 'routed', 403, null],
      ['connect', `${OWN}:${PORT}`, 'routed', 403, null],
      ['connect', `public.example:${PORT}`, 'routed', 200, '11.0.0.5'],
      ['websocket', `ws://private.example:${PORT}/hmr`, 'routed', 403, null],
      ['websocket', `ws://${OWN}:${PORT}/hmr`, 'routed', 403, null],
      ['websocket', `ws://public.example:${PORT}/hmr`, 'routed', 200, '11.0.0.5'],
      ['websocket-h2', `ws://private.example:${PORT}/hmr`, 'routed', 403, null],
      ['websocket-h2', `ws://${OWN}:${PORT}/hmr`, 'routed', 403, null],
      // Reached (the server logged the upgrade). It answers 200 with a body, not 101, and the
      // proxy passes a non-101 answer on as is: a 2xx to a CONNECT with a body, which hyper's
      // HTTP/2 server cannot send, so the client gets the stream reset instead of any answer.
      // Reached, but the stand-in answers the handshake with 200 instead of 101: no WebSocket, 502.
      ['websocket-h2', `ws://public.example:${PORT}/hmr`, 'routed', 502, '11.0.0.5'],
    ])
  })

  test('opt-ins: a route\'s allowedNetworks opens those networks, the server\'s allowPrivateNetwork all of them; neither opens the machine', async () => {
    const vpnRoute = { ...ROUTE, allowedNetworks: ['10.0.0.0/8', 'fd00::/8'] }
    const byRoute = await run({ vpn: vpnRoute, routed: ROUTE }, [
      { kind: 'get', target: url('private.example'), context: 'vpn' },
      { kind: 'get', target: url('[fd00::7]'), context: 'vpn' },
      { kind: 'get', target: url('172.16.5.5'), context: 'vpn' },
      { kind: 'get', target: url(OWN), context: 'vpn' },
      { kind: 'get', target: url('private.example'), context: 'routed' },
    ])
    expect(rows(byRoute)).toEqual([
      ['get', url('private.example'), 'vpn', 200, '10.1.2.3'],
      ['get', url('[fd00::7]'), 'vpn', 200, 'fd00::7'],
      ['get', url('172.16.5.5'), 'vpn', 403, null],
      ['get', url(OWN), 'vpn', 403, null],
      ['get', url('private.example'), 'routed', 403, null],
    ])
    const byServer = await run({ routed: ROUTE }, [
      { kind: 'get', target: url('172.16.5.5'), context: 'routed' },
      { kind: 'get', target: url('vpn.example'), context: 'routed' },
      { kind: 'connect', target: `192.168.7.7:${PORT}`, context: 'routed' },
      { kind: 'get', target: url(OWN), context: 'routed' },
      { kind: 'get', target: url('127.0.0.1.nip.invalid'), context: 'routed' },
    ], { allowPrivateNetwork: true, resolve: { [`127.0.0.1.nip.invalid:${PORT}`]: `127.0.0.1:${PORT}` } })
    expect(rows(byServer)).toEqual([
      ['get', url('172.16.5.5'), 'routed', 200, '172.16.5.5'],
      ['get', url('vpn.example'), 'routed', 200, '100.64.1.1'],
      ['connect', `192.168.7.7:${PORT}`, 'routed', 200, '192.168.7.7'],
      ['get', url(OWN), 'routed', 403, null],
      // resolve overrides are the app's own choice: trusted whatever they say.
      ['get', url('127.0.0.1.nip.invalid'), 'routed', 200, '127.0.0.1'],
    ])
  })
})
