//! Wires the stages: frames -> faces (detect, track) -> analysis -> verdict, per stream.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::analysis::{
    Analyzer, EmotionScore, FaceAnalysis, TemporalModel, TemporalState, DEEPFAKE_KEY,
};
use crate::face::{
    square_region, Detection, DetectorRange, EyeModel, FaceDetector, PresenceCheck, Tracker,
    EYES_TASK,
};
use crate::frame::{crop_resize_into, Colour, Frame, Normalise};
use crate::identity::{Embedder, Embedding};
use crate::infer::{open_backend, Backend, BackendChoice, Model};
use crate::liveness::{PassiveCheck, PassiveSettings};
use crate::manifest::Manifest;
use crate::source::TimedFrame;
use crate::verdict::session::{Observation, Outcome as SessionOutcome, Session, SessionConfig};
use crate::verdict::{median, Label, TrackVerdict, Verdict, VerdictConfig, VerdictSettings};
// The result types live with the verdict, below the sinks that print and store them.
pub use crate::verdict::{FaceResult, FrameResult, Summary};

/// The manifest task of the landmark model whose presence output vets each detection.
const LANDMARKS_TASK: &str = "face_landmarks";

/// What to load and how to decide.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub manifest: PathBuf,
    /// The face detector: short range (kiosks), full range (field devices) or both in turn.
    pub detector: DetectorRange,
    /// Manifest key of the frame deepfake model.
    pub deepfake: String,
    /// The verdict's window, threshold and hysteresis band; what is unset centres on the
    /// deepfake model's operating threshold from the manifest (chosen on validation by train.py).
    pub verdict: VerdictSettings,
    /// Tracker: minimum IoU to continue a track, frames a track may go unseen.
    pub track_iou: f64,
    pub track_max_missed: u64,
    pub backend: BackendChoice,
    /// Inference threads: tract's matrix-multiply pool, or ONNX Runtime's intra-op pool per model.
    pub threads: usize,
    pub schedule: Schedule,
    /// Load the face embedding model (and its aligner) for 1:1 verification.
    pub identity: bool,
    /// Passive PAD models (operator-installed files) for verification sessions; none: off.
    pub passive: PassiveSettings,
}

/// Which frames run which models: the realtime pipeline's savings. `Schedule::EVERY_FRAME`
/// (analyze, eval) runs every model on every frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Run the face detector on every Nth frame; in between, tracks move on at their velocity.
    pub detect_every: u32,
    /// Re-run the analysis models (frame model, GRU, emotion) on a tracked face only when its
    /// 16x16 grey thumbnail changed by more than this mean absolute difference, in grey levels
    /// (0-255); otherwise the face keeps its last analysis. 0 analyses every frame.
    pub min_change: f32,
    /// ...but at least once every this many frames of the track, changed or not.
    pub max_reuse: u32,
}

/// The realtime schedule (the daemon's default): a live camera gives many near-identical frames.
/// detect_every 3: at 30 frames/s a face moves little in 100 ms, and tracks carry it between.
/// min_change 2 grey levels: above what sensor noise leaves after the thumbnail's averaging.
/// max_reuse 10: every face is analysed afresh at least 3 times a second at 30 frames/s.
pub const DAEMON_SCHEDULE: Schedule = Schedule {
    detect_every: 3,
    min_change: 2.0,
    max_reuse: 10,
};

impl Schedule {
    pub const EVERY_FRAME: Schedule = Schedule {
        detect_every: 1,
        min_change: 0.0,
        max_reuse: 0,
    };

    /// Whether faces are re-analysed only when they changed (so their thumbnails are kept).
    pub fn gates_on_change(&self) -> bool {
        self.min_change > 0.0
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=30).contains(&self.detect_every) {
            anyhow::bail!("detect_every = {}: 1 to 30", self.detect_every);
        }
        if !(0.0..=64.0).contains(&self.min_change) {
            anyhow::bail!("min_change = {}: 0 to 64 grey levels", self.min_change);
        }
        if self.max_reuse > 300 {
            anyhow::bail!("max_reuse = {}: 0 to 300 frames", self.max_reuse);
        }
        Ok(())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            manifest: crate::manifest::default_manifest_path(),
            detector: DetectorRange::Short,
            deepfake: DEEPFAKE_KEY.into(),
            verdict: VerdictSettings::default(),
            track_iou: 0.3,
            track_max_missed: 10,
            backend: BackendChoice::Tract,
            threads: 1,
            schedule: Schedule::EVERY_FRAME,
            identity: false,
            passive: PassiveSettings::default(),
        }
    }
}

