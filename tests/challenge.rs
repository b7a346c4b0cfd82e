//! The active challenge on real landmarks: a photo waved and tilted in front of the camera (the
//! bundled portrait, warped frame by frame) never blinks, smiles on cue or turns its head, so
//! every prompt times out; the mesh's yaw cue follows a real head turn, not a tilted print; the
//! eye model's openness sees the blinks labelled by eye in real clips and nothing where the
//! eyes stay open.

mod common;

use common::{repo, shared};
use veriface::face::{EyeModel, FaceDetector, PresenceCheck};
use veriface::frame::Frame;
use veriface::infer::{tract::TractBackend, Backend};
use veriface::liveness::challenge::{
    cues, Challenge, ChallengeState, Cues, EventDetector, Prompt, TURN_DEG,
};
use veriface::manifest::Manifest;
use veriface::source::read_image;

struct Mesh {
    detector: FaceDetector,
    mesh: PresenceCheck,
    eyes: EyeModel,
}

fn mesh() -> Mesh {
    let m = Manifest::load(&repo().join("models/manifest.toml")).unwrap();
    let b = TractBackend::new(1);
    Mesh {
        // Short range, then full range where it finds no face (the small faces of broadcasts).
        detector: FaceDetector::new(
            b.load(&m, "face_short").unwrap(),
            m.detector["face_short"].clone(),
            m.model("face_short").unwrap(),
        )
        .unwrap()
        .with_fallback(
            b.load(&m, "face_full").unwrap(),
            m.detector["face_full"].clone(),
            m.model("face_full").unwrap(),
        )
        .unwrap(),
        mesh: PresenceCheck::new(
            b.load(&m, "face_mesh").unwrap(),
            m.model("face_mesh").unwrap(),
        )
        .unwrap(),
        eyes: EyeModel::new(
            b.load(&m, "face_eyes").unwrap(),
            m.model("face_eyes").unwrap(),
        )
        .unwrap(),
    }
}

impl Mesh {
    /// The challenge's cues and the mesh points (for the planarity cue) of the first face.
    fn cues(&self, frame: &Frame) -> Option<(Cues, Vec<[f32; 3]>)> {
        let faces = self.detector.detect(frame).ok()?;
        let face = faces.first()?;
        let mesh = self.mesh.landmarks(frame, face).unwrap();
        let eyes = self.eyes.openness(frame, &mesh).unwrap();
        Some((cues(&mesh, Some(eyes), None), mesh.points))
    }
}

/// The photo as a 480x480 camera frame: moved, scaled, rotated in plane and tilted about its
/// vertical axis by `tilt` (a projective warp: the far edge shrinks), grey around it.
fn photo_frame(photo: &Frame, dx: f64, scale: f64, roll_deg: f64, tilt: f64) -> Frame {
    let (w, h) = (480usize, 480usize);
    let mut rgb = vec![70u8; w * h * 3];
    let (pw, ph) = (photo.width as f64, photo.height as f64);
    let (cs, sn) = (roll_deg.to_radians().cos(), roll_deg.to_radians().sin());
    for y in 0..h {
        for x in 0..w {
            // Output pixel -> photo coordinates: undo translation, tilt, roll and scale.
            let (u, v) = (x as f64 - w as f64 / 2.0 - dx, y as f64 - h as f64 / 2.0);
            // Tilt: x is foreshortened and y shrinks with depth along x.
            let depth = 1.0 + tilt * u / (w as f64 / 2.0);
            let (u, v) = (u * depth / tilt.cos().max(0.3), v * depth);
            let (u, v) = ((cs * u + sn * v) / scale, (-sn * u + cs * v) / scale);
            let (sx, sy) = (u + pw / 2.0, v + ph / 2.0);
            if sx >= 0.0 && sy >= 0.0 && sx < pw - 1.0 && sy < ph - 1.0 {
                let i = (sy as usize * photo.width + sx as usize) * 3;
                let o = (y * w + x) * 3;
                rgb[o..o + 3].copy_from_slice(&photo.rgb[i..i + 3]);
            }
        }
    }
    Frame::new(w, h, rgb)
}

