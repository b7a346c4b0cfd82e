//! The control loop's state and one method per thing that happens to it: a config reload, a
//! camera event, an analysed frame, the stall check, the status tick, the stop.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::config::Config;
use super::notify::Notifier;
use super::status::{LastVerdict, StageMs, Status};
use super::threads::{Analysed, Latest, Loaded, Reload};
use super::{
    effective_config, engine_config, mono_ms, outputs_for, telemetry_for, wall_ms, Outage,
    RunOptions,
};
use crate::sinks::telemetry::Telemetry;
use crate::sinks::{report, DaemonEvent, LiveView, Output};
use crate::source::camera::{CameraEvent, CameraState};
use crate::verdict::session::Decision;
use crate::verdict::Label;

/// What the control thread knows and owns while the daemon runs.
pub(super) struct ControlLoop<'a> {
    opts: &'a RunOptions,
    cfg: Config,
    outputs: Vec<Box<dyn Output>>,
    telemetry: Option<Telemetry>,
    /// What the telemetry was started with (a SIGHUP restarts it when they change).
    models: Vec<(String, String)>,
    notifier: Notifier,
    started: Instant,
    latest: Arc<Latest>,
    busy_since: Arc<AtomicU64>,
    reload: Sender<Reload>,
    classes: Vec<String>,
    source_name: String,
    status: Status,
    camera: CameraState,
    ready_sent: bool,
    source_ended: bool,
    last_status: Instant,
    last_watchdog: Instant,
    fps_window: VecDeque<Instant>,
    last_print: HashMap<u32, (Label, Instant)>,
    last_verdict_at: Instant,
    stall_reported: bool,
    /// The status file's write failures: said once per outage, not every interval.
    status_outage: Outage,
    /// The status snapshot the API's `status` request answers with.
    snapshot: Arc<std::sync::Mutex<serde_json::Value>>,
}

