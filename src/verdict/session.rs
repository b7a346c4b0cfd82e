//! The 1:1 verification decision: is the face in view the reference person, and not a deepfake
//! (and, once the liveness checks land, live)? Fed one observation per frame by the pipeline; no
//! models here, so every rule is tested on plain numbers.
//!
//! Rules: a session follows the one face in view. Two faces in one frame reject
//! (`second_face`); a face whose embedding no longer matches the session's first face rejects
//! (`identity_changed`): a swap of people mid-session is caught even when the tracker keeps the
//! track. After `min_frames` single-face frames the session decides on the medians of the match
//! similarity and the deepfake probability; a source that ends sooner (a still image, a short
//! clip) is decided on the frames it gave. Nothing seen by the deadline is `no_face`; too few
//! frames by the deadline is `timeout`.

use serde::{Deserialize, Serialize};

use crate::liveness::camera::CameraCheck;
use crate::liveness::challenge::{Challenge, ChallengeResult, ChallengeState, Cues, Prompt};

/// What the session needs to decide.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionConfig {
    /// Accept a match at or above this cosine similarity (the embedding model's, chosen for
    /// FMR <= 0.1 % by `eval --task verify`).
    pub match_threshold: f32,
    /// Reject as a deepfake at or above this fake probability (the deepfake model's).
    pub deepfake_threshold: f32,
    /// Passive liveness: live at or above this probability; None when no PAD model is on.
    pub liveness_threshold: Option<f32>,
    /// Under this similarity to the session's first face (two frames running) the face counts
    /// as another person; looser than the match threshold, since one person's expressions and
    /// head turns (what a challenge asks for) lower it.
    pub continuity_threshold: f32,
    /// Single-face frames needed for a decision.
    pub min_frames: usize,
}

/// One frame as the session sees it.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub seconds: f64,
    /// Faces in view in this frame.
    pub faces: usize,
    /// The face's similarity to the reference.
    pub match_score: Option<f32>,
    /// The face's similarity to the session's first face (None on the first).
    pub self_similarity: Option<f32>,
    /// The face's frame-level fake probability.
    pub deepfake: Option<f32>,
    /// The face's live probability from the passive PAD models.
    pub live: Option<f32>,
    /// The face's cues for the active challenge (eyes, head yaw, smile).
    pub cues: Option<Cues>,
}

/// Why a session was rejected; the JSON names are the API's. Records store the variant's
/// position: add new reasons at the end only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Match,
    Deepfake,
    SecondFace,
    IdentityChanged,
    NoFace,
    Timeout,
    /// A liveness check failed (a print, a screen, a mask, an injected feed).
    Liveness,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Match => "match",
            Reason::Deepfake => "deepfake",
            Reason::SecondFace => "second_face",
            Reason::IdentityChanged => "identity_changed",
            Reason::NoFace => "no_face",
            Reason::Timeout => "timeout",
            Reason::Liveness => "liveness",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    Verified,
    Rejected,
}

/// One component's score against its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub score: Option<f32>,
    pub threshold: f32,
    pub accepted: bool,
}

/// The session's answer (the JSON of `verify --json`, the API's result and the record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub decision: Decision,
    pub reasons: Vec<Reason>,
    #[serde(rename = "match")]
    pub matched: Component,
    pub deepfake: Component,
    /// The liveness checks that are on; null when none is.
    pub liveness: Option<Liveness>,
    /// Single-face frames the decision rests on.
    pub frames: usize,
}

/// The liveness checks' results: each null when that check is not configured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Liveness {
    /// Passive PAD: the median fused live probability.
    pub passive: Option<Component>,
    /// The active challenge: its prompts, how many were done, whether all were.
    pub challenge: Option<ChallengeResult>,
    /// The camera the frames came from (null for a file source).
    pub camera: Option<CameraCheck>,
    pub accepted: bool,
}

/// Frames running under the continuity threshold that make a change of person.
const UNLIKE_FRAMES: usize = 2;