/// Loaded models, shared by every stream.
pub struct Engine {
    pub manifest: Manifest,
    pub detector: FaceDetector,
    pub analyzer: Analyzer,
    /// The embedding model and its aligner, when `config.identity` asked for them.
    pub identity: Option<Embedder>,
    /// The eye model (the challenge's blink cue), with the identity models where the manifest
    /// has one.
    pub eyes: Option<EyeModel>,
    /// The passive liveness check, when PAD models are configured.
    pub passive: Option<PassiveCheck>,
    pub config: EngineConfig,
    /// The verdict settings in force: the configured ones, or the deepfake model's.
    pub verdict: VerdictConfig,
    /// `tract`, or ONNX Runtime with the provider(s) that really run the models.
    pub backend: String,
    /// Manifest key -> what runs it (`tract` or an ONNX Runtime execution provider).
    pub providers: Vec<(String, String)>,
}

/// Loads through a backend and notes what really runs each model; models not on tract get one
/// warm-up run here, so lazy engine builds happen before the daemon says READY.
struct Recording<'a> {
    inner: &'a dyn Backend,
    seen: std::cell::RefCell<Vec<(String, String)>>,
}

impl Backend for Recording<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn load(&self, manifest: &Manifest, key: &str) -> Result<Box<dyn Model>> {
        let model = self.inner.load(manifest, key)?;
        if model.provider() != "tract" {
            let took = crate::infer::warm_up(model.as_ref(), manifest, key)?;
            log::info!(
                "{key}: warm-up {:.0} ms on {}",
                took.as_secs_f64() * 1e3,
                model.provider()
            );
        }
        self.seen
            .borrow_mut()
            .push((key.to_string(), model.provider().to_string()));
        Ok(model)
    }
}

/// One word when every model runs on the same thing, else key=provider pairs.
fn backend_summary(providers: &[(String, String)]) -> String {
    let first = providers
        .first()
        .map(|(_, p)| p.as_str())
        .unwrap_or("tract");
    if providers.iter().all(|(_, p)| p == first) {
        return match first {
            "tract" => "tract".into(),
            p => format!("onnxruntime:{p}"),
        };
    }
    let pairs: Vec<String> = providers.iter().map(|(k, p)| format!("{k}={p}")).collect();
    format!("mixed ({})", pairs.join(", "))
}

impl Engine {
    pub fn load(config: EngineConfig) -> Result<Engine> {
        config.schedule.validate()?;
        let manifest = Manifest::load(&config.manifest)?;
        let verdict = config
            .verdict
            .resolve(manifest.operating_threshold(&config.deepfake)?);
        verdict
            .validate()
            .map_err(|e| anyhow::anyhow!("verdict: {e} (got {verdict:?})"))?;
        let opened = open_backend(&config.backend, config.threads)?;
        let backend = Recording {
            inner: opened.as_ref(),
            seen: Default::default(),
        };
        let mut detector: Option<FaceDetector> = None;
        for &key in config.detector.manifest_keys() {
            let det_spec = manifest
                .detector
                .get(key)
                .with_context(|| {
                    format!(
                        "{}: no detector {key:?} (try face_short or face_full)",
                        config.manifest.display(),
                    )
                })?
                .clone();
            let (model, model_spec) = (backend.load(&manifest, key)?, manifest.model(key)?);
            detector = Some(match detector {
                None => FaceDetector::new(model, det_spec, model_spec)?,
                Some(d) => d.with_fallback(model, det_spec, model_spec)?,
            });
        }
        let mut detector = detector.context("no face detector chosen")?;
        if let Some(key) = manifest.key_for_task(LANDMARKS_TASK) {
            let check = PresenceCheck::new(backend.load(&manifest, &key)?, manifest.model(&key)?)?;
            detector = detector.with_presence_check(check);
        }
        let analyzer = Analyzer::load(&backend, &manifest, &config.deepfake)?;
        let identity = match config.identity {
            true => Some(Embedder::load(&backend, &manifest)?),
            false => None,
        };
        let eyes = match (config.identity, manifest.key_for_task(EYES_TASK)) {
            (true, Some(key)) => Some(EyeModel::new(
                backend.load(&manifest, &key)?,
                manifest.model(&key)?,
            )?),
            _ => None,
        };
        let passive = PassiveCheck::load(&backend, &manifest, &config.passive)?;
        let providers = backend.seen.take();
        Ok(Engine {
            manifest,
            detector,
            analyzer,
            identity,
            eyes,
            passive,
            config,
            verdict,
            backend: backend_summary(&providers),
            providers,
        })
    }

