//! `veriface run`: the camera daemon. Three threads:
//!
//! - capture: keeps the camera open (supervisor: timeouts, unplug, reopen with back-off) and
//!   puts each frame in a one-frame slot, replacing a frame not yet analysed (always the newest
//!   frame, never a queue of stale ones);
//! - analysis: takes the newest frame and runs the pipeline;
//! - control (the caller's thread): verdict lines, outputs, status file, systemd notify and
//!   watchdog, stall detection, signals (SIGTERM/SIGINT stop, SIGHUP reloads the config).

pub mod config;
pub mod notify;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::frame::Frame;
use crate::pipeline::{Engine, EngineConfig, FrameResult, StageTimings};
use crate::sinks::report;
use crate::source::camera::{
    CameraEvent, CameraOpener, CameraState, FileOpener, Step, Supervisor, SupervisorConfig, Wanted,
};
use crate::source::v4l2::V4l2Opener;
use crate::source::TimedFrame;
use crate::verdict::Label;

use config::Config;
use notify::Notifier;
use status::{LastVerdict, StageMs, Status};

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
    pub quiet: bool,
}

/// Something the daemon's outputs (display, LEDs, records) are told. Implementations live in
/// `sinks`; each must be cheap and never block the control loop for long.
pub trait Output {
    fn name(&self) -> String;
    /// A frame was analysed.
    fn frame(&mut self, view: &LiveView) -> Result<()>;
    /// The camera changed state, or the daemon started or is stopping.
    fn event(&mut self, event: &DaemonEvent) -> Result<()>;
    /// Switch off (LEDs dark, display cleared, records flushed). Called on every exit path.
    fn shutdown(&mut self) -> Result<()>;
}

#[derive(Clone, Debug, PartialEq)]
pub enum DaemonEvent {
    Started {
        device_id: String,
        models: Vec<(String, String)>,
    },
    CameraLost(String),
    CameraBack(String),
    Stopping,
}

/// What outputs see after each analysed frame.
pub struct LiveView<'a> {
    pub result: &'a FrameResult,
    pub emotion_classes: &'a [String],
    pub camera: &'a CameraState,
    pub fps: f64,
    pub wall_ms: u64,
    pub mono_ms: u64,
}

/// The newest captured frame, waiting for analysis. Replacing an unread frame counts a drop.
struct Latest {
    slot: Mutex<Option<TimedFrame>>,
    ready: Condvar,
    dropped: AtomicU64,
}

impl Latest {
    fn put(&self, frame: TimedFrame) {
        let mut slot = self.slot.lock().expect("frame slot poisoned");
        if slot.replace(frame).is_some() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_one();
    }

    fn take(&self, timeout: Duration) -> Option<TimedFrame> {
        let slot = self.slot.lock().expect("frame slot poisoned");
        let (mut slot, _) = self
            .ready
            .wait_timeout_while(slot, timeout, |s| s.is_none())
            .expect("frame slot poisoned");
        slot.take()
    }

    fn is_empty(&self) -> bool {
        self.slot.lock().expect("frame slot poisoned").is_none()
    }
}

