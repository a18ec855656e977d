// Helpers of package.test.mjs: the release laid out as CI's publish job lays
// it out (support/release.mjs stageRelease), packed with `npm pack`,
// installed into a fresh project with `npm install <tarballs> --offline`, and
// small programs (CommonJS, ESM, TypeScript) run there as a user's would.

import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { BINARY_NAME, hostTarget, root, stageRelease } from '../support/release.mjs'

export { PACKAGE_NAME, TARGETS, hostTarget } from '../support/release.mjs'

/**
 * The .node to publish for this machine: the release build next to index.js
 * (`npm run build`, or CI's build job) if there is one, else the build of
 * `npm test` (.test-addon/: the release profile plus a test-only panic hook).
 */
export function packageBinary(target = hostTarget()) {
  const release = join(root, `${BINARY_NAME}.${target.platformArchABI}.node`)
  if (existsSync(release)) return { path: release, kind: 'release build' }
  const testAddon = join(root, '.test-addon', `${BINARY_NAME}.node`)
  if (existsSync(testAddon)) return { path: testAddon, kind: 'test build (.test-addon)' }
  throw new Error(`no addon build: neither ${release} (npm run build) nor ${testAddon} (npm test) exists`)
}

/** The environment of the child processes: the installed package must load its own binary, not vitest's override. */
export function childEnv() {
  const env = { ...process.env }
  delete env.NAPI_RS_NATIVE_LIBRARY_PATH
  // An `npm test` run must not make the temp project's npm commands act on this repository.
  for (const key of Object.keys(env)) if (/^npm_(config|package|lifecycle)_/i.test(key)) delete env[key]
  return env
}

