//! The operator page: a read-only HTTP server the daemon starts when `[http] listen` is set.
//!
//! `GET /` is one self-contained page (no external scripts, fonts or images: kiosks are often
//! offline) that polls `GET /api/status` (the daemon's status snapshot) and `GET /api/records`
//! (the newest records, sessions among them) every second. No face pixels are served. Off a
//! loopback address the server needs a token: `Authorization: Bearer <token>`, or `?token=` on
//! the page's address (the page passes it on to its own requests).

// Without `fleet` the routing below is still built and unit-tested, only never served.
#![cfg_attr(not(feature = "fleet"), allow(dead_code))]

use std::net::SocketAddr;
use std::path::PathBuf;
#[cfg(feature = "fleet")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(feature = "fleet")]
use std::thread::JoinHandle;
#[cfg(feature = "fleet")]
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sinks::records::{decode_file, record_files, to_json};
use crate::sinks::telemetry::FLEET_NOT_BUILT;

const PAGE: &str = include_str!("operator.html");
/// Records the page shows, and how far back it looks for sessions.
const RECORDS_SHOWN: usize = 30;
const SESSIONS_SHOWN: usize = 10;

/// `[http]`: the operator page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `address:port` to serve on, e.g. "127.0.0.1:8080"; empty: no page.
    pub listen: String,
    /// Needed to listen beyond loopback; then every request must carry it.
    pub token: String,
}

impl HttpConfig {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    pub fn address(&self) -> Result<SocketAddr> {
        self.listen
            .parse()
            .with_context(|| format!("http.listen = {:?}: address:port", self.listen))
    }

    pub fn validate(&self) -> Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        if !cfg!(feature = "fleet") {
            bail!("http.listen: {FLEET_NOT_BUILT}");
        }
        let addr = self.address()?;
        if !addr.ip().is_loopback() && self.token.len() < 16 {
            bail!(
                "http.listen = {}: beyond loopback only with http.token set (16 characters or more)",
                self.listen
            );
        }
        Ok(())
    }
}

/// What the page shows, handed over by whoever starts the server.
pub struct PageSources {
    pub status: Arc<Mutex<serde_json::Value>>,
    /// The record folder; None when records are off.
    pub records: Option<PathBuf>,
}

/// The running server; dropping it stops it.
#[cfg(feature = "fleet")]
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

#[cfg(feature = "fleet")]
impl HttpServer {
    pub fn start(cfg: &HttpConfig, sources: PageSources) -> Result<HttpServer> {
        let addr = cfg.address()?;
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("http.listen = {addr}: cannot listen: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("http: not an IP listener")?;
        let stop = Arc::new(AtomicBool::new(false));
        let token = cfg.token.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match server.recv_timeout(Duration::from_millis(500)) {
                        Ok(Some(request)) => answer(request, &token, &sources),
                        Ok(None) => {}
                        Err(e) => {
                            log::warn!("http: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    }
                }
            })
            .context("starting the http thread")?;
        Ok(HttpServer {
            stop,
            thread: Some(thread),
            addr,
        })
    }

    /// Where it listens (the port the system chose, for `:0`).
    pub fn address(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(feature = "fleet")]
impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Without the `fleet` feature there is no server: validation refuses `[http] listen` first.
#[cfg(not(feature = "fleet"))]
pub struct HttpServer(std::convert::Infallible);

#[cfg(not(feature = "fleet"))]
impl HttpServer {
    pub fn start(_cfg: &HttpConfig, _sources: PageSources) -> Result<HttpServer> {
        bail!("http: {FLEET_NOT_BUILT}")
    }

    pub fn address(&self) -> SocketAddr {
        match self.0 {}
    }
}

/// As the real one: dropping it stops it.
#[cfg(not(feature = "fleet"))]
impl Drop for HttpServer {
    fn drop(&mut self) {
        match self.0 {}
    }
}

#[cfg(feature = "fleet")]
fn answer(request: tiny_http::Request, token: &str, sources: &PageSources) {
    let bearer = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str());
    let get = request.method() == &tiny_http::Method::Get;
    let (code, kind, body) = route(get, request.url(), bearer, token, sources);
    let header = |name: &str, value: &str| {
        tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("ASCII header")
    };
    let response = tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(header("Content-Type", kind))
        .with_header(header("Cache-Control", "no-store"));
    if let Err(e) = request.respond(response) {
        log::debug!("http: {e}");
    }
}

/// Equal in time whatever the first difference: a token compared with `==` tells a timing
/// attacker on the network how many leading bytes were right.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// One request's answer: (status, content type, body). `authorization` is the header's value.
fn route(
    get: bool,
    url: &str,
    authorization: Option<&str>,
    token: &str,
    sources: &PageSources,
) -> (u16, &'static str, String) {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let authorised = token.is_empty()
        || authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| same_secret(t, token))
        || query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("token="))
            .any(|t| same_secret(t, token));
    if !get {
        return (405, "text/plain", "read-only: GET only\n".to_string());
    }
    if !authorised {
        return (401, "text/plain", "token required\n".to_string());
    }
    match path {
        "/" => (200, "text/html; charset=utf-8", PAGE.to_string()),
        "/api/status" => {
            let status = sources.status.lock().map(|s| s.clone()).unwrap_or_default();
            (200, "application/json", status.to_string())
        }
        "/api/records" => match newest_records(sources) {
            Ok(v) => (200, "application/json", v.to_string()),
            Err(e) => (500, "text/plain", format!("{e:#}\n")),
        },
        _ => (404, "text/plain", "not found\n".to_string()),
    }
}

