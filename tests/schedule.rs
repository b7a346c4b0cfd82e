//! The realtime schedule on the real models: the detector runs on its schedule, a face that did
//! not change keeps its last analysis (at most `max_reuse` frames), and a changed face is
//! analysed again.

mod common;

use common::repo;
use veriface::frame::Frame;
use veriface::pipeline::{Engine, EngineConfig, FrameResult, Schedule};
use veriface::source::{read_image, TimedFrame};

fn engine() -> Engine {
    Engine::load(EngineConfig {
        manifest: repo().join("models/manifest.toml"),
        ..EngineConfig::default()
    })
    .expect("bundled models load")
}

fn timed(frames: Vec<Frame>) -> Vec<TimedFrame> {
    frames
        .into_iter()
        .enumerate()
        .map(|(i, frame)| TimedFrame {
            index: i as u64,
            seconds: i as f64 / 30.0,
            frame,
        })
        .collect()
}

fn astronaut() -> Frame {
    read_image(&repo().join("samples/astronaut.png")).unwrap()
}

fn only_face(result: &FrameResult) -> &veriface::pipeline::FaceResult {
    assert_eq!(result.faces.len(), 1, "frame {}: one face", result.index);
    &result.faces[0]
}

#[test]
fn a_still_face_keeps_its_analysis_until_max_reuse() {
    let engine = engine();
    let schedule = Schedule {
        detect_every: 3,
        min_change: 2.0,
        max_reuse: 4,
    };
    let frames = timed(vec![astronaut(); 12]);
    let mut stream = engine.stream().with_schedule(schedule).unwrap();
    let results: Vec<FrameResult> = frames.iter().map(|f| stream.process(f).unwrap()).collect();
    // Detector on frames 0, 3, 6, 9; analyses on 0, 5, 10 (4 frames kept after each).
    assert_eq!(stream.timings.detector_runs, 4);
    let analysed: Vec<u64> = results
        .iter()
        .filter(|r| only_face(r).analysed)
        .map(|r| r.index)
        .collect();
    assert_eq!(analysed, vec![0, 5, 10]);
    assert_eq!((stream.timings.analyses, stream.timings.reused), (3, 9));
    // A kept analysis is the last one, unchanged, and the track id holds across the gaps.
    let first = only_face(&results[0]);
    for r in &results {
        let face = only_face(r);
        assert_eq!(face.track, first.track);
        assert_eq!(face.analysis.deepfake, first.analysis.deepfake);
        assert_eq!(
            face.analysis.emotion.as_ref().map(|e| e.index),
            first.analysis.emotion.as_ref().map(|e| e.index)
        );
    }
    // The every-frame schedule runs every model on every frame of the same input.
    let mut every = engine.stream();
    for f in &frames {
        assert!(only_face(&every.process(f).unwrap()).analysed);
    }
    assert_eq!(every.timings.detector_runs, 12);
    assert_eq!((every.timings.analyses, every.timings.reused), (12, 0));
}

#[test]
fn a_changed_face_is_analysed_again() {
    let engine = engine();
    let still = astronaut();
    // The same face, 40 grey levels brighter: far above the gate, same place for the tracker.
    let mut brighter = still.clone();
    for v in brighter.rgb.iter_mut() {
        *v = v.saturating_add(40);
    }
    let frames = timed(vec![still.clone(), brighter.clone(), still, brighter]);
    let mut stream = engine
        .stream()
        .with_schedule(Schedule {
            detect_every: 2,
            min_change: 2.0,
            max_reuse: 100,
        })
        .unwrap();
    for f in &frames {
        let result = stream.process(f).unwrap();
        assert!(
            only_face(&result).analysed,
            "frame {} changed and was not analysed",
            result.index
        );
    }
    assert_eq!(stream.timings.detector_runs, 2);
    assert_eq!(stream.timings.reused, 0);
}

#[test]
fn out_of_range_schedules_are_refused_at_load_and_on_a_stream() {
    let engine = Engine::load(EngineConfig {
        manifest: repo().join("models/manifest.toml"),
        ..EngineConfig::default()
    })
    .unwrap();
    for bad in [
        Schedule {
            detect_every: 0,
            ..Schedule::EVERY_FRAME
        },
        Schedule {
            min_change: -1.0,
            ..Schedule::EVERY_FRAME
        },
        Schedule {
            min_change: f32::NAN,
            ..Schedule::EVERY_FRAME
        },
    ] {
        let err = Engine::load(EngineConfig {
            manifest: repo().join("models/manifest.toml"),
            schedule: bad,
            ..EngineConfig::default()
        })
        .err()
        .unwrap_or_else(|| panic!("{bad:?} was accepted"));
        let msg = format!("{err:#}");
        assert!(
            msg.contains("detect_every") || msg.contains("min_change"),
            "{msg}"
        );
        assert!(
            engine.stream().with_schedule(bad).is_err(),
            "{bad:?} was accepted by a stream"
        );
    }
}

#[test]
fn a_stream_holds_state_only_for_faces_in_view_and_the_main_one() {
    // A kiosk sees thousands of people: each one's track ends when they leave, and the stream
    // must let its state go, keeping only what the summary needs (the main face).
    let engine = Engine::load(EngineConfig {
        manifest: repo().join("models/manifest.toml"),
        track_max_missed: 2,
        ..EngineConfig::default()
    })
    .unwrap();
    let face = astronaut();
    let empty = Frame::new(face.width, face.height, vec![0; face.rgb.len()]);
    // Six visits, each followed by an empty scene long enough to end the track; the third visit
    // is the longest, so its track is the main face though it ended long before the last frame.
    let mut frames = Vec::new();
    for visit in 0..6 {
        let stay = if visit == 2 { 3 } else { 1 };
        frames.extend(std::iter::repeat_n(face.clone(), stay));
        frames.extend(std::iter::repeat_n(empty.clone(), 4));
    }
    let mut stream = engine
        .stream()
        .with_schedule(Schedule::EVERY_FRAME)
        .unwrap();
    let mut seen = Vec::new();
    let mut ended: Vec<u32> = Vec::new();
    for f in &timed(frames) {
        let result = stream.process(f).unwrap();
        for face in &result.faces {
            if !seen.contains(&face.track) {
                seen.push(face.track);
            }
        }
        ended.extend(&result.ended_tracks);
        assert!(
            stream.tracks_held() <= 2,
            "frame {}: state held for {} tracks",
            result.index,
            stream.tracks_held()
        );
    }
    assert_eq!(seen.len(), 6, "each visit is a new track");
    assert_eq!(ended, seen, "every track ends once, in order");
    let summary = stream.summary();
    assert_eq!(summary.tracks, 6);
    assert_eq!(summary.main_track, Some(seen[2]));
    assert!(
        summary.score.is_some(),
        "the ended main track still gives the score"
    );
}
