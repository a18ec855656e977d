// Types of @cmux/preview-proxy/electron (electron/index.js, hand-written and
// type-checked against Electron's own definitions by
// __test__/electron-module.test.mjs). `electron` is used for its types only.

import type { App, WebContents } from 'electron'

/**
 * Where the module reports. cmux's Logger (`{ log, warn, error }`, each
 * `(...args: unknown[]) => void`) and `console` are Loggers. The module calls
 * `log`/`warn`/`error` with a message and an object of details. Proxy events of
 * kind `error` go to `error` when the logger has one, else to `warn`.
 */
export interface Logger {
  log(...args: unknown[]): void
  warn(...args: unknown[]): void
  error?(...args: unknown[]): void
}

/**
 * Starts the one proxy (concurrent calls share one start) on the first free port
 * of 39385..39434 (the next port is tried on `EADDRINUSE` only, any other failure
 * rejects) and resolves its port. Later calls resolve the same port. `logger`
 * (of the call that starts it) receives "Preview proxy listening" and, while
 * logging is on, the proxy's events.
 *
 * After `enablePreviewProxyHttpsMode`, the proxy runs in the HTTPS proxy mode with
 * that CA and sessions get `https://` proxy rules; without it, plain `http://` rules.
 * After `setPreviewProxyCertificateAuthority`, it issues its leaves from that CA.
 *
 * It also writes `[cmux-preview-proxy] listening on port N` to `console.log`, as cmux did.
 *
 * Read from the environment: `CMUX_PREVIEW_TLS_MITM` (at load: unset, empty or `1`
 * intercepts TLS in loopback, `*.cmux.local` and `*.manaflow.local` tunnels; anything else
 * relays it blind), and cmux's test hooks when the proxy starts: `TEST_CMUX_PROXY_ORIGIN`
 * (every request of a routed preview goes through that origin) and
 * `TEST_ALLOW_INSECURE_UPSTREAM=true` (upstream certificates are not verified).
 */
export declare function startPreviewProxy(logger: Logger): Promise<number>

/**
 * Stops the proxy (waiting for a start in flight) and forgets every context; for
 * the app's `will-quit`. Idempotent; a later `startPreviewProxy` starts a new proxy.
 * Sessions never go direct: a session on a context's own port is pointed at the
 * shared port first (the own port closes with the proxy, and its number may be
 * handed to another listener), the others keep their proxy settings (a preview
 * stays pointed at the stopped proxy).
 */
export declare function stopPreviewProxy(): Promise<void>

export interface ConfigurePreviewProxyOptions {
  webContents: WebContents
  /**
   * The preview's cmux URL (`https://cmux-<morphId>-<scope>-<port>.cmux.app/...`): the route is derived
   * from it (the addon's `deriveRoute`; with `TEST_CMUX_PROXY_ORIGIN` set, a host containing
   * `cmux-test-base-8080` is cmux's test route, and every route goes through that origin).
   */
  initialUrl: string
  /** cmux's persist key of the preview (logged with failures, never used for routing). */
  persistKey?: string
  logger: Logger
}

/**
 * Routes one preview WebContents through the proxy:
 * - derives the route from `initialUrl` (`deriveRoute`); no route: `logger.warn`, nothing
 *   configured, and a no-op cleanup;
 * - starts the proxy if needed; installs the login handler (`installPreviewProxyLoginHandler`) on
 *   the app given to `enablePreviewProxyHttpsMode`/`installPreviewProxyLoginHandler` before, else on
 *   `require('electron').app`, if it was not installed yet;
 * - one context per session (Chromium caches proxy credentials per session): a WebContents whose
 *   session already carries a live preview of the same route (morphId, scope, domainSuffix,
 *   cmuxProxyOrigin) shares that preview's context and credentials; a preview of another route on
 *   that session rejects with an Error (use one partition per preview) and configures nothing;
 *   otherwise a new context is created for `webContents.id` (configuring the same WebContents again
 *   replaces its own context; while other live WebContents share it, it stays in that context);
 * - `webContents.session.setProxy({ mode: 'fixed_servers', proxyRules, proxyBypassRules: '<-loopback>' })`,
 *   `proxyRules` naming the context's own port (`setPreviewProxyOwnPorts`, the default), else the shared
 *   one; if it rejects, the WebContents' part in the context is released and the error rethrown;
 * - `setCertificateVerifyProc` on the session (once per session): a current leaf issued by the
 *   proxy's CA is accepted for the hosts the proxy intercepts (the addon's `isInterceptedHost`:
 *   `localhost`, `*.localhost`, `127.0.0.0/8`, `::1`, `0.0.0.0`, `*.cmux.local`, `*.manaflow.local`;
 *   so also the proxy's own `127.0.0.1` in the HTTPS proxy mode) when it names that host; everything
 *   else keeps Chromium's verdict. It replaces any verify proc the app set on that session;
 * - `session.clearAuthCache()` when a new context was created, so a reused partition never answers
 *   with old credentials;
 * - a session without `setCertificateVerifyProc` or `clearAuthCache` (a test double with `setProxy`
 *   only) is configured without them, and `logger.warn` says so once;
 * - releases the WebContents' part on its `destroyed`.
 *
 * Resolves the cleanup (idempotent): the WebContents' part is released; the context (its credentials
 * then get 407, its connections are closed, its own port too) with the last WebContents using it. The
 * session is never set back to a direct connection: it keeps pointing at the proxy (a session on the
 * context's own port is pointed at the shared port: `setProxy` with the shared port's rules), which
 * has nothing to answer the 407 with, until the partition is configured again (a released preview
 * fails closed).
 */