    /// The emotion model's class names (empty without one).
    pub fn emotion_classes(&self) -> Vec<String> {
        self.analyzer
            .emotion
            .as_ref()
            .map(|e| e.classes.clone())
            .unwrap_or_default()
    }

    pub fn stream(&self) -> Stream<'_> {
        self.stream_with(self.verdict.clone())
    }

    pub fn stream_with(&self, verdict: VerdictConfig) -> Stream<'_> {
        Stream {
            engine: self,
            tracker: Tracker::new(self.config.track_iou, self.config.track_max_missed),
            tracks: BTreeMap::new(),
            ended_main: None,
            tracks_seen: 0,
            verdict,
            frames: 0,
            frames_with_faces: 0,
            timings: StageTimings::default(),
            schedule: self.config.schedule,
        }
    }
}

/// Time spent per stage, summed over a stream.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageTimings {
    pub detect: Duration,
    pub deepfake: Duration,
    pub temporal: Duration,
    pub emotion: Duration,
    /// Frames the detector ran on, and face analyses run or reused.
    pub detector_runs: u64,
    pub analyses: u64,
    pub reused: u64,
}

impl StageTimings {
    /// What was spent after `before` (an earlier copy of the same stream's timings).
    pub fn since(&self, before: &StageTimings) -> StageTimings {
        StageTimings {
            detect: self.detect.saturating_sub(before.detect),
            deepfake: self.deepfake.saturating_sub(before.deepfake),
            temporal: self.temporal.saturating_sub(before.temporal),
            emotion: self.emotion.saturating_sub(before.emotion),
            detector_runs: self.detector_runs - before.detector_runs,
            analyses: self.analyses - before.analyses,
            reused: self.reused - before.reused,
        }
    }
}

struct TrackState {
    /// The last analysis, the thumbnail it was made from and frames since.
    last: Option<(FaceAnalysis, Vec<f32>)>,
    reused_for: u32,
    verdict: TrackVerdict,
    temporal_state: Option<TemporalState>,
    temporal: Option<f32>,
    probabilities: ProbabilityHistory,
    /// Analysed frames per emotion class.
    emotions: Vec<u64>,
    frames: usize,
}

/// A track's frame probabilities for its summary, in bounded memory: the exact mean, and for the
/// median every value up to `PROBABILITY_SAMPLE`, then every other one of those, then every fourth
/// (a uniform sample: exact for any file, within a sample of the truth for a face that stays in
/// front of a kiosk camera for days).
#[derive(Default)]
struct ProbabilityHistory {
    sum: f64,
    count: u64,
    sample: Vec<f32>,
    /// Keep one value in `stride`.
    stride: u64,
}

/// 2^16 values (256 KiB): about 2 hours of a face at 10 analysed frames a second, kept exactly.
const PROBABILITY_SAMPLE: usize = 1 << 16;

