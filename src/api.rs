//! The local API for the kiosk app: a Unix socket (never a network port) speaking JSON lines.
//!
//! Requests, one JSON object per line:
//! - `{"verify": {"reference": "/path/photo.jpg", "timeout_s": 10}}` or with `"reference_b64"`
//!   (the photo's bytes, base64): one verification session on the live camera. Replies: an
//!   `{"event": "enrolled"}` line, `{"event": "progress", "frames": k, "needed": n}` lines, then
//!   one `{"result": {...}}` line (the JSON of `veriface verify --json`), or `{"error": "..."}`.
//! - `{"status": {}}`: one `{"status": {...}}` line (the daemon's status snapshot).
//!
//! Anything else gets one `{"error": "..."}` line and the connection stays open. The server
//! knows nothing of the daemon: it hands sessions over a channel and reads the status from a
//! shared value, both given by whoever starts it.

pub mod http;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::frame::Frame;
use crate::pipeline::VerifyResult;

pub const DEFAULT_SOCKET: &str = "/run/veriface/api.sock";
/// The longest request line read; a reference photo in base64 fits (6 MB of image).
const MAX_LINE: usize = 8 << 20;

/// `[api]`: the local socket and the verification sessions it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen on the socket (`run --api` turns it on too).
    pub enabled: bool,
    pub socket: String,
    /// Group owning the socket (mode 0660): the kiosk app's users join it. Empty: the daemon's.
    pub group: String,
    /// Frames of the one face in view a decision needs.
    pub min_frames: u32,
    /// A session's deadline when the request names none, and the longest one allowed.
    pub timeout_s: f64,
    pub max_timeout_s: f64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: false,
            socket: DEFAULT_SOCKET.into(),
            group: String::new(),
            min_frames: 5,
            timeout_s: 10.0,
            max_timeout_s: 60.0,
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> Result<()> {
        if self.enabled && !self.socket.starts_with('/') {
            bail!("api.socket = {:?}: an absolute path", self.socket);
        }
        if !(1..=1000).contains(&self.min_frames) {
            bail!("api.min_frames = {}: within 1..1000", self.min_frames);
        }
        if !(self.timeout_s > 0.0 && self.timeout_s <= self.max_timeout_s) {
            bail!(
                "api.timeout_s = {} must be above 0 and at most api.max_timeout_s = {}",
                self.timeout_s,
                self.max_timeout_s
            );
        }
        Ok(())
    }
}

/// One request line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Request {
    Verify(VerifyRequest),
    Status {},
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub reference: Option<PathBuf>,
    pub reference_b64: Option<String>,
    pub timeout_s: Option<f64>,
}

/// What a session tells its client.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum SessionEvent {
    Event(Progress),
    Result { result: Box<VerifyResult> },
    Error { error: String },
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    Enrolled,
    Progress {
        frames: usize,
        needed: usize,
    },
    /// The active challenge asks for the next movement (`index` of `count`).
    Prompt {
        index: usize,
        count: usize,
        prompt: crate::liveness::challenge::Prompt,
        instruction: &'static str,
    },
}

/// A session for whoever owns the camera and the models (the daemon's analysis thread).
pub struct SessionRequest {
    pub reference: Frame,
    pub timeout: Duration,
    pub min_frames: usize,
    /// Every event of the session, the last one a result or an error.
    pub events: Sender<SessionEvent>,
}

/// Parse one request line; the error is what the client is told.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| {
        format!(
            "bad request ({e}); expected {{\"verify\": {{\"reference\": PATH | \"reference_b64\": DATA, \"timeout_s\": N}}}} or {{\"status\": {{}}}}"
        )
    })
}

/// The reference photo a request names (a path the daemon can read, or inline bytes).
pub fn reference_frame(req: &VerifyRequest) -> Result<Frame> {
    match (&req.reference, &req.reference_b64) {
        (Some(path), None) => crate::source::read_image(path).context("reference"),
        (None, Some(data)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .context("reference_b64: not base64")?;
            let img = image::load_from_memory(&bytes)
                .context("reference_b64: not a readable image")?
                .to_rgb8();
            let (w, h) = img.dimensions();
            Ok(Frame::new(w as usize, h as usize, img.into_raw()))
        }
        _ => bail!("verify needs exactly one of reference and reference_b64"),
    }
}