const quote = (arg) => (/[\s"]/.test(arg) ? `"${arg.replaceAll('"', '\\"')}"` : arg)

/** Runs a command to completion: { code, stdout, stderr }; rejects only if it cannot start or outlives `timeout`. */
export function run(command, args, { cwd, timeout = 60_000 } = {}) {
  // npm is npm.cmd on Windows, which only a shell runs.
  const shell = process.platform === 'win32' && command === 'npm'
  return new Promise((resolve, reject) => {
    const child = spawn(shell ? [command, ...args].map(quote).join(' ') : command, shell ? [] : args, {
      cwd,
      env: childEnv(),
      shell,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d))
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${command} ${args.join(' ')} did not finish within ${timeout} ms\n${stdout}${stderr}`))
    }, timeout)
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code: code ?? signal, stdout, stderr })
    })
  })
}

/** Like run(), but throws with the output when the command fails. */
export async function runOk(command, args, options) {
  const result = await run(command, args, options)
  if (result.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${result.code}\n${result.stdout}${result.stderr}`)
  }
  return result
}

/** `npm pack` of a package directory into `destination`: the tarball's path and its file list. */
export async function npmPack(packageDir, destination) {
  const { stdout } = await runOk('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', destination], { cwd: packageDir })
  const [packed] = JSON.parse(stdout)
  return { tarball: join(destination, packed.filename), files: packed.files.map((f) => f.path).sort(), packed }
}

/**
 * The release staged in `work/release` (with `binary` as this machine's
 * platform package's .node) and this machine's two tarballs packed into
 * `work/tarballs`.
 */
export async function packRelease(work, binary, target = hostTarget()) {
  const releaseDir = join(work, 'release')
  const tarballs = join(work, 'tarballs')
  mkdirSync(releaseDir, { recursive: true })
  mkdirSync(tarballs, { recursive: true })
  const staged = stageRelease(releaseDir, { [target.platformArchABI]: binary })
  const [main, platform] = await Promise.all([
    npmPack(releaseDir, tarballs),
    npmPack(staged.platformPackages[target.platformArchABI], tarballs),
  ])
  return { staged, main, platform }
}

// ---------------------------------------------------------------------------
// The programs run in the installed project. Each starts a local HTTP server
// and the proxy, creates a context, sends one absolute-form GET through the
// proxy with the context's Basic credentials, stops both, and prints one JSON
// line: the answer, and which .node files the process loaded. The HTTP side is
// harness.cjs (typed by harness.d.cts), so that the TypeScript program needs
// no @types/node: what it type-checks is this package's types.

const HARNESS = `'use strict'
const http = require('node:http')

exports.startUpstream = async () => {
  const server = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/plain')
    res.end(\`hello \${req.method} \${req.url} host=\${req.headers.host} proxy-authorization=\${req.headers['proxy-authorization'] ?? 'none'}\`)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { port: server.address().port, close: () => new Promise((resolve) => server.close(resolve)) }
}

exports.basic = (username, password) => 'Basic ' + Buffer.from(\`\${username}:\${password}\`).toString('base64')

/** An absolute-form GET of url, sent to the proxy on 127.0.0.1:proxyPort. */
exports.proxiedGet = (proxyPort, url, proxyAuthorization) =>
  new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: proxyPort,
        method: 'GET',
        path: url,
        headers: { host: new URL(url).host, 'proxy-authorization': proxyAuthorization },
        agent: false,
      },
      (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (chunk) => (body += chunk))
        res.on('end', () => resolve({ status: res.statusCode, body }))
      },
    )
    req.on('error', reject)
    req.end()
  })

/** Prints the result with the .node files this process loaded (CommonJS and ESM share require.cache for them). */
exports.report = (result) => {
  const loaded = Object.keys(require.cache).filter((file) => file.endsWith('.node'))
  console.log(JSON.stringify({ ...result, loaded }))
}
`

const HARNESS_TYPES = `export interface Upstream {
  port: number
  close(): Promise<void>
}
export declare function startUpstream(): Promise<Upstream>
export declare function basic(username: string, password: string): string
export declare function proxiedGet(proxyPort: number, url: string, proxyAuthorization: string): Promise<{ status: number; body: string }>
export declare function report(result: object): void
`

/** The body shared by every flavor: top-level await, ProxyServer and the harness's functions in scope. */
const program = (flavor, typed) => {
  const t = (annotation) => (typed ? annotation : '')
  return `const upstream = await startUpstream()
const proxy${t(': ProxyServer')} = await ProxyServer.start('127.0.0.1:0')
const context${t(': ProxyContext')} = proxy.createContext(7)
const answer = await proxiedGet(proxy.port(), \`http://127.0.0.1:\${upstream.port}/from-${flavor}?q=1\`, basic(context.username, context.password))
const stats${t(': ProxyStats')} = proxy.stats()
await proxy.stop()
await upstream.close()
report({ flavor: '${flavor}', ...answer, upstreamPort: upstream.port, contextId: context.id, totalRequests: stats.totalRequests })
`
}

/**
 * Writes the project's programs: harness.cjs (+ .d.cts), client-cjs.cjs,
 * client-esm.mjs, client-node16.mts and client-bundler.mts with a tsconfig
 * each, and wrong.mts (one type error) with its tsconfig.
 */
export function writeClients(project) {
  writeFileSync(join(project, 'harness.cjs'), HARNESS)
  writeFileSync(join(project, 'harness.d.cts'), HARNESS_TYPES)
  writeFileSync(
    join(project, 'client-cjs.cjs'),
    `const { ProxyServer } = require('@cmux/preview-proxy')
const { basic, proxiedGet, report, startUpstream } = require('./harness.cjs')

;(async () => {
${program('cjs', false)}})().catch((error) => {
  console.error(error)
  process.exit(1)
})
`,
  )
  writeFileSync(
    join(project, 'client-esm.mjs'),
    `import { ProxyServer } from '@cmux/preview-proxy'
import { basic, proxiedGet, report, startUpstream } from './harness.cjs'

${program('esm', false)}`,
  )
  // One TypeScript program per resolution, each compiled in place (client-<resolution>.mjs beside harness.cjs).
  for (const resolution of ['node16', 'bundler']) {
    writeFileSync(
      join(project, `client-${resolution}.mts`),
      `import { ProxyServer, type ProxyContext, type ProxyStats } from '@cmux/preview-proxy'
import { basic, proxiedGet, report, startUpstream } from './harness.cjs'

// Never called: it only has to type-check. If the package's types were not
// found, ProxyServer would be \`any\` and the @ts-expect-error unused (TS2578).
function typeChecks(server: ProxyServer): void {
  // @ts-expect-error createContext takes a WebContents id (a number)
  server.createContext('7')
}
void typeChecks

${program(`typescript-${resolution}`, true)}`,
    )
  }
  writeFileSync(
    join(project, 'wrong.mts'),
    `import { ProxyServer } from '@cmux/preview-proxy'\nexport const port: string = (await ProxyServer.start('127.0.0.1:0')).port()\n`,
  )
  // No @types/node (types: []): the programs use only ES2022, this package's
  // types and the harness's. skipLibCheck off: the installed index.d.ts is checked too.
  const compilerOptions = { target: 'ES2022', lib: ['ES2022'], types: [], strict: true, noUnusedLocals: true, skipLibCheck: false }
  const tsconfigs = {
    node16: { compilerOptions: { ...compilerOptions, module: 'node16', moduleResolution: 'node16' }, files: ['client-node16.mts'] },
    bundler: { compilerOptions: { ...compilerOptions, module: 'esnext', moduleResolution: 'bundler' }, files: ['client-bundler.mts'] },
    wrong: { compilerOptions: { ...compilerOptions, module: 'node16', moduleResolution: 'node16', noEmit: true }, files: ['wrong.mts'] },
  }
  for (const [name, tsconfig] of Object.entries(tsconfigs)) {
    writeFileSync(join(project, `tsconfig.${name}.json`), JSON.stringify(tsconfig, null, 2))
  }
}

/** The one JSON line a client printed. */
export function clientResult({ code, stdout, stderr }) {
  const line = stdout.trim().split('\n').pop()
  if (code !== 0 || !line?.startsWith('{')) throw new Error(`client exited ${code}\n${stdout}${stderr}`)
  return JSON.parse(line)
}