/// The newest records and sessions, as `log decode` shows them minus the file names.
fn newest_records(sources: &PageSources) -> Result<serde_json::Value> {
    let Some(dir) = &sources.records else {
        return Ok(serde_json::json!({"records": [], "sessions": [], "note": "records are off"}));
    };
    let mut records = Vec::new();
    let mut sessions = Vec::new();
    // Newest file first; one file holds thousands of records, the second is for a fresh rotation.
    for path in record_files(dir)?.iter().rev().take(2) {
        let Ok(decoded) = decode_file(path) else {
            continue;
        };
        for (offset, record) in decoded.records.iter().rev() {
            let mut v = to_json(path, *offset, record);
            if let Some(obj) = v.as_object_mut() {
                obj.remove("file");
                obj.remove("offset");
            }
            if v["event"] == "session" && sessions.len() < SESSIONS_SHOWN {
                sessions.push(v.clone());
            }
            if records.len() < RECORDS_SHOWN {
                records.push(v);
            }
        }
        if records.len() >= RECORDS_SHOWN {
            break;
        }
    }
    Ok(serde_json::json!({"records": records, "sessions": sessions}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "fleet")]
    #[test]
    fn beyond_loopback_needs_a_token() {
        let cfg = |listen: &str, token: &str| HttpConfig {
            listen: listen.into(),
            token: token.into(),
        };
        assert!(cfg("127.0.0.1:8080", "").validate().is_ok());
        assert!(cfg("[::1]:8080", "").validate().is_ok());
        let e = cfg("0.0.0.0:8080", "").validate().unwrap_err().to_string();
        assert!(e.contains("http.token"), "{e}");
        assert!(cfg("0.0.0.0:8080", "0123456789abcdef").validate().is_ok());
        let e = cfg("localhost", "").validate().unwrap_err().to_string();
        assert!(e.starts_with("http.listen"), "{e}");
    }

    #[cfg(feature = "fleet")]
    fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let auth = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
        (code, body)
    }

    #[test]
    fn routes_and_the_token() {
        let sources = PageSources {
            status: Arc::new(Mutex::new(serde_json::json!({"state": "running"}))),
            records: None,
        };
        let token = "0123456789abcdef";
        let code = |get, url, auth| route(get, url, auth, token, &sources).0;
        assert_eq!(code(true, "/api/status", None), 401);
        assert_eq!(
            code(true, "/api/status", Some("Bearer 0123456789abcdeX")),
            401
        );
        assert_eq!(
            code(true, "/api/status", Some("Bearer 0123456789abcde")),
            401
        );
        assert_eq!(
            code(true, "/api/status", Some(token)),
            401,
            "no Bearer prefix"
        );
        assert_eq!(
            code(true, "/api/status", Some("Bearer 0123456789abcdef")),
            200
        );
        assert_eq!(code(true, "/?a=1&token=0123456789abcdef", None), 200);
        assert_eq!(code(true, "/?token=0123456789abcdef0", None), 401);
        assert_eq!(code(false, "/?token=0123456789abcdef", None), 405);
        assert_eq!(code(true, "/x?token=0123456789abcdef", None), 404);
        assert_eq!(route(true, "/api/status", None, "", &sources).0, 200);
    }

    #[cfg(feature = "fleet")]
    #[test]
    fn serves_status_and_refuses_without_the_token() {
        let status = Arc::new(Mutex::new(serde_json::json!({"state": "running"})));
        let server = HttpServer::start(
            &HttpConfig {
                listen: "127.0.0.1:0".into(),
                token: "0123456789abcdef".into(),
            },
            PageSources {
                status: status.clone(),
                records: None,
            },
        )
        .unwrap();
        let addr = server.address();
        assert_eq!(get(addr, "/api/status", None).0, 401);
        assert_eq!(get(addr, "/api/status", Some("wrong")).0, 401);
        let (code, body) = get(addr, "/api/status", Some("0123456789abcdef"));
        assert_eq!((code, body.as_str()), (200, r#"{"state":"running"}"#));
        let (code, body) = get(addr, "/?token=0123456789abcdef", None);
        assert_eq!(code, 200);
        assert!(body.contains("<title>veriface"), "{body}");
        assert_eq!(get(addr, "/nothing?token=0123456789abcdef", None).0, 404);
        let (code, body) = get(addr, "/api/records?token=0123456789abcdef", None);
        assert_eq!(code, 200);
        assert!(body.contains("records are off"), "{body}");
    }
}
