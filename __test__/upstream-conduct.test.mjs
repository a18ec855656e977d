// The proxy as an HTTP/2 client of a dev box (Node's nghttp2 behind TLS):
// bursts of small modules must not make it reset streams (nghttp2 answers a
// stream of RST_STREAMs with GOAWAY, as a "rapid reset" defence), a client
// cancelling a download resets exactly its stream, a GOAWAY mid-burst costs no
// request, and a cold burst after the connection is gone opens one connection.

import http from 'node:http'
import http2 from 'node:http2'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'
import { authOf, proxyRequest } from '../support/http-client.mjs'
import { sleep, waitFor, withTimeout } from '../support/wait.mjs'
import {
  closeSession, DEVBOX_HOST, h2cGet, h2cSession, keepAliveAgent, ROUTE, runPool, settled, startCountingH2Upstream,
  tally,
} from './conduct-helpers.mjs'
import { testCA } from './tls-helpers.mjs'

/** How long to keep listening for frames the proxy might still send after the last answer. */
const QUIET_MS = 300

let ca
const open = new Set()

beforeAll(() => {
  ca = testCA()
})

afterAll(async () => {
  for (const env of open) await env.close()
})

/** A counting dev box and a proxy (HTTP/2 enabled) whose routed context sends localhost:3000 to it. */
async function startDevboxAndProxy({ goawayAfter } = {}) {
  const upstream = await startCountingH2Upstream({ ca, goawayAfter })
  const proxy = await ProxyServer.start('127.0.0.1:0', true, {
    resolve: { [`${DEVBOX_HOST}:443`]: `127.0.0.1:${upstream.port}` },
    upstreamCaPem: [ca.certPem],
  })
  const auth = authOf(proxy.createContext(1, ROUTE))
  const env = {
    upstream,
    proxy,
    port: proxy.port(),
    auth,
    async close() {
      open.delete(env)
      await proxy.stop()
      await upstream.close()
    },
  }
  open.add(env)
  return env
}

/** Module i: a quarter of them come without content-length. */
const pathOf = (i) => (i % 4 === 3 ? `/nolen/${i}.js` : `/m/${i}.js`)
const moduleText = (i) => `module ${pathOf(i)}`

/** `count` GETs of small modules, absolute-form over keep-alive HTTP/1.1 connections (32 sockets). */
async function http1Burst({ port, auth }, count) {
  const agent = keepAliveAgent(32)
  try {
    return await withTimeout(
      runPool(count, 32, (i) => settled(proxyRequest(port, `http://localhost:3000${pathOf(i)}`, { auth, agent }))),
      25000,
      `${count} HTTP/1.1 GETs`,
    )
  } finally {
    agent.destroy()
  }
}

/** `count` GETs of small modules as streams of one h2c session, 100 in flight. */
async function h2cBurst({ port, auth }, count) {
  const session = h2cSession(port)
  try {
    return await withTimeout(
      runPool(count, 100, (i) => settled(h2cGet(session, 'localhost:3000', pathOf(i), auth))),
      25000,
      `${count} h2c GETs`,
    )
  } finally {
    await closeSession(session)
  }
}

const bursts = [
  ['HTTP/1.1 keep-alive', http1Burst],
  ['h2c (one session)', h2cBurst],
]

/**
 * What a burst did, checked at once so that a failure shows all of it: answers that are not 200
 * with the module, RST_STREAM frames the dev box received, TLS connections the proxy opened.
 */
async function outcomeOf(results, upstream) {
  // Frames the proxy may still be sending about the last streams.
  await sleep(QUIET_MS)
  const summary = tally(results, moduleText)
  const { resets, resetCodes, connections, alpn } = upstream.stats
  return {
    outcome: { failedRequests: summary.bad, resets, connections },
    details: JSON.stringify({ statuses: summary.statuses, firstFailures: summary.wrong.slice(0, 2), resetCodes: resetCodes.slice(0, 10), alpn }),
  }
}

describe('a burst of small modules', () => {
  test.each(bursts)('3000 GETs over %s: all 200, zero RST_STREAM at the dev box, one TLS connection', async (_, burst) => {
    const env = await startDevboxAndProxy()
    try {
      const results = await burst(env, 3000)
      const { outcome, details } = await outcomeOf(results, env.upstream)
      expect(outcome, details).toEqual({ failedRequests: 0, resets: 0, connections: 1 })
      expect(env.upstream.stats.alpn).toEqual(['h2'])
      expect(env.upstream.stats.requests, 'requests the dev box received').toBe(3000)
    } finally {
      await env.close()
    }
  })
})

