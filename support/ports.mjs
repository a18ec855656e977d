// What a TCP port on 127.0.0.1 does with a connection, for tests that watch
// listeners open and close.

import net from 'node:net'

/** 'open' when something accepts a TCP connection on 127.0.0.1:`port`, else the error's code ('ECONNREFUSED'). */
export function portState(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1')
    socket.once('connect', () => {
      socket.destroy()
      resolve('open')
    })
    socket.once('error', (error) => resolve(error.code ?? String(error)))
  })
}