/// The listening socket and its accept thread.
pub struct Server {
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Listen on `cfg.socket` (mode 0660, `cfg.group`), replacing a stale socket file but never
    /// a live daemon's socket; accept until dropped.
    pub fn start(
        cfg: &ApiConfig,
        sessions: Sender<SessionRequest>,
        status: Arc<Mutex<serde_json::Value>>,
    ) -> Result<Server> {
        let path = PathBuf::from(&cfg.socket);
        let listener = bind(&path, &cfg.group)?;
        listener
            .set_nonblocking(true)
            .with_context(|| format!("{}: cannot poll", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let cfg = cfg.clone();
        let thread = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || accept_loop(listener, &cfg, sessions, status, &flag))
            .context("spawning the API thread")?;
        Ok(Server {
            path,
            thread: Some(thread),
            stop,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn bind(path: &Path, group: &str) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the socket's folder", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{}: another process is listening there (a second daemon?)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("{}: cannot remove the stale socket", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("{}: cannot listen", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("{}: cannot set mode 0660", path.display()))?;
    if !group.is_empty() {
        let gid = nix::unistd::Group::from_name(group)
            .with_context(|| format!("api.group {group:?}: cannot look up"))?
            .with_context(|| format!("api.group {group:?}: no such group"))?
            .gid;
        nix::unistd::chown(path, None, Some(gid))
            .with_context(|| format!("{}: cannot give it to group {group}", path.display()))?;
    }
    Ok(listener)
}

fn accept_loop(
    listener: UnixListener,
    cfg: &ApiConfig,
    sessions: Sender<SessionRequest>,
    status: Arc<Mutex<serde_json::Value>>,
    stop: &AtomicBool,
) {
    std::thread::scope(|scope| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let (sessions, status) = (sessions.clone(), status.clone());
                    scope.spawn(move || {
                        if let Err(e) = serve(conn, cfg, &sessions, &status, stop) {
                            log::debug!("api client: {e:#}");
                        }
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    log::warn!("api: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    });
}

fn send(conn: &mut UnixStream, value: &impl Serialize) -> Result<()> {
    let mut line = serde_json::to_string(value)?;
    line.push('\n');
    conn.write_all(line.as_bytes())?;
    Ok(())
}

/// One client: request lines in, reply lines out, until it hangs up or the daemon stops.
fn serve(
    conn: UnixStream,
    cfg: &ApiConfig,
    sessions: &Sender<SessionRequest>,
    status: &Mutex<serde_json::Value>,
    stop: &AtomicBool,
) -> Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // Never more than MAX_LINE bytes without a newline: garbage cannot fill the memory.
        let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
        match (&mut reader).take(room).read_until(b'\n', &mut line) {
            Ok(_) if line.len() > MAX_LINE => {
                let error = format!("request longer than {MAX_LINE} bytes");
                send(&mut out, &SessionEvent::Error { error })?;
                return Ok(());
            }
            Ok(0) => return Ok(()),
            Ok(_) if line.ends_with(b"\n") => {}
            Ok(_) => return Ok(()), // hung up mid-line
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&line).trim().to_string();
        line.clear();
        if text.is_empty() {
            continue;
        }
        match parse_request(&text) {
            Err(error) => send(&mut out, &SessionEvent::Error { error })?,
            Ok(Request::Status {}) => {
                let snapshot = status.lock().map(|s| s.clone()).unwrap_or_default();
                send(&mut out, &serde_json::json!({ "status": snapshot }))?
            }
            Ok(Request::Verify(req)) => run_session(&mut out, cfg, &req, sessions, stop)?,
        }
    }
    Ok(())
}

fn run_session(
    out: &mut UnixStream,
    cfg: &ApiConfig,
    req: &VerifyRequest,
    sessions: &Sender<SessionRequest>,
    stop: &AtomicBool,
) -> Result<()> {
    let timeout_s = req.timeout_s.unwrap_or(cfg.timeout_s);
    if !(timeout_s > 0.0 && timeout_s <= cfg.max_timeout_s) {
        let error = format!(
            "timeout_s {timeout_s}: must be above 0 and at most {}",
            cfg.max_timeout_s
        );
        return send(out, &SessionEvent::Error { error });
    }
    let reference = match reference_frame(req) {
        Ok(frame) => frame,
        Err(e) => {
            return send(
                out,
                &SessionEvent::Error {
                    error: format!("{e:#}"),
                },
            )
        }
    };
    let (tx, rx): (Sender<SessionEvent>, Receiver<SessionEvent>) = std::sync::mpsc::channel();
    let request = SessionRequest {
        reference,
        timeout: Duration::from_secs_f64(timeout_s),
        min_frames: cfg.min_frames as usize,
        events: tx,
    };
    if sessions.send(request).is_err() {
        return send(
            out,
            &SessionEvent::Error {
                error: "the daemon is stopping".into(),
            },
        );
    }
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(event) => {
                let last = !matches!(event, SessionEvent::Event(_));
                send(out, &event)?;
                if last {
                    return Ok(());
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
            Err(_) => {
                return send(
                    out,
                    &SessionEvent::Error {
                        error: "the daemon stopped before the session ended".into(),
                    },
                );
            }
        }
    }
}

/// `veriface verify --daemon`: send one request line, print every reply line, return the last.
pub fn client_session(
    socket: &Path,
    request: &serde_json::Value,
    mut each: impl FnMut(&serde_json::Value),
) -> Result<serde_json::Value> {
    let mut conn = UnixStream::connect(socket).with_context(|| {
        format!(
            "{}: cannot connect (is `veriface run` running with the API on?)",
            socket.display()
        )
    })?;
    send(&mut conn, request)?;
    let reader = BufReader::new(conn.try_clone()?);
    for line in reader.lines() {
        let line = line.with_context(|| format!("{}: read failed", socket.display()))?;
        let value: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}: not a JSON reply: {line}", socket.display()))?;
        each(&value);
        if value.get("event").is_none() {
            return Ok(value);
        }
    }
    bail!(
        "{}: the daemon closed the connection without a result",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_is_explained() {
        assert!(matches!(
            parse_request(r#"{"status": {}}"#),
            Ok(Request::Status {})
        ));
        match parse_request(r#"{"verify": {"reference": "/tmp/a.jpg", "timeout_s": 3}}"#) {
            Ok(Request::Verify(v)) => {
                assert_eq!(v.reference.as_deref(), Some(Path::new("/tmp/a.jpg")));
                assert_eq!(v.timeout_s, Some(3.0));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "hello",
            "{}",
            r#"{"verify": {"referense": "x"}}"#,
            r#"{"delete": {}}"#,
        ] {
            let err = parse_request(bad).unwrap_err();
            assert!(err.starts_with("bad request"), "{err}");
        }
    }

    #[test]
    fn a_reference_needs_exactly_one_source_and_readable_bytes() {
        let none = VerifyRequest {
            reference: None,
            reference_b64: None,
            timeout_s: None,
        };
        assert!(reference_frame(&none).is_err());
        let junk = VerifyRequest {
            reference: None,
            reference_b64: Some("aGVsbG8=".into()),
            timeout_s: None,
        };
        let err = format!("{:#}", reference_frame(&junk).unwrap_err());
        assert!(err.contains("not a readable image"), "{err}");
    }

    #[test]
    fn an_endless_line_is_refused_not_buffered() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let (sessions, _keep) = std::sync::mpsc::channel();
        let status = Mutex::new(serde_json::Value::Null);
        let stop = AtomicBool::new(false);
        let cfg = ApiConfig::default();
        std::thread::scope(|scope| {
            let served = scope.spawn(|| serve(server, &cfg, &sessions, &status, &stop));
            let junk = vec![b'x'; 1 << 20];
            let mut reply = String::new();
            for _ in 0..=(MAX_LINE >> 20) {
                if client.write_all(&junk).is_err() {
                    break; // the server hung up once it had said why
                }
            }
            client.shutdown(std::net::Shutdown::Write).unwrap();
            BufReader::new(&client).read_line(&mut reply).unwrap();
            assert!(reply.contains("request longer than"), "{reply}");
            served.join().unwrap().unwrap();
        });
    }

    #[test]
    fn events_serialise_as_documented() {
        let p = SessionEvent::Event(Progress::Progress {
            frames: 2,
            needed: 5,
        });
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"event":"progress","frames":2,"needed":5}"#
        );
        assert_eq!(
            serde_json::to_string(&SessionEvent::Event(Progress::Enrolled)).unwrap(),
            r#"{"event":"enrolled"}"#
        );
        let e = SessionEvent::Error { error: "x".into() };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"error":"x"}"#);
    }
}
