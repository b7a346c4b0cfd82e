//! Verdict stage: per track, a smoothed probability, a REAL / FAKE / UNCERTAIN decision with
//! hysteresis, its confidence and temporal consistency. One struct, used by every output; and
//! the results a stream hands to the outputs (per face, per frame, per file).

pub mod session;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::analysis::FaceAnalysis;
use crate::face::BoxF;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Label {
    Real,
    Fake,
    Uncertain,
    /// No deepfake model installed: nothing to decide with.
    Unscored,
    /// No face in view: no verdict at all.
    #[serde(rename = "NO_FACE")]
    NoFace,
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Label::Real => "REAL",
            Label::Fake => "FAKE",
            Label::Uncertain => "UNCERTAIN",
            Label::Unscored => "UNSCORED",
            Label::NoFace => "NO FACE",
        })
    }
}

/// Thresholds on the smoothed fake probability. Entering a decision needs a stronger score than
/// keeping it, so a score hovering at a threshold does not flicker between verdicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictConfig {
    /// Frames in the median window.
    pub window: usize,
    /// Frames a track needs before it may leave UNCERTAIN.
    pub min_frames: usize,
    pub fake_enter: f32,
    pub fake_exit: f32,
    pub real_enter: f32,
    pub real_exit: f32,
    /// The operating threshold: scores at or above it count as fake (consistency, metrics).
    pub threshold: f32,
}

impl Default for VerdictConfig {
    fn default() -> Self {
        VerdictConfig {
            window: 15,
            min_frames: 3,
            fake_enter: 0.7,
            fake_exit: 0.6,
            real_enter: 0.3,
            real_exit: 0.4,
            threshold: 0.5,
        }
    }
}

/// Verdict settings as configured (a config file's `[verdict]`, command-line flags): what is
/// left out follows the deepfake model's operating threshold, which only the manifest knows.
/// `resolve` turns them into the `VerdictConfig` a stream runs with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_frames: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fake_enter: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fake_exit: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_enter: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub real_exit: Option<f32>,
}

impl VerdictSettings {
    /// Only the operating threshold given; the band centres on it.
    pub fn at(threshold: f32) -> Self {
        VerdictSettings {
            threshold: Some(threshold),
            ..Default::default()
        }
    }

    /// The settings given, the rest from the band centred on the threshold (given, else the
    /// model's).
    pub fn resolve(&self, model_threshold: f32) -> VerdictConfig {
        let base = VerdictConfig::centred_on(self.threshold.unwrap_or(model_threshold));
        VerdictConfig {
            window: self.window.unwrap_or(base.window),
            min_frames: self.min_frames.unwrap_or(base.min_frames),
            fake_enter: self.fake_enter.unwrap_or(base.fake_enter),
            fake_exit: self.fake_exit.unwrap_or(base.fake_exit),
            real_enter: self.real_enter.unwrap_or(base.real_enter),
            real_exit: self.real_exit.unwrap_or(base.real_exit),
            threshold: base.threshold,
        }
    }

    /// True when a band edge is set without the threshold it must surround (whether it fits
    /// would depend on the model's threshold: a config error).
    pub fn needs_model_threshold(&self) -> bool {
        self.threshold.is_none()
            && [
                self.fake_enter,
                self.fake_exit,
                self.real_enter,
                self.real_exit,
            ]
            .iter()
            .any(Option::is_some)
    }
}

impl VerdictConfig {
    /// The default hysteresis band around `threshold` (clamped to 0..1): each edge keeps its
    /// default share of the room on its side (0.5 gives the defaults), so a threshold near 0 or 1
    /// still leaves a band scores can enter and any operating point gives a valid config.
    pub fn centred_on(threshold: f32) -> Self {
        let d = VerdictConfig::default();
        let t = threshold.clamp(0.0, 1.0);
        let above = |v: f32| t + (v - d.threshold) / (1.0 - d.threshold) * (1.0 - t);
        let below = |v: f32| t - (d.threshold - v) / d.threshold * t;
        VerdictConfig {
            fake_enter: above(d.fake_enter),
            fake_exit: above(d.fake_exit),
            real_enter: below(d.real_enter),
            real_exit: below(d.real_exit),
            threshold: t,
            ..d
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let ordered = self.real_enter <= self.real_exit
            && self.real_exit <= self.threshold
            && self.threshold <= self.fake_exit
            && self.fake_exit <= self.fake_enter;
        if !ordered {
            return Err("verdict thresholds must satisfy real_enter <= real_exit <= threshold <= fake_exit <= fake_enter".into());
        }
        if self.window == 0 {
            return Err("verdict window must be at least 1 frame".into());
        }
        Ok(())
    }

    /// The decision for a score with no history: it must reach an entry threshold.
    pub fn entry_label(&self, p: f32) -> Label {
        if p >= self.fake_enter {
            Label::Fake
        } else if p <= self.real_enter {
            Label::Real
        } else {
            Label::Uncertain
        }
    }

    /// 0 at the threshold, 1 at certainty, scaled by the room on that side of the threshold.
    pub fn confidence(&self, p: f32) -> f32 {
        let margin = if p >= self.threshold {
            1.0 - self.threshold
        } else {
            self.threshold
        };
        ((p - self.threshold).abs() / margin.max(f32::EPSILON)).min(1.0)
    }
}

/// The decision for one track at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub label: Label,
    /// Median of the recent frame probabilities.
    pub smoothed: Option<f32>,
    /// 0 at the threshold, 1 at certainty (distance of the smoothed score from the threshold).
    pub confidence: f32,
    /// Share of the track's frames on the majority side of the threshold.
    pub consistency: f32,
    pub frames: usize,
}

