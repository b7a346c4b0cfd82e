//! The daemon's two worker threads and what passes between them: capture puts the newest frame
//! in a one-frame slot, analysis takes it, runs the pipeline and sends the result on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{mono_ms, wall_ms};
use crate::api::{Progress, SessionEvent, SessionRequest};
use crate::frame::Frame;
use crate::liveness::camera::SharedCameraCheck;
use crate::liveness::challenge::ChallengeState;
use crate::liveness::LivenessConfig;
use crate::pipeline::{
    Engine, EngineConfig, FrameResult, StageTimings, VerifyResult, VerifySession,
};
use crate::sinks::output::SessionEnd;
use crate::sinks::DaemonEvent;
use crate::source::camera::{CameraEvent, CameraState, Step, Supervisor};
use crate::source::TimedFrame;
use crate::verdict::Label;

/// The newest captured frame, waiting for analysis. Replacing an unread frame counts a drop.
pub(super) struct Latest {
    pub(super) slot: Mutex<Option<TimedFrame>>,
    pub(super) ready: Condvar,
    pub(super) dropped: AtomicU64,
}

impl Latest {
    pub(super) fn new() -> Latest {
        Latest {
            slot: Mutex::new(None),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
        }
    }

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

    pub(super) fn is_empty(&self) -> bool {
        self.slot.lock().expect("frame slot poisoned").is_none()
    }
}

/// One analysed frame and what it cost.
pub(super) struct Analysed {
    pub(super) result: FrameResult,
    pub(super) timings: StageTimings,
    pub(super) total: Duration,
}

/// What the models are, once loaded: the control loop reports it in the status file and records.
pub(super) struct Loaded {
    pub(super) backend: String,
    pub(super) providers: Vec<(String, String)>,
    /// Manifest key and sha256 of every model.
    pub(super) models: Vec<(String, String)>,
    pub(super) classes: Vec<String>,
}

pub(super) enum AnalysisMsg {
    Loaded(Loaded),
    Frame(Box<Analysed>),
    Failed(String),
    /// A verification session started, moved on or ended: for the outputs.
    Session(DaemonEvent),
}

/// What the analysis thread does besides the stream: face snapshots, and the API's
/// verification sessions on the live frames.
pub(super) struct Extras {
    pub(super) snapshots: Option<PathBuf>,
    pub(super) sessions: Receiver<SessionRequest>,
    pub(super) store_embeddings: bool,
    /// The camera-injection check of the open camera, for each session's liveness.
    pub(super) camera_check: SharedCameraCheck,
    /// The liveness checks a session runs (the active challenge's settings).
    pub(super) liveness: LivenessConfig,
}

/// What a SIGHUP hands the analysis thread: the models and thresholds, and the settings the
/// next verification session starts with.
pub(super) struct Reload {
    pub(super) engine: EngineConfig,
    pub(super) liveness: LivenessConfig,
    pub(super) store_embeddings: bool,
}

/// The session in progress and who asked for it.
struct Active {
    session: VerifySession,
    events: Sender<SessionEvent>,
    started: Instant,
    deadline: Instant,
    reported_frames: usize,
    /// The challenge prompt last announced.
    reported_prompt: Option<usize>,
}

/// Announce the challenge's current prompt once (to the client and the screen).
fn report_prompt(active: &mut Active, out: &Sender<AnalysisMsg>) {
    let Some(ChallengeState::Prompting { index, prompt }) = active.session.challenge_state() else {
        return;
    };
    if active.reported_prompt == Some(index) {
        return;
    }
    active.reported_prompt = Some(index);
    let count = active.session.challenge_len();
    let _ = active.events.send(SessionEvent::Event(Progress::Prompt {
        index,
        count,
        prompt,
        instruction: prompt.instruction(),
    }));
    let _ = out.send(AnalysisMsg::Session(DaemonEvent::SessionPrompt(
        prompt.instruction().to_string(),
    )));
}

/// A session request: enrol the reference, or say why not. One session at a time.
fn start_session(
    engine: &Engine,
    req: SessionRequest,
    active: &Option<Active>,
    extras: &Extras,
    out: &Sender<AnalysisMsg>,
) -> Option<Active> {
    let fail = |error: String| {
        let _ = req.events.send(SessionEvent::Error { error });
        None
    };
    if active.is_some() {
        return fail("busy: another verification session is running".into());
    }
    let session = engine
        .enroll(&req.reference)
        .map_err(|e| format!("reference: {e:#}"))
        .and_then(|reference| {
            let threshold = engine.match_threshold().map_err(|e| format!("{e:#}"))?;
            engine
                .verify_session(reference, threshold, req.min_frames)
                .map_err(|e| format!("{e:#}"))
        });
    match session {
        Err(e) => fail(e),
        Ok(session) => {
            if req
                .events
                .send(SessionEvent::Event(Progress::Enrolled))
                .is_err()
            {
                return None;
            }
            let _ = out.send(AnalysisMsg::Session(DaemonEvent::SessionStarted));
            // A fresh draw every session: a replay cannot know the prompts in advance.
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let session = match extras.liveness.challenge(seed) {
                Some(challenge) => session.with_challenge(challenge),
                None => session,
            };
            let now = Instant::now();
            // Each challenge prompt gets its own time on top of the session's.
            let prompts_time = Duration::from_secs_f64(
                session.challenge_len() as f64 * extras.liveness.prompt_timeout_s,
            );
            let mut active = Active {
                session,
                events: req.events,
                started: now,
                deadline: now + req.timeout + prompts_time,
                reported_frames: 0,
                reported_prompt: None,
            };
            report_prompt(&mut active, out);
            Some(active)
        }
    }
}

