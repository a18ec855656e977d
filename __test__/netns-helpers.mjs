// Runs a scenario inside a network namespace of its own, so that tests can aim
// the proxy at private and other non-loopback addresses without a packet
// leaving the machine: `unshare -n --mount` (as root) gives a fresh network
// stack with only `lo`; the addresses the scenario needs are added to that
// `lo`, and names come from an /etc/hosts bind-mounted for that namespace only.
// Name lookups stay inside too: the namespace's /etc/nsswitch.conf says
// `hosts: files dns` (no systemd-resolved, mDNS or sssd, which answer through
// sockets outside the namespace), nscd's socket is hidden, and /etc/resolv.conf
// names 127.0.0.1 (nothing there unless the scenario runs a DNS server of its own).
//
// With `peer`, a second namespace stands for the network around the machine:
// joined to the first by a veth pair (default routes both ways), it carries
// the peer addresses, each with an HTTP server answering its own address
// (netns/servers.mjs). The proxy's namespace then has only its own addresses,
// as a user's machine has, and the peer's are reached like hosts on a LAN.
//
// The scenario is a Node ESM file under __test__/netns/; it gets its input as
// JSON in CMUX_NETNS_INPUT, loads the addon like the tests do, and prints its
// result as JSON on the last line of stdout. CMUX_NETNS_HITS names a file, empty
// at first, where the peer's servers log the requests they get (netns/servers.mjs).

import { spawn, spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = dirname(fileURLToPath(import.meta.url))

/**
 * Whether this machine lets the tests make network namespaces (Linux, as root, with iproute2). With
 * CMUX_REQUIRE_NETNS set (CI), a machine that cannot is an error, so the tests that need them never skip silently.
 */
export const canUseNamespaces = (() => {
  const can =
    process.platform === 'linux' &&
    process.getuid?.() === 0 &&
    spawnSync('unshare', ['-n', '--mount', 'ip', 'link', 'set', 'lo', 'up'], { stdio: 'ignore' }).status === 0
  if (!can && process.env.CMUX_REQUIRE_NETNS) {
    throw new Error('CMUX_REQUIRE_NETNS is set, but this machine cannot make network namespaces (root, unshare -n --mount, iproute2)')
  }
  return can
})()

/**
 * Runs `__test__/netns/<scenario>.mjs` in a new network namespace whose `lo`
 * also carries `addresses` (CIDR strings such as '10.1.2.3/32' or 'fd00::1/128'),
 * with `hosts` ({ name: address }) as its /etc/hosts and `resolvConf` (text) as
 * its /etc/resolv.conf. `peer`: { addresses (plain IPs), port } of the peer
 * network's servers. Resolves with the JSON the scenario printed last.
 */
export async function runInNamespace(
  scenario,
  { addresses = [], hosts = {}, resolvConf = 'nameserver 127.0.0.1\n', peer, input = {}, timeout = 60000 } = {},
) {
  const dir = mkdtempSync(join(tmpdir(), 'cmux-netns-'))
  try {
    const hostsFile = join(dir, 'hosts')
    const lines = ['127.0.0.1 localhost', '::1 localhost', ...Object.entries(hosts).map(([name, ip]) => `${ip} ${name}`)]
    writeFileSync(hostsFile, lines.join('\n') + '\n')
    const resolvFile = join(dir, 'resolv.conf')
    writeFileSync(resolvFile, resolvConf)
    // The machine's nsswitch.conf (other databases as they are), hosts from the two sources above only.
    const nsswitchFile = join(dir, 'nsswitch.conf')
    const nsswitch = existsSync('/etc/nsswitch.conf') ? readFileSync('/etc/nsswitch.conf', 'utf8') : ''
    writeFileSync(nsswitchFile, nsswitch.replace(/^hosts:.*$/gm, '') + 'hosts: files dns\n')
    const hits = join(dir, 'hits')
    writeFileSync(hits, '')
    const add = (where, ip, dev) => `ip${where} addr add ${ip} dev ${dev}${ip.includes(':') ? ' nodad' : ''}`
    const ready = join(dir, 'ready')
    const peerSetup = peer
      ? [
          // /run/netns of this mount namespace only: nothing of it shows on the host.
          'mkdir -p /run/netns && mount -t tmpfs cmux-netns /run/netns',
          'ip netns add peer',
          'ip link add veth0 type veth peer name veth1 netns peer',
          'ip link set veth0 up',
          add('', '198.51.100.1/32', 'veth0'),
          add('', 'fd99::1/128', 'veth0'),
          'ip route add default dev veth0',
          'ip -6 route add default dev veth0',
          'ip -n peer link set lo up',
          'ip -n peer link set veth1 up',
          ...peer.addresses.map((ip) => add(' -n peer', `${ip}/${ip.includes(':') ? 128 : 32}`, 'veth1')),
          'ip -n peer route add default dev veth1',
          'ip -n peer -6 route add default dev veth1',
          `CMUX_NETNS_READY=${ready} CMUX_NETNS_HITS=${hits} CMUX_NETNS_SERVERS='${JSON.stringify(peer)}' ip netns exec peer "${process.execPath}" "${join(HERE, 'netns', 'servers.mjs')}" >/dev/null 2>&1 &`,
          `for i in $(seq 200); do [ -e ${ready} ] && break; sleep 0.05; done`,
          `[ -e ${ready} ]`,
        ]
      : []
    const setup = [
      'set -e',
      // The peer's servers end with the scenario, however it ends.
      "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT",
      'ip link set lo up',
      ...addresses.map((cidr) => add('', cidr, 'lo')),
      `mount --bind ${hostsFile} /etc/hosts`,
      `mount --bind ${resolvFile} /etc/resolv.conf`,
      `mount --bind ${nsswitchFile} /etc/nsswitch.conf`,
      // glibc asks a running nscd before anything else: hide its socket.
      '[ ! -d /var/run/nscd ] || mount -t tmpfs cmux-nscd /var/run/nscd',
      ...peerSetup,
      `"${process.execPath}" "${join(HERE, 'netns', `${scenario}.mjs`)}"`,
    ].join('\n')
    // A process group of its own, so that a timeout ends the scenario and the peer's servers too, not only sh.
    const child = spawn('unshare', ['-n', '--mount', 'sh', '-c', setup], {
      env: { ...process.env, CMUX_NETNS_INPUT: JSON.stringify(input), CMUX_NETNS_HITS: hits },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d) => (stdout += d))
    child.stderr.on('data', (d) => (stderr += d))
    const code = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid, 'SIGKILL')
        } catch {
          child.kill('SIGKILL')
        }
        reject(new Error(`namespace scenario ${scenario} timed out\n${stderr}`))
      }, timeout)
      child.on('exit', (status) => {
        clearTimeout(timer)
        resolve(status)
      })
    })
    if (code !== 0) throw new Error(`namespace scenario ${scenario} exited with ${code}\n${stderr}\n${stdout}`)
    const last = stdout.trim().split('\n').at(-1)
    return JSON.parse(last)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