fn portrait() -> Frame {
    // The astronaut's head and shoulders.
    let img = read_image(&repo().join("samples/astronaut.png")).unwrap();
    let (x0, y0, side) = (110, 20, 230);
    let mut rgb = Vec::with_capacity(side * side * 3);
    for y in y0..y0 + side {
        rgb.extend_from_slice(&img.rgb[(y * img.width + x0) * 3..(y * img.width + x0 + side) * 3]);
    }
    Frame::new(side, side, rgb)
}

/// The portrait as a phone shows it: a dark bezel, the screen's RGB sub-pixel stripes, a lifted
/// gamma with a blue cast, and a glare spot.
fn on_a_phone(photo: &Frame) -> Frame {
    let bezel = 14;
    let (w, h) = (photo.width + 2 * bezel, photo.height + 2 * bezel);
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let inside = (bezel..bezel + photo.width).contains(&x)
                && (bezel..bezel + photo.height).contains(&y);
            if !inside {
                rgb.extend_from_slice(&[20, 20, 24]);
                continue;
            }
            let i = ((y - bezel) * photo.width + (x - bezel)) * 3;
            let (gx, gy) = (x as f32 - 0.7 * w as f32, y as f32 - 0.3 * h as f32);
            let glare = 40.0 * (-(gx * gx + gy * gy) / (2.0 * (0.2 * w as f32).powi(2))).exp();
            for c in 0..3 {
                let stripe = if x % 3 == c { 1.0 } else { 0.75 };
                let lifted = 255.0 * (photo.rgb[i + c] as f32 / 255.0).powf(0.85);
                let cast = if c == 2 { 10.0 } else { 0.0 };
                rgb.push((lifted * stripe + cast + glare).clamp(0.0, 255.0) as u8);
            }
        }
    }
    Frame::new(w, h, rgb)
}

#[test]
fn a_waved_and_tilted_photo_fails_every_prompt() {
    let m = mesh();
    let points = waved_fails_every_prompt(&m, "print", &portrait());
    check_planarity("photo", &points);
}

#[test]
fn the_photo_on_a_waved_phone_fails_every_prompt() {
    waved_fails_every_prompt(&mesh(), "phone", &on_a_phone(&portrait()));
}

/// Waves, rolls and tilts `photo` in front of the camera for 4 s: no prompt passes. Returns
/// the mesh points of every frame.
fn waved_fails_every_prompt(m: &Mesh, name: &str, photo: &Frame) -> Vec<Vec<[f32; 3]>> {
    let mut yaws = Vec::new();
    let mut ears = Vec::new();
    let frames: Vec<Frame> = (0..60)
        .map(|i| {
            let t = i as f64 / 15.0;
            photo_frame(
                photo,
                30.0 * (t * 2.0).sin(),
                1.4 + 0.15 * (t * 1.3).sin(),
                8.0 * (t * 1.7).sin(),
                0.45 * (t * 1.1).sin(),
            )
        })
        .collect();
    let (seen, points): (Vec<Cues>, Vec<Vec<[f32; 3]>>) =
        frames.iter().filter_map(|f| m.cues(f)).unzip();
    assert!(
        seen.len() >= 50,
        "{name}: the face is found in {} of 60 frames",
        seen.len()
    );
    for c in &seen {
        yaws.push(c.yaw_deg);
        ears.push(c.eyes.unwrap());
    }
    let spread = |v: &[f32]| {
        v.iter().cloned().fold(f32::MIN, f32::max) - v.iter().cloned().fold(f32::MAX, f32::min)
    };
    eprintln!(
        "{name}: yaw {:.1}..{:.1} deg, eye openness {:.3}..{:.3}",
        yaws.iter().cloned().fold(f32::MAX, f32::min),
        yaws.iter().cloned().fold(f32::MIN, f32::max),
        ears.iter().cloned().fold(f32::MAX, f32::min),
        ears.iter().cloned().fold(f32::MIN, f32::max)
    );
    for prompt in [Prompt::Blink, Prompt::TurnLeft, Prompt::TurnRight] {
        let mut c = Challenge::with_prompts(vec![prompt], 3.0);
        let mut state = c.state();
        for (i, cue) in seen.iter().enumerate() {
            state = c.observe(i as f64 / 15.0, cue);
        }
        assert!(
            matches!(state, ChallengeState::Failed { .. }),
            "{name}, {prompt:?}: {state:?} (yaw spread {:.1}, openness spread {:.3})",
            spread(&yaws),
            spread(&ears)
        );
    }
    assert!(spread(&yaws) < 2.0 * TURN_DEG, "{name}");
    points
}