export declare function configurePreviewProxyForView(options: ConfigurePreviewProxyOptions): Promise<() => void>

/**
 * The credentials of a configured WebContents (for a login handler of the app's own), or `null`.
 * WebContents sharing their session's context get the same credentials.
 */
export declare function getProxyCredentialsForWebContents(id: number): { username: string; password: string } | null

/**
 * Releases the WebContents' part in its session's context; with the last WebContents using it, the
 * context itself (its credentials are refused from then on, its connections and its own port closed).
 * The session keeps pointing at the proxy (never `{ mode: 'direct' }`; from a context's own port it is
 * pointed at the shared port): it gets 407 until configured again. Unknown ids are ignored.
 */
export declare function releasePreviewProxy(webContentsId: number): void

/**
 * On: the proxy's events (`onEvent`) go to the Logger of `startPreviewProxy` as
 * `logger.log('Preview proxy', { event: kind, ...fields })`; events of kind `error` through
 * `logger.error` (`logger.warn` when the logger has no `error`), requests answered with a status
 * >= 500 through `logger.warn`. Events never carry credentials. Off: unsubscribed. May be called
 * before the proxy starts. The default comes from `CMUX_PREVIEW_PROXY_LOG`, else
 * `CMUX_PREVIEW_PROXY_LOGGING`, read at load (trimmed, case-insensitive: empty, `1`, `true`, `yes`,
 * `on` turn it on; `0`, `false`, `no`, `off`, unset or any other value leave it off).
 */
export declare function setPreviewProxyLoggingEnabled(enabled: boolean): void

/**
 * Whether previews configured from now on get a port of their own on 127.0.0.1 (the default, `true`):
 * the session's proxy rules point at it, every connection there is the preview's and no 407 is ever
 * sent, so a first request Chromium will not authenticate (a WebSocket, a service worker's fetch after
 * an app restart) works, and a released preview's port is gone. `false`: the shared port, with Basic
 * credentials answered in `app.on('login')`. Any local process that finds a preview's port can use it
 * as that preview.
 */
export declare function setPreviewProxyOwnPorts(enabled: boolean): void

/** `true` for cmux's task-run preview keys (`task-run-preview:...`). */
export declare function isTaskRunPreviewPersistKey(key: string | undefined): key is string

/** `persist:cmux-preview-<first 24 hex of SHA-256 of key>` for a task-run preview key, else `null`. */
export declare function getPreviewPartitionForPersistKey(key: string | undefined): string | null

export interface PreviewProxyCertificateAuthorityInfo {
  /** The proxy's CA certificate (PEM). */
  certPem: string
  /** base64 SHA-256 of its SubjectPublicKeyInfo (the `--ignore-certificate-errors-spki-list` value). */
  spkiSha256: string
}

/**
 * The CA of the running proxy; before a start, the CA of the HTTPS proxy mode if it was enabled, or
 * the one given to `setPreviewProxyCertificateAuthority`; otherwise `null` (without either, each
 * start generates a new CA).
 */
export declare function getPreviewProxyCertificateAuthorityInfo(): PreviewProxyCertificateAuthorityInfo | null

/**
 * Adds ONE `app.on('login')` listener (once per app; `configurePreviewProxyForView` calls it on
 * first use) that answers only this proxy's challenge (`authInfo.isProxy`, host `127.0.0.1`, the
 * proxy's port) for a configured WebContents, with its credentials. Every other login, and one
 * another listener already answered (`event.defaultPrevented`), is left to the app: no
 * `preventDefault`, no callback.
 */
