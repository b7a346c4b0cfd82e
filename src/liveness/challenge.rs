//! Active challenge: a random (seeded) sequence of prompts — blink, turn the head left or right,
//! smile — each to be done within a time limit. A photo cannot blink or turn; a replayed video
//! does its own movements, not the ones asked for at random moments.
//!
//! Cues per frame: the eyes' openness from the eye model (lid gap over eye width, both eyes
//! averaged; `face::EyeModel`), the head's yaw from FaceMesh's own depth (the line between the
//! outer eye corners seen from above), and the emotion model's "happy" probability for a smile.
//! Events are judged against the person's own baseline, so eye shape and a resting head angle do
//! not count.
//!
//! Measured: the yaw cue spans -31..+33 degrees on FaceForensics++ clips where people turn, and
//! stays within 11 degrees on a photo tilted by up to 45 %. FaceMesh's own lid points fell at
//! most 15 % under their median over 10 clips x 10 s of people talking, so blinks come from the
//! eye model: open 0.18-0.42 depending on the person, shut a quarter to a half of that, on the
//! labelled blinks of `tests/data/challenge/blinks.json`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::face::FaceLandmarks;

/// What the person is asked to do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    Blink,
    TurnLeft,
    TurnRight,
    Smile,
}

impl Prompt {
    /// The prompts drawn unless configured otherwise.
    pub const DEFAULT_POOL: [Prompt; 4] = Prompt::ALL;
    pub const ALL: [Prompt; 4] = [
        Prompt::Blink,
        Prompt::TurnLeft,
        Prompt::TurnRight,
        Prompt::Smile,
    ];

    /// The event that answers it, for messages.
    pub fn event(self) -> &'static str {
        match self {
            Prompt::Blink => "blink",
            Prompt::TurnLeft => "turn left",
            Prompt::TurnRight => "turn right",
            Prompt::Smile => "smile",
        }
    }

    /// The words on the screen and in the API's prompt events.
    pub fn instruction(self) -> &'static str {
        match self {
            Prompt::Blink => "blink",
            Prompt::TurnLeft => "turn your head left",
            Prompt::TurnRight => "turn your head right",
            Prompt::Smile => "smile",
        }
    }
}

// The outer eye corners, for the yaw.
const OUTER_LEFT: usize = 33;
const OUTER_RIGHT: usize = 263;

/// One frame's cues.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cues {
    /// Eye openness, both eyes averaged, where the eye model ran (`face::openness_of`).
    pub eyes: Option<f32>,
    /// Head yaw in degrees; positive when the person turns to their own left (their face's
    /// right side nearer the camera), for an unmirrored camera image.
    pub yaw_deg: f32,
    /// The emotion model's probability of "happy", where it ran.
    pub happy: Option<f32>,
}

/// The cues of one face: the yaw from its FaceMesh landmarks, with the eye model's openness of
/// both eyes and the emotion model's "happy" where they ran.
pub fn cues(landmarks: &FaceLandmarks, eyes: Option<[f32; 2]>, happy: Option<f32>) -> Cues {
    let p = &landmarks.points;
    if p.len() <= OUTER_RIGHT {
        return Cues::default();
    }
    let (l, r) = (p[OUTER_LEFT], p[OUTER_RIGHT]);
    let yaw_deg = (r[2] - l[2]).atan2(r[0] - l[0]).to_degrees();
    Cues {
        eyes: eyes.map(|[a, b]| (a + b) / 2.0),
        yaw_deg,
        happy,
    }
}

/// A blink: the openness under this share of the open-eye baseline...
const BLINK_CLOSED_SHARE: f32 = 0.65;
/// ...for at most this many frames (longer is eyes shut, not a blink), then open again.
const BLINK_MAX_FRAMES: usize = 12;
/// A turn: the yaw this far from the session's resting yaw.
pub const TURN_DEG: f32 = 18.0;
/// A smile: "happy" at least this probable.
const SMILE_HAPPY: f32 = 0.6;
/// Frames that set the baselines before any event counts.
const BASELINE_FRAMES: usize = 3;
/// The open-eye baseline is the median of this many latest open readings.
const OPEN_EYE_READINGS: usize = 15;

fn median(values: &VecDeque<f32>) -> f32 {
    let mut v: Vec<f32> = values.iter().copied().collect();
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// What a frame showed, against the person's baselines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Events {
    pub blink: bool,
    pub turned_left: bool,
    pub turned_right: bool,
    pub smile: bool,
}

/// Turns per-frame cues into events: blinks (a short close-and-open), turns beyond `TURN_DEG`
/// from the resting yaw, smiles.
#[derive(Clone, Debug, Default)]
pub struct EventDetector {
    frames: usize,
    /// The latest readings of eyes not closing; their median is the open-eye baseline.
    open_eyes: VecDeque<f32>,
    rest_yaw: f32,
    closed_for: usize,
}

