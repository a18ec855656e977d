// A Node child process driven by commands over IPC, so that what it holds (a
// proxy, the Electron module) is measured or configured apart from the test
// or script: the parent sends { id, command, args }, the child answers
// { id, result, error }, and { id: 0, result } once it is ready.

import { fork } from 'node:child_process'
import { withTimeout } from './wait.mjs'

/**
 * Forks `modulePath` with `args` (`env`, `stdio` as fork takes them) and waits
 * for its ready answer. Returns { child, ready, call(command, ...args), stop() }.
 * An answer may take `timeout` ms (0: no bound), the ready one `startTimeout`;
 * a child that exits first fails the wait, with `exitDetail()` appended.
 * `onSpawn(child)` runs at once, before any wait (to collect its output).
 */
export async function forkWithCommands(modulePath, args = [], options = {}) {
  const { name = 'the child', env, stdio, timeout = 10000, startTimeout = 15000, stopTimeout = 5000 } = options
  const { exitDetail = () => '', onSpawn = () => {} } = options
  const child = fork(modulePath, args, { env, stdio })
  onSpawn(child)
  const pending = new Map()
  let nextId = 1
  child.on('message', ({ id, result, error }) => {
    pending.get(id)?.({ result, error })
    pending.delete(id)
  })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const reply = async (id, what, ms) => {
    const answer = new Promise((resolve) => pending.set(id, resolve))
    const died = exited.then((code) => ({ error: `${name} exited (${code}) before answering${exitDetail()}` }))
    const settled = Promise.race([answer, died])
    const { result, error } = await (ms > 0 ? withTimeout(settled, ms, what) : settled)
    if (error) throw new Error(`${what}: ${error}`)
    return result
  }
  const send = (command, args, ms) => {
    const id = nextId++
    child.send({ id, command, args })
    return reply(id, `${name}'s answer to ${command}`, ms)
  }
  const ready = await reply(0, `${name} starting`, startTimeout)
  return {
    child,
    ready,
    call: (command, ...args) => send(command, args, timeout),
    /** Sends `stop` and waits for the exit; kills the child when either takes over `stopTimeout` ms. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      try {
        await send('stop', [], stopTimeout)
        await withTimeout(exited, stopTimeout, `${name} exiting`)
      } catch {
        child.kill('SIGKILL')
        await exited
      }
    },
  }
}

/**
 * The child's side: answers each command with `commands[command](...args)`
 * (awaited; a throw is the answer's error), disconnects after `stop`, and
 * sends `ready` first.
 */
export function answerCommands(commands, ready = true) {
  process.on('message', async ({ id, command, args }) => {
    let result
    let error
    try {
      if (!commands[command]) throw new Error(`unknown command ${command}`)
      result = await commands[command](...args)
    } catch (e) {
      error = e instanceof Error ? e.message : String(e)
    }
    process.send({ id, result, error })
    if (command === 'stop') process.disconnect()
  })
  process.send({ id: 0, result: ready })
}
