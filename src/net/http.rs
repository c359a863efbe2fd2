//! Plain HTTP on a server's ports (requests that ask for no upgrade): `/healthz` on
//! both (503 during a graceful shutdown on the admin address, which keeps listening
//! while the public port stops), `/metrics` on the admin address only, and the relay's chat page
//! ([`chat_page`]) on the public port. Every answer ends its connection; the engine
//! reads the request under the handshake's limits (head size, header count, time).

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};

use crate::net::metrics::{self, Metrics};
use crate::{HttpRequest, Reject};

/// The path of the health check, on the public port and on the admin address.
pub(crate) const HEALTH_PATH: &str = "/healthz";
/// The path of the metrics page, on the admin address only.
pub(crate) const METRICS_PATH: &str = "/metrics";
/// The chat page, embedded in the binary.
const CHAT_PAGE: &str = include_str!("chat.html");
/// Longest room path the page is served for.
const MAX_ROOM_PATH: usize = 256;

/// Headers every plain answer carries: no sniffing, no framing, no referrer.
fn plain(status: u16) -> Reject {
    Reject::new(status)
        .header("X-Content-Type-Options", "nosniff")
        .header("X-Frame-Options", "DENY")
        .header("Referrer-Policy", "no-referrer")
}

/// A generated answer (health, metrics, errors): never cached, never a document.
fn generated(status: u16, body: impl Into<Vec<u8>>) -> Reject {
    plain(status)
        .header("Cache-Control", "no-store")
        .header("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
        .body(body)
}

/// `405` for methods other than `GET` and `HEAD`.
fn read_only(req: &HttpRequest) -> Option<Reject> {
    (!req.is_read()).then(|| generated(405, "only GET and HEAD are served here\n").header("Allow", "GET, HEAD"))
}

/// `/healthz`: 200 while the loop runs, 503 once it is shutting down.
fn health(req: &HttpRequest, draining: bool) -> Reject {
    read_only(req).unwrap_or_else(|| match draining {
        false => generated(200, "ok\n"),
        true => generated(503, "shutting down\n").header("Retry-After", "1"),
    })
}

/// The admin address's answer: `/healthz`, `/metrics`, else 404.
pub(crate) fn admin_answer(req: &HttpRequest, draining: bool, metrics: impl FnOnce() -> Metrics) -> Reject {
    match req.path() {
        HEALTH_PATH => health(req, draining),
        METRICS_PATH => {
            read_only(req).unwrap_or_else(|| generated(200, metrics().into_string()).header("Content-Type", metrics::CONTENT_TYPE))
        }
        _ => not_found(),
    }
}

/// The public port's answer: `/healthz` is the server's (200: the port stops
/// accepting when a shutdown begins, so the 503 is the admin address's); anything
/// else is the handler's (`page`), or the default answer of a WebSocket endpoint.
pub(crate) fn public_answer(req: &HttpRequest, page: impl FnOnce(&HttpRequest) -> Option<Reject>) -> Reject {
    if req.path() == HEALTH_PATH {
        return health(req, false);
    }
    page(req).unwrap_or_else(|| req.default_response())
}

fn not_found() -> Reject {
    generated(404, "not found\n")
}

/// Is `path` a room the page is served for? `/` or `/name[/name...]` of letters,
/// digits and `-_~%`; names with a dot (`/favicon.ico`, `/robots.txt`) are files
/// that do not exist.
fn is_room_path(path: &str) -> bool {
    path.starts_with('/') && path.len() <= MAX_ROOM_PATH && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~%/".contains(&b))
}

/// `'sha256-...'` of an inline element's text, as a CSP source. Browsers hash the
/// text after the parser has turned CR LF and lone CR into LF, so the file's line
/// endings (a checkout with CRLF) do not matter.
fn csp_hash(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    format!("'sha256-{}'", BASE64.encode(Sha256::digest(text.as_bytes())))
}

/// The text between `<tag>` and the first `</tag>` after it (where the HTML parser
/// ends a raw-text element): the page's one inline script or style.
fn inline(tag: &str) -> &'static str {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let Some(start) = CHAT_PAGE.find(&open).map(|i| i + open.len()) else { return "" };
    CHAT_PAGE[start..].find(&close).map_or("", |len| &CHAT_PAGE[start..start + len])
}

