// Bounded waiting, for the tests, the bench and the scripts: every wait fails
// with a message instead of hanging.

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `predicate` until it returns a truthy value; throws after `timeout` ms. */
export async function waitFor(predicate, { timeout = 2000, interval = 20, message } = {}) {
  const deadline = Date.now() + timeout
  let last
  for (;;) {
    last = await predicate()
    if (last) return last
    if (Date.now() >= deadline) {
      throw new Error(`waitFor timed out after ${timeout} ms${message ? `: ${message}` : ''}`)
    }
    await sleep(interval)
  }
}

/** Rejects if `promise` does not settle within `ms`. */
export function withTimeout(promise, ms, what = 'operation') {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}