fn engine_config(cfg: &Config) -> Result<EngineConfig> {
    Ok(EngineConfig {
        manifest: cfg.models_path(),
        detector: cfg.engine.detector,
        deepfake: cfg.engine.deepfake_model.clone(),
        verdict: cfg.verdict.clone(),
        backend: cfg.backend_choice(),
        threads: cfg.engine.threads as usize,
        schedule: cfg.schedule(),
        ..EngineConfig::default()
    })
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Analysed {
    result: FrameResult,
    timings: StageTimings,
    total: Duration,
}

enum AnalysisMsg {
    Loaded {
        backend: String,
        providers: Vec<(String, String)>,
        models: Vec<(String, String)>,
        classes: Vec<String>,
    },
    Frame(Box<Analysed>),
    Failed(String),
}

/// Analysis thread: loads the models, then analyses the newest frame until told to stop.
fn spawn_analysis(
    engine_cfg: EngineConfig,
    latest: Arc<Latest>,
    stop: Arc<AtomicBool>,
    busy_since_ms: Arc<AtomicU64>,
    reload: Receiver<EngineConfig>,
    out: Sender<AnalysisMsg>,
    snapshots: Option<PathBuf>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("analysis".into())
        .spawn(move || {
            let load = |cfg: EngineConfig, out: &Sender<AnalysisMsg>| -> Option<Engine> {
                match Engine::load(cfg) {
                    Ok(engine) => {
                        let models = engine
                            .manifest
                            .models
                            .iter()
                            .map(|(k, m)| (k.clone(), m.sha256.clone()))
                            .collect();
                        let classes = engine.emotion_classes();
                        let _ = out.send(AnalysisMsg::Loaded {
                            backend: engine.backend.clone(),
                            providers: engine.providers.clone(),
                            models,
                            classes,
                        });
                        Some(engine)
                    }
                    Err(e) => {
                        let _ = out.send(AnalysisMsg::Failed(format!("{e:#}")));
                        None
                    }
                }
            };
            let Some(mut engine) = load(engine_cfg, &out) else {
                return;
            };
            let mut labels: std::collections::HashMap<u32, Label> = Default::default();
            'engine: loop {
                let mut stream = engine.stream();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(cfg) = reload.try_recv() {
                        match Engine::load(cfg) {
                            Ok(e) => {
                                engine = e;
                                log::info!("models and thresholds reloaded");
                                continue 'engine;
                            }
                            Err(e) => {
                                log::error!("reload failed, keeping the running models: {e:#}")
                            }
                        }
                    }
                    let Some(tf) = latest.take(Duration::from_millis(100)) else {
                        continue;
                    };
                    let start = Instant::now();
                    busy_since_ms.store(wall_ms(), Ordering::Relaxed);
                    let before = stream.timings.clone();
                    let result = stream.process(&tf);
                    busy_since_ms.store(0, Ordering::Relaxed);
                    match result {
                        Ok(result) => {
                            if let Some(dir) = &snapshots {
                                save_snapshots(dir, &tf.frame, &result, &mut labels);
                            }
                            let timings = stream.timings.since(&before);
                            let msg = Analysed {
                                result,
                                timings,
                                total: start.elapsed(),
                            };
                            if out.send(AnalysisMsg::Frame(Box::new(msg))).is_err() {
                                return;
                            }
                        }
                        Err(e) => log::error!("frame {}: analysis failed: {e:#}", tf.index),
                    }
                }
                return;
            }
        })
        .expect("spawn analysis thread")
}

/// Face snapshots at verdict changes: only when the config turns them on (privacy default off).
fn save_snapshots(
    dir: &Path,
    frame: &Frame,
    result: &FrameResult,
    labels: &mut std::collections::HashMap<u32, Label>,
) {
    for face in &result.faces {
        if labels.insert(face.track, face.verdict.label) == Some(face.verdict.label) {
            continue;
        }
        let b = &face.bbox;
        let x0 = b.xmin.max(0.0) as usize;
        let y0 = b.ymin.max(0.0) as usize;
        let x1 = (b.xmax.max(0.0) as usize).min(frame.width);
        let y1 = (b.ymax.max(0.0) as usize).min(frame.height);
        if x1 <= x0 || y1 <= y0 {
            continue;
        }
        let mut rgb = Vec::with_capacity((x1 - x0) * (y1 - y0) * 3);
        for y in y0..y1 {
            rgb.extend_from_slice(
                &frame.rgb[(y * frame.width + x0) * 3..(y * frame.width + x1) * 3],
            );
        }
        let path = dir.join(format!(
            "{}_track{}_{}.png",
            wall_ms(),
            face.track,
            face.verdict.label
        ));
        let saved = std::fs::create_dir_all(dir).and_then(|_| {
            image::save_buffer(
                &path,
                &rgb,
                (x1 - x0) as u32,
                (y1 - y0) as u32,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(std::io::Error::other)
        });
        if let Err(e) = saved {
            log::warn!("{}: snapshot not saved: {e}", path.display());
        }
    }
}

enum CaptureMsg {
    Event(CameraEvent, CameraState),
}

fn spawn_capture(
    mut sup: Supervisor,
    latest: Arc<Latest>,
    stop: Arc<AtomicBool>,
    events: Sender<CaptureMsg>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || {
            let started = Instant::now();
            let mut index = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match sup.step(Instant::now()) {
                    Step::Frame(frame) => {
                        latest.put(TimedFrame {
                            index,
                            seconds: started.elapsed().as_secs_f64(),
                            frame,
                        });
                        index += 1;
                    }
                    Step::Event(ev) => {
                        let ended = ev == CameraEvent::Ended;
                        let _ = events.send(CaptureMsg::Event(ev, sup.state().clone()));
                        if ended {
                            return;
                        }
                    }
                    Step::Idle(d) => std::thread::sleep(d.min(Duration::from_millis(50))),
                }
            }
        })
        .expect("spawn capture thread")
}

