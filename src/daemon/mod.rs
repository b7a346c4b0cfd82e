//! `veriface run`: the camera daemon. Three threads:
//!
//! - capture: keeps the camera open (supervisor: timeouts, unplug, reopen with back-off) and
//!   puts each frame in a one-frame slot, replacing a frame not yet analysed (always the newest
//!   frame, never a queue of stale ones);
//! - analysis: takes the newest frame and runs the pipeline (`threads.rs`);
//! - control (the caller's thread): verdict lines, outputs, status file, systemd notify and
//!   watchdog, stall detection, signals (SIGTERM/SIGINT stop, SIGHUP reloads the config)
//!   (`control.rs`, one method per event).

pub mod config;
mod control;
pub mod notify;
pub mod status;
mod threads;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::liveness::camera::{CheckedOpener, SharedCameraCheck};
use crate::pipeline::EngineConfig;
use crate::sinks::telemetry::Telemetry;
use crate::sinks::{self, OutputsConfig};
use crate::source::camera::{CameraOpener, FileOpener, Supervisor, SupervisorConfig, Wanted};
use crate::source::v4l2::V4l2Opener;

use config::Config;
use control::ControlLoop;
use threads::{spawn_analysis, spawn_capture, AnalysisMsg, CaptureMsg, Latest};

// The outputs' interface lives with the outputs; these names are kept for callers of the daemon.
pub use crate::sinks::{LiveView, Output};

/// Command-line overrides of the config file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Model manifest (overrides engine.models).
    pub models: Option<PathBuf>,
    /// A video, image or folder instead of the camera.
    pub source: Option<PathBuf>,
    pub looped: bool,
    pub records: Option<PathBuf>,
    pub status: Option<PathBuf>,
    pub display: Option<String>,
    pub leds: Option<String>,
    /// Turn the local API on at this socket (overrides api.socket and api.enabled).
    pub api: Option<PathBuf>,
    pub quiet: bool,
}

pub(super) fn engine_config(cfg: &Config) -> Result<EngineConfig> {
    Ok(EngineConfig {
        manifest: cfg.models_path(),
        detector: cfg.engine.detector,
        deepfake: cfg.engine.deepfake_model.clone(),
        verdict: cfg.verdict.clone(),
        backend: cfg.backend_choice(),
        threads: cfg.engine.threads as usize,
        schedule: cfg.schedule(),
        // Verification sessions need the embedding model; without the API it stays unloaded.
        identity: cfg.api.enabled,
        passive: match cfg.api.enabled {
            true => cfg.liveness.passive(),
            false => Default::default(),
        },
        ..EngineConfig::default()
    })
}

pub(super) use crate::clock::{mono_ms, wall_ms};

/// The outputs (records, display, LEDs) a config asks for.
pub fn outputs_for(cfg: &Config) -> Vec<Box<dyn Output>> {
    sinks::open_outputs(&OutputsConfig {
        device_id: &cfg.device_id,
        deepfake_model: &cfg.engine.deepfake_model,
        records: &cfg.records,
        display: &cfg.display,
        leds: &cfg.leds,
    })
    .into_iter()
    .map(|o| Box::new(ReportedOnce::new(o)) as Box<dyn Output>)
    .collect()
}

/// The MQTT publisher a config asks for (None: `[mqtt]` has no url).
pub(super) fn telemetry_for(
    cfg: &Config,
    classes: &[String],
    models: &[(String, String)],
    status: &Arc<std::sync::Mutex<serde_json::Value>>,
) -> Result<Option<Telemetry>> {
    if !cfg.mqtt.enabled() {
        return Ok(None);
    }
    let ctx = sinks::telemetry::TelemetryContext {
        device_id: cfg.device_id.clone(),
        records_dir: PathBuf::from(&cfg.records.dir),
        emotion_classes: classes.to_vec(),
        models: models.to_vec(),
        status: status.clone(),
    };
    Telemetry::start(&cfg.mqtt, ctx).map(Some)
}

/// One failing thing's outage: its first error is reported, repeats are counted, and the first
/// success after them says so. Outputs and the status file use it, so a full disk or an
/// unplugged panel is one line per outage, not one per frame or per second.
#[derive(Default)]
pub(super) struct Outage {
    failed: u64,
}

impl Outage {
    /// The error to report (the first of an outage), or None.
    pub(super) fn fail(&mut self, e: anyhow::Error) -> Option<anyhow::Error> {
        self.failed += 1;
        (self.failed == 1).then_some(e)
    }

    /// How many calls failed, when this success ends an outage.
    pub(super) fn succeed(&mut self) -> Option<u64> {
        (self.failed > 0).then(|| std::mem::take(&mut self.failed))
    }
}

/// An output whose failures are reported once per outage (the first error is returned and
/// logged by the caller).
pub struct ReportedOnce {
    inner: Box<dyn Output>,
    outage: Outage,
}

impl ReportedOnce {
    pub fn new(inner: Box<dyn Output>) -> Self {
        ReportedOnce {
            inner,
            outage: Outage::default(),
        }
    }