impl EventDetector {
    pub fn observe(&mut self, c: &Cues) -> Events {
        self.frames += 1;
        let mut ev = Events::default();
        if let Some(eyes) = c.eyes {
            if self.open_eyes.len() < BASELINE_FRAMES {
                self.open_eyes.push_back(eyes);
            } else if eyes < BLINK_CLOSED_SHARE * median(&self.open_eyes) {
                self.closed_for += 1;
                if self.closed_for > BLINK_MAX_FRAMES {
                    // Shut too long for a blink, or the eyes settled lower (a glance down at
                    // the screen): a new baseline from here, so the next blink is seen.
                    self.open_eyes.clear();
                    self.closed_for = 0;
                }
            } else {
                ev.blink = (1..=BLINK_MAX_FRAMES).contains(&self.closed_for);
                self.closed_for = 0;
                if self.open_eyes.len() == OPEN_EYE_READINGS {
                    self.open_eyes.pop_front();
                }
                self.open_eyes.push_back(eyes);
            }
        }
        if self.frames <= BASELINE_FRAMES {
            self.rest_yaw += (c.yaw_deg - self.rest_yaw) / self.frames as f32;
            return ev;
        }
        let turn = c.yaw_deg - self.rest_yaw;
        ev.turned_left = turn >= TURN_DEG;
        ev.turned_right = turn <= -TURN_DEG;
        ev.smile = c.happy.is_some_and(|h| h >= SMILE_HAPPY);
        ev
    }
}

/// Where a challenge stands after a frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ChallengeState {
    /// Showing prompt `index` of the sequence.
    Prompting {
        index: usize,
        prompt: Prompt,
    },
    Passed,
    Failed {
        reason: String,
    },
}

/// The challenge's answer for the verification JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChallengeResult {
    pub prompts: Vec<Prompt>,
    pub completed: usize,
    pub accepted: bool,
}

/// A sequence of prompts and its progress.
#[derive(Clone, Debug)]
pub struct Challenge {
    prompts: Vec<Prompt>,
    current: usize,
    prompt_since: Option<f64>,
    timeout_s: f64,
    detector: EventDetector,
    failed: Option<String>,
}

