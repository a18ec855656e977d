// The release laid out as CI's publish job lays it out (napi artifacts, then
// napi prepublish -t npm, nothing published): what `npm run release:dry-run`
// prints and what __test__/package.test.mjs packs and installs.
//
// The release build of this machine's platform (`cmux-preview-proxy.<platform>.node`
// next to index.js, from `npm run build`) is used when present; every other
// platform's binary is built by CI only, so a small placeholder file stands in
// for it.

import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseTriple } from '@napi-rs/cli'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const rootPackage = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const NAPI_CLI = join(root, 'node_modules', '@napi-rs', 'cli', 'dist', 'cli.js')

export const PACKAGE_NAME = rootPackage.name
export const BINARY_NAME = rootPackage.napi.binaryName
/** package.json's napi.targets, parsed: { triple, platformArchABI, platform, arch, abi }. */
export const TARGETS = rootPackage.napi.targets.map(parseTriple)

/** Files of the package root that a release reads but npm does not pack. */
const ROOT_CONFIG_FILES = ['.npmrc']

export const PLACEHOLDER = 'placeholder: this platform is built by CI only\n'

/** This machine's napi platform name (`linux-x64-gnu`, `darwin-arm64`, `win32-x64-msvc`), if a target. */
export function hostTarget() {
  return TARGETS.find((t) => t.platform === process.platform && t.arch === process.arch && (t.platform !== 'linux' || t.abi === 'gnu'))
}

/** Release builds next to index.js (`cmux-preview-proxy.<platform>.node`), by platform. */
export function localReleaseBinaries() {
  const binaries = {}
  for (const target of TARGETS) {
    const file = join(root, `${BINARY_NAME}.${target.platformArchABI}.node`)
    if (existsSync(file)) binaries[target.platformArchABI] = file
  }
  return binaries
}

function napi(args, cwd) {
  const result = spawnSync(process.execPath, [NAPI_CLI, ...args], {
    cwd,
    encoding: 'utf8',
    // A publish that got past --skip-optional-publish would still be a dry run.
    env: { ...process.env, npm_config_dry_run: 'true', DEBUG: '' },
  })
  if (result.status !== 0) {
    throw new Error(`napi ${args.join(' ')} failed (${result.signal ?? `exit ${result.status}`}):\n${result.stdout}${result.stderr}`)
  }
  return result.stdout + result.stderr
}

function copyTree(from, to, skip) {
  mkdirSync(to, { recursive: true })
  for (const entry of readdirSync(from)) {
    const source = join(from, entry)
    if (skip(entry)) continue
    if (statSync(source).isDirectory()) copyTree(source, join(to, entry), skip)
    else copyFileSync(source, join(to, entry))
  }
}

/**
 * Lays out a release in `dir` as CI's publish job does, and runs its steps up
 * to (not including) the publishing: the package root (as npm packs it) and npm/ are copied,
 * each target's binary is put where `actions/download-artifact` puts it
 * (artifacts/bindings-<triple>/), `napi artifacts` moves them into the
 * platform packages, and `napi prepublish -t npm --skip-optional-publish
 * --no-gh-release` writes the main package's optionalDependencies and the
 * platform packages' versions.
 *
 * `binaries` maps a platform (`linux-x64-gnu`) to its .node; the others get
 * PLACEHOLDER. Returns the published main package.json and each platform
 * package's directory.
 */
export function stageRelease(dir, binaries = localReleaseBinaries()) {
  // The package root as npm packs it (package.json "files", README, LICENSE, package.json).
  const rootFiles = packList(root).files.map((file) => file.path)
  for (const file of [...rootFiles, ...ROOT_CONFIG_FILES]) {
    if (!existsSync(join(root, file))) continue
    mkdirSync(dirname(join(dir, file)), { recursive: true })
    copyFileSync(join(root, file), join(dir, file))
  }
  // Only the committed files of each platform package: a .node left there by a local `napi artifacts` is not taken.
  copyTree(join(root, 'npm'), join(dir, 'npm'), (entry) => entry.endsWith('.node'))
  for (const target of TARGETS) {
    const artifactDir = join(dir, 'artifacts', `bindings-${target.triple}`)
    const artifact = join(artifactDir, `${BINARY_NAME}.${target.platformArchABI}.node`)
    mkdirSync(artifactDir, { recursive: true })
    const binary = binaries[target.platformArchABI]
    if (binary) copyFileSync(binary, artifact)
    else writeFileSync(artifact, PLACEHOLDER)
  }
  napi(['artifacts', '--output-dir', 'artifacts'], dir)
  napi(['prepublish', '-t', 'npm', '--skip-optional-publish', '--no-gh-release'], dir)
  const platformPackages = Object.fromEntries(TARGETS.map((t) => [t.platformArchABI, join(dir, 'npm', t.platformArchABI)]))
  return { dir, packageJson: JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')), platformPackages }
}

/** `npm pack --dry-run --json` of a package directory: [{ path, size }]. */
export function packList(packageDir) {
  const result = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
    cwd: packageDir,
    encoding: 'utf8',
    shell: process.platform === 'win32',
  })
  if (result.status !== 0) throw new Error(`npm pack --dry-run failed in ${packageDir}:\n${result.stderr}`)
  const [packed] = JSON.parse(result.stdout)
  return { name: packed.name, version: packed.version, filename: packed.filename, size: packed.size, files: packed.files }
}