    fn judge(&mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        match result {
            Ok(()) => {
                if let Some(failed) = self.outage.succeed() {
                    log::warn!(
                        "{}: working again ({failed} calls failed)",
                        self.inner.name()
                    );
                }
                Ok(())
            }
            Err(e) => match self.outage.fail(e) {
                Some(e) => Err(e.context("said once until it works again")),
                None => Ok(()),
            },
        }
    }
}

impl Output for ReportedOnce {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn frame(&mut self, view: &sinks::output::LiveView) -> anyhow::Result<()> {
        let r = self.inner.frame(view);
        self.judge(r)
    }
    fn event(&mut self, event: &sinks::output::DaemonEvent) -> anyhow::Result<()> {
        let r = self.inner.event(event);
        self.judge(r)
    }
    fn shutdown(&mut self) -> anyhow::Result<()> {
        // The last word: always reported.
        self.inner.shutdown()
    }
}

/// The camera (behind the camera-injection checks), or the file source; and the shared camera
/// check verification sessions report.
fn opener(cfg: &Config, opts: &RunOptions) -> (Box<dyn CameraOpener>, SharedCameraCheck) {
    let inner: Box<dyn CameraOpener> = match &opts.source {
        Some(path) => Box::new(FileOpener::new(path.clone(), opts.looped, cfg.camera.fps)),
        None => Box::new(V4l2Opener::new(
            cfg.camera.device.clone(),
            Wanted {
                format: cfg.camera.format,
                width: cfg.camera.width,
                height: cfg.camera.height,
                fps: cfg.camera.fps,
            },
        )),
    };
    let checked = CheckedOpener::new(inner, cfg.camera.policy());
    let state = checked.state.clone();
    (Box::new(checked), state)
}

/// Apply command-line overrides on top of the config file.
pub fn effective_config(opts: &RunOptions) -> Result<Config> {
    let mut cfg = if opts.config.exists() || opts.config != Path::new(config::DEFAULT_CONFIG) {
        Config::load(&opts.config)?
    } else {
        log::warn!(
            "{}: not found, using built-in defaults",
            opts.config.display()
        );
        Config::default()
    };
    if let Some(m) = &opts.models {
        cfg.engine.models = m.display().to_string();
    }
    if let Some(dir) = &opts.records {
        cfg.records.enabled = true;
        cfg.records.dir = dir.display().to_string();
    }
    if let Some(s) = &opts.status {
        cfg.status.path = s.display().to_string();
    }
    if let Some(d) = &opts.display {
        // KIND:PATH, or KIND alone keeping the config's path.
        let (kind, path) = match d.split_once(':') {
            Some((kind, path)) => (kind, PathBuf::from(path)),
            None => (
                d.as_str(),
                cfg.display
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
            ),
        };
        cfg.display = sinks::display::DisplayConfig::from_kind(kind, &path)?;
    }
    if let Some(l) = &opts.leds {
        cfg.leds.kind = l.parse()?;
    }
    if let Some(socket) = &opts.api {
        cfg.api.enabled = true;
        cfg.api.socket = socket.display().to_string();
    }
    cfg.validate()
        .with_context(|| format!("{} (with command-line overrides)", opts.config.display()))?;
    Ok(cfg)
}