impl ProbabilityHistory {
    fn push(&mut self, p: f32) {
        self.sum += f64::from(p);
        self.count += 1;
        let stride = self.stride.max(1);
        if (self.count - 1).is_multiple_of(stride) {
            self.sample.push(p);
        }
        if self.sample.len() >= PROBABILITY_SAMPLE {
            // Every other kept value: the stride doubles, the sample stays uniform.
            let mut i = 0;
            self.sample.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.stride = stride * 2;
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn mean(&self) -> Option<f32> {
        (self.count > 0).then(|| (self.sum / self.count as f64) as f32)
    }

    fn median(&self) -> Option<f32> {
        (!self.sample.is_empty()).then(|| median(self.sample.iter().copied()))
    }
}

impl TrackState {
    fn new(verdict: &VerdictConfig, temporal_model: Option<&TemporalModel>) -> Self {
        Self {
            last: None,
            reused_for: 0,
            verdict: TrackVerdict::new(verdict.clone()),
            temporal_state: temporal_model.map(|m| m.start()),
            temporal: None,
            probabilities: ProbabilityHistory::default(),
            emotions: Vec::new(),
            frames: 0,
        }
    }

    /// Whether the last analysis still stands: the face barely changed since it was made, and it
    /// has not been reused too often already. `thumbnail` is `None` when the change gate is off.
    fn can_reuse(&self, thumbnail: Option<&Vec<f32>>, schedule: &Schedule, at: (u64, u32)) -> bool {
        match (&self.last, thumbnail) {
            (Some((_, before)), Some(now)) => {
                let change = mean_abs_difference(before, now);
                log::debug!(
                    "frame {} track {}: thumbnail change {change:.2}",
                    at.0,
                    at.1
                );
                self.reused_for < schedule.max_reuse && change <= schedule.min_change
            }
            _ => false,
        }
    }

    /// Folds one frame's analysis into the track's verdict and history.
    fn record(&mut self, analysis: &FaceAnalysis) -> Verdict {
        let verdict = self.verdict.push(analysis.deepfake);
        self.frames += 1;
        if let Some(p) = analysis.deepfake {
            self.probabilities.push(p);
        }
        if let Some(e) = &analysis.emotion {
            if self.emotions.len() <= e.index {
                self.emotions.resize(e.index + 1, 0);
            }
            self.emotions[e.index] += 1;
        }
        verdict
    }
}

/// Per-stream state: tracker, hidden states, verdicts.
pub struct Stream<'a> {
    engine: &'a Engine,
    tracker: Tracker,
    /// State of the tracks in view; a track's state is dropped when the tracker ends it.
    tracks: BTreeMap<u32, TrackState>,
    /// Of the ended tracks, the one the summary would name as the main face (most frames).
    ended_main: Option<(u32, TrackState)>,
    tracks_seen: usize,
    verdict: VerdictConfig,
    frames: u64,
    frames_with_faces: u64,
    pub timings: StageTimings,
    schedule: Schedule,
}

impl Stream<'_> {
    /// This stream with another schedule (the bench compares them on one engine).
    pub fn with_schedule(mut self, schedule: Schedule) -> Result<Self> {
        schedule.validate()?;
        self.schedule = schedule;
        Ok(self)
    }

    pub fn process(&mut self, tf: &TimedFrame) -> Result<FrameResult> {
        let engine = self.engine;
        let schedule = &self.schedule;
        let tracked = if self.frames.is_multiple_of(schedule.detect_every as u64) {
            let t = Instant::now();
            let detections = engine.detector.detect(&tf.frame)?;
            self.timings.detect += t.elapsed();
            self.timings.detector_runs += 1;
            self.tracker.update(tf.index, &detections)
        } else {
            self.tracker.predict(tf.index)
        };
        self.frames += 1;
        if !tracked.is_empty() {
            self.frames_with_faces += 1;
        }
        let mut faces = Vec::with_capacity(tracked.len());
        for (id, det) in tracked {
            let state = self.tracks.entry(id).or_insert_with(|| {
                self.tracks_seen += 1;
                TrackState::new(&self.verdict, engine.analyzer.temporal.as_ref())
            });
            let thumbnail = schedule
                .gates_on_change()
                .then(|| face_thumbnail(&tf.frame, &det));
            let keep = state.can_reuse(thumbnail.as_ref(), schedule, (tf.index, id));
            let analysis = if keep {
                state.reused_for += 1;
                self.timings.reused += 1;
                state
                    .last
                    .as_ref()
                    .map(|(a, _)| a.clone())
                    .unwrap_or_default()
            } else {
                let analysis = analyse(engine, &mut self.timings, &tf.frame, &det, state)?;
                if let Some(thumbnail) = thumbnail {
                    state.last = Some((analysis.clone(), thumbnail));
                }
                state.reused_for = 0;
                self.timings.analyses += 1;
                analysis
            };
            let verdict = state.record(&analysis);
            faces.push(FaceResult {
                track: id,
                score: det.score,
                bbox: det.bbox,
                analysis,
                analysed: !keep,
                verdict,
            });
        }
        let ended_tracks = self.tracker.take_ended();
        for id in &ended_tracks {
            self.end_track(*id);
        }
        Ok(FrameResult {
            index: tf.index,
            seconds: tf.seconds,
            faces,
            ended_tracks,
        })
    }

