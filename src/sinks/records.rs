//! The audit trail: compact verdict records that survive power loss.
//!
//! On disk each record is `COBS(version byte ++ postcard(record) ++ CRC32-LE) 0x00`, appended to
//! numbered files (`veriface-000001.vfr`, ...). COBS leaves no zero byte inside a frame, so the
//! zero delimiters find record boundaries again after any damage: a file cut at any byte, or with
//! bytes flipped, loses only the records those bytes belonged to, and the CRC keeps damaged
//! frames from being read as records. Every file starts with a delimiter so a frame cut short
//! by a power loss can never swallow the first record written after it.
//!
//! Encoding uses fixed stack buffers and heapless strings: no allocation per record.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::daemon::config::RecordsConfig;
use crate::daemon::{DaemonEvent, LiveView, Output};
use crate::verdict::Label;

/// The schema written now. Older versions stay decodable (see [`decode_payload`]).
pub const SCHEMA_VERSION: u8 = 1;
// The largest record (a start record listing 16 models with 32-byte keys) is about 720 bytes.
const MAX_PAYLOAD: usize = 1024;
pub const MAX_FRAME: usize = MAX_PAYLOAD + MAX_PAYLOAD / 254 + 2;
pub const EXTENSION: &str = "vfr";

/// A manifest model: its key and the first 8 bytes of its sha256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelId {
    pub key: heapless::String<32>,
    pub sha256_prefix: [u8; 8],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceRecord {
    pub track: u32,
    pub frame: u64,
    /// xmin, ymin, xmax, ymax in frame pixels.
    pub bbox: [i16; 4],
    /// Fake probabilities in 1/10000 (frame model, smoothed); None without a deepfake model.
    pub frame_prob: Option<u16>,
    pub smoothed_prob: Option<u16>,
    pub verdict: Label,
    pub emotion: Option<u8>,
    /// Emotion confidence in 1/100.
    pub emotion_conf: u8,
    /// First 4 bytes of the deepfake model's sha256: which model decided (survives rotation
    /// of the file that holds the start record).
    pub model: u32,
}

// Start is large in memory (fixed-capacity model list) but rare, and its encoded size is what
// counts; boxing it would put an allocation on the record path for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Start {
        version: heapless::String<16>,
        models: heapless::Vec<ModelId, 16>,
    },
    Stop,
    CameraLost {
        reason: heapless::String<64>,
    },
    CameraBack,
    Face(FaceRecord),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unix time in ms (wall clock: may jump when NTP syncs) and ms since the daemon started.
    pub wall_ms: u64,
    pub mono_ms: u64,
    pub device: heapless::String<32>,
    pub event: Event,
}

/// A heapless string from any text, cut at a character boundary if too long.
pub fn short<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

// ---------------------------------------------------------------- framing

/// COBS-encode `data` into `out`; returns the encoded length (no delimiter).
pub fn cobs_encode(data: &[u8], out: &mut [u8]) -> usize {
    let mut code_at = 0;
    let mut w = 1;
    let mut code = 1u8;
    for &b in data {
        if b == 0 {
            out[code_at] = code;
            code_at = w;
            w += 1;
            code = 1;
        } else {
            out[w] = b;
            w += 1;
            code += 1;
            if code == 0xFF {
                out[code_at] = code;
                code_at = w;
                w += 1;
                code = 1;
            }
        }
    }
    out[code_at] = code;
    w
}

/// Decode one COBS frame (without its delimiter); None if malformed.
pub fn cobs_decode(data: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    let mut i = 0;
    while i < data.len() {
        let code = data[i] as usize;
        let end = i + code;
        if code == 0 || end > data.len() {
            return None;
        }
        let block = &data[i + 1..end];
        if block.contains(&0) {
            return None;
        }
        out.extend_from_slice(block);
        i = end;
        // A block shorter than 254 bytes stands for a zero, except at the very end.
        if code < 0xFF && i < data.len() {
            out.push(0);
        }
    }
    Some(())
}