/// Per-session state.
#[derive(Clone, Debug)]
pub struct Session {
    cfg: SessionConfig,
    matches: Vec<f32>,
    deepfakes: Vec<f32>,
    lives: Vec<f32>,
    camera: Option<CameraCheck>,
    challenge: Option<Challenge>,
    frames_seen: usize,
    /// Frames running whose face did not look like the session's first one.
    unlike_run: usize,
    failed: Option<Reason>,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        Session {
            cfg,
            matches: Vec::new(),
            deepfakes: Vec::new(),
            lives: Vec::new(),
            camera: None,
            challenge: None,
            frames_seen: 0,
            unlike_run: 0,
            failed: None,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The camera check of the device the frames come from (latest wins).
    pub fn set_camera(&mut self, check: Option<CameraCheck>) {
        self.camera = check;
    }

    /// Add an active challenge: the session decides only once it is passed (or failed).
    pub fn with_challenge(mut self, challenge: Challenge) -> Session {
        self.challenge = Some(challenge);
        self
    }

    /// Prompts of the challenge (0 without one).
    pub fn challenge_len(&self) -> usize {
        self.challenge.as_ref().map_or(0, |c| c.prompts().len())
    }

    /// Whether the challenge still asks for `prompt` (false without a challenge).
    pub fn challenge_still_asks(&self, prompt: Prompt) -> bool {
        self.challenge
            .as_ref()
            .is_some_and(|c| c.still_asks(prompt))
    }

    /// The challenge's current state, when there is one.
    pub fn challenge_state(&self) -> Option<ChallengeState> {
        self.challenge.as_ref().map(Challenge::state)
    }

    /// Single-face frames so far.
    pub fn frames(&self) -> usize {
        self.matches.len()
    }

    /// Take one frame; Some when the session has decided.
    pub fn observe(&mut self, obs: &Observation) -> Option<Outcome> {
        self.frames_seen += 1;
        if obs.faces > 1 {
            self.failed = Some(Reason::SecondFace);
            return Some(self.decide());
        }
        let score = obs.match_score?;
        // One odd frame (motion blur, a half-detected face) is not a change of person.
        if obs
            .self_similarity
            .is_some_and(|s| s < self.cfg.continuity_threshold)
        {
            self.unlike_run += 1;
            if self.unlike_run >= UNLIKE_FRAMES {
                self.failed = Some(Reason::IdentityChanged);
                return Some(self.decide());
            }
            return None;
        }
        self.unlike_run = 0;
        self.matches.push(score);
        if let Some(p) = obs.deepfake {
            self.deepfakes.push(p);
        }
        if let Some(p) = obs.live {
            self.lives.push(p);
        }
        let challenge = match (&mut self.challenge, &obs.cues) {
            (Some(c), Some(cues)) => Some(c.observe(obs.seconds, cues)),
            (Some(c), None) => Some(c.state()),
            (None, _) => None,
        };
        match challenge {
            // A failed challenge ends the session at once; one in progress holds the decision.
            Some(ChallengeState::Failed { .. }) => Some(self.decide()),
            Some(ChallengeState::Prompting { .. }) => None,
            _ => (self.matches.len() >= self.cfg.min_frames).then(|| self.decide()),
        }
    }

    /// The source ended: decide on what was seen.
    pub fn end_of_source(&mut self) -> Outcome {
        if self.matches.is_empty() && self.failed.is_none() {
            self.failed = Some(Reason::NoFace);
        }
        self.decide()
    }

    /// The deadline passed before a decision.
    pub fn timed_out(&mut self) -> Outcome {
        if self.failed.is_none() {
            self.failed = Some(match self.matches.is_empty() {
                true => Reason::NoFace,
                false => Reason::Timeout,
            });
        }
        self.decide()
    }

    fn decide(&self) -> Outcome {
        let matched = median(&self.matches);
        let deepfake = median(&self.deepfakes);
        let matched = Component {
            score: matched,
            threshold: self.cfg.match_threshold,
            accepted: matched.is_some_and(|s| s >= self.cfg.match_threshold),
        };
        // No deepfake model installed: that component does not reject.
        let deepfake = Component {
            score: deepfake,
            threshold: self.cfg.deepfake_threshold,
            accepted: deepfake.is_none_or(|p| p < self.cfg.deepfake_threshold),
        };
        // A configured check with no frame to judge does not pass.
        let passive = self.cfg.liveness_threshold.map(|threshold| {
            let live = median(&self.lives);
            Component {
                score: live,
                threshold,
                accepted: live.is_some_and(|p| p >= threshold),
            }
        });
        let challenge = self.challenge.as_ref().map(Challenge::result);
        let liveness =
            (passive.is_some() || self.camera.is_some() || challenge.is_some()).then(|| Liveness {
                accepted: passive.is_none_or(|p| p.accepted)
                    && self.camera.as_ref().is_none_or(|c| c.accepted)
                    && challenge.as_ref().is_none_or(|c| c.accepted),
                passive,
                challenge,
                camera: self.camera.clone(),
            });
        let mut reasons = Vec::new();
        if let Some(r) = self.failed {
            reasons.push(r);
        }
        if !self.matches.is_empty() && !matched.accepted {
            reasons.push(Reason::Match);
        }
        if !deepfake.accepted {
            reasons.push(Reason::Deepfake);
        }
        if !self.matches.is_empty() && liveness.as_ref().is_some_and(|l| !l.accepted) {
            reasons.push(Reason::Liveness);
        }
        Outcome {
            decision: match reasons.is_empty() {
                true => Decision::Verified,
                false => Decision::Rejected,
            },
            reasons,
            matched,
            deepfake,
            liveness,
            frames: self.matches.len(),
        }
    }
}

fn median(v: &[f32]) -> Option<f32> {
    (!v.is_empty()).then(|| super::median(v.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(min_frames: usize) -> Session {
        Session::new(SessionConfig {
            match_threshold: 0.4,
            deepfake_threshold: 0.9,
            liveness_threshold: None,
            continuity_threshold: 0.3,
            min_frames,
        })
    }

    fn face(m: f32, fake: f32, own: Option<f32>) -> Observation {
        Observation {
            faces: 1,
            match_score: Some(m),
            self_similarity: own,
            deepfake: Some(fake),
            ..Default::default()
        }
    }

    #[test]
    fn decides_after_enough_consistent_frames() {
        let mut s = session(3);
        assert!(s.observe(&face(0.7, 0.1, None)).is_none());
        assert!(
            s.observe(&Observation::default()).is_none(),
            "a frame without a face waits"
        );
        assert!(s.observe(&face(0.6, 0.2, Some(0.9))).is_none());
        let out = s.observe(&face(0.8, 0.1, Some(0.9))).unwrap();
        assert_eq!(out.decision, Decision::Verified);
        assert_eq!(out.matched.score, Some(0.7));
        assert_eq!(out.frames, 3);
    }

    #[test]
    fn every_failed_component_is_a_reason() {
        let mut s = session(1);
        let out = s.observe(&face(0.1, 0.95, None)).unwrap();
        assert_eq!(out.decision, Decision::Rejected);
        assert_eq!(out.reasons, vec![Reason::Match, Reason::Deepfake]);
    }

    #[test]
    fn a_second_face_or_a_change_of_person_rejects_at_once() {
        let mut s = session(5);
        s.observe(&face(0.7, 0.1, None));
        let two = Observation {
            faces: 2,
            ..Default::default()
        };
        assert_eq!(s.observe(&two).unwrap().reasons, vec![Reason::SecondFace]);
        let mut s = session(5);
        s.observe(&face(0.7, 0.1, None));
        assert!(
            s.observe(&face(0.7, 0.1, Some(0.1))).is_none(),
            "one odd frame is forgiven"
        );
        assert!(
            s.observe(&face(0.7, 0.1, Some(0.35))).is_none(),
            "a turned head still counts"
        );
        s.observe(&face(0.7, 0.1, Some(0.1)));
        let out = s.observe(&face(0.7, 0.1, Some(0.1))).unwrap();
        assert_eq!(out.reasons, vec![Reason::IdentityChanged]);
    }

    #[test]
    fn a_configured_liveness_check_joins_the_decision() {
        let mut s = Session::new(SessionConfig {
            liveness_threshold: Some(0.5),
            ..session(2).cfg
        });
        let live = |p: f32| Observation {
            live: Some(p),
            ..face(0.7, 0.1, Some(0.9))
        };
        s.observe(&live(0.1));
        let out = s.observe(&live(0.2)).unwrap();
        assert_eq!(out.reasons, vec![Reason::Liveness]);
        let l = out.liveness.unwrap();
        assert!(!l.accepted && l.passive.unwrap().score.unwrap() < 0.5);
        // A refused or flagged camera fails liveness on its own.
        let mut s = session(1);
        s.set_camera(Some(CameraCheck {
            driver: "v4l2 loopback".into(),
            accepted: false,
            reason: Some("virtual camera".into()),
            ..Default::default()
        }));
        let out = s.observe(&face(0.7, 0.1, None)).unwrap();
        assert_eq!(out.reasons, vec![Reason::Liveness]);
        assert!(out.liveness.unwrap().passive.is_none());
        let mut s = Session::new(SessionConfig {
            liveness_threshold: Some(0.5),
            ..session(1).cfg
        });
        assert_eq!(s.observe(&live(0.9)).unwrap().decision, Decision::Verified);
        // Without the check there is no liveness object at all.
        assert!(session(1)
            .observe(&face(0.7, 0.1, None))
            .unwrap()
            .liveness
            .is_none());
    }

    #[test]
    fn a_challenge_holds_the_decision_until_done_and_a_failed_one_rejects() {
        use crate::liveness::challenge::{Challenge, Prompt};
        let still = Cues {
            eyes: Some(0.3),
            yaw_deg: 0.0,
            happy: Some(0.0),
        };
        let with = |cues: Cues, t: f64| Observation {
            seconds: t,
            cues: Some(cues),
            ..face(0.7, 0.1, Some(0.9))
        };
        let mut s = session(2).with_challenge(Challenge::with_prompts(vec![Prompt::Smile], 2.0));
        for i in 0..5 {
            assert!(
                s.observe(&with(still, i as f64 * 0.1)).is_none(),
                "held for the prompt"
            );
        }
        let smile = Cues {
            happy: Some(0.9),
            ..still
        };
        let out = s.observe(&with(smile, 0.6)).unwrap();
        assert_eq!(out.decision, Decision::Verified);
        let c = out.liveness.unwrap().challenge.unwrap();
        assert!(c.accepted && c.completed == 1);
        // Nobody smiles: the challenge times out and the session rejects for liveness.
        let mut s = session(2).with_challenge(Challenge::with_prompts(vec![Prompt::Smile], 2.0));
        let mut out = None;
        for i in 0..40 {
            out = out.or(s.observe(&with(still, i as f64 * 0.1)));
        }
        assert_eq!(out.unwrap().reasons, vec![Reason::Liveness]);
    }

    #[test]
    fn ends_and_deadlines_name_what_was_missing() {
        let mut s = session(5);
        assert_eq!(s.end_of_source().reasons, vec![Reason::NoFace]);
        let mut s = session(5);
        s.observe(&face(0.7, 0.1, None));
        assert_eq!(
            s.end_of_source().decision,
            Decision::Verified,
            "a still image decides on one frame"
        );
        let mut s = session(5);
        s.observe(&face(0.7, 0.1, None));
        assert_eq!(s.timed_out().reasons, vec![Reason::Timeout]);
        let mut s = session(5);
        assert_eq!(s.timed_out().reasons, vec![Reason::NoFace]);
    }
}
