// Brings a fresh clone to a runnable state: npm packages from the lockfile and
// the release build of the addon. Used by `npm test` and `npm run demo`.
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..')

export function run(command, args, options = {}) {
  console.log(`\n$ ${command} ${args.join(' ')}`)
  const result = spawnSync(command, args, { stdio: 'inherit', cwd: root, ...options })
  if (result.status !== 0) {
    console.error(`\n${command} ${args.join(' ')} failed (${result.signal ?? `exit ${result.status}`})`)
    process.exit(result.status || 1)
  }
}

/**
 * Installs exactly the locked npm packages (`npm ci`) when node_modules is
 * missing or older than the lockfile. `npm ci` never rewrites
 * package-lock.json, so a test run leaves the work tree clean; it fails if the
 * lockfile and package.json disagree, which is what a stale lockfile should do.
 * The lockfile holds every platform's optional packages and only versions whose
 * `engines` accept Node 20 (see the `overrides` in package.json), so it
 * installs on Node 20 and 22 alike.
 */
export function installNodePackages() {
  const marker = join(root, 'node_modules', '.package-lock.json')
  const lock = join(root, 'package-lock.json')
  if (!existsSync(marker) || statSync(marker).mtimeMs < statSync(lock).mtimeMs) {
    run('npm', ['ci', '--no-audit', '--no-fund'])
  }
}

/** The addon the integration suite loads (through NAPI_RS_NATIVE_LIBRARY_PATH, see vitest.config.mjs). */
export const TEST_ADDON = join(root, '.test-addon', 'cmux-preview-proxy.node')

/**
 * The release build of the addon, next to index.js. With `testHooks`, the
 * build for the integration suite instead: the test-only panic hook compiled
 * in, written to TEST_ADDON so that it never stands in for the real addon.
 * Built aside and renamed into place, so a process that still has the old
 * .node mapped keeps running.
 */
export function buildAddon({ testHooks = false } = {}) {
  const out = mkdtempSync(join(root, '.addon-build-'))
  const features = testHooks ? ['--features', 'test-hooks'] : []
  run('npx', ['napi', 'build', '--platform', '--release', ...features, '--output-dir', out])
  for (const file of readdirSync(out)) {
    if (file.endsWith('.node')) {
      const target = testHooks ? TEST_ADDON : join(root, file)
      mkdirSync(dirname(target), { recursive: true })
      renameSync(join(out, file), target)
    } else {
      copyFileSync(join(out, file), join(root, file))
    }
  }
  rmSync(out, { recursive: true, force: true })
}

export const CHROMIUM = '/usr/bin/chromium'

/** Debian's chromium for the browser tests and the demo, installed with apt-get when missing (CI runs as root). */
export function installChromium() {
  aptInstall(existsSync(CHROMIUM) ? [] : ['chromium'])
}

/**
 * What the tests need from Debian: chromium, and for root on Linux iproute2 (`ip`), with which the tests make
 * network namespaces.
 */
export function installTestPackages() {
  const missing = existsSync(CHROMIUM) ? [] : ['chromium']
  const hasIp = ['/usr/sbin/ip', '/sbin/ip', '/usr/bin/ip'].some((path) => existsSync(path))
  if (process.getuid?.() === 0 && process.platform === 'linux' && !hasIp) missing.push('iproute2')
  aptInstall(missing)
}

function aptInstall(packages) {
  if (packages.length === 0) return
  const apt = process.getuid?.() === 0 ? ['apt-get'] : ['sudo', '-n', 'apt-get']
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' }
  run(apt[0], [...apt.slice(1), 'update', '-qq'], { env })
  run(apt[0], [...apt.slice(1), 'install', '-y', '-qq', ...packages], { env })
}
