// Helpers for events.test.mjs (onEvent, contextStats, deriveRoute) and
// error-page.test.mjs. Everything is a real socket on loopback.
//
// Run as a script (`node events-helpers.mjs --events-child '<StartOptions JSON>'`),
// this file is also the proxy process of the slow-listener test: a proxy whose
// JavaScript thread a listener blocks, driven over IPC (see startEventsProcess).

import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { WebSocketServer } from 'ws'
import { answerCommands, forkWithCommands } from '../support/child-commands.mjs'
import { closer, listen, trackSockets } from '../support/servers.mjs'
import { waitFor } from '../support/wait.mjs'

const require = createRequire(import.meta.url)
export const { deriveRoute, ProxyServer } = require('../index.js')

// ---------------------------------------------------------------------------
// Collecting events

/**
 * Subscribes to `proxy.onEvent` and keeps every event in `events` (in the
 * order delivered). `since(mark)` gives the events after index `mark`;
 * `next(predicate)` waits (bounded) for an event after `mark` that matches.
 */
export function collectEvents(proxy) {
  const events = []
  const unsubscribe = proxy.onEvent((event) => events.push(event))
  return {
    events,
    unsubscribe,
    mark: () => events.length,
    since: (mark) => events.slice(mark),
    /** Waits until `predicate(eventsSinceMark)` is truthy; resolves the events since `mark`. */
    async until(mark, predicate, what, timeout = 5000) {
      await waitFor(() => predicate(events.slice(mark)), {
        timeout,
        message: `${what}; events so far: ${JSON.stringify(events.slice(mark), null, 1)}`,
      })
      return events.slice(mark)
    },
  }
}

/** The ways a context's credentials could appear in text: password, `user:password` in base64, and username. */
export function credentialForms(ctx) {
  const pair = `${ctx.username}:${ctx.password}`
  return {
    password: ctx.password,
    basic: Buffer.from(pair).toString('base64'),
    basicUrlSafe: Buffer.from(pair).toString('base64url'),
    pair,
    username: ctx.username,
  }
}

// ---------------------------------------------------------------------------
// Upstreams

/** A TCP server that accepts and never writes a byte (an upstream that never answers). */
export async function startSilentServer() {
  const net = await import('node:net')
  const server = net.createServer((socket) => socket.on('error', () => {}))
  const sockets = trackSockets(server)
  const port = await listen(server)
  return { port, close: closer(server, sockets) }
}

/**
 * A plain HTTP server with a WebSocket endpoint `/ws` that echoes every
 * message; `handler` answers ordinary requests.
 */
export async function startHttpWsServer(handler) {
  const http = await import('node:http')
  const server = http.createServer(handler)
  const sockets = trackSockets(server)
  const wss = new WebSocketServer({ noServer: true })
  const upgrades = []
  server.on('upgrade', (req, socket, head) => {
    upgrades.push({ url: req.url, headers: req.headers })
    socket.on('error', () => {})
    if (req.url !== '/ws') {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n')
      return
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {})
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    })
  })
  const port = await listen(server)
  return {
    port,
    upgrades,
    close: closer(server, sockets, () => {
      for (const ws of wss.clients) ws.terminate()
    }),
  }
}

// ---------------------------------------------------------------------------
// A proxy in a child process whose JavaScript thread a listener can block

const CHILD_FLAG = '--events-child'

/**
 * Forks this file as a proxy process started with `options`. Returns
 * { child, port, call(command, ...args), stop() }; commands:
 * - `createContext(webContentsId, route?)`: the context
 * - `subscribeSlow(flagPath, blockMs)`: a listener that busy-waits `blockMs` per event (blocking the
 *   process's event loop) until the file `flagPath` exists; from then on it only counts
 * - `report()`: { seenWhileBlocking, seenAfterFlag, stats }
 * - `stop()`
 * Replies come only when the child's event loop is free: while the slow listener blocks it, none do.
 */
export async function startEventsProcess(options) {
  const events = await forkWithCommands(fileURLToPath(import.meta.url), [CHILD_FLAG, JSON.stringify(options)], {
    name: 'the events child',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  return { ...events, port: events.ready.port }
}

async function childMain(options) {
  const proxy = await ProxyServer.start('127.0.0.1:0', true, options)
  const counts = { seenWhileBlocking: 0, seenAfterFlag: 0 }

  function subscribeSlow(flagPath, blockMs) {
    proxy.onEvent(() => {
      if (existsSync(flagPath)) {
        counts.seenAfterFlag++
        return
      }
      counts.seenWhileBlocking++
      // Busy-wait: the event loop (and so this process's every other callback) is blocked.
      const until = Date.now() + blockMs
      let checks = 0
      while (Date.now() < until) {
        if (++checks % 100000 === 0 && existsSync(flagPath)) break
      }
    })
    return true
  }

  answerCommands({
    createContext: (...args) => proxy.createContext(...args),
    subscribeSlow,
    report: () => ({ ...counts, stats: proxy.stats() }),
    stop: async () => {
      await proxy.stop()
      return true
    },
  }, { port: proxy.port() })
}

if (process.argv[2] === CHILD_FLAG && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await childMain(JSON.parse(process.argv[3]))
}