impl<'a> ControlLoop<'a> {
    /// The state at start-up; the outputs are built and told the daemon started.
    #[allow(clippy::too_many_arguments)] // the shared pieces the threads were given
    pub(super) fn start(
        opts: &'a RunOptions,
        cfg: Config,
        telemetry: Option<Telemetry>,
        loaded: Loaded,
        source_name: String,
        started: Instant,
        latest: Arc<Latest>,
        busy_since: Arc<AtomicU64>,
        reload: Sender<Reload>,
        snapshot: Arc<std::sync::Mutex<serde_json::Value>>,
    ) -> ControlLoop<'a> {
        let mut outputs = outputs_for(&cfg);
        let started_event = DaemonEvent::Started {
            device_id: cfg.device_id.clone(),
            models: loaded.models.clone(),
        };
        tell(&mut outputs, |o| o.event(&started_event));
        let status = Status {
            version: env!("CARGO_PKG_VERSION").into(),
            device_id: cfg.device_id.clone(),
            pid: std::process::id(),
            state: "starting".into(),
            camera: "opening".into(),
            camera_detail: source_name.clone(),
            backend: loaded.backend,
            providers: loaded.providers.into_iter().collect(),
            records: if cfg.records.enabled {
                cfg.records.dir.clone()
            } else {
                "off".into()
            },
            ..Status::default()
        };
        ControlLoop {
            opts,
            cfg,
            outputs,
            telemetry,
            models: loaded.models,
            notifier: Notifier::from_env(),
            started,
            latest,
            busy_since,
            reload,
            classes: loaded.classes,
            source_name,
            status,
            camera: CameraState::Opening,
            ready_sent: false,
            source_ended: false,
            last_status: Instant::now() - Duration::from_secs(3600),
            last_watchdog: Instant::now(),
            fps_window: Default::default(),
            last_print: Default::default(),
            last_verdict_at: Instant::now(),
            stall_reported: false,
            status_outage: Outage::default(),
            snapshot,
        }
    }

    /// SIGHUP: re-read the config; new thresholds and models go to the analysis thread, changed
    /// outputs are rebuilt; a config that does not check keeps the running one.
    pub(super) fn reload(&mut self) {
        let new = match effective_config(self.opts) {
            Ok(new) => new,
            Err(e) => {
                log::error!("SIGHUP: config rejected, keeping the running one: {e:#}");
                return;
            }
        };
        if new.camera != self.cfg.camera {
            log::warn!(
                "SIGHUP: [camera] changes take effect at the next start; the camera stays open"
            );
        }
        match engine_config(&new) {
            Ok(engine) => {
                let _ = self.reload.send(Reload {
                    engine,
                    liveness: new.liveness.clone(),
                    store_embeddings: new.privacy.store_embeddings,
                });
            }
            Err(e) => log::error!("SIGHUP: {e:#}"),
        }
        if new.display != self.cfg.display
            || new.leds != self.cfg.leds
            || new.records != self.cfg.records
        {
            tell(&mut self.outputs, |o| o.shutdown());
            self.outputs = outputs_for(&new);
        }
        if new.mqtt != self.cfg.mqtt
            || new.records.dir != self.cfg.records.dir
            || new.device_id != self.cfg.device_id
        {
            // The old publisher drains first, so the new one starts at its cursor.
            drop(self.telemetry.take());
            match telemetry_for(&new, &self.classes, &self.models, &self.snapshot) {
                Ok(t) => self.telemetry = t,
                Err(e) => log::error!("SIGHUP: mqtt off: {e:#}"),
            }
        }
        if let Some(t) = &self.telemetry {
            t.event(
                "reload",
                serde_json::json!({"config": self.opts.config.display().to_string()}),
            );
        }
        self.cfg = new;
        log::info!("SIGHUP: {} re-read", self.opts.config.display());
    }

    /// The camera opened, failed, was lost or ended.
    pub(super) fn camera_event(&mut self, ev: CameraEvent, state: CameraState) {
        let event = match &ev {
            CameraEvent::Opened(what) => {
                log::info!("camera: {what}");
                (self.camera.name() == "lost").then(|| DaemonEvent::CameraBack(what.clone()))
            }
            CameraEvent::OpenFailed(e) => {
                log::error!("{e}");
                None
            }
            CameraEvent::Lost(why) => {
                log::error!("camera lost: {why}; reopening");
                self.status.camera_outages += 1;
                Some(DaemonEvent::CameraLost(why.clone()))
            }
            CameraEvent::Ended => {
                self.source_ended = true;
                None
            }
        };
        self.camera = state;
        self.status.camera = self.camera.name().into();
        self.status.camera_detail = match &self.camera {
            CameraState::Streaming(d) | CameraState::Lost(d) => d.clone(),
            _ => self.source_name.clone(),
        };
        if let Some(event) = event {
            tell(&mut self.outputs, |o| o.event(&event));
        }
    }

    /// An analysed frame: status figures, a verdict line when something changed, the outputs,
    /// READY=1 after the first one, the watchdog.
    pub(super) fn frame(&mut self, a: &Analysed) {
        let now = Instant::now();
        self.status.fps = self.frame_rate(now);
        self.status.frames += 1;
        self.status.faces = a.result.faces.len();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.status.stage_ms = StageMs {
            detect: ms(a.timings.detect),
            deepfake: ms(a.timings.deepfake),
            temporal: ms(a.timings.temporal),
            emotion: ms(a.timings.emotion),
            total: ms(a.total),
        };
        let verdict = |face: &crate::verdict::FaceResult| LastVerdict {
            track: face.track,
            label: face.verdict.label.to_string(),
            probability: face.verdict.smoothed,
            emotion: face
                .analysis
                .emotion
                .as_ref()
                .and_then(|e| self.classes.get(e.index).cloned()),
            emotion_confidence: face.analysis.emotion.as_ref().map(|e| e.confidence),
            age_s: 0.0,
        };
        self.status.current = a.result.faces.iter().map(verdict).collect();
        if let Some(face) = a.result.main_face() {
            self.last_verdict_at = now;
            self.status.last_verdict = Some(verdict(face));
        }
        self.print_changes(a, now);
        let view = LiveView {
            result: &a.result,
            emotion_classes: &self.classes,
            camera: &self.camera,
            fps: self.status.fps,
            wall_ms: wall_ms(),
            mono_ms: mono_ms(),
        };
        tell(&mut self.outputs, |o| o.frame(&view));
        if !self.ready_sent {
            self.notifier.send("READY=1");
            self.ready_sent = true;
            self.status.state = "running".into();
            log::info!("ready: first frame analysed");
        }
        self.feed_watchdog(true);
    }

    /// Frames per second over the last 5 s.
    fn frame_rate(&mut self, now: Instant) -> f64 {
        self.fps_window.push_back(now);
        while self
            .fps_window
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(5))
        {
            self.fps_window.pop_front();
        }
        let span = self
            .fps_window
            .front()
            .map(|t| now.duration_since(*t).as_secs_f64())
            .unwrap_or(0.0);
        if span > 0.0 {
            (self.fps_window.len() - 1) as f64 / span
        } else {
            0.0
        }
    }

    /// A line when a verdict changes, else at most one per track per second.
    fn print_changes(&mut self, a: &Analysed, now: Instant) {
        for id in &a.result.ended_tracks {
            self.last_print.remove(id);
        }
        let changed = a.result.faces.iter().any(|f| {
            self.last_print.get(&f.track).is_none_or(|(label, at)| {
                *label != f.verdict.label || now.duration_since(*at) >= Duration::from_secs(1)
            })
        });
        if !changed || self.opts.quiet {
            return;
        }
        for line in report::frame_lines(&a.result) {
            println!("{line}");
        }
        for f in &a.result.faces {
            self.last_print.insert(f.track, (f.verdict.label, now));
        }
    }

    /// Stuck inference: the watchdog stops being fed, so systemd restarts a hung daemon. While
    /// frames flow or the camera is being re-opened, the daemon is alive.
    pub(super) fn check_stall(&mut self) {
        let busy = self.busy_since.load(Ordering::Relaxed);
        let stall_s = self.cfg.watchdog.inference_stall_s;
        let stalled = busy != 0 && mono_ms().saturating_sub(busy) as f64 > stall_s * 1000.0;
        if stalled && !self.stall_reported {
            log::error!("inference stuck for more than {stall_s:.0} s");
        }
        self.stall_reported = stalled;
        self.status.inference_stalled = stalled;
        if !stalled && self.camera.name() != "streaming" {
            self.feed_watchdog(false);
        }
    }

    /// A non-looped file source has ended and its last frame is through analysis.
    pub(super) fn source_finished(&self) -> bool {
        self.source_ended && self.latest.is_empty() && self.busy_since.load(Ordering::Relaxed) == 0
    }

    /// The status file, at most once per `status.interval_s`.
    pub(super) fn status_tick(&mut self) {
        if self.last_status.elapsed().as_secs_f64() >= self.cfg.status.interval_s {
            self.last_status = Instant::now();
            self.write_status();
        }
    }

    /// A verification session's progress or end: the outputs show and record it, and the end
    /// is one line on stdout.
    pub(super) fn session(&mut self, event: &DaemonEvent) {
        if let DaemonEvent::SessionEnded(end) = event {
            let o = &end.outcome;
            let reasons: Vec<&str> = o.reasons.iter().map(|r| r.name()).collect();
            let score = |s: Option<f32>| s.map_or("-".into(), |v| format!("{v:.3}"));
            if !self.opts.quiet {
                let decision = match o.decision {
                    Decision::Verified => "VERIFIED",
                    Decision::Rejected => "REJECTED",
                };
                println!(
                    "session {decision}{}{} match {} deepfake {} frames {} in {:.1} s",
                    if reasons.is_empty() { "" } else { ": " },
                    reasons.join(", "),
                    score(o.matched.score),
                    score(o.deepfake.score),
                    o.frames,
                    end.duration_s
                );
            }
        }
        tell(&mut self.outputs, |o| o.event(event));
    }

    /// The stop begins: systemd hears STOPPING=1.
    pub(super) fn stopping(&mut self) {
        self.notifier.send("STOPPING=1");
    }

    /// After the stop flag is set: the outputs hear it and switch off.
    pub(super) fn shut_outputs(&mut self) {
        tell(&mut self.outputs, |o| o.event(&DaemonEvent::Stopping));
        tell(&mut self.outputs, |o| o.shutdown());
        // After the records are flushed: the stop record is published too, if the broker is
        // there.
        if let Some(t) = self.telemetry.take() {
            t.stop();
        }
    }

    /// The last status file, saying how the daemon ended.
    pub(super) fn finish(&mut self, failed: bool) {
        self.status.state = if failed { "failed" } else { "stopped" }.into();
        self.write_status();
    }

    fn feed_watchdog(&mut self, frame_flowing: bool) {
        if let Some(interval) = self.notifier.watchdog_interval {
            if self.last_watchdog.elapsed() >= interval {
                self.notifier.send("WATCHDOG=1");
                self.last_watchdog = Instant::now();
            }
        } else if frame_flowing {
            self.last_watchdog = Instant::now();
        }
    }

    fn write_status(&mut self) {
        let status = &mut self.status;
        status.uptime_s = self.started.elapsed().as_secs_f64();
        status.dropped = self.latest.dropped.load(Ordering::Relaxed);
        status.heap_kib = super::status::heap_in_use().map(|b| b / 1024);
        if let Some(v) = status.last_verdict.as_mut() {
            v.age_s = self.last_verdict_at.elapsed().as_secs_f64();
        }
        if let (Ok(value), Ok(mut shared)) = (serde_json::to_value(&*status), self.snapshot.lock())
        {
            *shared = value;
        }
        if self.cfg.status.path.is_empty() {
            return;
        }
        match status.write_atomic(Path::new(&self.cfg.status.path)) {
            Err(e) => {
                if let Some(e) = self.status_outage.fail(e) {
                    log::warn!("{e:#} (the daemon goes on; said once until it works again)");
                }
            }
            Ok(()) => {
                if self.status_outage.succeed().is_some() {
                    log::warn!("{}: status file written again", self.cfg.status.path);
                }
            }
        }
    }
}

/// An output that fails is reported and the others go on: a broken display must not stop the
/// records, nor the records the LEDs.
pub(super) fn tell(
    outputs: &mut [Box<dyn Output>],
    mut f: impl FnMut(&mut dyn Output) -> Result<()>,
) {
    for o in outputs.iter_mut() {
        if let Err(e) = f(o.as_mut()) {
            log::warn!("{}: {e:#}", o.name());
        }
    }
}
