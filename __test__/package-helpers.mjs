// Helpers of package.test.mjs: the release laid out as CI's publish job lays
// it out (scripts/release-dry-run.mjs stageRelease), packed with `npm pack`,
// installed into a fresh project with `npm install <tarballs> --offline`, and
// small programs (CommonJS, ESM, TypeScript) run there as a user's would.

import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { BINARY_NAME, hostTarget, root, stageRelease } from '../scripts/release-dry-run.mjs'

export { PACKAGE_NAME, TARGETS, hostTarget } from '../scripts/release-dry-run.mjs'

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
  const main = await npmPack(releaseDir, tarballs)
  const platform = await npmPack(staged.platformPackages[target.platformArchABI], tarballs)
  return { staged, main, platform }
}

// ---------------------------------------------------------------------------
// The programs run in the installed project. Each starts a local HTTP server
// and the proxy, creates a context, sends one absolute-form GET through the
// proxy with the context's Basic credentials, stops both, and prints one JSON
// line: the answer, and which .node files the process loaded.

const request = (flavor) => `
const upstream = http.createServer((req, res) => {
  res.setHeader('content-type', 'text/plain')
  res.end(\`hello \${req.method} \${req.url} host=\${req.headers.host} proxy-authorization=\${req.headers['proxy-authorization'] ?? 'none'}\`)
})
await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve))
const upstreamPort = (upstream.address() as AddressInfo).port
const proxy: ProxyServer = await ProxyServer.start('127.0.0.1:0')
const context: ProxyContext = proxy.createContext(7)
const answer = await new Promise<{ status: number | undefined; body: string }>((resolve, reject) => {
  const req = http.request(
    {
      host: '127.0.0.1',
      port: proxy.port(),
      method: 'GET',
      path: \`http://127.0.0.1:\${upstreamPort}/from-${flavor}?q=1\`,
      headers: {
        host: \`127.0.0.1:\${upstreamPort}\`,
        'proxy-authorization': 'Basic ' + Buffer.from(\`\${context.username}:\${context.password}\`).toString('base64'),
      },
      agent: false,
    },
    (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => (body += chunk))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    },
  )
  req.on('error', reject)
  req.end()
})
const stats: ProxyStats = proxy.stats()
await proxy.stop()
await new Promise((resolve) => upstream.close(resolve))
const loaded = Object.keys(require.cache).filter((file) => file.endsWith('.node'))
console.log(JSON.stringify({ flavor: '${flavor}', ...answer, upstreamPort, contextId: context.id, totalRequests: stats.totalRequests, loaded }))
`

/** Strips the TypeScript-only syntax of request() (type annotations and assertions it uses). */
const untyped = (source) =>
  source
    .replaceAll('<void>', '')
    .replaceAll('<{ status: number | undefined; body: string }>', '')
    .replaceAll(' as AddressInfo', '')
    .replaceAll(': ProxyServer', '')
    .replaceAll(': ProxyContext', '')
    .replaceAll(': ProxyStats', '')
    .replaceAll('(chunk: string)', '(chunk)')

const TS_SOURCE = `import * as http from 'node:http'
import { createRequire } from 'node:module'
import type { AddressInfo } from 'node:net'
import { ProxyServer, type ProxyContext, type ProxyStats } from '@cmux/preview-proxy'

const require = createRequire(import.meta.url)

// Never called: it only has to type-check. If the package's types were not
// found, ProxyServer would be \`any\` and the @ts-expect-error unused (TS2578).
function typeChecks(server: ProxyServer): void {
  // @ts-expect-error createContext takes a WebContents id (a number)
  server.createContext('7')
}
void typeChecks
${request('typescript')}`

/** Writes the project's programs: client.cjs, client.mjs, client.mts with a tsconfig for each of node16 and bundler, and wrong.mts. */
export function writeClients(project, typeRoots) {
  writeFileSync(
    join(project, 'client.cjs'),
    `const http = require('node:http')
const { ProxyServer } = require('@cmux/preview-proxy')
;(async () => {
${untyped(request('cjs'))}
})().catch((error) => {
  console.error(error)
  process.exit(1)
})
`,
  )
  writeFileSync(
    join(project, 'client.mjs'),
    `import http from 'node:http'
import { createRequire } from 'node:module'
import { ProxyServer } from '@cmux/preview-proxy'

const require = createRequire(import.meta.url)
${untyped(request('esm'))}`,
  )
  writeFileSync(join(project, 'client.mts'), TS_SOURCE)
  const compilerOptions = {
    target: 'ES2022',
    strict: true,
    noUnusedLocals: true,
    // As `tsc --init` sets it: @types/node is not checked again (seconds);
    // index.d.ts itself is checked by the project of wrong.mts, below.
    skipLibCheck: true,
    // No @types/node in the temp project: the repository's.
    typeRoots: [typeRoots],
    types: ['node'],
  }
  for (const [name, options] of [
    ['node16', { module: 'node16', moduleResolution: 'node16' }],
    ['bundler', { module: 'esnext', moduleResolution: 'bundler' }],
  ]) {
    writeFileSync(
      join(project, `tsconfig.${name}.json`),
      JSON.stringify({ compilerOptions: { ...compilerOptions, ...options, outDir: `out-${name}` }, files: ['client.mts'] }, null, 2),
    )
  }
  // A program with one type error, checked with the declaration files (the
  // installed index.d.ts) and without @types/node: exactly that error must come out.
  writeFileSync(
    join(project, 'wrong.mts'),
    `import { ProxyServer } from '@cmux/preview-proxy'\nconst port: string = (await ProxyServer.start('127.0.0.1:0')).port()\nconsole.log(port)\n`,
  )
  writeFileSync(
    join(project, 'tsconfig.wrong.json'),
    JSON.stringify(
      {
        compilerOptions: { target: 'ES2022', module: 'node16', moduleResolution: 'node16', strict: true, noEmit: true, skipLibCheck: false, types: [] },
        files: ['wrong.mts'],
      },
      null,
      2,
    ),
  )
}

/** The one JSON line a client printed. */
export function clientResult({ code, stdout, stderr }) {
  const line = stdout.trim().split('\n').pop()
  if (code !== 0 || !line?.startsWith('{')) throw new Error(`client exited ${code}\n${stdout}${stderr}`)
  return JSON.parse(line)
}