/// Real head turns, labelled by eye in tests/data/challenge/turns.json: a challenge asking for
/// that turn passes, one asking for the other way fails as soon as the head turns, and the yaw
/// cue's sign says which way the head went.
#[test]
fn real_head_turns_pass_the_matching_prompt_and_fail_the_opposite() {
    let m = mesh();
    let labels = labels("turns");
    for label in labels["turns"].as_array().unwrap() {
        let clip = label["clip"].as_str().unwrap();
        let (from, to) = (
            label["from"].as_u64().unwrap(),
            label["to"].as_u64().unwrap(),
        );
        let left = label["turn"] == "left";
        let seen = clip_cues(&m, clip, from, to);
        let frames: Vec<(f64, Cues)> = seen.iter().map(|(_, t, c, _)| (*t, *c)).collect();
        // Every third frame: motion between them, as a camera at 10 fps sees it.
        let points: Vec<Vec<[f32; 3]>> = seen
            .into_iter()
            .filter(|(n, ..)| n % 3 == 0)
            .map(|(.., p)| p)
            .collect();
        let wanted = (to - from) as usize;
        assert!(
            frames.len() * 10 >= wanted * 9,
            "{clip:?}: face in {} of {wanted} frames",
            frames.len()
        );
        let rest = frames[0].1.yaw_deg;
        let furthest = frames
            .iter()
            .map(|(_, c)| c.yaw_deg - rest)
            .fold(0f32, |a, d| if d.abs() > a.abs() { d } else { a });
        assert_eq!(
            furthest > 0.0,
            left,
            "{clip:?}: the turn reads {furthest:.1} deg from rest"
        );
        let run = |prompt| {
            let mut c = Challenge::with_prompts(vec![prompt], 8.0);
            let mut state = c.state();
            for (t, cue) in &frames {
                state = c.observe(*t, cue);
            }
            state
        };
        let (asked, opposite) = match left {
            true => (Prompt::TurnLeft, Prompt::TurnRight),
            false => (Prompt::TurnRight, Prompt::TurnLeft),
        };
        assert_eq!(run(asked), ChallengeState::Passed, "{clip:?}");
        let failed = run(opposite);
        assert!(
            matches!(&failed, ChallengeState::Failed { reason } if reason.contains("other way")),
            "{clip:?}: {failed:?}"
        );
        check_planarity(label["clip"].as_str().unwrap(), &points);
    }
}