/// One record as it goes on disk, delimiter included, into `out`; returns the length.
pub fn encode_frame(record: &Record, out: &mut [u8; MAX_FRAME + 1]) -> Result<usize> {
    let mut payload = [0u8; MAX_PAYLOAD];
    payload[0] = SCHEMA_VERSION;
    let used = postcard::to_slice(record, &mut payload[1..MAX_PAYLOAD - 4])
        .context("record too large to encode")?
        .len();
    let crc = crc32fast::hash(&payload[..1 + used]);
    payload[1 + used..5 + used].copy_from_slice(&crc.to_le_bytes());
    let n = cobs_encode(&payload[..5 + used], &mut out[..MAX_FRAME]);
    out[n] = 0;
    Ok(n + 1)
}

/// Decode a CRC-checked payload by its schema version.
pub fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    let (&version, body) = payload.split_first().ok_or("empty frame")?;
    match version {
        1 => postcard::from_bytes::<Record>(body).map_err(|e| format!("schema 1: {e}")),
        v => Err(format!("unknown schema version {v} (newer veriface?)")),
    }
}

/// A byte range that held no intact record.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Damage {
    pub start: u64,
    pub end: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Decoded {
    /// (byte offset of the frame, record)
    pub records: Vec<(u64, Record)>,
    pub damaged: Vec<Damage>,
}

/// Decode every intact record of a byte stream; never panics, reports every damaged span.
/// `final_chunk`: whether bytes after the last delimiter are complete (false while following a
/// live file, where they are a record still being written).
pub fn decode(bytes: &[u8], base: u64, final_chunk: bool, into: &mut Decoded) -> usize {
    let mut start = 0;
    let mut buf = Vec::with_capacity(MAX_PAYLOAD);
    let mut consumed = 0;
    while start < bytes.len() {
        let end = match bytes[start..].iter().position(|&b| b == 0) {
            Some(p) => start + p,
            None if final_chunk => bytes.len(),
            None => break,
        };
        let chunk = &bytes[start..end];
        if !chunk.is_empty() {
            let damage = |reason: &str| Damage {
                start: base + start as u64,
                end: base + end as u64,
                reason: reason.into(),
            };
            match cobs_decode(chunk, &mut buf) {
                None => into.damaged.push(damage("bad framing")),
                Some(()) if buf.len() < 5 => into.damaged.push(damage("frame too short")),
                Some(()) => {
                    let (payload, crc) = buf.split_at(buf.len() - 4);
                    let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
                    if crc32fast::hash(payload) != want {
                        into.damaged.push(damage(if end == bytes.len() {
                            "record cut short (power loss?)"
                        } else {
                            "checksum mismatch"
                        }));
                    } else {
                        match decode_payload(payload) {
                            Ok(r) => into.records.push((base + start as u64, r)),
                            Err(e) => into.damaged.push(damage(&e)),
                        }
                    }
                }
            }
        }
        start = end + 1;
        consumed = start.min(bytes.len());
    }
    consumed
}

pub fn decode_file(path: &Path) -> Result<Decoded> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut d = Decoded::default();
    decode(&bytes, 0, true, &mut d);
    Ok(d)
}

// ---------------------------------------------------------------- writer

/// Free space on the file system of a folder (a trait so the guard is testable).
pub trait FreeSpace: Send {
    fn free_bytes(&self, dir: &Path) -> std::io::Result<u64>;
}

pub struct StatVfs;

impl FreeSpace for StatVfs {
    fn free_bytes(&self, dir: &Path) -> std::io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("path contains NUL"))?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

pub struct RecordWriter {
    dir: PathBuf,
    cfg: RecordsConfig,
    file: Option<(BufWriter<File>, PathBuf, u64)>,
    next_number: u64,
    last_flush: Instant,
    last_space_check: Option<Instant>,
    suspended: bool,
    space: Box<dyn FreeSpace>,
    /// Records not written because the disk was nearly full.
    pub skipped: u64,
}

fn file_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("veriface-")?
        .strip_suffix(&format!(".{EXTENSION}"))?
        .parse()
        .ok()
}

/// Record files of a folder, oldest first.
pub fn record_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .flatten()
        .filter_map(|e| file_number(&e.path()).map(|n| (n, e.path())))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