    /// Drops an ended track's state, keeping it only if it is the main face so far.
    fn end_track(&mut self, id: u32) {
        let Some(state) = self.tracks.remove(&id) else {
            return;
        };
        let is_main = self
            .ended_main
            .as_ref()
            .is_none_or(|(main_id, main)| main_key(id, &state) > main_key(*main_id, main));
        if is_main {
            self.ended_main = Some((id, state));
        }
    }

    /// How many tracks this stream holds state for: those in view and at most one that ended.
    pub fn tracks_held(&self) -> usize {
        self.tracks.len() + usize::from(self.ended_main.is_some())
    }

    pub fn summary(&self) -> Summary {
        let classes: &[String] = self
            .engine
            .analyzer
            .emotion
            .as_ref()
            .map(|e| e.classes.as_slice())
            .unwrap_or(&[]);
        let ended = self.ended_main.as_ref().map(|(id, s)| (id, s));
        let main = self
            .tracks
            .iter()
            .chain(ended)
            .max_by_key(|(id, s)| main_key(**id, s));
        let Some((&main_id, state)) = main else {
            return Summary {
                label: Label::NoFace,
                score: None,
                score_source: "none",
                frame_mean: None,
                confidence: 0.0,
                consistency: 0.0,
                frames: self.frames,
                frames_with_faces: 0,
                tracks: 0,
                main_track: None,
                emotions: Vec::new(),
            };
        };
        let total: u64 = state.emotions.iter().sum();
        let mut emotions: Vec<(String, f32)> = classes
            .iter()
            .zip(&state.emotions)
            .filter(|(_, c)| **c > 0)
            .map(|(n, c)| (n.clone(), *c as f32 / total.max(1) as f32))
            .collect();
        emotions.sort_by(|a, b| b.1.total_cmp(&a.1));
        let cfg = &self.verdict;
        let frame_mean = state.probabilities.mean();
        let (score, source) = match (state.temporal, state.probabilities.is_empty()) {
            (Some(t), _) => (Some(t), "temporal model"),
            (None, false) => (state.probabilities.median(), "median of frames"),
            (None, true) => (None, "none"),
        };
        let (label, confidence) = match score {
            None => (Label::Unscored, 0.0),
            Some(s) => (cfg.entry_label(s), cfg.confidence(s)),
        };
        Summary {
            label,
            score,
            score_source: source,
            frame_mean,
            confidence,
            consistency: state.verdict.consistency(),
            frames: self.frames,
            frames_with_faces: self.frames_with_faces,
            tracks: self.tracks_seen,
            main_track: Some(main_id),
            emotions,
        }
    }
}

/// The main face of a stream is the track analysed in the most frames; of equals, the first.
fn main_key(id: u32, state: &TrackState) -> (usize, std::cmp::Reverse<u32>) {
    (state.frames, std::cmp::Reverse(id))
}

/// Run the analysis models on one face: frame model, one GRU step on its features, emotion.
fn analyse(
    engine: &Engine,
    timings: &mut StageTimings,
    frame: &Frame,
    det: &Detection,
    state: &mut TrackState,
) -> Result<FaceAnalysis> {
    let t = Instant::now();
    let frame_score = engine.analyzer.deepfake_frame(frame, det)?;
    timings.deepfake += t.elapsed();
    let mut temporal = None;
    if let (Some((_, features)), Some(model), Some(memory)) = (
        &frame_score,
        engine.analyzer.temporal.as_ref(),
        state.temporal_state.as_mut(),
    ) {
        let t = Instant::now();
        temporal = Some(model.step(memory, features)?);
        timings.temporal += t.elapsed();
        state.temporal = temporal;
    }
    let t = Instant::now();
    let emotion: Option<EmotionScore> = engine.analyzer.emotion(frame, det)?;
    timings.emotion += t.elapsed();
    Ok(FaceAnalysis {
        deepfake: frame_score.as_ref().map(|f| f.0),
        temporal,
        emotion,
    })
}

/// Side of the grey thumbnail the change gate compares.
const THUMBNAIL_SIDE: usize = 16;

/// The face box's square region, shrunk with the pipeline's
/// antialiased resize to 16x16 grey: averaging ~100+ pixels per cell keeps sensor noise well
/// below one grey level, so the gate reacts to motion and expression, not to noise.
fn face_thumbnail(frame: &Frame, det: &Detection) -> Vec<f32> {
    let region = square_region(&det.bbox, 1.0);
    let mut out = vec![0f32; THUMBNAIL_SIDE * THUMBNAIL_SIDE];
    crop_resize_into(
        frame,
        region,
        THUMBNAIL_SIDE,
        THUMBNAIL_SIDE,
        Colour::Grey,
        Normalise {
            mean: 0.0,
            std: 1.0,
        },
        &mut out,
    );
    out
}

