// Bodies stream through the proxy, never buffered whole: 1 GiB up and 1 GiB
// down pass while the proxy's resident memory stays flat. The proxy runs in a
// process of its own (support/proxy-process.mjs) so its RSS is its own.
import http from 'node:http'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { authOf } from '../support/http-client.mjs'
import { startProxyProcess } from '../support/proxy-process.mjs'
import { startHttpServer } from '../support/servers.mjs'

const GiB = 1024 * 1024 * 1024
const CHUNK = Buffer.alloc(1024 * 1024, 0x61)
/** RSS growth allowed while a GiB passes: far below the GiB, above allocator noise. */
const FLAT_MIB = 64

let proxyProcess, port, upstream, auth
const call = (command, ...args) => proxyProcess.call(command, ...args)

/** Writes 1 GiB into `stream`, chunk by chunk as it drains, then ends it. */
function writeGiB(stream) {
  let left = GiB / CHUNK.length
  const pump = () => {
    while (left > 0) {
      left--
      if (!stream.write(CHUNK)) return stream.once('drain', pump)
    }
    stream.end()
  }
  pump()
}

/** Samples the proxy's RSS while `transfer` runs; resolves its result and the peak growth in MiB. */
async function watchRss(transfer) {
  const before = (await call('measure')).rssKiB
  let peak = before
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, (await call('measure')).rssKiB)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()
  try {
    return { result: await transfer(), growthMiB: (peak - before) / 1024 }
  } finally {
    sampling = false
    await sampler
  }
}

beforeAll(async () => {
  upstream = await startHttpServer((req, res) => {
    if (req.url === '/upload') {
      let bytes = 0
      req.on('data', (chunk) => (bytes += chunk.length))
      req.on('end', () => res.end(String(bytes)))
      return
    }
    res.writeHead(200, { 'content-length': String(GiB) })
    writeGiB(res)
  })
  proxyProcess = await startProxyProcess(
    { resolve: { 'upstream.test:80': `127.0.0.1:${upstream.port}` } },
    { stdio: ['inherit', 'inherit', 'inherit', 'ipc'], timeout: 0 },
  )
  port = proxyProcess.port
  const context = await call('createContext', 1)
  auth = authOf(context)
})

afterAll(async () => {
  await proxyProcess?.stop()
  await upstream?.close()
})

describe('large bodies stream through a proxy whose memory stays flat', () => {
  test('1 GiB upload', async () => {
    const { result, growthMiB } = await watchRss(
      () =>
        new Promise((resolve, reject) => {
          const req = http.request(
            {
              host: '127.0.0.1',
              port,
              method: 'POST',
              path: 'http://upstream.test/upload',
              agent: false,
              headers: { 'proxy-authorization': auth, 'content-length': String(GiB) },
            },
            (res) => {
              let body = ''
              res.on('data', (chunk) => (body += chunk))
              res.on('end', () => resolve({ status: res.statusCode, bytes: Number(body) }))
            },
          )
          req.on('error', reject)
          writeGiB(req)
        }),
    )
    expect(result).toEqual({ status: 200, bytes: GiB })
    expect(growthMiB).toBeLessThan(FLAT_MIB)
  }, 120000)

  test('1 GiB download', async () => {
    const { result, growthMiB } = await watchRss(
      () =>
        new Promise((resolve, reject) => {
          http
            .get({ host: '127.0.0.1', port, path: 'http://upstream.test/download', agent: false, headers: { 'proxy-authorization': auth } }, (res) => {
              let bytes = 0
              res.on('data', (chunk) => (bytes += chunk.length))
              res.on('end', () => resolve({ status: res.statusCode, bytes }))
              res.on('error', reject)
            })
            .on('error', reject)
        }),
    )
    expect(result).toEqual({ status: 200, bytes: GiB })
    expect(growthMiB).toBeLessThan(FLAT_MIB)
  }, 120000)
})