impl RecordWriter {
    pub fn open(dir: &Path, cfg: RecordsConfig, space: Box<dyn FreeSpace>) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create record folder", dir.display()))?;
        let next_number = record_files(dir)?
            .last()
            .and_then(|p| file_number(p))
            .map_or(1, |n| n + 1);
        Ok(RecordWriter {
            dir: dir.to_path_buf(),
            cfg,
            file: None,
            next_number,
            last_flush: Instant::now(),
            last_space_check: None,
            suspended: false,
            space,
            skipped: 0,
        })
    }

    pub fn current_file(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.1.as_path())
    }

    fn start_file(&mut self) -> Result<()> {
        let path = self
            .dir
            .join(format!("veriface-{:06}.{EXTENSION}", self.next_number));
        self.next_number += 1;
        let mut f = BufWriter::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("{}: cannot open", path.display()))?,
        );
        f.write_all(&[0])?;
        self.file = Some((f, path, 1));
        // Rotation: keep the newest `keep_files`, the one just opened included.
        let files = record_files(&self.dir)?;
        let excess = files.len().saturating_sub(self.cfg.keep_files as usize);
        for old in &files[..excess] {
            if let Err(e) = std::fs::remove_file(old) {
                log::warn!("{}: cannot remove old records: {e}", old.display());
            }
        }
        Ok(())
    }

    /// Append one record; flushes by policy. When the disk is nearly full, records are skipped
    /// with one warning until space returns.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        let check_due = self
            .last_space_check
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if check_due {
            self.last_space_check = Some(Instant::now());
            let free = self.space.free_bytes(&self.dir).unwrap_or(u64::MAX);
            let low = free < self.cfg.min_free_mib * 1024 * 1024;
            if low && !self.suspended {
                log::warn!(
                    "{}: less than {} MiB free; records paused until space returns",
                    self.dir.display(),
                    self.cfg.min_free_mib
                );
                self.flush(true)?;
            } else if !low && self.suspended {
                log::warn!(
                    "{}: space available again; records resumed ({} skipped)",
                    self.dir.display(),
                    self.skipped
                );
            }
            self.suspended = low;
        }
        if self.suspended {
            self.skipped += 1;
            return Ok(());
        }
        if self
            .file
            .as_ref()
            .is_none_or(|f| f.2 >= self.cfg.rotate_kib * 1024)
        {
            self.flush(true)?;
            self.start_file()?;
        }
        let mut frame = [0u8; MAX_FRAME + 1];
        let n = encode_frame(record, &mut frame)?;
        let (f, path, bytes) = self.file.as_mut().expect("opened above");
        f.write_all(&frame[..n])
            .with_context(|| format!("{}: write failed", path.display()))?;
        *bytes += n as u64;
        if self.cfg.flush_ms == 0
            || self.last_flush.elapsed() >= Duration::from_millis(self.cfg.flush_ms)
        {
            self.flush(true)?;
        }
        Ok(())
    }

    /// Push buffered records to the OS, and to the disk itself when `sync` (power-loss safe).
    pub fn flush(&mut self, sync: bool) -> Result<()> {
        self.last_flush = Instant::now();
        if let Some((f, path, _)) = self.file.as_mut() {
            f.flush()
                .with_context(|| format!("{}: flush failed", path.display()))?;
            if sync {
                f.get_ref()
                    .sync_data()
                    .with_context(|| format!("{}: sync failed", path.display()))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- daemon output

fn prob(p: Option<f32>) -> Option<u16> {
    p.map(|p| (p.clamp(0.0, 1.0) * 10000.0).round() as u16)
}

fn sha_prefix(hex: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    out
}

/// The daemon's record output: a face record when a track appears or its verdict changes, and
/// at most one per track per `face_interval_ms` otherwise (an SD card lasts longer).
pub struct RecordsOutput {
    writer: RecordWriter,
    device: heapless::String<32>,
    started: Instant,
    deepfake_model: u32,
    deepfake_key: String,
    last: std::collections::HashMap<u32, (Label, u64)>,
    interval_ms: u64,
}

impl RecordsOutput {
    pub fn open(cfg: &crate::daemon::config::Config) -> Result<Self> {
        let dir = PathBuf::from(&cfg.records.dir);
        Ok(RecordsOutput {
            writer: RecordWriter::open(&dir, cfg.records.clone(), Box::new(StatVfs))?,
            device: short(&cfg.device_id),
            started: Instant::now(),
            deepfake_model: 0,
            deepfake_key: cfg.engine.deepfake_model.clone(),
            last: Default::default(),
            interval_ms: cfg.records.face_interval_ms,
        })
    }

    fn record(&self, wall_ms: u64, event: Event) -> Record {
        Record {
            wall_ms,
            mono_ms: self.started.elapsed().as_millis() as u64,
            device: self.device.clone(),
            event,
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Output for RecordsOutput {
    fn name(&self) -> String {
        format!("records {}", self.writer.dir.display())
    }

    fn frame(&mut self, view: &LiveView) -> Result<()> {
        for face in &view.result.faces {
            let due = match self.last.get(&face.track) {
                None => true,
                Some((label, at)) => {
                    *label != face.verdict.label
                        || view.mono_ms.saturating_sub(*at) >= self.interval_ms
                }
            };
            if !due {
                continue;
            }
            self.last
                .insert(face.track, (face.verdict.label, view.mono_ms));
            let b = &face.bbox;
            let px = |v: f64| v.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16;
            let emotion = face.analysis.emotion.as_ref();
            let rec = self.record(
                view.wall_ms,
                Event::Face(FaceRecord {
                    track: face.track,
                    frame: view.result.index,
                    bbox: [px(b.xmin), px(b.ymin), px(b.xmax), px(b.ymax)],
                    frame_prob: prob(face.analysis.deepfake),
                    smoothed_prob: prob(face.verdict.smoothed),
                    verdict: face.verdict.label,
                    emotion: emotion.map(|e| e.index as u8),
                    emotion_conf: emotion.map_or(0, |e| (e.confidence * 100.0).round() as u8),
                    model: self.deepfake_model,
                }),
            );
            self.writer.write(&rec)?;
        }
        Ok(())
    }

    fn event(&mut self, event: &DaemonEvent) -> Result<()> {
        let ev = match event {
            DaemonEvent::Started { models, .. } => {
                let mut ids = heapless::Vec::new();
                for (key, sha) in models {
                    if *key == self.deepfake_key {
                        let p = sha_prefix(sha);
                        self.deepfake_model = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                    }
                    let _ = ids.push(ModelId {
                        key: short(key),
                        sha256_prefix: sha_prefix(sha),
                    });
                }
                Event::Start {
                    version: short(env!("CARGO_PKG_VERSION")),
                    models: ids,
                }
            }
            DaemonEvent::CameraLost(why) => Event::CameraLost { reason: short(why) },
            DaemonEvent::CameraBack(_) => Event::CameraBack,
            DaemonEvent::Stopping => Event::Stop,
        };
        let rec = self.record(now_ms(), ev);
        self.writer.write(&rec)?;
        if matches!(event, DaemonEvent::CameraLost(_) | DaemonEvent::Stopping) {
            self.writer.flush(true)?;
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Result<()> {
        self.writer.flush(true)
    }
}

// ---------------------------------------------------------------- decode / stats for the CLI

/// Civil date and time (UTC) of a Unix time in ms: "YYYY-MM-DD HH:MM:SS.mmm".
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// One record as a JSON object (for `log decode`).
pub fn to_json(file: &Path, offset: u64, r: &Record) -> serde_json::Value {
    let mut v = serde_json::json!({
        "file": file.display().to_string(),
        "offset": offset,
        "time": utc(r.wall_ms),
        "wall_ms": r.wall_ms,
        "mono_ms": r.mono_ms,
        "device": r.device.as_str(),
    });
    let obj = v.as_object_mut().expect("object");
    let p = |x: Option<u16>| x.map(|x| x as f64 / 10000.0);
    match &r.event {
        Event::Start { version, models } => {
            obj.insert("event".into(), "start".into());
            obj.insert("version".into(), version.as_str().into());
            let m: Vec<serde_json::Value> = models
                .iter()
                .map(|m| {
                    let hex: String = m.sha256_prefix.iter().map(|b| format!("{b:02x}")).collect();
                    serde_json::json!({"key": m.key.as_str(), "sha256_prefix": hex})
                })
                .collect();
            obj.insert("models".into(), m.into());
        }
        Event::Stop => {
            obj.insert("event".into(), "stop".into());
        }
        Event::CameraLost { reason } => {
            obj.insert("event".into(), "camera_lost".into());
            obj.insert("reason".into(), reason.as_str().into());
        }
        Event::CameraBack => {
            obj.insert("event".into(), "camera_back".into());
        }
        Event::Face(f) => {
            obj.insert("event".into(), "face".into());
            obj.insert("track".into(), f.track.into());
            obj.insert("frame".into(), f.frame.into());
            obj.insert("bbox".into(), f.bbox.to_vec().into());
            obj.insert("frame_prob".into(), p(f.frame_prob).into());
            obj.insert("smoothed_prob".into(), p(f.smoothed_prob).into());
            obj.insert("verdict".into(), f.verdict.to_string().into());
            obj.insert("emotion".into(), f.emotion.into());
            obj.insert(
                "emotion_conf".into(),
                (f.emotion_conf as f64 / 100.0).into(),
            );
            obj.insert("model".into(), format!("{:08x}", f.model).into());
        }
    }
    v
}

pub const CSV_HEADER: &str =
    "time,wall_ms,mono_ms,device,event,track,frame,xmin,ymin,xmax,ymax,frame_prob,smoothed_prob,verdict,emotion,emotion_conf,detail";

pub fn to_csv(r: &Record) -> String {
    let head = format!(
        "{},{},{},{}",
        utc(r.wall_ms),
        r.wall_ms,
        r.mono_ms,
        csv_field(&r.device)
    );
    let p = |x: Option<u16>| x.map_or(String::new(), |x| format!("{:.4}", x as f64 / 10000.0));
    match &r.event {
        Event::Face(f) => format!(
            "{head},face,{},{},{},{},{},{},{},{},{},{},{:.2},{:08x}",
            f.track,
            f.frame,
            f.bbox[0],
            f.bbox[1],
            f.bbox[2],
            f.bbox[3],
            p(f.frame_prob),
            p(f.smoothed_prob),
            f.verdict,
            f.emotion.map_or(String::new(), |e| e.to_string()),
            f.emotion_conf as f64 / 100.0,
            f.model
        ),
        Event::Start { version, .. } => format!("{head},start,,,,,,,,,,,,{}", csv_field(version)),
        Event::Stop => format!("{head},stop,,,,,,,,,,,,"),
        Event::CameraLost { reason } => {
            format!("{head},camera_lost,,,,,,,,,,,,{}", csv_field(reason))
        }
        Event::CameraBack => format!("{head},camera_back,,,,,,,,,,,,"),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `log stats`: counts per verdict and per hour, camera outages.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub records: u64,
    pub damaged_spans: u64,
    pub starts: u64,
    pub stops: u64,
    pub per_verdict: std::collections::BTreeMap<String, u64>,
    pub per_hour: std::collections::BTreeMap<String, u64>,
    pub camera_outages: u64,
    pub camera_outage_s: f64,
    pub first: Option<String>,
    pub last: Option<String>,
}

impl Stats {
    pub fn add(&mut self, d: &Decoded) {
        self.damaged_spans += d.damaged.len() as u64;
        let mut lost_at: Option<u64> = None;
        for (_, r) in &d.records {
            self.records += 1;
            let t = utc(r.wall_ms);
            if self.first.is_none() {
                self.first = Some(t.clone());
            }
            self.last = Some(t.clone());
            match &r.event {
                Event::Start { .. } => self.starts += 1,
                Event::Stop => self.stops += 1,
                Event::CameraLost { .. } => {
                    self.camera_outages += 1;
                    lost_at = Some(r.mono_ms);
                }
                Event::CameraBack => {
                    if let Some(at) = lost_at.take() {
                        self.camera_outage_s += r.mono_ms.saturating_sub(at) as f64 / 1000.0;
                    }
                }
                Event::Face(f) => {
                    *self.per_verdict.entry(f.verdict.to_string()).or_default() += 1;
                    *self.per_hour.entry(format!("{}:00", &t[..13])).or_default() += 1;
                }
            }
        }
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "{} records ({} damaged spans), {} starts, {} stops\nfrom {} to {}\n",
            self.records,
            self.damaged_spans,
            self.starts,
            self.stops,
            self.first.as_deref().unwrap_or("-"),
            self.last.as_deref().unwrap_or("-")
        );
        s += "face records per verdict:\n";
        for (k, v) in &self.per_verdict {
            s += &format!("  {k:10} {v}\n");
        }
        s += "face records per hour (UTC):\n";
        for (k, v) in &self.per_hour {
            s += &format!("  {k} {v}\n");
        }
        s += &format!(
            "camera outages: {} ({:.1} s in total)\n",
            self.camera_outages, self.camera_outage_s
        );
        s
    }
}

/// Follow a growing record file (`log decode --follow`): calls `each` for every new record.
pub fn follow(path: &Path, mut each: impl FnMut(u64, &Record) -> Result<()>) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut pending: Vec<u8> = Vec::new();
    let mut base = 0u64;
    loop {
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk)
            .with_context(|| format!("{}: read failed", path.display()))?;
        if chunk.is_empty() {
            // Rotated or truncated underneath us: start again from the top.
            let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if len < base + pending.len() as u64 {
                file.seek(SeekFrom::Start(0))?;
                pending.clear();
                base = 0;
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        pending.extend_from_slice(&chunk);
        let mut d = Decoded::default();
        let used = decode(&pending, base, false, &mut d);
        for dmg in &d.damaged {
            eprintln!(
                "{}: bytes {}..{} damaged: {}",
                path.display(),
                dmg.start,
                dmg.end,
                dmg.reason
            );
        }
        for (off, r) in &d.records {
            each(*off, r)?;
        }
        pending.drain(..used);
        base += used as u64;
    }
}

/// The record files named on the command line: files as given, folders expanded (oldest first).
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}: cannot read", p.display()))?;
        if meta.is_dir() {
            let found = record_files(p)?;
            if found.is_empty() {
                bail!(
                    "{}: no .{EXTENSION} record files in this folder",
                    p.display()
                );
            }
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// Decode each file; a file with bytes but not one intact record is not a record file (error).
/// Damaged spans go to stderr, one line each: a power cut is expected, not an error.
pub fn decode_files(
    files: &[PathBuf],
    mut each: impl FnMut(&Path, &Decoded) -> Result<()>,
) -> Result<()> {
    for f in files {
        let d = decode_file(f)?;
        let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        if d.records.is_empty() && len > 0 {
            bail!(
                "{}: not a veriface record file (no intact record in {len} bytes)",
                f.display()
            );
        }
        for dmg in &d.damaged {
            eprintln!(
                "{}: bytes {}..{} damaged: {}",
                f.display(),
                dmg.start,
                dmg.end,
                dmg.reason
            );
        }
        each(f, &d)?;
    }
    Ok(())
}

/// `log decode`: JSON lines (default) or CSV of every intact record.
pub fn write_decoded(files: &[PathBuf], csv: bool, out: &mut dyn std::io::Write) -> Result<()> {
    if csv {
        writeln!(out, "{CSV_HEADER}")?;
    }
    decode_files(files, |f, d| {
        for (off, r) in &d.records {
            if csv {
                writeln!(out, "{}", to_csv(r))?;
            } else {
                writeln!(out, "{}", to_json(f, *off, r))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cobs_known_vectors() {
        // From the COBS paper / Wikipedia examples.
        for (raw, enc) in [
            (vec![0u8], vec![1u8, 1]),
            (vec![0, 0], vec![1, 1, 1]),
            (vec![0x11, 0x22, 0, 0x33], vec![3, 0x11, 0x22, 2, 0x33]),
            (
                vec![0x11, 0x22, 0x33, 0x44],
                vec![5, 0x11, 0x22, 0x33, 0x44],
            ),
        ] {
            let mut out = [0u8; 16];
            let n = cobs_encode(&raw, &mut out);
            assert_eq!(&out[..n], &enc[..]);
            let mut back = Vec::new();
            cobs_decode(&enc, &mut back).unwrap();
            assert_eq!(back, raw);
        }
        let long: Vec<u8> = (1..=255u8).cycle().take(600).collect();
        let mut out = vec![0u8; 700];
        let n = cobs_encode(&long, &mut out);
        assert!(!out[..n].contains(&0));
        let mut back = Vec::new();
        cobs_decode(&out[..n], &mut back).unwrap();
        assert_eq!(back, long);
        assert!(cobs_decode(&[5, 1, 2], &mut back).is_none());
    }

    #[test]
    fn verdict_codes_are_stable_on_disk() {
        // Records store Label by variant index: reordering Label would corrupt old logs.
        for (label, code) in [
            (Label::Real, 0u8),
            (Label::Fake, 1),
            (Label::Uncertain, 2),
            (Label::Unscored, 3),
            (Label::NoFace, 4),
        ] {
            assert_eq!(postcard::to_allocvec(&label).unwrap(), vec![code]);
        }
    }

    #[test]
    fn utc_formats_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18 11:06:40.000");
    }
}
