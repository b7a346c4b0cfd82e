//! The operator page: a read-only HTTP server the daemon starts when `[http] listen` is set.
//!
//! `GET /` is one self-contained page (no external scripts, fonts or images: kiosks are often
//! offline) that polls `GET /api/status` (the daemon's status snapshot) and `GET /api/records`
//! (the newest records, sessions among them) every second. No face pixels are served. Off a
//! loopback address the server needs a token: `Authorization: Bearer <token>`, or `?token=` on
//! the page's address (the page passes it on to its own requests).

// Without `fleet` the routing below is still built and unit-tested, only never served.
#![cfg_attr(not(feature = "fleet"), allow(dead_code))]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
#[cfg(feature = "fleet")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(feature = "fleet")]
use std::thread::JoinHandle;
#[cfg(feature = "fleet")]
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sinks::records::{
    each_after, file_number, record_files, record_json, seq, split, Record,
};
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
                let mut tail = RecordTail::default();
                while !flag.load(Ordering::Relaxed) {
                    match server.recv_timeout(Duration::from_millis(500)) {
                        Ok(Some(request)) => answer(request, &token, &sources, &mut tail),
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
fn answer(request: tiny_http::Request, token: &str, sources: &PageSources, tail: &mut RecordTail) {
    let bearer = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str());
    let get = request.method() == &tiny_http::Method::Get;
    let (code, kind, body) = route(get, request.url(), bearer, token, sources, tail);
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
    tail: &mut RecordTail,
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
        "/api/records" => match newest_records(sources, tail) {
            Ok(v) => (200, "application/json", v.to_string()),
            Err(e) => (500, "text/plain", format!("{e:#}\n")),
        },
        _ => (404, "text/plain", "not found\n".to_string()),
    }
}

/// The newest records and sessions, kept between requests: each request decodes only the
/// records after the last one it took (a busy kiosk's 4 MiB files were decoded whole, twice,
/// every second a page was open).
#[derive(Default)]
struct RecordTail {
    /// The seq of the last record taken; None before the first look.
    after: Option<u64>,
    /// Newest last.
    records: VecDeque<serde_json::Value>,
    sessions: VecDeque<serde_json::Value>,
}

impl RecordTail {
    fn update(&mut self, dir: &Path) -> Result<()> {
        let files = record_files(dir)?;
        let numbers: Vec<u64> = files.iter().filter_map(|p| file_number(p)).collect();
        let (Some(&newest), Some(newest_path)) = (numbers.last(), files.last()) else {
            *self = RecordTail::default();
            return Ok(());
        };
        if let Some(after) = self.after {
            let (file, offset) = split(after);
            let shrunk =
                file == newest && std::fs::metadata(newest_path).is_ok_and(|m| m.len() <= offset);
            if file > newest || shrunk {
                // The folder was started afresh or the file cut short: read it as new.
                *self = RecordTail::default();
            }
        }
        // Never further back than the second-newest file: one holds thousands of records, the
        // second covers a rotation a moment ago.
        let floor = seq(numbers[numbers.len().saturating_sub(2)], 0);
        let mut last = None;
        each_after(dir, self.after.unwrap_or(0).max(floor), |s, record| {
            last = Some(s);
            self.take(record);
            ControlFlow::Continue(())
        })?;
        self.after = last.or(self.after);
        Ok(())
    }

    fn take(&mut self, record: Record) {
        let v = record_json(&record);
        if v["event"] == "session" {
            self.sessions.push_back(v.clone());
            if self.sessions.len() > SESSIONS_SHOWN {
                self.sessions.pop_front();
            }
        }
        self.records.push_back(v);
        if self.records.len() > RECORDS_SHOWN {
            self.records.pop_front();
        }
    }

    /// Newest first.
    fn json(&self) -> serde_json::Value {
        let records: Vec<_> = self.records.iter().rev().collect();
        let sessions: Vec<_> = self.sessions.iter().rev().collect();
        serde_json::json!({"records": records, "sessions": sessions})
    }
}

/// `/api/records`: the newest records and sessions, as `log decode` shows them minus their
/// place on disk.
fn newest_records(sources: &PageSources, tail: &mut RecordTail) -> Result<serde_json::Value> {
    let Some(dir) = &sources.records else {
        return Ok(serde_json::json!({"records": [], "sessions": [], "note": "records are off"}));
    };
    tail.update(dir)?;
    Ok(tail.json())
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
    fn the_record_tail_reads_only_what_is_new_and_follows_rotation() {
        use crate::sinks::records::{short, Event, RecordWriter, RecordsConfig, StatVfs};
        let dir = std::env::temp_dir().join(format!("veriface-tail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = RecordsConfig {
            flush_ms: 0,
            rotate_kib: 16,
            ..RecordsConfig::default()
        };
        let write_to = |w: &mut RecordWriter, from: u64, to: u64| {
            for n in from..=to {
                let event = Event::CameraBack;
                let device = short("d");
                w.write(&Record {
                    wall_ms: n,
                    mono_ms: n,
                    device,
                    event,
                })
                .unwrap();
            }
        };
        let mut w = RecordWriter::open(&dir, cfg.clone(), Box::new(StatVfs)).unwrap();
        let mut write = |from: u64, to: u64| write_to(&mut w, from, to);
        let walls = |v: &serde_json::Value| -> Vec<u64> {
            let records = v["records"].as_array().unwrap();
            records
                .iter()
                .map(|r| r["wall_ms"].as_u64().unwrap())
                .collect()
        };
        let mut tail = RecordTail::default();
        write(1, 10);
        tail.update(&dir).unwrap();
        assert_eq!(walls(&tail.json()), (1..=10).rev().collect::<Vec<_>>());
        let read_to = tail.after;
        write(11, 12);
        tail.update(&dir).unwrap();
        assert_eq!(walls(&tail.json())[..3], [12, 11, 10]);
        assert_eq!(walls(&tail.json()).len(), 12, "no repeats");
        assert!(tail.after > read_to, "moved on");
        // Past several rotations (16 KiB files, ~14 bytes a record): the newest 30.
        write(13, 4000);
        assert!(record_files(&dir).unwrap().len() > 2);
        tail.update(&dir).unwrap();
        assert_eq!(walls(&tail.json()), (3971..=4000).rev().collect::<Vec<_>>());
        // The same as a page opened now.
        let mut fresh = RecordTail::default();
        fresh.update(&dir).unwrap();
        assert_eq!(fresh.json(), tail.json());
        // The folder emptied and started again (numbering from 1): the new records, only.
        drop(w);
        for path in record_files(&dir).unwrap() {
            std::fs::remove_file(path).unwrap();
        }
        let mut w = RecordWriter::open(&dir, cfg, Box::new(StatVfs)).unwrap();
        write_to(&mut w, 1, 5);
        tail.update(&dir).unwrap();
        assert_eq!(walls(&tail.json()), [5, 4, 3, 2, 1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn routes_and_the_token() {
        let sources = PageSources {
            status: Arc::new(Mutex::new(serde_json::json!({"state": "running"}))),
            records: None,
        };
        let token = "0123456789abcdef";
        let mut tail = RecordTail::default();
        let mut code = |get, url, auth| route(get, url, auth, token, &sources, &mut tail).0;
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
        let open = route(true, "/api/status", None, "", &sources, &mut tail);
        assert_eq!(open.0, 200);
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
