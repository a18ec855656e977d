// Types of @cmux/preview-proxy/electron (electron/index.js, hand-written and
// type-checked against Electron's own definitions by
// __test__/electron-module.test.mjs). `electron` is used for its types only.

import type { App, WebContents } from 'electron'

/** Where the module reports: cmux's main-process logger has this shape. */
export interface Logger {
  log(message: string, data?: object): void
  warn(message: string, data?: object): void
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
 */
export declare function startPreviewProxy(logger: Logger): Promise<number>

/**
 * Stops the proxy (waiting for a start in flight) and forgets every context; for
 * the app's `will-quit`. Idempotent; a later `startPreviewProxy` starts a new proxy.
 * Sessions keep their proxy settings (a preview stays pointed at the stopped
 * proxy rather than going direct).
 */
export declare function stopPreviewProxy(): Promise<void>

export interface ConfigurePreviewProxyOptions {
  webContents: WebContents
  /** The preview's cmux URL (`https://cmux-<morphId>-<scope>-<port>.cmux.app/...`): the route is derived from it. */
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
 * - creates the proxy context for `webContents.id` (replacing an earlier one of the same WebContents);
 * - `webContents.session.setProxy({ mode: 'fixed_servers', proxyRules, proxyBypassRules: '<-loopback>' })`;
 *   if it rejects, the context is released and the error rethrown;
 * - `setCertificateVerifyProc` on the session (once per session): a current leaf issued by the
 *   proxy's CA is accepted for loopback hosts (`localhost`, `*.localhost`, `127.0.0.0/8`, `::1`,
 *   `0.0.0.0`: the intercepted hosts, and the proxy's own `127.0.0.1` in the HTTPS proxy mode) when
 *   it names that host; everything else keeps Chromium's verdict. It replaces any verify proc the
 *   app set on that session;
 * - `session.clearAuthCache()`, so a reused partition never answers with old credentials;
 * - releases the context on the WebContents' `destroyed`.
 *
 * Resolves the cleanup (idempotent): releases the context and, unless another live preview uses
 * the same session, resets the session's proxy to `{ mode: 'direct' }`.
 */
export declare function configurePreviewProxyForView(options: ConfigurePreviewProxyOptions): Promise<() => void>

/** The credentials of a configured WebContents (for a login handler of the app's own), or `null`. */
export declare function getProxyCredentialsForWebContents(id: number): { username: string; password: string } | null

/**
 * Releases the WebContents' context (its credentials are refused from then on, its connections
 * closed) and resets its session's proxy to `{ mode: 'direct' }` (unless another live preview uses
 * that session). Unknown ids are ignored.
 */
export declare function releasePreviewProxy(webContentsId: number): void

/**
 * On: the proxy's events (`onEvent`) go to the Logger of `startPreviewProxy` as
 * `logger.log('Preview proxy', { event: kind, ...fields })`; events of kind `error`, and requests
 * answered with a status >= 500, through `logger.warn`. Events never carry credentials. Off (the
 * default): unsubscribed. May be called before the proxy starts.
 */
export declare function setPreviewProxyLoggingEnabled(enabled: boolean): void

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
 * The CA of the running proxy; before a start, the CA of the HTTPS proxy mode if it was enabled;
 * otherwise `null` (without the HTTPS proxy mode each start generates a new CA).
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
  /** Where the CA is kept; default `<userData>/preview-proxy-ca.json` (`app.getPath('userData')`). */
  caFile?: string
}

/**
 * Opts in to the HTTPS proxy mode (recommended: Chromium speaks HTTP/2 to the proxy). Call it
 * before the app is ready (it throws after `ready`, or once the proxy started): loads the CA from
 * `caFile`, or creates one (`ProxyServer.generateCa()`, written with mode 0600) when the file is
 * missing or unusable, and appends `--ignore-certificate-errors-spki-list` with its SPKI hash (keeping
 * hashes the switch already had). The proxy then starts with that CA, and sessions get `https://`
 * proxy rules. Returns the CA.
 */
export declare function enablePreviewProxyHttpsMode(app: App, options?: PreviewProxyHttpsModeOptions): PreviewProxyCertificateAuthorityInfo