fn mean_abs_difference(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return f32::INFINITY;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
}

/// A 1:1 verification session: the reference's embedding and `verdict::session`'s rules, fed
/// the frames a stream analysed (the CLI's own stream, or the daemon's live one: a session costs
/// one FaceMesh and one embedding per frame on top of what the stream runs anyway).
pub struct VerifySession {
    reference: Embedding,
    /// The session's first face: later faces must stay this person.
    anchor: Option<Embedding>,
    session: Session,
    models: BTreeMap<String, String>,
    first_seconds: Option<f64>,
    /// Where the emotion model puts "happy" (the challenge's smile cue).
    happy_index: Option<usize>,
}

/// A session's answer with what it took: the JSON of `verify --json` and of the API's result.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct VerifyResult {
    #[serde(flatten)]
    pub outcome: SessionOutcome,
    /// Seconds of source time the session watched.
    pub duration_s: f64,
    /// Manifest key -> sha256 of every model that ran.
    pub models: BTreeMap<String, String>,
    /// The session face's embedding: for a record only where the operator opted in, never in
    /// the JSON.
    #[serde(skip)]
    pub embedding: Option<Embedding>,
}

impl Engine {
    /// The embedding of the one face in a reference photo; no face or several is an error.
    pub fn enroll(&self, photo: &Frame) -> Result<Embedding> {
        let embedder = self.embedder()?;
        let faces = self.detector.detect(photo)?;
        match faces.as_slice() {
            [face] => Ok(embedder.identify(photo, face)?.embedding),
            [] => anyhow::bail!("no face found (the reference must show exactly one face)"),
            more => anyhow::bail!(
                "{} faces found (the reference must show exactly one face)",
                more.len()
            ),
        }
    }

    fn embedder(&self) -> Result<&Embedder> {
        self.identity
            .as_ref()
            .context("the engine was loaded without the identity models (EngineConfig.identity)")
    }

    /// The match threshold: the embedding model's from the manifest (chosen by `eval --task
    /// verify` for FMR <= 0.1 %).
    pub fn match_threshold(&self) -> Result<f32> {
        let key = &self.embedder()?.key;
        self.manifest.model(key)?.threshold.with_context(|| {
            format!(
                "{}: models.{key} has no match threshold (measure one with `veriface eval --task verify`)",
                self.manifest.path.display()
            )
        })
    }

    /// The embedding model's continuity threshold (FMR <= 1 % on `eval --task verify`), never
    /// above the match threshold in force; without one, the match threshold itself.
    fn continuity_threshold(&self, match_threshold: f32) -> Result<f32> {
        let key = &self.embedder()?.key;
        Ok(self
            .manifest
            .model(key)?
            .continuity_threshold
            .unwrap_or(match_threshold)
            .min(match_threshold))
    }

    /// A verification session against `reference`; the deepfake threshold is the engine's.
    pub fn verify_session(
        &self,
        reference: Embedding,
        match_threshold: f32,
        min_frames: usize,
    ) -> Result<VerifySession> {
        self.embedder()?;
        let models = self
            .providers
            .iter()
            .filter_map(|(key, _)| {
                self.manifest
                    .models
                    .get(key)
                    .map(|spec| (key.clone(), spec.sha256.clone()))
            })
            .collect();
        Ok(VerifySession {
            reference,
            anchor: None,
            session: Session::new(SessionConfig {
                match_threshold,
                deepfake_threshold: self.verdict.threshold,
                liveness_threshold: self.passive.as_ref().map(|p| p.threshold),
                continuity_threshold: self.continuity_threshold(match_threshold)?,
                min_frames: min_frames.max(1),
            }),
            models,
            first_seconds: None,
            happy_index: self.emotion_classes().iter().position(|c| c == "happy"),
        })
    }
}