export declare function installPreviewProxyLoginHandler(app: App): void

export interface PreviewProxyHttpsModeOptions {
  /**
   * Keep the CA across launches, in this file (JSON `{ certPem, keyPem }`, mode 0600, written
   * atomically). Left out (the default), the CA is generated in memory for this launch only and
   * nothing is read or written.
   *
   * What keeping it costs: the SPKI switch is app-wide and Chromium accepts any chain that merely
   * contains a certificate with that key, for any host, without checking signatures. The CA
   * certificate is no secret (the proxy shows it to every local client), so whoever ever got it,
   * from this file or from the proxy's listener, can impersonate any site to the app, in every
   * window, in every launch that trusts it, until the file's CA is replaced (it is valid
   * `CA_FILE_VALIDITY_DAYS`, a year, at most). Name constraints do not limit that: Chromium does
   * not check the chain. With the per-launch CA, a copy is good for the one launch it came from.
   *
   * The file's CA is replaced by a new one (`ProxyServer.generateCa({ validityDays: 365 })`) when the
   * file is missing or unusable: not JSON with PEM `certPem`/`keyPem`, not a CA, not valid now or
   * expiring within `CA_FILE_RENEW_DAYS` (30) days, valid for more than 366 days from notBefore to
   * notAfter (older versions wrote ten-year CAs), without X.509 name constraints, or with a key that is
   * not its own.
   */
  caFile?: string
}

/**
 * Days the per-launch CA of the HTTPS proxy mode is valid (`ProxyServer.generateCa({ validityDays: 30 })`).
 * The running proxy issues it again (same key, so the SPKI switch stays right) once fewer than 10 days are left.
 */
export declare const PER_LAUNCH_CA_VALIDITY_DAYS: 30
/** Days a CA the HTTPS proxy mode writes to `caFile` is valid. */
export declare const CA_FILE_VALIDITY_DAYS: 365
/** A `caFile` CA that expires within this many days is replaced at launch. */
export declare const CA_FILE_RENEW_DAYS: 30

/** A CA as PEM: the certificate, and its private key (RSA or ECDSA; PKCS#1, SEC1 or PKCS#8). */
export interface PreviewProxyCertificateAuthority {
  certPem: string
  keyPem: string
}

/**
 * Hands in the app's own CA (e.g. cmux's `~/.cmux/certs/ca.crt` and `ca.key`, RSA PKCS#1 from
 * node-forge): the proxy issues its leaves (and, in the HTTPS proxy mode, its own certificate) from
 * it instead of a CA it generates. Throws when the certificate is not a current CA certificate or
 * the key is not its own, once the proxy has started (or is starting), and after
 * `enablePreviewProxyHttpsMode`. Called before `enablePreviewProxyHttpsMode`, this CA wins: the
 * HTTPS proxy mode uses it (no CA file is read or written) and the SPKI switch names it.
 */
export declare function setPreviewProxyCertificateAuthority(ca: PreviewProxyCertificateAuthority): void

/**
 * Opts in to the HTTPS proxy mode (recommended: Chromium speaks HTTP/2 to the proxy). Call it
 * before the app is ready (it throws after `ready`, or once the proxy started).
 *
 * By default it generates a CA in memory for this launch only
 * (`ProxyServer.generateCa({ validityDays: PER_LAUNCH_CA_VALIDITY_DAYS })`, with X.509 name
 * constraints to the hosts the proxy intercepts): nothing is written to disk, no file is read, and
 * `app.getPath` is not called; the next launch has a new key. With `caFile`, the app chooses to keep
 * the CA across launches in that file (see `PreviewProxyHttpsModeOptions.caFile` for what that
 * costs, and when the file's CA is replaced). After `setPreviewProxyCertificateAuthority`, that CA
 * is used instead, and no file is read or written.
 *
 * It appends `--ignore-certificate-errors-spki-list` with the CA's SPKI hash (keeping hashes the
 * switch already had). The proxy then starts with that CA, and sessions get `https://` proxy rules.
 * Called again in the same launch, it returns the same CA (and throws when `caFile` differs from
 * the first call's). Throws a TypeError for a `caFile` that is not a non-empty string. Returns the CA.
 */
export declare function enablePreviewProxyHttpsMode(app: App, options?: PreviewProxyHttpsModeOptions): PreviewProxyCertificateAuthorityInfo
