//! The live run's record output: which analysed frames and events become records.

use std::path::PathBuf;

use anyhow::Result;

use super::format::*;
use super::writer::{RecordWriter, StatVfs};
use super::RecordsConfig;
use crate::clock::{Clock, SystemClock};
use crate::sinks::output::{DaemonEvent, LiveView, Output, SessionEnd};
use crate::verdict::session::Decision;
use crate::verdict::Label;

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

/// A similarity or probability in 1/10000.
fn ten_thousandths(v: f32) -> i16 {
    (v.clamp(-1.0, 1.0) * 10000.0).round() as i16
}

fn session_record(end: &SessionEnd) -> SessionRecord {
    let o = &end.outcome;
    let p = sha_prefix(&end.embedding_model);
    SessionRecord {
        verified: o.decision == Decision::Verified,
        reasons: o.reasons.iter().copied().collect(),
        match_score: o.matched.score.map(ten_thousandths),
        match_threshold: ten_thousandths(o.matched.threshold),
        deepfake_prob: prob(o.deepfake.score),
        deepfake_threshold: prob(Some(o.deepfake.threshold)).unwrap_or(0),
        live_prob: o
            .liveness
            .as_ref()
            .and_then(|l| l.passive)
            .and_then(|c| prob(c.score)),
        live_threshold: o
            .liveness
            .as_ref()
            .and_then(|l| l.passive)
            .and_then(|c| prob(Some(c.threshold))),
        frames: o.frames.min(u16::MAX as usize) as u16,
        duration_ms: (end.duration_s.max(0.0) * 1000.0).min(u32::MAX as f64) as u32,
        model: u32::from_be_bytes([p[0], p[1], p[2], p[3]]),
        embedding: end.embedding.as_deref().map(StoredEmbedding::quantise),
    }
}

/// The daemon's record output: a face record when a track appears or its verdict changes, and
/// at most one per track per `face_interval_ms` otherwise (an SD card lasts longer). Face records
/// carry the analysed frame's clocks, events the output's clock: one monotonic base for both, so
/// `mono_ms` orders the records whatever the wall clock does.
pub struct RecordsOutput {
    writer: RecordWriter,
    device: heapless::String<32>,
    clock: Box<dyn Clock>,
    deepfake_model: u32,
    deepfake_key: String,
    last: std::collections::HashMap<u32, (Label, u64)>,
    interval_ms: u64,
}

impl RecordsOutput {
    /// `device_id` names the device in every record; `deepfake_key` is the manifest key of the
    /// frame model whose hash the records carry.
    pub fn open(cfg: &RecordsConfig, device_id: &str, deepfake_key: &str) -> Result<Self> {
        Self::with_clock(cfg, device_id, deepfake_key, Box::new(SystemClock))
    }

    /// As `open`, with the clock that stamps event records (tests make it jump).
    pub fn with_clock(
        cfg: &RecordsConfig,
        device_id: &str,
        deepfake_key: &str,
        clock: Box<dyn Clock>,
    ) -> Result<Self> {
        let dir = PathBuf::from(&cfg.dir);
        Ok(RecordsOutput {
            writer: RecordWriter::open(&dir, cfg.clone(), Box::new(StatVfs))?,
            device: short(device_id),
            clock,
            deepfake_model: 0,
            deepfake_key: deepfake_key.to_string(),
            last: Default::default(),
            interval_ms: cfg.face_interval_ms,
        })
    }

    fn record(&self, wall_ms: u64, mono_ms: u64, event: Event) -> Record {
        Record {
            wall_ms,
            mono_ms,
            device: self.device.clone(),
            event,
        }
    }
}

impl Output for RecordsOutput {
    fn name(&self) -> String {
        format!("records {}", self.writer.dir().display())
    }

