// Every test, from a fresh clone: Rust unit tests, then the addon's JS
// integration suite (headless Chromium included).
import { buildAddon, installChromium, installNodePackages, run } from './setup.mjs'

installNodePackages()
installChromium()
run('cargo', ['test', '--locked'])
buildAddon({ testHooks: true })
run('npx', ['vitest', 'run'])