/// Tell the client and the outputs how a session ended.
fn end_session(
    engine: &Engine,
    active: Active,
    result: VerifyResult,
    store_embeddings: bool,
    out: &Sender<AnalysisMsg>,
) {
    let embedding_model = engine
        .identity
        .as_ref()
        .and_then(|e| result.models.get(&e.key).cloned())
        .unwrap_or_default();
    let end = SessionEnd {
        outcome: result.outcome.clone(),
        duration_s: result.duration_s,
        embedding_model,
        embedding: store_embeddings
            .then(|| result.embedding.as_ref().map(|e| e.values().to_vec()))
            .flatten(),
    };
    // Outputs first: the record is on its way before the client hears the decision.
    let _ = out.send(AnalysisMsg::Session(DaemonEvent::SessionEnded(Box::new(
        end,
    ))));
    let _ = active.events.send(SessionEvent::Result {
        result: Box::new(result),
    });
}

/// One analysed frame for the session: progress to the client, the end when it decides.
fn session_frame(
    engine: &Engine,
    slot: &mut Option<Active>,
    tf: &TimedFrame,
    result: &FrameResult,
    extras: &Extras,
    out: &Sender<AnalysisMsg>,
) {
    let store_embeddings = extras.store_embeddings;
    let Some(active) = slot.as_mut() else { return };
    // The camera as it is now: a timing flag raised mid-session counts.
    let camera = extras
        .camera_check
        .lock()
        .map(|c| c.clone())
        .unwrap_or(None);
    active.session.set_camera(camera);
    match active.session.observe(engine, tf, result) {
        Ok(Some(done)) => {
            let active = slot.take().expect("checked above");
            end_session(engine, active, done, store_embeddings, out);
        }
        Ok(None) => {
            report_prompt(active, out);
            let (frames, needed) = active.session.progress();
            if frames != active.reported_frames {
                active.reported_frames = frames;
                let progress = SessionEvent::Event(Progress::Progress { frames, needed });
                if active.events.send(progress).is_err() {
                    log::info!("api: the client left; session dropped");
                    *slot = None;
                    return;
                }
                let _ = out.send(AnalysisMsg::Session(DaemonEvent::SessionProgress {
                    frames,
                    needed,
                }));
            }
        }
        Err(e) => {
            let active = slot.take().expect("checked above");
            let _ = active.events.send(SessionEvent::Error {
                error: format!("frame {}: {e:#}", tf.index),
            });
        }
    }
}

/// Loads the models and tells the control loop what they are, or why they did not load.
fn load_engine(cfg: EngineConfig, out: &Sender<AnalysisMsg>) -> Option<Engine> {
    match Engine::load(cfg) {
        Ok(engine) => {
            let models = engine
                .manifest
                .models
                .iter()
                .map(|(k, m)| (k.clone(), m.sha256.clone()))
                .collect();
            let _ = out.send(AnalysisMsg::Loaded(Loaded {
                backend: engine.backend.clone(),
                providers: engine.providers.clone(),
                models,
                classes: engine.emotion_classes(),
            }));
            Some(engine)
        }
        Err(e) => {
            let _ = out.send(AnalysisMsg::Failed(format!("{e:#}")));
            None
        }
    }
}

/// Analysis thread: loads the models, then analyses the newest frame until told to stop.
pub(super) fn spawn_analysis(
    engine_cfg: EngineConfig,
    latest: Arc<Latest>,
    stop: Arc<AtomicBool>,
    busy_since_ms: Arc<AtomicU64>,
    reload: Receiver<Reload>,
    out: Sender<AnalysisMsg>,
    extras: Extras,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("analysis".into())
        .spawn(move || {
            let Some(mut engine) = load_engine(engine_cfg, &out) else {
                return;
            };
            let mut labels: std::collections::HashMap<u32, Label> = Default::default();
            let mut active: Option<Active> = None;
            let mut extras = extras;
            'engine: loop {
                let mut stream = engine.stream();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(r) = reload.try_recv() {
                        // Sessions from now on use the new settings; one in progress keeps its own.
                        extras.liveness = r.liveness;
                        extras.store_embeddings = r.store_embeddings;
                        match Engine::load(r.engine) {
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
                    while let Ok(req) = extras.sessions.try_recv() {
                        if let Some(started) = start_session(&engine, req, &active, &extras, &out) {
                            active = Some(started);
                        }
                    }
                    if active
                        .as_ref()
                        .is_some_and(|a| Instant::now() >= a.deadline)
                    {
                        let mut a = active.take().expect("checked above");
                        // A refused camera gives no frames: say why in the liveness object.
                        let camera = extras
                            .camera_check
                            .lock()
                            .map(|c| c.clone())
                            .unwrap_or(None);
                        a.session.set_camera(camera);
                        let done = a.session.timed_out(a.started.elapsed().as_secs_f64());
                        end_session(&engine, a, done, extras.store_embeddings, &out);
                    }
                    let Some(tf) = latest.take(Duration::from_millis(100)) else {
                        continue;
                    };
                    let start = Instant::now();
                    busy_since_ms.store(mono_ms(), Ordering::Relaxed);
                    let before = stream.timings.clone();
                    let result = stream.process(&tf);
                    busy_since_ms.store(0, Ordering::Relaxed);
                    match result {
                        Ok(result) => {
                            if let Some(dir) = &extras.snapshots {
                                save_snapshots(dir, &tf.frame, &result, &mut labels);
                            }
                            session_frame(&engine, &mut active, &tf, &result, &extras, &out);
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
    for id in &result.ended_tracks {
        labels.remove(id);
    }
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

pub(super) enum CaptureMsg {
    Event(CameraEvent, CameraState),
}

pub(super) fn spawn_capture(
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