/// Run until SIGTERM/SIGINT, or until a non-looped `--source` ends. The configured outputs
/// (display, LEDs, records) are built from the config, and again on a SIGHUP that changes them.
pub fn run(opts: &RunOptions) -> Result<()> {
    // A file source that is not there is a mistake on the command line, not a camera that may
    // come back: fail at once instead of retrying forever.
    if let Some(source) = &opts.source {
        if !source.exists() {
            bail!("{}: no such file or folder", source.display());
        }
    }
    let cfg = effective_config(opts)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload_flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload_flag.clone())
        .context("installing signal handlers")?;

    let started = Instant::now();
    let latest = Arc::new(Latest::new());
    let busy_since = Arc::new(AtomicU64::new(0));
    let (reload_tx, reload_rx) = mpsc::channel();
    let (analysis_tx, analysis_rx) = mpsc::channel();
    let snapshots = cfg
        .privacy
        .snapshots
        .then(|| PathBuf::from(&cfg.privacy.snapshot_dir));
    // The API listens before the models load, so a socket that cannot be made is a start-up
    // error in one line; requests wait in the channel until the analysis thread takes them.
    let status_snapshot = Arc::new(std::sync::Mutex::new(serde_json::json!({
        "state": "starting",
        "device_id": cfg.device_id,
    })));
    let (session_tx, session_rx) = mpsc::channel();
    let api = match cfg.api.enabled {
        true => Some(
            crate::api::Server::start(&cfg.api, session_tx, status_snapshot.clone())
                .context("api")?,
        ),
        false => None,
    };
    let page = match cfg.http.enabled() {
        true => {
            let sources = crate::api::http::PageSources {
                status: status_snapshot.clone(),
                records: cfg.records.enabled.then(|| PathBuf::from(&cfg.records.dir)),
            };
            let server = crate::api::http::HttpServer::start(&cfg.http, sources)?;
            log::info!("http: operator page on http://{}/", server.address());
            Some(server)
        }
        false => None,
    };
    let (camera_opener, camera_check) = opener(&cfg, opts);
    let analysis = spawn_analysis(
        engine_config(&cfg)?,
        latest.clone(),
        stop.clone(),
        busy_since.clone(),
        reload_rx,
        analysis_tx,
        threads::Extras {
            snapshots,
            sessions: session_rx,
            store_embeddings: cfg.privacy.store_embeddings,
            camera_check,
            liveness: cfg.liveness.clone(),
        },
    );
    // Models first: a broken model set is a start-up error, not a camera loop.
    let loaded = match analysis_rx.recv() {
        Ok(AnalysisMsg::Loaded(loaded)) => loaded,
        Ok(AnalysisMsg::Failed(e)) => {
            let _ = analysis.join();
            bail!("{e}");
        }
        _ => bail!("analysis thread ended during model load"),
    };
    let sup_cfg = SupervisorConfig {
        timeout: Duration::from_secs_f64(cfg.camera.timeout_s),
        backoff_max: Duration::from_secs_f64(cfg.camera.reopen_max_s),
        ..SupervisorConfig::default()
    };
    let sup = Supervisor::new(camera_opener, sup_cfg);
    let source_name = sup.name();
    let (cap_tx, cap_rx) = mpsc::channel();
    let capture = spawn_capture(sup, latest.clone(), stop.clone(), cap_tx);

    let telemetry =
        telemetry_for(&cfg, &loaded.classes, &loaded.models, &status_snapshot).context("mqtt")?;
    let mut control = ControlLoop::start(
        opts,
        cfg,
        telemetry,
        loaded,
        source_name,
        started,
        latest,
        busy_since,
        reload_tx,
        status_snapshot,
    );
    if let Some(api) = &api {
        log::info!("api: listening on {}", api.path().display());
    }
    let failure = drive(&mut control, &stop, &reload_flag, &cap_rx, &analysis_rx);

    // Clean stop: threads see the flag within one read timeout or one frame.
    control.stopping();
    stop.store(true, Ordering::Relaxed);
    control.shut_outputs();
    let _ = capture.join();
    let _ = analysis.join();
    drop(api);
    drop(page);
    control.finish(failure.is_some());
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The control thread's loop: signals, camera events, analysed frames, stalls, the status file;
/// until a stop, the end of a file source, or a failure (returned).
fn drive(
    control: &mut ControlLoop,
    stop: &AtomicBool,
    reload_flag: &AtomicBool,
    cap_rx: &Receiver<CaptureMsg>,
    analysis_rx: &Receiver<AnalysisMsg>,
) -> Option<anyhow::Error> {
    loop {
        if stop.load(Ordering::Relaxed) {
            log::info!("stop requested");
            return None;
        }
        if reload_flag.swap(false, Ordering::Relaxed) {
            control.reload();
        }
        while let Ok(CaptureMsg::Event(ev, state)) = cap_rx.try_recv() {
            control.camera_event(ev, state);
        }
        match analysis_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(AnalysisMsg::Frame(a)) => control.frame(&a),
            Ok(AnalysisMsg::Session(event)) => control.session(&event),
            Ok(AnalysisMsg::Failed(e)) => return Some(anyhow::anyhow!(e)),
            Ok(AnalysisMsg::Loaded(_)) | Err(RecvTimeoutError::Timeout) => {}
            // The analysis thread also ends on SIGTERM: only unasked is it a failure.
            Err(RecvTimeoutError::Disconnected) if stop.load(Ordering::Relaxed) => return None,
            Err(RecvTimeoutError::Disconnected) => {
                return Some(anyhow::anyhow!("analysis thread stopped unexpectedly"))
            }
        }
        control.check_stall();
        if control.source_finished() {
            // Drain the result of the last frame, if any, then stop.
            if let Ok(AnalysisMsg::Frame(_)) = analysis_rx.recv_timeout(Duration::from_millis(200))
            {
                continue;
            }
            log::info!("source ended");
            return None;
        }
        control.status_tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::output::DaemonEvent;

    /// Fails while `broken` is set.
    struct Flaky {
        broken: Arc<AtomicBool>,
    }

    impl Output for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }
        fn frame(&mut self, _: &sinks::output::LiveView) -> Result<()> {
            unreachable!("the test sends events")
        }
        fn event(&mut self, _: &DaemonEvent) -> Result<()> {
            if self.broken.load(Ordering::Relaxed) {
                bail!("disk full")
            }
            Ok(())
        }
        fn shutdown(&mut self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_is_reported_once_per_outage() {
        let broken = Arc::new(AtomicBool::new(true));
        let mut out = ReportedOnce::new(Box::new(Flaky {
            broken: broken.clone(),
        }));
        let mut errors = || {
            (0..5)
                .filter(|_| out.event(&DaemonEvent::Stopping).is_err())
                .count()
        };
        assert_eq!(errors(), 1, "five failures, one report");
        broken.store(false, Ordering::Relaxed);
        assert_eq!(errors(), 0);
        // A new outage is reported again.
        broken.store(true, Ordering::Relaxed);
        assert_eq!(errors(), 1);
    }
}