/// Per-track state of the decision.
#[derive(Clone, Debug)]
pub struct TrackVerdict {
    cfg: VerdictConfig,
    recent: VecDeque<f32>,
    label: Label,
    frames: usize,
    scored_frames: usize,
    fake_frames: usize,
}

impl TrackVerdict {
    pub fn new(cfg: VerdictConfig) -> Self {
        TrackVerdict {
            cfg,
            recent: VecDeque::new(),
            label: Label::Uncertain,
            frames: 0,
            scored_frames: 0,
            fake_frames: 0,
        }
    }

    /// Add one frame's probability (None: no deepfake model) and return the current verdict.
    pub fn push(&mut self, probability: Option<f32>) -> Verdict {
        let Some(p) = probability else {
            self.frames += 1;
            return Verdict {
                label: Label::Unscored,
                smoothed: None,
                confidence: 0.0,
                consistency: 0.0,
                frames: self.frames,
            };
        };
        self.frames += 1;
        self.scored_frames += 1;
        if p >= self.cfg.threshold {
            self.fake_frames += 1;
        }
        self.recent.push_back(p);
        while self.recent.len() > self.cfg.window {
            self.recent.pop_front();
        }
        let smoothed = median(self.recent.iter().copied());
        let c = &self.cfg;
        self.label = if self.frames < c.min_frames {
            Label::Uncertain
        } else {
            match self.label {
                Label::Fake if smoothed >= c.fake_exit => Label::Fake,
                Label::Real if smoothed <= c.real_exit => Label::Real,
                _ => c.entry_label(smoothed),
            }
        };
        Verdict {
            label: self.label,
            smoothed: Some(smoothed),
            confidence: c.confidence(smoothed),
            consistency: self.consistency(),
            frames: self.frames,
        }
    }

    /// Share of the scored frames on the majority side of the threshold (0 with none scored).
    pub fn consistency(&self) -> f32 {
        if self.scored_frames == 0 {
            return 0.0;
        }
        let majority = self.fake_frames.max(self.scored_frames - self.fake_frames);
        majority as f32 / self.scored_frames as f32
    }
}