describe('a client that cancels a download', () => {
  /** [label, path, cancel]: cancel reads the slow 1 MiB body at `path` through the proxy and gives up after 64 KiB. */
  const cancellers = [
    ['an HTTP/1.1 client destroys its request', '/slow/h1', async ({ port, auth }, path) => {
      await new Promise((resolve, reject) => {
        const req = http.request({
          host: '127.0.0.1',
          port,
          path: `http://localhost:3000${path}`,
          agent: false,
          headers: { host: 'localhost:3000', 'proxy-authorization': auth },
        })
        req.end()
        req.on('error', () => {})
        req.on('response', (res) => {
          let received = 0
          res.on('error', () => {})
          res.on('data', (d) => {
            received += d.length
            if (received >= 64 * 1024) {
              req.destroy()
              resolve()
            }
          })
          res.on('end', () => reject(new Error('the whole body arrived before the client could cancel')))
        })
      })
    }],
    ['an h2c client cancels its stream', '/slow/h2c', async ({ port, auth }, path) => {
      const session = h2cSession(port)
      try {
        await new Promise((resolve, reject) => {
          const stream = session.request({
            ':method': 'GET',
            ':scheme': 'http',
            ':authority': 'localhost:3000',
            ':path': path,
            'proxy-authorization': auth,
          })
          let received = 0
          stream.on('error', () => {})
          stream.on('data', (d) => {
            received += d.length
            if (received >= 64 * 1024) {
              stream.close(http2.constants.NGHTTP2_CANCEL)
              resolve()
            }
          })
          stream.on('end', () => reject(new Error('the whole body arrived before the client could cancel')))
        })
      } finally {
        await closeSession(session)
      }
    }],
  ]

  test.each(cancellers)('%s mid-body: the dev box sees exactly one RST_STREAM, for that stream', async (_, path, cancel) => {
    const env = await startDevboxAndProxy()
    try {
      await withTimeout(cancel(env, path), 10000, 'reading 64 KiB of the slow body')
      const stream = env.upstream.stats.streams.find((s) => s.path === path)
      expect(stream, 'the slow request reached the dev box').toBeDefined()
      const forStream = () =>
        env.upstream.stats.resetFrames.filter((f) => f.connection === stream.connection && f.streamId === stream.streamId)
      await waitFor(() => forStream().length > 0, {
        timeout: 5000,
        message: `no RST_STREAM for stream ${stream.streamId} reached the dev box after the client cancelled`,
      })
      await waitFor(() => env.upstream.stats.slowStreamsClosed === 1, { timeout: 5000, message: 'the dev box stopped streaming' })
      await sleep(QUIET_MS)
      expect(forStream()).toHaveLength(1)
      expect(env.upstream.stats.resets, 'RST_STREAM frames in all').toBe(1)
    } finally {
      await env.close()
    }
  })
})

describe('a dev box that sends GOAWAY after 500 streams', () => {
  test.each(bursts)('2000 GETs over %s: no request fails, new connections replace the old, no RST_STREAM', async (_, burst) => {
    const env = await startDevboxAndProxy({ goawayAfter: 500 })
    try {
      const results = await burst(env, 2000)
      const { outcome: { connections, ...outcome }, details } = await outcomeOf(results, env.upstream)
      expect(outcome, details).toEqual({ failedRequests: 0, resets: 0 })
      expect(connections, 'TLS connections to the dev box (each GOAWAY forces a new one)').toBeGreaterThan(1)
    } finally {
      await env.close()
    }
  })
})

describe('the first-connection gate', () => {
  /** 50 simultaneous absolute-form GETs, each on its own client connection. */
  async function coldBurst({ port, auth }, tag) {
    const results = await withTimeout(
      Promise.all(Array.from({ length: 50 }, (_, i) =>
        settled(proxyRequest(port, `http://localhost:3000/m/${tag}-${i}.js`, { auth })))),
      15000,
      `the ${tag} burst`,
    )
    const summary = tally(results, (i) => `module /m/${tag}-${i}.js`)
    expect(summary.bad, `${tag} burst: ${JSON.stringify(summary)}`).toBe(0)
  }

  test('a cold burst opens one connection, and so does the next cold burst after the dev box closed it', async () => {
    const env = await startDevboxAndProxy()
    try {
      await coldBurst(env, 'first')
      expect(env.upstream.stats.connections, 'connections after the first burst').toBe(1)

      await env.upstream.closeSessions()
      await sleep(100)

      await coldBurst(env, 'second')
      expect(env.upstream.stats.connections, 'connections after the second burst (one more expected)').toBe(2)
    } finally {
      await env.close()
    }
  })
})