/// splitmix64: a few random bits from a seed, so a session's prompts are repeatable in tests.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Challenge {
    /// `count` prompts (1 to 3) drawn from the seed, no prompt twice in a row, each to be done
    /// within `timeout_s`.
    pub fn new(seed: u64, count: usize, timeout_s: f64) -> Challenge {
        Challenge::from_pool(seed, count, &Prompt::ALL, timeout_s)
    }

    /// The same, drawing from `pool` only (at least two prompts where `count` > 1).
    pub fn from_pool(seed: u64, count: usize, pool: &[Prompt], timeout_s: f64) -> Challenge {
        let mut state = seed;
        let mut prompts: Vec<Prompt> = Vec::new();
        let count = if pool.len() < 2 { 1 } else { count.clamp(1, 3) };
        while !pool.is_empty() && prompts.len() < count {
            let p = pool[(splitmix(&mut state) % pool.len() as u64) as usize];
            if prompts.last() != Some(&p) {
                prompts.push(p);
            }
        }
        Challenge::with_prompts(prompts, timeout_s)
    }

    pub fn with_prompts(prompts: Vec<Prompt>, timeout_s: f64) -> Challenge {
        Challenge {
            prompts,
            current: 0,
            prompt_since: None,
            timeout_s,
            detector: EventDetector::default(),
            failed: None,
        }
    }

    pub fn prompts(&self) -> &[Prompt] {
        &self.prompts
    }

    /// Whether `prompt` is still to be done (the current prompt or a later one) in a challenge
    /// that has not failed.
    pub fn still_asks(&self, prompt: Prompt) -> bool {
        self.failed.is_none() && self.prompts[self.current..].contains(&prompt)
    }

    pub fn state(&self) -> ChallengeState {
        if let Some(reason) = &self.failed {
            return ChallengeState::Failed {
                reason: reason.clone(),
            };
        }
        match self.prompts.get(self.current) {
            Some(&prompt) => ChallengeState::Prompting {
                index: self.current,
                prompt,
            },
            None => ChallengeState::Passed,
        }
    }

    /// One frame of the face at `seconds`: the challenge moves on when the current prompt's
    /// event happens after it was shown; the opposite turn, or the time limit, fails it.
    pub fn observe(&mut self, seconds: f64, cues: &Cues) -> ChallengeState {
        if !matches!(self.state(), ChallengeState::Prompting { .. }) {
            return self.state();
        }
        let ev = self.detector.observe(cues);
        let since = *self.prompt_since.get_or_insert(seconds);
        let prompt = self.prompts[self.current];
        let (done, wrong) = match prompt {
            Prompt::Blink => (ev.blink, false),
            Prompt::TurnLeft => (ev.turned_left, ev.turned_right),
            Prompt::TurnRight => (ev.turned_right, ev.turned_left),
            Prompt::Smile => (ev.smile, false),
        };
        if wrong {
            self.failed = Some(format!(
                "turned the other way when asked to {}",
                prompt.instruction()
            ));
        } else if done {
            self.current += 1;
            self.prompt_since = Some(seconds);
        } else if seconds - since > self.timeout_s {
            self.failed = Some(format!(
                "no {} within {:.0} s",
                prompt.event(),
                self.timeout_s
            ));
        }
        self.state()
    }

    pub fn result(&self) -> ChallengeResult {
        ChallengeResult {
            prompts: self.prompts.clone(),
            completed: self.current,
            accepted: self.state() == ChallengeState::Passed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(yaw: f32) -> Cues {
        Cues {
            eyes: Some(0.3),
            yaw_deg: yaw,
            happy: Some(0.1),
        }
    }

    fn shut(yaw: f32) -> Cues {
        Cues {
            eyes: Some(0.1),
            ..open(yaw)
        }
    }

    #[test]
    fn prompts_are_seeded_and_never_repeat_back_to_back() {
        let a = Challenge::new(42, 3, 5.0);
        assert_eq!(a.prompts(), Challenge::new(42, 3, 5.0).prompts());
        assert_eq!(a.prompts().len(), 3);
        assert!(a.prompts().windows(2).all(|w| w[0] != w[1]));
        let many: std::collections::BTreeSet<Vec<Prompt>> = (0..50)
            .map(|s| Challenge::new(s, 2, 5.0).prompts().to_vec())
            .collect();
        assert!(many.len() > 5, "seeds give different sequences");
    }

    #[test]
    fn a_person_following_the_prompts_passes() {
        let mut c =
            Challenge::with_prompts(vec![Prompt::Blink, Prompt::TurnLeft, Prompt::Smile], 4.0);
        let mut t = 0.0;
        let mut feed = |c: &mut Challenge, cues: Cues| {
            t += 1.0 / 15.0;
            c.observe(t, &cues)
        };
        assert!(c.still_asks(Prompt::Blink) && c.still_asks(Prompt::Smile));
        for _ in 0..5 {
            feed(&mut c, open(2.0));
        }
        feed(&mut c, shut(2.0));
        feed(&mut c, shut(2.0));
        let s = feed(&mut c, open(2.0));
        assert!(!c.still_asks(Prompt::Blink) && c.still_asks(Prompt::Smile));
        assert_eq!(
            s,
            ChallengeState::Prompting {
                index: 1,
                prompt: Prompt::TurnLeft
            }
        );
        for yaw in [8.0, 15.0, 24.0] {
            feed(&mut c, open(yaw));
        }
        assert_eq!(
            c.state(),
            ChallengeState::Prompting {
                index: 2,
                prompt: Prompt::Smile
            }
        );
        let s = feed(
            &mut c,
            Cues {
                happy: Some(0.9),
                ..open(0.0)
            },
        );
        assert_eq!(s, ChallengeState::Passed);
        assert!(c.result().accepted);
    }

    #[test]
    fn a_still_photo_and_a_replay_doing_other_things_fail() {
        // A photo: the same cues every frame, so no blink ever comes.
        let mut c = Challenge::with_prompts(vec![Prompt::Blink, Prompt::Smile], 3.0);
        let mut state = c.state();
        for i in 0..100 {
            state = c.observe(i as f64 / 15.0, &open(1.0));
        }
        assert_eq!(
            state,
            ChallengeState::Failed {
                reason: "no blink within 3 s".into()
            }
        );
        assert_eq!(c.result().completed, 0);
        // A replay that turns right when asked to turn left.
        let mut c = Challenge::with_prompts(vec![Prompt::TurnLeft], 3.0);
        for i in 0..5 {
            c.observe(i as f64 / 15.0, &open(0.0));
        }
        let s = c.observe(0.5, &open(-25.0));
        assert!(matches!(s, ChallengeState::Failed { .. }), "{s:?}");
        // Eyes shut for a second is not a blink.
        let mut c = Challenge::with_prompts(vec![Prompt::Blink], 3.0);
        for i in 0..5 {
            c.observe(i as f64 / 15.0, &open(0.0));
        }
        for i in 5..25 {
            c.observe(i as f64 / 15.0, &shut(0.0));
        }
        assert!(matches!(
            c.observe(2.0, &open(0.0)),
            ChallengeState::Prompting { .. }
        ));
    }

    #[test]
    fn without_eye_readings_no_blink_is_seen() {
        let mut d = EventDetector::default();
        let unread = Cues {
            eyes: None,
            ..open(0.0)
        };
        let read = |d: &mut EventDetector, c: Cues| d.observe(&c).blink;
        assert!((0..30).all(|_| !read(&mut d, unread)));
        // The same detector sees one as soon as readings come.
        for _ in 0..5 {
            read(&mut d, open(0.0));
        }
        read(&mut d, shut(0.0));
        assert!(read(&mut d, open(0.0)));
    }
}