/// Median of the values (NaN when there are none).
pub fn median(values: impl IntoIterator<Item = f32>) -> f32 {
    let mut v: Vec<f32> = values.into_iter().collect();
    v.sort_by(f32::total_cmp);
    let n = v.len();
    if n == 0 {
        return f32::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------- results

/// One face in one frame, fully analysed.
#[derive(Clone, Debug, Serialize)]
pub struct FaceResult {
    pub track: u32,
    pub score: f64,
    pub bbox: BoxF,
    #[serde(flatten)]
    pub analysis: FaceAnalysis,
    /// False where the schedule kept the face's last analysis (no model ran for it this frame).
    pub analysed: bool,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Serialize)]
pub struct FrameResult {
    pub index: u64,
    pub seconds: f64,
    pub faces: Vec<FaceResult>,
    /// Tracks that ended at this frame (out of view too long): their ids will not come back, so
    /// whoever keeps something per track drops it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ended_tracks: Vec<u32>,
}

impl FrameResult {
    /// The face the screen, the LEDs and the status file show (`face::largest`).
    pub fn main_face(&self) -> Option<&FaceResult> {
        crate::face::largest(&self.faces, |f| &f.bbox)
    }
}

/// The answer for a whole file or stream.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub label: Label,
    /// Video-level fake probability: the temporal model's output where there is one, else the
    /// median of the main track's frame probabilities.
    pub score: Option<f32>,
    pub score_source: &'static str,
    pub frame_mean: Option<f32>,
    pub confidence: f32,
    pub consistency: f32,
    pub frames: u64,
    pub frames_with_faces: u64,
    pub tracks: usize,
    pub main_track: Option<u32>,
    /// Share of the main track's frames per emotion, largest first.
    pub emotions: Vec<(String, f32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_face_is_the_largest_even_when_listed_second() {
        let face = |track, side: f64, label| FaceResult {
            track,
            score: 0.9,
            bbox: BoxF {
                xmin: 0.0,
                ymin: 0.0,
                xmax: side,
                ymax: side,
            },
            analysis: Default::default(),
            analysed: true,
            verdict: Verdict {
                label,
                smoothed: None,
                confidence: 0.0,
                consistency: 0.0,
                frames: 0,
            },
        };
        let mut frame = FrameResult {
            index: 0,
            seconds: 0.0,
            faces: vec![face(1, 40.0, Label::Fake), face(2, 90.0, Label::Real)],
            ended_tracks: vec![],
        };
        assert_eq!(frame.main_face().map(|f| f.track), Some(2));
        // Of equal boxes the first listed, whatever its verdict.
        frame.faces[0].bbox = frame.faces[1].bbox;
        assert_eq!(frame.main_face().map(|f| f.track), Some(1));
        frame.faces.clear();
        assert!(frame.main_face().is_none());
    }

    fn run(scores: &[f32]) -> Vec<Label> {
        let mut t = TrackVerdict::new(VerdictConfig {
            window: 3,
            min_frames: 2,
            ..Default::default()
        });
        scores.iter().map(|s| t.push(Some(*s)).label).collect()
    }

    #[test]
    fn needs_min_frames_then_decides() {
        assert_eq!(
            run(&[0.9, 0.9, 0.9]),
            vec![Label::Uncertain, Label::Fake, Label::Fake]
        );
        assert_eq!(run(&[0.1, 0.1]), vec![Label::Uncertain, Label::Real]);
    }

    #[test]
    fn hysteresis_holds_a_decision_between_exit_and_enter() {
        // Median of 3: 0.9,0.9,0.65 -> 0.9 (FAKE); then 0.65s pull the median to 0.65: above
        // fake_exit (0.6) so still FAKE, though 0.65 alone would not enter FAKE.
        let labels = run(&[0.9, 0.9, 0.65, 0.65, 0.65]);
        assert_eq!(labels[4], Label::Fake);
        let fresh = run(&[0.65, 0.65, 0.65]);
        assert_eq!(fresh[2], Label::Uncertain);
        // Dropping below fake_exit leaves FAKE.
        let leaving = run(&[0.9, 0.9, 0.9, 0.5, 0.5]);
        assert_eq!(leaving[4], Label::Uncertain);
    }

    #[test]
    fn consistency_and_confidence() {
        let mut t = TrackVerdict::new(VerdictConfig::default());
        let mut last = None;
        for s in [0.9, 0.8, 0.2, 0.95] {
            last = Some(t.push(Some(s)));
        }
        let v = last.unwrap();
        assert!((v.consistency - 0.75).abs() < 1e-6);
        assert!((v.smoothed.unwrap() - 0.85).abs() < 1e-6);
        assert!((v.confidence - 0.7).abs() < 1e-5);
    }

    #[test]
    fn no_model_means_no_score() {
        let mut t = TrackVerdict::new(VerdictConfig::default());
        let v = t.push(None);
        assert_eq!(v.label, Label::Unscored);
        assert!(v.smoothed.is_none());
    }

    #[test]
    fn a_band_centred_near_an_edge_can_still_be_entered() {
        assert_eq!(VerdictConfig::centred_on(0.5), VerdictConfig::default());
        for t in [0.0, 0.01, 0.3, 0.9994, 1.0] {
            VerdictConfig::centred_on(t).validate().unwrap();
        }
        let high = VerdictConfig::centred_on(0.9994);
        assert!(high.fake_exit > 0.9994 && high.fake_enter < 1.0, "{high:?}");
        let mut v = TrackVerdict::new(high);
        let last = (0..5).map(|_| v.push(Some(0.9999))).last().unwrap();
        assert_eq!(last.label, Label::Fake);
    }

    #[test]
    fn settings_left_out_follow_the_model_threshold() {
        let partial = VerdictSettings {
            window: Some(9),
            ..Default::default()
        };
        let v = partial.resolve(0.8);
        assert_eq!((v.window, v.threshold), (9, 0.8));
        assert!(v.real_exit < 0.8 && 0.8 < v.fake_exit, "{v:?}");
        v.validate().unwrap();
        assert_eq!(VerdictSettings::at(0.3).resolve(0.8).threshold, 0.3);
        let band_only = VerdictSettings {
            fake_enter: Some(0.7),
            ..Default::default()
        };
        assert!(band_only.needs_model_threshold());
        assert!(!VerdictSettings::at(0.5).needs_model_threshold());
    }

    #[test]
    fn config_validation_rejects_crossed_thresholds() {
        let bad = VerdictConfig {
            fake_enter: 0.4,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        assert!(VerdictConfig::default().validate().is_ok());
    }
}
