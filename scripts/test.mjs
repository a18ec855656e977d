// Every test, from a fresh clone: Rust unit tests, then the addon's JS integration suite.
import { buildAddon, installNodePackages, run } from './setup.mjs'

installNodePackages()
run('cargo', ['test', '--locked'])
buildAddon()
run('npx', ['vitest', 'run'])