/// The page's Content-Security-Policy: only its own inline script and style (by
/// hash), WebSocket connections to its own origin, nothing else.
fn chat_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'none'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            csp_hash(inline("script")),
            csp_hash(inline("style")),
        )
    })
}

/// The relay's chat page for a plain request: the page (`GET`/`HEAD`) on any room
/// path, 404 for other paths, 405 for other methods. The room is the path; the page
/// connects back to it over `ws://` or `wss://` like the page itself.
pub(crate) fn chat_page(req: &HttpRequest) -> Reject {
    if !is_room_path(req.path()) {
        return not_found();
    }
    if let Some(r) = read_only(req) {
        return r;
    }
    plain(200)
        .header("Content-Type", "text/html; charset=utf-8")
        .header("Content-Security-Policy", chat_policy())
        .header("Cache-Control", "no-cache")
        .body(CHAT_PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(method: &str, target: &str) -> HttpRequest {
        HttpRequest { method: method.into(), target: target.into(), headers: vec![("Host".into(), b"x".to_vec())] }
    }

    fn header<'a>(r: &'a Reject, name: &str) -> Option<&'a str> {
        r.headers().iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_page_is_served_on_room_paths_only() {
        for path in ["/", "/lobby", "/games/chess", "/a-b_c~d%20e?x=1"] {
            assert_eq!(chat_page(&get("GET", path)).status(), 200, "{path}");
        }
        for path in ["/favicon.ico", "/robots.txt", "/a/../b", "/<script>"] {
            assert_eq!(chat_page(&get("GET", path)).status(), 404, "{path}");
        }
        let long = format!("/{}", "a".repeat(MAX_ROOM_PATH));
        assert_eq!(chat_page(&get("GET", &long)).status(), 404);
        let post = chat_page(&get("POST", "/lobby"));
        assert_eq!((post.status(), header(&post, "Allow")), (405, Some("GET, HEAD")));
        assert_eq!(chat_page(&get("HEAD", "/lobby")).status(), 200);
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style() {
        let page = chat_page(&get("GET", "/"));
        let csp = header(&page, "Content-Security-Policy").unwrap();
        let script = inline("script");
        let style = inline("style");
        assert!(script.len() > 100 && style.len() > 100, "the page has one inline script and one style");
        for tag in ["<script", "</script", "<style", "</style"] {
            assert_eq!(CHAT_PAGE.matches(tag).count(), 1, "one {tag}");
        }
        assert!(csp.contains(&format!("script-src {};", csp_hash(script))), "{csp}");
        assert!(csp.contains(&format!("style-src {};", csp_hash(style))), "{csp}");
        assert!(csp.contains("connect-src 'self'") && csp.starts_with("default-src 'none'"), "{csp}");
        assert_eq!(header(&page, "X-Content-Type-Options"), Some("nosniff"));
        assert_eq!(header(&page, "Cache-Control"), Some("no-cache"));
    }

    #[test]
    fn health_says_503_while_draining() {
        assert_eq!(health(&get("GET", HEALTH_PATH), false).status(), 200);
        assert_eq!(health(&get("HEAD", HEALTH_PATH), true).status(), 503);
        assert_eq!(health(&get("DELETE", HEALTH_PATH), false).status(), 405);
    }

    #[test]
    fn the_admin_address_serves_metrics_and_health_only() {
        let metrics = || {
            let mut m = Metrics::new();
            m.counter("x_total", "x", 1);
            m
        };
        let page = admin_answer(&get("GET", METRICS_PATH), false, metrics);
        assert_eq!(page.status(), 200);
        assert_eq!(header(&page, "Content-Type"), Some(metrics::CONTENT_TYPE));
        assert!(std::str::from_utf8(page.body_bytes()).unwrap().contains("x_total 1\n"));
        assert_eq!(admin_answer(&get("GET", "/lobby"), false, metrics).status(), 404);
        assert_eq!(admin_answer(&get("GET", HEALTH_PATH), true, metrics).status(), 503);
    }
}