/// tests/data/challenge/NAME.json.
fn labels(name: &str) -> serde_json::Value {
    let path = repo().join(format!("tests/data/challenge/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (frame number, seconds, cues, mesh points) of every frame from..=to of a ../shared clip
/// where a face is found.
type Seen = (u64, f64, Cues, Vec<[f32; 3]>);

fn clip_cues(m: &Mesh, clip: &str, from: u64, to: u64) -> Vec<Seen> {
    let mut src = veriface::source::open(&shared().join(clip)).unwrap();
    let mut out = Vec::new();
    while let Some(tf) = src.next_frame().unwrap() {
        if tf.index > to {
            break;
        }
        if tf.index >= from {
            if let Some((c, p)) = m.cues(&tf.frame) {
                out.push((tf.index, tf.seconds, c, p));
            }
        }
    }
    out
}

/// Blinks labelled by eye in tests/data/challenge/blinks.json: the eye model's openness gives
/// one blink event for each (on a frame of the blink or within 3 after, when the lids reopen)
/// and none anywhere else; a blink prompt shown in an open stretch passes at the next blink.
#[test]
fn labelled_blinks_are_seen_and_open_eyes_give_none() {
    let m = mesh();
    let labels = labels("blinks");
    let range = |v: &serde_json::Value| (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
    for label in labels["clips"].as_array().unwrap() {
        let clip = label["clip"].as_str().unwrap();
        let (from, to) = (
            label["from"].as_u64().unwrap(),
            label["to"].as_u64().unwrap(),
        );
        let frames = clip_cues(&m, clip, from, to);
        assert_eq!(
            frames.len() as u64,
            to - from + 1,
            "{clip}: a face in every frame"
        );
        let mut detector = EventDetector::default();
        let events: Vec<u64> = frames
            .iter()
            .filter(|(_, _, c, _)| detector.observe(c).blink)
            .map(|(n, ..)| *n)
            .collect();
        let openness = |a: u64, b: u64| -> Vec<String> {
            frames
                .iter()
                .filter(|(n, ..)| (a..=b).contains(n))
                .map(|(n, _, c, _)| format!("{n}:{:.2}", c.eyes.unwrap()))
                .collect()
        };
        eprintln!("{clip}: blink events at {events:?}");
        // An event fires when the lids reopen: on the blink's frames or the 3 after.
        let windows: Vec<(u64, u64)> = label["blinks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (range(b).0, range(b).1 + 3))
            .collect();
        for &(a, b) in &windows {
            let seen = events.iter().filter(|e| (a..=b).contains(*e)).count();
            assert!(
                seen == 1,
                "{clip}: the blink at {a}-{} gave {seen} events ({:?})",
                b - 3,
                openness(a.saturating_sub(3), b)
            );
        }
        for e in &events {
            assert!(
                windows.iter().any(|&(a, b)| (a..=b).contains(e)),
                "{clip}: a blink event at {e} where no blink is labelled ({:?})",
                openness(e.saturating_sub(5), e + 1)
            );
        }
        // The blink prompt shown at the start of each open stretch passes by the next blink.
        for open in label["open"].as_array().unwrap() {
            let (a, _) = range(open);
            let Some(next) = label["blinks"]
                .as_array()
                .unwrap()
                .iter()
                .map(range)
                .find(|&(s, _)| s > a)
            else {
                continue;
            };
            let mut c = Challenge::with_prompts(vec![Prompt::Blink], 5.0);
            let mut state = c.state();
            for (_, t, cue, _) in frames.iter().filter(|(n, ..)| (a..=next.1 + 3).contains(n)) {
                state = c.observe(*t, cue);
            }
            assert_eq!(
                state,
                ChallengeState::Passed,
                "{clip}: prompt at {a}, blink at {next:?}"
            );
        }
    }
}

/// The planarity cue on real landmarks (README gives the figures): a waved and tilted photo
/// against real head turns. What is asserted holds for any correct fit: the face moved beyond
/// a similarity, and one homography explains at least as much as a similarity (residual below
/// motion). The cue does not separate photo from head well enough to decide, so sessions do not
/// use it.
fn check_planarity(name: &str, seq: &[Vec<[f32; 3]>]) {
    use veriface::liveness::planarity::step;
    let moved: Vec<f64> = seq[1..]
        .iter()
        .filter_map(|p| step(&seq[0], p))
        .filter(|s| s.motion >= 0.015)
        .map(|s| s.residual / s.motion)
        .collect();
    assert!(moved.len() >= 10, "{name}: moved in {} steps", moved.len());
    assert!(moved.iter().all(|r| *r <= 1.0), "{name}: {moved:?}");
    let mut sorted = moved.clone();
    sorted.sort_by(f64::total_cmp);
    eprintln!(
        "planarity {name}: {} steps moved; residual/motion min {:.2} median {:.2} max {:.2}",
        sorted.len(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
}
