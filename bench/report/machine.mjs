// The machine the bench ran on, for RESULTS.md and results.json.

import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import os from 'node:os'
import { join } from 'node:path'
import { root } from '../config.mjs'
import { NOFILE_EFFECTIVE } from '../fixtures/processes.mjs'
import { versionOf } from '../fixtures/tools.mjs'

export function machineDescription() {
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
