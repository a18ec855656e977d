// The package as a user gets it: the release laid out as CI's publish job does
// (napi artifacts, napi prepublish), the main package and this machine's
// platform package packed with `npm pack`, both tarballs installed into a fresh
// project with `npm install --offline`, and the installed package used from
// CommonJS, ESM and TypeScript (moduleResolution node16 and bundler), each
// program proxying one request in its own process.

import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { root } from '../support/release.mjs'
import { clientResult, hostTarget, packageBinary, packRelease, PACKAGE_NAME, run, runOk, TARGETS, writeClients } from './package-helpers.mjs'

const target = hostTarget()
const rootPackage = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const PLATFORM_PACKAGE = `${PACKAGE_NAME}-${target?.platformArchABI}`
const NODE_FILE = `${rootPackage.napi.binaryName}.${target?.platformArchABI}.node`
const TSC = join(root, 'node_modules', 'typescript', 'bin', 'tsc')

let work
let project
let binary
let release

beforeAll(async () => {
  if (!target) throw new Error(`no napi target in package.json for ${process.platform}-${process.arch}`)
  binary = packageBinary(target)
  work = mkdtempSync(join(tmpdir(), 'cmux-preview-proxy-package-'))
  release = await packRelease(work, binary.path, target)
  project = join(work, 'project')
  mkdirSync(project)
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'user-project', version: '1.0.0', private: true }, null, 2))
  await runOk('npm', ['install', release.main.tarball, release.platform.tarball, '--offline', '--no-audit', '--no-fund'], { cwd: project })
  writeClients(project)
}, 120_000)

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true })
})

