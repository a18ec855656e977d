// Helpers of the integration tests that only they use: the proxy's realm,
// raw WebSocket frames (RFC 6455) and deterministic streaming payloads. What
// the tests share with the bench and the scripts is in ../support/.

import crypto from 'node:crypto'
import { buildRequest } from '../support/http-client.mjs'

export const REALM = 'Basic realm="Cmux Preview Proxy"'

// ---------------------------------------------------------------------------
// WebSocket frames (RFC 6455), for raw-socket tests

export const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

export function wsAccept(key) {
  return crypto.createHash('sha1').update(key + WS_GUID).digest('base64')
}

export function wsKey() {
  return crypto.randomBytes(16).toString('base64')
}

/** Encodes one frame; client frames are masked. */
export function encodeFrame(opcode, payload = Buffer.alloc(0), { mask = true, fin = true } = {}) {
  payload = Buffer.from(payload)
  const len = payload.length
  let header
  if (len < 126) {
    header = Buffer.alloc(2)
    header[1] = len
  } else if (len < 65536) {
    header = Buffer.alloc(4)
    header[1] = 126
    header.writeUInt16BE(len, 2)
  } else {
    header = Buffer.alloc(10)
    header[1] = 127
    header.writeBigUInt64BE(BigInt(len), 2)
  }
  header[0] = (fin ? 0x80 : 0) | opcode
  if (!mask) return Buffer.concat([header, payload])
  header[1] |= 0x80
  const key = crypto.randomBytes(4)
  const masked = Buffer.alloc(len)
  for (let i = 0; i < len; i++) masked[i] = payload[i] ^ key[i % 4]
  return Buffer.concat([header, key, masked])
}

export function closeFrame(code = 1000, reason = '', opts) {
  const payload = Buffer.alloc(2 + Buffer.byteLength(reason))
  payload.writeUInt16BE(code, 0)
  payload.write(reason, 2)
  return encodeFrame(0x8, payload, opts)
}

/** Reads one frame from a Conn: { fin, opcode, masked, payload }. */
export async function readFrame(conn, timeout) {
  const h = await conn.readBytes(2, timeout)
  const fin = (h[0] & 0x80) !== 0
  const opcode = h[0] & 0x0f
  const masked = (h[1] & 0x80) !== 0
  let len = h[1] & 0x7f
  if (len === 126) len = (await conn.readBytes(2, timeout)).readUInt16BE(0)
  else if (len === 127) len = Number((await conn.readBytes(8, timeout)).readBigUInt64BE(0))
  const key = masked ? await conn.readBytes(4, timeout) : null
  const payload = Buffer.from(await conn.readBytes(len, timeout))
  if (key) for (let i = 0; i < len; i++) payload[i] ^= key[i % 4]
  return { fin, opcode, masked, payload }
}

/** The head of a WebSocket handshake through the proxy, absolute-form. */
export function wsUpgradeRequest(url, { auth, key, extraHeaders = [] } = {}) {
  const u = new URL(url)
  const headers = [
    ['Host', u.host],
    ['Upgrade', 'websocket'],
    ['Connection', 'Upgrade'],
    ['Sec-WebSocket-Key', key],
    ['Sec-WebSocket-Version', '13'],
    ...extraHeaders,
  ]
  if (auth) headers.push(['Proxy-Authorization', auth])
  return buildRequest('GET', url, headers)
}

// ---------------------------------------------------------------------------
// Streaming payloads

/** A deterministic byte stream of `total` bytes in `chunkSize` pieces; chunk i starts with its index. */
export function* patternChunks(total, chunkSize = 1 << 20) {
  const base = Buffer.alloc(chunkSize)
  for (let i = 0; i < chunkSize; i++) base[i] = (i * 31 + 7) & 0xff
  let sent = 0
  let index = 0
  while (sent < total) {
    const n = Math.min(chunkSize, total - sent)
    const chunk = Buffer.from(base.subarray(0, n))
    if (n >= 4) chunk.writeUInt32BE(index, 0)
    sent += n
    index++
    yield chunk
  }
}

export function patternDigest(total, chunkSize) {
  const hash = crypto.createHash('sha1')
  for (const c of patternChunks(total, chunkSize)) hash.update(c)
  return hash.digest('hex')
}

/** Reads `stream` to its end: how many bytes it held and their SHA-1 (hex). */
export async function digestOf(stream) {
  const hash = crypto.createHash('sha1')
  let bytes = 0
  for await (const chunk of stream) {
    bytes += chunk.length
    hash.update(chunk)
  }
  return { bytes, sha1: hash.digest('hex') }
}
