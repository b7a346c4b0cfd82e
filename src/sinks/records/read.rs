//! Reading records back for people: JSON and CSV lines, statistics, following a live file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::format::*;
use super::writer::{file_number, record_files};

/// Civil date and time (UTC) of a Unix time in ms: "YYYY-MM-DD HH:MM:SS.mmm".
pub fn utc(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        // Beyond year 9999: no calendar date to show, the raw number still says it.
        Err(_) => format!("{ms} ms"),
    }
}

/// One record as a JSON object (for `log decode`): where it is, then what it says.
pub fn to_json(file: &Path, offset: u64, r: &Record) -> serde_json::Value {
    let mut v = record_json(r);
    let obj = v.as_object_mut().expect("object");
    obj.insert("file".into(), file.display().to_string().into());
    obj.insert("offset".into(), offset.into());
    v
}

/// One record as a JSON object, without its place on disk (telemetry, the operator page).
pub fn record_json(r: &Record) -> serde_json::Value {
    let mut v = serde_json::json!({
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
        Event::Session(s) => {
            let q = |x: Option<i16>| x.map(|x| x as f64 / 10000.0);
            obj.insert("event".into(), "session".into());
            obj.insert(
                "decision".into(),
                if s.verified { "VERIFIED" } else { "REJECTED" }.into(),
            );
            let reasons: Vec<&str> = s.reasons.iter().map(|r| r.name()).collect();
            obj.insert("reasons".into(), reasons.into());
            obj.insert("match_score".into(), q(s.match_score).into());
            obj.insert("match_threshold".into(), q(Some(s.match_threshold)).into());
            obj.insert("deepfake_prob".into(), p(s.deepfake_prob).into());
            obj.insert(
                "deepfake_threshold".into(),
                p(Some(s.deepfake_threshold)).into(),
            );
            obj.insert("live_prob".into(), p(s.live_prob).into());
            obj.insert("live_threshold".into(), p(s.live_threshold).into());
            obj.insert("frames".into(), s.frames.into());
            obj.insert("duration_s".into(), (s.duration_ms as f64 / 1000.0).into());
            obj.insert("model".into(), format!("{:08x}", s.model).into());
            if let Some(e) = &s.embedding {
                obj.insert("embedding".into(), e.values().into());
            }
        }
    }
    v
}

pub const CSV_HEADER: &str =
    "time,wall_ms,mono_ms,device,event,track,frame,xmin,ymin,xmax,ymax,frame_prob,smoothed_prob,verdict,emotion,emotion_conf,detail";

pub fn to_csv(r: &Record) -> String {
    let p = |x: Option<u16>| x.map_or(String::new(), |x| format!("{:.4}", x as f64 / 10000.0));
    let mut fields = vec![
        utc(r.wall_ms),
        r.wall_ms.to_string(),
        r.mono_ms.to_string(),
        r.device.to_string(),
    ];
    let (event, rest): (&str, Vec<String>) = match &r.event {
        Event::Face(f) => (
            "face",
            vec![
                f.track.to_string(),
                f.frame.to_string(),
                f.bbox[0].to_string(),
                f.bbox[1].to_string(),
                f.bbox[2].to_string(),
                f.bbox[3].to_string(),
                p(f.frame_prob),
                p(f.smoothed_prob),
                f.verdict.to_string(),
                f.emotion.map_or(String::new(), |e| e.to_string()),
                format!("{:.2}", f.emotion_conf as f64 / 100.0),
                format!("{:08x}", f.model),
            ],
        ),
        Event::Start { version, .. } => ("start", empty_then(version)),
        Event::Stop => ("stop", empty_then("")),
        Event::CameraLost { reason } => ("camera_lost", empty_then(reason)),
        Event::CameraBack => ("camera_back", empty_then("")),
        Event::Session(s) => {
            let reasons: Vec<&str> = s.reasons.iter().map(|r| r.name()).collect();
            let decision = if s.verified { "VERIFIED" } else { "REJECTED" };
            // Track and box empty; the session's median fake probability as frame_prob, the
            // decision as the verdict.
            let mut v = vec![String::new(); 6];
            v.push(p(s.deepfake_prob));
            v.push(String::new());
            v.push(decision.to_string());
            v.push(String::new());
            v.push(String::new());
            v.push(format!(
                "match={} live={} reasons={} frames={}",
                s.match_score
                    .map_or(String::new(), |m| format!("{:.4}", m as f64 / 10000.0)),
                p(s.live_prob),
                reasons.join("+"),
                s.frames
            ));
            ("session", v)
        }
    };
    fields.push(event.to_string());
    fields.extend(rest);
    csv_line(&fields)
}

/// The eleven face columns empty, then the detail column.
fn empty_then(detail: &str) -> Vec<String> {
    let mut v = vec![String::new(); 11];
    v.push(detail.to_string());
    v
}

/// One CSV line (no terminator), quoted where a field needs it.
fn csv_line(fields: &[String]) -> String {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing into memory cannot fail.
    w.write_record(fields).expect("CSV into memory");
    let bytes = w.into_inner().expect("CSV into memory");
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\n')
        .to_string()
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
                Event::Session(s) => {
                    let key = if s.verified {
                        "session VERIFIED"
                    } else {
                        "session REJECTED"
                    };
                    *self.per_verdict.entry(key.to_string()).or_default() += 1;
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

/// Follow the daemon's records as they are written (`log decode --follow`): a record file, or a
/// record folder from its newest file. Calls `each` with the file and offset of every new record.
/// When the daemon rotates to a new file, the rest of the old one is read and the new one followed
/// from its start (so a rotated-away or deleted file is never read again); a file truncated or
/// replaced under the same name is read again from its start. Returns only with an error, or when
/// `each` returns one.
pub fn follow(path: &Path, mut each: impl FnMut(&Path, u64, &Record) -> Result<()>) -> Result<()> {
    const POLL: Duration = Duration::from_millis(200);
    let is_dir = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .is_dir();
    let dir = if is_dir {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let mut current = if is_dir {
        let mut waiting = false;
        loop {
            if let Some(newest) = record_files(&dir)?.pop() {
                break newest;
            }
            if !std::mem::replace(&mut waiting, true) {
                eprintln!("{}: waiting for the first record file", dir.display());
            }
            std::thread::sleep(POLL);
        }
    } else {
        path.to_path_buf()
    };
    loop {
        current = follow_file(&current, &dir, POLL, &mut each)?;
    }
}

/// Follows one file until a newer record file exists beside it and this one has been read to the
/// end (or is gone); returns the next file.
fn follow_file(
    path: &Path,
    dir: &Path,
    poll: Duration,
    each: &mut impl FnMut(&Path, u64, &Record) -> Result<()>,
) -> Result<PathBuf> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let open = || -> Result<(File, u64)> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        let inode = file.metadata()?.ino();
        Ok((file, inode))
    };
    let (mut file, mut inode) = open()?;
    let number = file_number(path);
    let mut pending: Vec<u8> = Vec::new();
    let mut base = 0u64;
    loop {
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk)
            .with_context(|| format!("{}: read failed", path.display()))?;
        if !chunk.is_empty() {
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
                each(path, *off, r)?;
            }
            pending.drain(..used);
            base += used as u64;
            continue;
        }
        // Read to the end: has the daemon moved on to a newer file?
        if let Some(n) = number {
            let newer = record_files(dir)?
                .into_iter()
                .find(|p| file_number(p).is_some_and(|m| m > n));
            if let Some(next) = newer {
                return Ok(next);
            }
        }
        match std::fs::metadata(path) {
            // Replaced under the same name: the new file from its start.
            Ok(m) if m.ino() != inode => {
                (file, inode) = open()?;
                pending.clear();
                base = 0;
            }
            // Truncated: from the start again.
            Ok(m) if m.len() < base + pending.len() as u64 => {
                file.seek(SeekFrom::Start(0))?;
                pending.clear();
                base = 0;
            }
            // Still growing, or deleted with nothing newer yet: wait (never re-read it).
            _ => {}
        }
        std::thread::sleep(poll);
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
