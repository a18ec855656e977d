// The addon, loaded through index.js (the napi-rs loader), which honours
// NAPI_RS_NATIVE_LIBRARY_PATH: vitest.config.mjs points it at the test build.

import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

export const ADDON_PATH = require.resolve('../index.js')
export const { ProxyServer } = require('../index.js')