impl VerifySession {
    /// One analysed frame: Some once the session has decided.
    pub fn observe(
        &mut self,
        engine: &Engine,
        tf: &TimedFrame,
        result: &FrameResult,
    ) -> Result<Option<VerifyResult>> {
        let first = *self.first_seconds.get_or_insert(tf.seconds);
        let mut obs = Observation {
            seconds: tf.seconds,
            faces: result.faces.len(),
            ..Default::default()
        };
        if let [face] = result.faces.as_slice() {
            let det = Detection {
                score: face.score,
                bbox: face.bbox,
                keypoints: [(0.0, 0.0); 6],
            };
            let identity = engine.embedder()?.identify(&tf.frame, &det)?;
            let happy = face
                .analysis
                .emotion
                .as_ref()
                .and_then(|e| e.probabilities.get(self.happy_index?).copied());
            // The eye model runs while a blink is still to come (its baseline needs the frames
            // before the blink prompt), not after.
            let wants_eyes = self
                .session
                .challenge_still_asks(crate::liveness::challenge::Prompt::Blink);
            let eyes = match wants_eyes {
                true => Some(
                    engine
                        .eyes
                        .as_ref()
                        .with_context(|| {
                            format!("the blink prompt needs an eye model: the manifest has none with task {EYES_TASK:?}")
                        })?
                        .openness(&tf.frame, &identity.landmarks)?,
                ),
                false => None,
            };
            obs.cues = Some(crate::liveness::challenge::cues(
                &identity.landmarks,
                eyes,
                happy,
            ));
            let embedding = identity.embedding;
            obs.match_score = Some(self.reference.similarity(&embedding));
            obs.self_similarity = self.anchor.as_ref().map(|a| a.similarity(&embedding));
            obs.deepfake = face.analysis.deepfake;
            if let Some(passive) = &engine.passive {
                obs.live = Some(passive.live_probability(&tf.frame, &det)?);
            }
            if self.anchor.is_none() {
                self.anchor = Some(embedding);
            }
        }
        Ok(self
            .session
            .observe(&obs)
            .map(|o| self.finish(o, tf.seconds - first)))
    }

    /// Add an active challenge: the decision waits for it.
    pub fn with_challenge(mut self, challenge: crate::liveness::challenge::Challenge) -> Self {
        self.session = self.session.with_challenge(challenge);
        self
    }

    /// Prompts of the active challenge (0 without one).
    pub fn challenge_len(&self) -> usize {
        self.session.challenge_len()
    }

    /// The active challenge's state, for prompts on the screen and the API.
    pub fn challenge_state(&self) -> Option<crate::liveness::challenge::ChallengeState> {
        self.session.challenge_state()
    }

    /// The camera check of the device the frames come from.
    pub fn set_camera(&mut self, check: Option<crate::liveness::camera::CameraCheck>) {
        self.session.set_camera(check);
    }

    /// Single-face frames so far, and how many a decision needs.
    pub fn progress(&self) -> (usize, usize) {
        (self.session.frames(), self.session.config().min_frames)
    }

    /// The source ended before a decision; `seconds` of it were watched.
    pub fn end_of_source(&mut self, seconds: f64) -> VerifyResult {
        let outcome = self.session.end_of_source();
        self.finish(outcome, seconds)
    }

    /// The deadline passed before a decision.
    pub fn timed_out(&mut self, seconds: f64) -> VerifyResult {
        let outcome = self.session.timed_out();
        self.finish(outcome, seconds)
    }

    fn finish(&self, outcome: SessionOutcome, seconds: f64) -> VerifyResult {
        VerifyResult {
            outcome,
            duration_s: seconds,
            models: self.models.clone(),
            embedding: self.anchor.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_history_stays_bounded_and_keeps_its_mean_and_median() {
        let mut h = ProbabilityHistory::default();
        // Below the bound: the exact median.
        for p in [0.9, 0.1, 0.4, 0.7, 0.2] {
            h.push(p);
        }
        assert_eq!(h.median(), Some(0.4));
        // Three days of one face at 10 analysed frames a second: a saw-tooth 0..1 every 1000.
        let mut h = ProbabilityHistory::default();
        let n = 3 * 24 * 3600 * 10u64;
        for i in 0..n {
            h.push((i % 1000) as f32 / 1000.0);
        }
        assert!(h.sample.len() < PROBABILITY_SAMPLE, "{}", h.sample.len());
        assert!((h.mean().unwrap() - 0.4995).abs() < 1e-4, "{:?}", h.mean());
        assert!((h.median().unwrap() - 0.5).abs() < 0.01, "{:?}", h.median());
    }
}