    fn frame(&mut self, view: &LiveView) -> Result<()> {
        for id in &view.result.ended_tracks {
            self.last.remove(id);
        }
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
                view.mono_ms,
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
            DaemonEvent::SessionEnded(end) => Event::Session(session_record(end)),
            DaemonEvent::SessionStarted
            | DaemonEvent::SessionProgress { .. }
            | DaemonEvent::SessionPrompt(_) => return Ok(()),
        };
        let rec = self.record(self.clock.wall_ms(), self.clock.mono_ms(), ev);
        self.writer.write(&rec)?;
        // A session's decision is what a kiosk operator audits: on disk at once, like a stop.
        if matches!(
            event,
            DaemonEvent::CameraLost(_) | DaemonEvent::Stopping | DaemonEvent::SessionEnded(_)
        ) {
            self.writer.flush(true)?;
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Result<()> {
        self.writer.flush(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::session::{Component, Liveness, Outcome, Reason};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A clock the test sets by hand.
    struct HandClock {
        mono: Arc<AtomicU64>,
        wall: Arc<AtomicU64>,
    }

    impl Clock for HandClock {
        fn mono_ms(&self) -> u64 {
            self.mono.load(Ordering::Relaxed)
        }
        fn wall_ms(&self) -> u64 {
            self.wall.load(Ordering::Relaxed)
        }
    }

    /// The wall clock jumps an hour back (NTP on a board without a clock): the face throttle
    /// follows the monotonic clock, nothing is dropped or doubled, and the records keep their
    /// write order with `mono_ms` never going back; the wall stamps are what the clock said.
    #[test]
    fn records_follow_the_monotonic_clock_when_the_wall_clock_jumps() {
        use crate::verdict::{FaceResult, FrameResult, Verdict};
        let dir = std::env::temp_dir().join(format!("veriface-clock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = RecordsConfig {
            dir: dir.display().to_string(),
            flush_ms: 0,
            min_free_mib: 0,
            face_interval_ms: 1000,
            ..Default::default()
        };
        let (mono, wall) = (Arc::new(AtomicU64::new(1)), Arc::new(AtomicU64::new(0)));
        let hour = 3_600_000;
        let start_wall = 1_800_000_000_000;
        let clock = HandClock {
            mono: mono.clone(),
            wall: wall.clone(),
        };
        let mut out = RecordsOutput::with_clock(&cfg, "test", "deepfake", Box::new(clock)).unwrap();
        wall.store(start_wall, Ordering::Relaxed);
        out.event(&DaemonEvent::CameraBack("test".into())).unwrap();
        let face = FaceResult {
            track: 1,
            score: 0.9,
            bbox: crate::face::BoxF {
                xmin: 10.0,
                ymin: 10.0,
                xmax: 60.0,
                ymax: 60.0,
            },
            analysis: Default::default(),
            analysed: true,
            verdict: Verdict {
                label: Label::Real,
                smoothed: Some(0.1),
                confidence: 0.8,
                consistency: 1.0,
                frames: 5,
            },
        };
        let camera = crate::source::camera::CameraState::Streaming("test".into());
        // Frames every 500 ms; the wall clock goes back an hour before the fourth.
        for (i, at) in [100u64, 600, 1100, 1600, 2100, 2600]
            .into_iter()
            .enumerate()
        {
            let wall_now = start_wall + at - if i >= 3 { hour } else { 0 };
            let result = FrameResult {
                index: i as u64,
                seconds: at as f64 / 1000.0,
                faces: vec![face.clone()],
                ended_tracks: vec![],
            };
            let view = LiveView {
                result: &result,
                emotion_classes: &[],
                camera: &camera,
                fps: 2.0,
                wall_ms: wall_now,
                mono_ms: at,
            };
            out.frame(&view).unwrap();
            mono.store(at, Ordering::Relaxed);
            wall.store(wall_now, Ordering::Relaxed);
        }
        out.event(&DaemonEvent::CameraLost("unplugged".into()))
            .unwrap();
        out.shutdown().unwrap();
        let files = super::super::record_files(&dir).unwrap();
        let decoded = decode_file(&files[0]).unwrap();
        let records: Vec<&Record> = decoded.records.iter().map(|(_, r)| r).collect();
        let faces: Vec<u64> = records
            .iter()
            .filter(|r| matches!(r.event, Event::Face(_)))
            .map(|r| r.mono_ms)
            .collect();
        assert_eq!(
            faces,
            vec![100, 1100, 2100],
            "one face record per second of monotonic time"
        );
        let monos: Vec<u64> = records.iter().map(|r| r.mono_ms).collect();
        assert!(monos.windows(2).all(|w| w[0] <= w[1]), "{monos:?}");
        assert_eq!(records.last().unwrap().wall_ms, start_wall + 2600 - hour);
        assert!(matches!(
            records.last().unwrap().event,
            Event::CameraLost { .. }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_session_record_keeps_scores_reasons_and_liveness_and_the_embedding_only_if_given() {
        let component = |score, threshold, accepted| Component {
            score: Some(score),
            threshold,
            accepted,
        };
        let end = SessionEnd {
            outcome: Outcome {
                decision: Decision::Rejected,
                reasons: vec![Reason::Liveness],
                matched: component(0.81, 0.5405, true),
                deepfake: component(0.02, 0.9994, true),
                liveness: Some(Liveness {
                    passive: Some(component(0.12, 0.5, false)),
                    challenge: None,
                    camera: None,
                    accepted: false,
                }),
                frames: 5,
            },
            duration_s: 0.64,
            embedding_model: "87aacdfe01".into(),
            embedding: None,
        };
        let r = session_record(&end);
        assert!(!r.verified);
        assert_eq!(r.reasons.as_slice(), &[Reason::Liveness]);
        assert_eq!((r.match_score, r.match_threshold), (Some(8100), 5405));
        assert_eq!((r.live_prob, r.live_threshold), (Some(1200), Some(5000)));
        assert_eq!((r.frames, r.duration_ms, r.model), (5, 640, 0x87aa_cdfe));
        assert!(r.embedding.is_none());
        let with = SessionEnd {
            embedding: Some(vec![0.5, -0.25]),
            ..end
        };
        // int8 with the largest magnitude at 127: within half a step (0.5 / 127 / 2).
        let stored = session_record(&with).embedding.unwrap().values();
        assert!((stored[0] - 0.5).abs() < 1e-6 && (stored[1] + 0.25).abs() <= 0.5 / 254.0);
    }
}
