//! The page a preview shows when its dev box cannot be reached: what was
//! asked, where it went, why it failed in plain words, and a script that
//! checks again (2 s, backing off to 10 s) and reloads once the dev box
//! answers. Self-contained, under a strict CSP; only for navigations, every
//! other request keeps the one-line text answer.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response};
use http_body_util::{BodyExt, Full};

use crate::answer::error::{Failure, ProxyError};
use crate::answer::reply::{Body, PROXY_ERROR_HEADER};

/// Whether a request is a page load a person sees: `Sec-Fetch-Mode: navigate`,
/// or (for clients without Fetch metadata) an `Accept` that puts HTML first.
pub(crate) fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if method != Method::GET {
        return false;
    }
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
    accept.split(',').next().is_some_and(|first| first.trim().starts_with("text/html"))
}

/// Whether `error` means the dev box itself could not be reached (rather
/// than a bad request or a policy refusal).
pub(crate) fn is_unreachable(error: &ProxyError) -> bool {
    matches!(error.failure(), Failure::Dns | Failure::Refused | Failure::Timeout | Failure::Tls)
}

fn plain_words(error: &ProxyError) -> &'static str {
    match error.failure() {
        Failure::Dns => "The dev box's name does not resolve (DNS): it may not exist yet, or it was stopped.",
        Failure::Refused => "Nothing accepted the connection: the dev box or its dev server is not running.",
        Failure::Timeout => "The dev box did not answer in time.",
        Failure::Tls => "The secure connection to the dev box failed (TLS).",
        _ => "The dev box could not be reached.",
    }
}

/// The 502/504 page for a navigation to `url` that went to `upstream` and failed.
pub(crate) fn render(url: &str, upstream: &str, error: &ProxyError) -> Response<Body> {
    let nonce = nonce();
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Dev box unreachable</title>
<style nonce="{nonce}">
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 0; display: grid; place-items: center; min-height: 100vh; background: #f6f7f9; color: #1d2330; }}
main {{ max-width: 40rem; padding: 2rem; }}
h1 {{ font-size: 1.25rem; margin: 0 0 .75rem; }}
dl {{ display: grid; grid-template-columns: auto 1fr; gap: .25rem 1rem; }}
dt {{ color: #5b6475; }} dd {{ margin: 0; word-break: break-all; font-family: ui-monospace, monospace; font-size: .875rem; }}
#status {{ color: #5b6475; }}
</style></head>
<body><main>
<h1>This preview's dev box cannot be reached</h1>
<p id="cause">{cause}</p>
<dl><dt>Page</dt><dd id="url">{url}</dd><dt>Dev box</dt><dd id="upstream">{upstream}</dd><dt>Detail</dt><dd id="detail">{detail}</dd></dl>
<p id="status">Checking again shortly; the page reloads by itself once the dev box answers.</p>
</main>
<script nonce="{nonce}">
(() => {{
  let delay = 2000
  const status = document.getElementById('status')
  const check = async () => {{
    try {{
      const response = await fetch(location.href, {{ method: 'HEAD', cache: 'no-store' }})
      if (!response.headers.has('{header}')) return location.reload()
    }} catch {{}}
    delay = Math.min(delay * 2, 10000)
    status.textContent = 'Still unreachable; checking again in ' + delay / 1000 + ' s.'
    setTimeout(check, delay)
  }}
  setTimeout(check, delay)
}})()
</script></body></html>
"#,
        cause = escape(plain_words(error)),
        url = escape(url),
        upstream = escape(upstream),
        detail = escape(&error.client_reason()),
        header = PROXY_ERROR_HEADER,
    );
    let mut response = Response::new(Full::new(Bytes::from(html)).map_err(|never| match never {}).boxed());
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(error.cause()));
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

fn nonce() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS random number generator is unavailable");
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn navigations_are_told_from_other_requests() {
        assert!(is_navigation(&Method::GET, &headers(&[("sec-fetch-mode", "navigate")])));
        assert!(!is_navigation(&Method::GET, &headers(&[("sec-fetch-mode", "cors"), ("accept", "text/html")])));
        assert!(is_navigation(&Method::GET, &headers(&[("accept", "text/html,application/xhtml+xml;q=0.9")])));
        assert!(!is_navigation(&Method::GET, &headers(&[("accept", "*/*")])));
        assert!(!is_navigation(&Method::GET, &headers(&[])));
        assert!(!is_navigation(&Method::POST, &headers(&[("sec-fetch-mode", "navigate")])));
    }

    #[test]
    fn the_page_escapes_what_it_shows_and_locks_itself_down() {
        let error = ProxyError::Refused("cannot reach <b>:443".into());
        let response = render("http://localhost:3000/?q=<script>", "https://box:443", &error);
        assert_eq!(response.status(), 502);
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().to_owned();
        assert!(csp.starts_with("default-src 'none'; script-src 'nonce-"));
        assert_eq!(response.headers()[PROXY_ERROR_HEADER], "refused");
        let body = futures_util::FutureExt::now_or_never(response.into_body().collect()).unwrap().unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("http://localhost:3000/?q=&lt;script&gt;"));
        assert!(body.contains("cannot reach &lt;b&gt;:443"));
        assert!(!body.contains("<b>"));
        assert!(!body.contains("src=\"http"), "no external assets");
    }
}
