// The integration tests' fixtures: proxies that are always stopped, and
// client sockets that are always closed, however a test ends. (The data files
// of the tests are in fixtures/.)
//
// - `test`: vitest's test with a `proxy` (started for the test, options from
//   `proxyOptions`, which `test.override` changes for a describe block) and
//   `newProxy(options)` (more proxies for the test, each stopped after it);
// - `withProxy(options, fn)`: a proxy for the length of `fn`;
// - `useProxy(options, contexts)`: one proxy for a describe block or a file;
// - `useTracked()`: a `track(socket)` that closes what it kept after each test.
//
// Proxy options are ProxyServer.start's StartOptions plus `enableHttp2`
// (default false) and `listen` (default 127.0.0.1:0).

import { afterAll, afterEach, beforeAll, test as base } from 'vitest'
import { ProxyServer } from '../support/addon.mjs'

/** ProxyServer.start with the options above. */
export function startProxy({ enableHttp2 = false, listen = '127.0.0.1:0', ...options } = {}) {
  return ProxyServer.start(listen, enableHttp2, options)
}

/** Starts a proxy, runs `fn(proxy)` and stops the proxy even when `fn` throws; resolves what `fn` resolves. */
export async function withProxy(options, fn) {
  const proxy = await startProxy(options)
  try {
    return await fn(proxy)
  } finally {
    await proxy.stop()
  }
}

/** The Error ProxyServer.start(...args) rejects or throws with; null when it starts (the proxy is stopped again). */
export async function startError(...args) {
  let proxy
  try {
    proxy = await ProxyServer.start(...args)
  } catch (e) {
    return e
  }
  await proxy.stop()
  return null
}

/**
 * One proxy for the tests of the enclosing describe block (or file), started
 * in a beforeAll and stopped in an afterAll. Hooks registered before this call
 * run before the start and after the stop, so `options` may be a function of
 * what they started. `contexts` names createContext's arguments of each
 * context to create at start: { ctx: [1], routed: [2, ROUTE] }.
 * Returns { proxy, port, ...contexts }, filled in at start.
 */
export function useProxy(options = {}, contexts = {}) {
  const started = {}
  beforeAll(async () => {
    const proxy = await startProxy(typeof options === 'function' ? options() : options)
    Object.assign(started, { proxy, port: proxy.port() })
    for (const [name, args] of Object.entries(contexts)) started[name] = proxy.createContext(...args)
  })
  afterAll(() => started.proxy?.stop())
  return started
}

/** Closes a socket, an HTTP/2 session or a WebSocket, whatever state it is in. */
function close(x) {
  try {
    if (typeof x.terminate === 'function') x.terminate()
    else x.destroy()
  } catch {}
}

/**
 * A `track(x)` that keeps `x` (a socket, session or WebSocket) and returns it;
 * what it kept is closed after each test, or with `{ after: 'all' }` after the
 * enclosing describe block or file.
 */
export function useTracked({ after = 'each' } = {}) {
  const kept = []
  ;(after === 'all' ? afterAll : afterEach)(() => {
    for (const x of kept.splice(0)) close(x)
  })
  return (x) => {
    kept.push(x)
    return x
  }
}

export const test = base.extend({
  proxyOptions: {},
  proxy: async ({ proxyOptions }, use) => {
    const proxy = await startProxy(proxyOptions)
    try {
      await use(proxy)
    } finally {
      await proxy.stop()
    }
  },
  newProxy: async ({}, use) => {
    const started = []
    try {
      await use(async (options) => {
        const proxy = await startProxy(options)
        started.push(proxy)
        return proxy
      })
    } finally {
      for (const proxy of started) await proxy.stop()
    }
  },
})