describe('the published main package', () => {
  test('holds what package.json "files" names, README, LICENSE and package.json, and no binary', () => {
    expect(release.main.files).toEqual([...rootPackage.files, 'LICENSE', 'README.md', 'package.json'].sort())
    expect(release.main.files).toContain('index.js')
    expect(release.main.files).toContain('index.d.ts')
    expect(release.main.files.filter((file) => file.endsWith('.node'))).toEqual([])
  })

  test('holds every file its exports map points to', () => {
    const targets = new Set()
    const collect = (value) => {
      if (typeof value === 'string') targets.add(value.replace(/^\.\//, ''))
      else for (const v of Object.values(value)) collect(v)
    }
    collect(release.staged.packageJson.exports)
    expect([...targets].filter((file) => !release.main.files.includes(file))).toEqual([])
  })

  test('depends on each platform package at exactly its own version (added by napi prepublish)', () => {
    const expected = Object.fromEntries(TARGETS.map((t) => [`${PACKAGE_NAME}-${t.platformArchABI}`, rootPackage.version]))
    expect(release.staged.packageJson.optionalDependencies).toEqual(expected)
    expect(Object.keys(expected)).toHaveLength(6)
    // The repository's package.json has none: they are added at publish time only.
    expect(rootPackage.optionalDependencies).toBeUndefined()
  })

  test('has an exports map with types, import and require for "."', () => {
    expect(release.staged.packageJson.exports['.']).toMatchObject({
      types: './index.d.ts',
      import: './index.js',
      require: './index.js',
    })
    expect(Object.keys(release.staged.packageJson.exports['.'])[0]).toBe('types')
  })
})

describe(`the published platform package ${PLATFORM_PACKAGE}`, () => {
  test('holds the binary, LICENSE, README and package.json', () => {
    expect(release.platform.files).toEqual(['LICENSE', 'README.md', NODE_FILE, 'package.json'].sort())
    // This machine's build (the release build if there is one, else npm test's), not a placeholder.
    const size = release.platform.packed.files.find((f) => f.path === NODE_FILE).size
    expect(size).toBe(statSync(binary.path).size)
    expect(size).toBeGreaterThan(1_000_000)
  })

  test('declares os, cpu (and libc on Linux) so npm installs it only where it loads', () => {
    const manifest = JSON.parse(readFileSync(join(release.staged.platformPackages[target.platformArchABI], 'package.json'), 'utf8'))
    expect(manifest).toMatchObject({
      name: PLATFORM_PACKAGE,
      version: rootPackage.version,
      os: [target.platform],
      cpu: [target.arch],
      main: NODE_FILE,
      license: 'MIT',
    })
    if (target.platform === 'linux') expect(manifest.libc).toEqual(['glibc'])
  })
})

describe('npm install of the two tarballs into a fresh project', () => {
  test('installs the main package and the platform package, and the other platforms are skipped', () => {
    const installed = JSON.parse(readFileSync(join(project, 'node_modules', PACKAGE_NAME, 'package.json'), 'utf8'))
    expect(installed.optionalDependencies[PLATFORM_PACKAGE]).toBe(rootPackage.version)
    const lock = JSON.parse(readFileSync(join(project, 'package-lock.json'), 'utf8'))
    const cmux = Object.keys(lock.packages).filter((p) => p.startsWith('node_modules/@cmux/'))
    expect(cmux.sort()).toEqual([`node_modules/${PACKAGE_NAME}`, `node_modules/${PLATFORM_PACKAGE}`].sort())
  })

  const installedBinary = () => realpathSync(join(project, 'node_modules', PLATFORM_PACKAGE, NODE_FILE))

  /** Checks one client's answer: 200 from the local server, through the proxy, with the installed package's own binary. */
  function expectProxied(result, flavor) {
    expect(result.status).toBe(200)
    expect(result.body).toBe(`hello GET /from-${flavor}?q=1 host=127.0.0.1:${result.upstreamPort} proxy-authorization=none`)
    expect(result.contextId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    expect(result.totalRequests).toBeGreaterThanOrEqual(1)
    expect(result.loaded.map((file) => realpathSync(file))).toEqual([installedBinary()])
  }

  test('every subpath of the exports map loads with require() and import(), with the same named exports', async () => {
    const specifiers = Object.keys(release.staged.packageJson.exports)
      .filter((subpath) => subpath !== './package.json')
      .map((subpath) => PACKAGE_NAME + subpath.slice(1))
    expect(specifiers).toContain(PACKAGE_NAME)
    const script = `(async () => {
  const out = {}
  for (const specifier of ${JSON.stringify(specifiers)}) {
    const cjs = require(specifier)
    const esm = await import(specifier)
    out[specifier] = { cjs: Object.keys(cjs).sort(), esm: Object.keys(esm).filter((k) => k !== 'default').sort() }
  }
  console.log(JSON.stringify(out))
})()`
    const loaded = clientResult(await run(process.execPath, ['-e', script], { cwd: project }))
    expect(Object.keys(loaded).sort()).toEqual([...specifiers].sort())
    for (const specifier of specifiers) {
      expect(loaded[specifier].cjs.length, specifier).toBeGreaterThan(0)
      expect(loaded[specifier].esm, specifier).toEqual(loaded[specifier].cjs)
    }
    expect(loaded[PACKAGE_NAME].cjs).toContain('ProxyServer')
  })

  test('require() from CommonJS', async () => {
    expectProxied(clientResult(await run(process.execPath, ['client-cjs.cjs'], { cwd: project })), 'cjs')
  })

  test('import from ESM', async () => {
    expectProxied(clientResult(await run(process.execPath, ['client-esm.mjs'], { cwd: project })), 'esm')
  })

  for (const resolution of ['node16', 'bundler']) {
    test(`TypeScript with moduleResolution ${resolution}: type-checks against index.d.ts, compiles and runs`, async () => {
      await runOk(process.execPath, [TSC, '--project', `tsconfig.${resolution}.json`], { cwd: project })
      expectProxied(clientResult(await run(process.execPath, [`client-${resolution}.mjs`], { cwd: project })), `typescript-${resolution}`)
    })
  }

  test('TypeScript reports a type error through the installed types, and only that one (index.d.ts checked too)', async () => {
    const result = await run(process.execPath, [TSC, '--project', 'tsconfig.wrong.json'], { cwd: project })
    expect(result.code).not.toBe(0)
    const errors = result.stdout.split('\n').filter((line) => line.includes('error TS'))
    expect(errors).toEqual([expect.stringMatching(/^wrong\.mts\(2,14\): error TS2322: Type 'number' is not assignable to type 'string'/)])
  })
})