fn opener(cfg: &Config, opts: &RunOptions) -> Box<dyn CameraOpener> {
    match &opts.source {
        Some(path) => Box::new(FileOpener::new(path.clone(), opts.looped, cfg.camera.fps)),
        None => Box::new(V4l2Opener {
            device: cfg.camera.device.clone(),
            wanted: Wanted {
                format: cfg.camera.format,
                width: cfg.camera.width,
                height: cfg.camera.height,
                fps: cfg.camera.fps,
            },
        }),
    }
}

pub(crate) fn camera_name(state: &CameraState) -> &'static str {
    match state {
        CameraState::Opening => "opening",
        CameraState::Streaming(_) => "streaming",
        CameraState::Lost(_) => "lost",
        CameraState::Ended => "ended",
    }
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
        match d.split_once(':') {
            Some((kind, path)) => {
                cfg.display.kind = kind.into();
                cfg.display.path = path.into();
            }
            None => cfg.display.kind = d.clone(),
        }
    }
    if let Some(l) = &opts.leds {
        cfg.leds.kind = l.clone();
    }
    cfg.validate()
        .with_context(|| format!("{} (with command-line overrides)", opts.config.display()))?;
    Ok(cfg)
}

/// Run until SIGTERM/SIGINT, or until a non-looped `--source` ends. `make_outputs` builds the
/// configured outputs (display, LEDs, records) from the config; it is called again on SIGHUP.
pub fn run(
    opts: &RunOptions,
    make_outputs: &dyn Fn(&Config) -> Vec<Box<dyn Output>>,
) -> Result<()> {
    // A file source that is not there is a mistake on the command line, not a camera that may
    // come back: fail at once instead of retrying forever.
    if let Some(source) = &opts.source {
        if !source.exists() {
            bail!("{}: no such file or folder", source.display());
        }
    }
    let mut cfg = effective_config(opts)?;
    let engine_cfg = engine_config(&cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let reload_flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload_flag.clone())
        .context("installing signal handlers")?;

    let notifier = Notifier::from_env();
    let started = Instant::now();
    let latest = Arc::new(Latest {
        slot: Mutex::new(None),
        ready: Condvar::new(),
        dropped: AtomicU64::new(0),
    });
    let busy_since = Arc::new(AtomicU64::new(0));
    let (reload_tx, reload_rx) = mpsc::channel();
    let (analysis_tx, analysis_rx) = mpsc::channel();
    let snapshots = cfg
        .privacy
        .snapshots
        .then(|| PathBuf::from(&cfg.privacy.snapshot_dir));
    let analysis = spawn_analysis(
        engine_cfg.clone(),
        latest.clone(),
        stop.clone(),
        busy_since.clone(),
        reload_rx,
        analysis_tx,
        snapshots,
    );
    // Models first: a broken model set is a start-up error, not a camera loop.
    let (backend, providers, models, classes) = match analysis_rx.recv() {
        Ok(AnalysisMsg::Loaded {
            backend,
            providers,
            models,
            classes,
        }) => (backend, providers, models, classes),
        Ok(AnalysisMsg::Failed(e)) => {
            let _ = analysis.join();
            bail!("{e}");
        }
        _ => bail!("analysis thread ended during model load"),
    };
    let mut outputs = make_outputs(&cfg);
    let sup_cfg = SupervisorConfig {
        timeout: Duration::from_secs_f64(cfg.camera.timeout_s),
        backoff_max: Duration::from_secs_f64(cfg.camera.reopen_max_s),
        ..SupervisorConfig::default()
    };
    let sup = Supervisor::new(opener(&cfg, opts), sup_cfg);
    let source_name = sup.name();
    let (cap_tx, cap_rx) = mpsc::channel();
    let capture = spawn_capture(sup, latest.clone(), stop.clone(), cap_tx);

    let started_event = DaemonEvent::Started {
        device_id: cfg.device_id.clone(),
        models: models.clone(),
    };
    tell(&mut outputs, |o| o.event(&started_event));
    let mut status = Status {
        version: env!("CARGO_PKG_VERSION").into(),
        device_id: cfg.device_id.clone(),
        pid: std::process::id(),
        state: "starting".into(),
        camera: "opening".into(),
        camera_detail: source_name.clone(),
        backend,
        providers: providers.into_iter().collect(),
        records: if cfg.records.enabled {
            cfg.records.dir.clone()
        } else {
            "off".into()
        },
        ..Status::default()
    };
    let mut camera = CameraState::Opening;
    let mut ready_sent = false;
    let mut source_ended = false;
    let mut last_status = Instant::now() - Duration::from_secs(3600);
    let mut last_watchdog = Instant::now();
    let mut fps_window: std::collections::VecDeque<Instant> = Default::default();
    let mut last_print: std::collections::HashMap<u32, (Label, Instant)> = Default::default();
    let mut last_verdict_at = Instant::now();
    let mut stall_reported = false;
    let mut failure: Option<anyhow::Error> = None;

    loop {
        if stop.load(Ordering::Relaxed) {
            log::info!("stop requested");
            break;
        }
        if reload_flag.swap(false, Ordering::Relaxed) {
            match effective_config(opts) {
                Ok(new) => {
                    if new.camera != cfg.camera {
                        log::warn!("SIGHUP: [camera] changes take effect at the next start; the camera stays open");
                    }
                    match engine_config(&new) {
                        Ok(ec) => {
                            let _ = reload_tx.send(ec);
                        }
                        Err(e) => log::error!("SIGHUP: {e:#}"),
                    }
                    if new.display != cfg.display
                        || new.leds != cfg.leds
                        || new.records != cfg.records
                    {
                        tell(&mut outputs, |o| o.shutdown());
                        outputs = make_outputs(&new);
                    }
                    cfg = new;
                    log::info!("SIGHUP: {} re-read", opts.config.display());
                }
                Err(e) => log::error!("SIGHUP: config rejected, keeping the running one: {e:#}"),
            }
        }
        while let Ok(CaptureMsg::Event(ev, state)) = cap_rx.try_recv() {
            let event = match &ev {
                CameraEvent::Opened(what) => {
                    log::info!("camera: {what}");
                    (camera_name(&camera) == "lost").then(|| DaemonEvent::CameraBack(what.clone()))
                }
                CameraEvent::OpenFailed(e) => {
                    log::error!("{e}");
                    None
                }
                CameraEvent::Lost(why) => {
                    log::error!("camera lost: {why}; reopening");
                    status.camera_outages += 1;
                    Some(DaemonEvent::CameraLost(why.clone()))
                }
                CameraEvent::Ended => {
                    source_ended = true;
                    None
                }
            };
            camera = state;
            status.camera = camera_name(&camera).into();
            status.camera_detail = match &camera {
                CameraState::Streaming(d) | CameraState::Lost(d) => d.clone(),
                _ => source_name.clone(),
            };
            if let Some(event) = event {
                tell(&mut outputs, |o| o.event(&event));
            }
        }
        match analysis_rx.recv_timeout(Duration::from_millis(50)) {
            Ok(AnalysisMsg::Frame(a)) => {
                let now = Instant::now();
                fps_window.push_back(now);
                while fps_window
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(5))
                {
                    fps_window.pop_front();
                }
                let span = fps_window
                    .front()
                    .map(|t| now.duration_since(*t).as_secs_f64())
                    .unwrap_or(0.0);
                status.fps = if span > 0.0 {
                    (fps_window.len() - 1) as f64 / span
                } else {
                    0.0
                };
                status.frames += 1;
                status.faces = a.result.faces.len();
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                status.stage_ms = StageMs {
                    detect: ms(a.timings.detect),
                    deepfake: ms(a.timings.deepfake),
                    temporal: ms(a.timings.temporal),
                    emotion: ms(a.timings.emotion),
                    total: ms(a.total),
                };
                if let Some(face) = a.result.faces.first() {
                    last_verdict_at = now;
                    status.last_verdict = Some(LastVerdict {
                        track: face.track,
                        label: face.verdict.label.to_string(),
                        probability: face.verdict.smoothed,
                        emotion: face
                            .analysis
                            .emotion
                            .as_ref()
                            .and_then(|e| classes.get(e.index).cloned()),
                        emotion_confidence: face.analysis.emotion.as_ref().map(|e| e.confidence),
                        age_s: 0.0,
                    });
                }
                // A line when a verdict changes, else at most one per track per second.
                let changed = a.result.faces.iter().any(|f| {
                    last_print.get(&f.track).is_none_or(|(label, at)| {
                        *label != f.verdict.label
                            || now.duration_since(*at) >= Duration::from_secs(1)
                    })
                });
                if changed && !opts.quiet {
                    for line in report::frame_lines(&a.result) {
                        println!("{line}");
                    }
                    for f in &a.result.faces {
                        last_print.insert(f.track, (f.verdict.label, now));
                    }
                }
                let view = LiveView {
                    result: &a.result,
                    emotion_classes: &classes,
                    camera: &camera,
                    fps: status.fps,
                    wall_ms: wall_ms(),
                    mono_ms: started.elapsed().as_millis() as u64,
                };
                tell(&mut outputs, |o| o.frame(&view));
                if !ready_sent {
                    notifier.send("READY=1");
                    ready_sent = true;
                    status.state = "running".into();
                    log::info!("ready: first frame analysed");
                }
                last_watchdog_feed(&notifier, &mut last_watchdog, true);
            }
            Ok(AnalysisMsg::Failed(e)) => {
                failure = Some(anyhow::anyhow!(e));
                break;
            }
            Ok(AnalysisMsg::Loaded { .. }) => {}
            Err(RecvTimeoutError::Timeout) => {}
            // The analysis thread also ends on SIGTERM: only unasked is it a failure.
            Err(RecvTimeoutError::Disconnected) => {
                if !stop.load(Ordering::Relaxed) {
                    failure = Some(anyhow::anyhow!("analysis thread stopped unexpectedly"));
                }
                break;
            }
        }
        // Stuck inference: the watchdog stops being fed, so systemd restarts a hung daemon.
        let busy = busy_since.load(Ordering::Relaxed);
        let stalled = busy != 0
            && wall_ms().saturating_sub(busy) as f64 > cfg.watchdog.inference_stall_s * 1000.0;
        if stalled && !stall_reported {
            log::error!(
                "inference stuck for more than {:.0} s",
                cfg.watchdog.inference_stall_s
            );
        }
        stall_reported = stalled;
        status.inference_stalled = stalled;
        // While frames flow or the camera is being re-opened, the daemon is alive.
        if !stalled && camera_name(&camera) != "streaming" {
            last_watchdog_feed(&notifier, &mut last_watchdog, false);
        }
        if source_ended && latest.is_empty() && busy_since.load(Ordering::Relaxed) == 0 {
            // Drain the result of the last frame, if any, then stop.
            if let Ok(AnalysisMsg::Frame(_)) = analysis_rx.recv_timeout(Duration::from_millis(200))
            {
                continue;
            }
            log::info!("source ended");
            break;
        }
        if last_status.elapsed().as_secs_f64() >= cfg.status.interval_s {
            last_status = Instant::now();
            write_status(&cfg, &mut status, started, last_verdict_at, &latest);
        }
    }

    // Clean stop: threads see the flag within one read timeout or one frame.
    notifier.send("STOPPING=1");
    stop.store(true, Ordering::Relaxed);
    tell(&mut outputs, |o| o.event(&DaemonEvent::Stopping));
    tell(&mut outputs, |o| o.shutdown());
    let _ = capture.join();
    let _ = analysis.join();
    status.state = if failure.is_some() {
        "failed"
    } else {
        "stopped"
    }
    .into();
    write_status(&cfg, &mut status, started, last_verdict_at, &latest);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn last_watchdog_feed(notifier: &Notifier, last: &mut Instant, frame_flowing: bool) {
    if let Some(interval) = notifier.watchdog_interval {
        if last.elapsed() >= interval {
            notifier.send("WATCHDOG=1");
            *last = Instant::now();
        }
    } else if frame_flowing {
        *last = Instant::now();
    }
}

fn write_status(
    cfg: &Config,
    status: &mut Status,
    started: Instant,
    last_verdict: Instant,
    latest: &Latest,
) {
    if cfg.status.path.is_empty() {
        return;
    }
    status.uptime_s = started.elapsed().as_secs_f64();
    status.dropped = latest.dropped.load(Ordering::Relaxed);
    if let Some(v) = status.last_verdict.as_mut() {
        v.age_s = last_verdict.elapsed().as_secs_f64();
    }
    if let Err(e) = status.write_atomic(Path::new(&cfg.status.path)) {
        log::warn!("{e:#}");
    }
}

/// An output that fails is reported and the others go on: a broken display must not stop the
/// records, nor the records the LEDs.
fn tell(outputs: &mut [Box<dyn Output>], mut f: impl FnMut(&mut dyn Output) -> Result<()>) {
    for o in outputs.iter_mut() {
        if let Err(e) = f(o.as_mut()) {
            log::warn!("{}: {e:#}", o.name());
        }
    }
}
