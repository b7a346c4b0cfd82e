//! Verdict records on disk: round trip, power loss (a cut at every byte), random corruption,
//! the committed sample of every schema version, record size, and the writer's policies.

mod common;

use std::path::{Path, PathBuf};

use common::scratch;
use proptest::prelude::*;
use veriface::daemon::config::RecordsConfig;
use veriface::sinks::records::{
    decode, decode_file, encode_frame, record_files, short, Decoded, Event, FaceRecord, FreeSpace,
    ModelId, Record, RecordWriter, SessionRecord, StoredEmbedding, MAX_FRAME,
};
use veriface::verdict::session::Reason;
use veriface::verdict::Label;

fn face(track: u32, frame: u64, verdict: Label) -> Record {
    Record {
        wall_ms: 1_795_000_000_000 + frame * 66,
        mono_ms: 12_000 + frame * 66,
        device: short("kiosk-07"),
        event: Event::Face(FaceRecord {
            track,
            frame,
            bbox: [212, 96, 398, 301],
            frame_prob: Some(8123),
            smoothed_prob: Some(7710),
            verdict,
            emotion: Some(3),
            emotion_conf: 91,
            model: 0x1f2e_3d4c,
        }),
    }
}

/// The records of the committed v1 sample: every event kind, in a daemon-like order.
fn sample_records() -> Vec<Record> {
    let mut models = heapless::Vec::new();
    for (key, b) in [
        ("face_short", 0x11u8),
        ("deepfake", 0x22),
        ("emotion", 0x33),
    ] {
        models
            .push(ModelId {
                key: short(key),
                sha256_prefix: [b; 8],
            })
            .unwrap();
    }
    let mut out = vec![Record {
        wall_ms: 1_795_000_000_000,
        mono_ms: 0,
        device: short("kiosk-07"),
        event: Event::Start {
            version: short("0.1.0"),
            models,
        },
    }];
    out.push(face(1, 10, Label::Uncertain));
    out.push(face(1, 25, Label::Fake));
    out.push(Record {
        wall_ms: 1_795_000_003_000,
        mono_ms: 15_000,
        device: short("kiosk-07"),
        event: Event::CameraLost {
            reason: short("/dev/video0: camera disappeared (ENODEV)"),
        },
    });
    out.push(Record {
        wall_ms: 1_795_000_009_000,
        mono_ms: 21_000,
        device: short("kiosk-07"),
        event: Event::CameraBack,
    });
    out.push(face(2, 400, Label::Real));
    let mut unscored = face(3, 401, Label::Unscored);
    if let Event::Face(f) = &mut unscored.event {
        f.frame_prob = None;
        f.smoothed_prob = None;
        f.emotion = None;
        f.emotion_conf = 0;
    }
    out.push(unscored);
    out.push(Record {
        wall_ms: 1_795_000_020_000,
        mono_ms: 32_000,
        device: short("kiosk-07"),
        event: Event::Stop,
    });
    out
}

/// A record file as the writer lays it out: a leading delimiter, then one frame per record.
/// Also returns each record's span, from its leading delimiter to its trailing one inclusive.
fn encode_all(records: &[Record]) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut bytes = vec![0u8];
    let mut spans = Vec::new();
    let mut frame = [0u8; MAX_FRAME + 1];
    for r in records {
        let start = bytes.len() - 1;
        let n = encode_frame(r, &mut frame).unwrap();
        bytes.extend_from_slice(&frame[..n]);
        spans.push((start, bytes.len() - 1));
    }
    (bytes, spans)
}

fn decode_all(bytes: &[u8]) -> Decoded {
    let mut d = Decoded::default();
    decode(bytes, 0, true, &mut d);
    d
}

fn sample_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/records_v1.vfr")
}

/// Schema v1 stays readable: the committed file (written by version 1) decodes to exactly the
/// records it was made of.
#[test]
fn committed_v1_sample_decodes() {
    let bytes = std::fs::read(sample_path()).unwrap();
    assert_eq!(
        bytes[2], 1,
        "the v1 sample's first frame carries schema version 1"
    );
    let d = decode_file(&sample_path()).unwrap();
    assert!(d.damaged.is_empty(), "{:?}", d.damaged);
    let got: Vec<Record> = d.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, sample_records());
}

/// Two verification sessions, one with the opted-in embedding.
fn session_records() -> Vec<Record> {
    let mut rejected = heapless::Vec::new();
    rejected.push(Reason::Match).unwrap();
    rejected.push(Reason::Deepfake).unwrap();
    let values: Vec<f32> = (0..512)
        .map(|i| ((i % 255) as f32 - 127.0) / 2000.0)
        .collect();
    let embedding = StoredEmbedding::quantise(&values);
    let back = embedding.values();
    assert!(values
        .iter()
        .zip(&back)
        .all(|(a, b)| (a - b).abs() <= 0.0635 / 127.0 / 2.0 + 1e-7));
    let session = |ms: u64, event: SessionRecord| Record {
        wall_ms: 1_795_000_030_000 + ms,
        mono_ms: 42_000 + ms,
        device: short("kiosk-07"),
        event: Event::Session(event),
    };
    vec![
        session(
            0,
            SessionRecord {
                verified: true,
                reasons: heapless::Vec::new(),
                match_score: Some(8123),
                match_threshold: 5405,
                deepfake_prob: Some(12),
                deepfake_threshold: 9994,
                live_prob: Some(9871),
                live_threshold: Some(5000),
                frames: 5,
                duration_ms: 640,
                model: 0x87aa_cfe0,
                embedding: Some(embedding),
            },
        ),
        session(
            5_000,
            SessionRecord {
                verified: false,
                reasons: rejected,
                match_score: Some(-312),
                match_threshold: 5405,
                deepfake_prob: Some(9999),
                deepfake_threshold: 9994,
                live_prob: None,
                live_threshold: None,
                frames: 5,
                duration_ms: 710,
                model: 0x87aa_cfe0,
                embedding: None,
            },
        ),
    ]
}

fn sample_v2_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/records_v2.vfr")
}

/// Schema v2 (session records) stays readable the same way.
/// (Regenerate only when adding a version: VERIFACE_WRITE_SAMPLE=1 cargo test --test records.)
#[test]
fn committed_v2_sample_decodes() {
    let mut expected = sample_records();
    expected.extend(session_records());
    if std::env::var_os("VERIFACE_WRITE_SAMPLE").is_some() {
        std::fs::write(sample_v2_path(), encode_all(&expected).0).unwrap();
    }
    let d = decode_file(&sample_v2_path()).unwrap();
    assert!(d.damaged.is_empty(), "{:?}", d.damaged);
    let got: Vec<Record> = d.records.into_iter().map(|(_, r)| r).collect();
    assert_eq!(got, expected);
}

#[test]
fn face_record_size_is_within_budget() {
    let mut frame = [0u8; MAX_FRAME + 1];
    let n = encode_frame(&face(17, 123_456, Label::Fake), &mut frame).unwrap();
    let (file, _) = encode_all(&sample_records());
    println!(
        "face record on disk: {n} bytes (version, postcard, CRC32, COBS, delimiter); \
         sample file: {} records in {} bytes",
        sample_records().len(),
        file.len()
    );
    assert!(n <= 64, "a typical face record takes {n} bytes");
}

#[test]
fn a_cut_at_every_byte_keeps_every_complete_record() {
    let records = sample_records();
    let (bytes, spans) = encode_all(&records);
    for cut in 0..=bytes.len() {
        let d = decode_all(&bytes[..cut]);
        let got: Vec<&Record> = d.records.iter().map(|(_, r)| r).collect();
        // Complete: the frame's last byte is in the file (its delimiter may be cut off).
        let complete = spans.iter().filter(|(_, end)| *end <= cut).count();
        assert!(
            got.len() == complete,
            "cut {cut}: {} records, {complete} complete",
            got.len()
        );
        assert!(got.iter().zip(&records).all(|(g, r)| *g == r), "cut {cut}");
        let mid_frame = spans.iter().any(|(s, e)| *s + 1 < cut && cut < *e);
        assert_eq!(
            !d.damaged.is_empty(),
            mid_frame,
            "cut {cut}: {:?}",
            d.damaged
        );
    }
}

#[test]
fn a_non_record_file_yields_nothing_and_does_not_panic() {
    let png =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/chelsea.png")).unwrap();
    let d = decode_all(&png);
    assert!(d.records.is_empty());
    assert!(!d.damaged.is_empty());
}

fn label() -> impl Strategy<Value = Label> {
    prop_oneof![
        Just(Label::Real),
        Just(Label::Fake),
        Just(Label::Uncertain),
        Just(Label::Unscored),
        Just(Label::NoFace),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    let face = (
        any::<u32>(),
        any::<u64>(),
        any::<[i16; 4]>(),
        proptest::option::of(0u16..=10000),
        proptest::option::of(0u16..=10000),
        label(),
        proptest::option::of(0u8..7),
        0u8..=100,
        any::<u32>(),
    )
        .prop_map(
            |(track, frame, bbox, fp, sp, verdict, emotion, conf, model)| {
                Event::Face(FaceRecord {
                    track,
                    frame,
                    bbox,
                    frame_prob: fp,
                    smoothed_prob: sp,
                    verdict,
                    emotion,
                    emotion_conf: conf,
                    model,
                })
            },
        );
    let start = (
        "[0-9.]{1,16}",
        proptest::collection::vec(("[a-z_0-9]{1,32}", any::<[u8; 8]>()), 0..16),
    )
        .prop_map(|(v, ms)| Event::Start {
            version: short(&v),
            models: ms
                .iter()
                .map(|(k, p)| ModelId {
                    key: short(k),
                    sha256_prefix: *p,
                })
                .collect(),
        });
    let reason = prop_oneof![
        Just(Reason::Match),
        Just(Reason::Deepfake),
        Just(Reason::SecondFace),
        Just(Reason::IdentityChanged),
        Just(Reason::NoFace),
        Just(Reason::Timeout),
        Just(Reason::Liveness),
    ];
    let session = (
        any::<bool>(),
        proptest::collection::vec(reason, 0..6),
        proptest::option::of(any::<i16>()),
        any::<i16>(),
        proptest::option::of(0u16..=10000),
        (0u16..=10000, any::<u16>(), any::<u32>(), any::<u32>()),
        proptest::option::of((0u16..=10000, 0u16..=10000)),
        proptest::option::of((0.0001f32..1.0, proptest::collection::vec(any::<i8>(), 512))),
    )
        .prop_map(
            |(verified, reasons, m, mt, d, (dt, frames, duration_ms, model), live, e)| {
                Event::Session(SessionRecord {
                    verified,
                    reasons: reasons.into_iter().collect(),
                    match_score: m,
                    match_threshold: mt,
                    deepfake_prob: d,
                    deepfake_threshold: dt,
                    live_prob: live.map(|l| l.0),
                    live_threshold: live.map(|l| l.1),
                    frames,
                    duration_ms,
                    model,
                    embedding: e.map(|(scale, v)| StoredEmbedding {
                        scale,
                        values: v.into_iter().collect(),
                    }),
                })
            },
        );
    let event = prop_oneof![
        4 => face,
        1 => session,
        1 => start,
        1 => Just(Event::Stop),
        1 => Just(Event::CameraBack),
        1 => "\\PC{0,64}".prop_map(|s| Event::CameraLost { reason: short(&s) }),
    ];
    (any::<u64>(), any::<u64>(), "\\PC{0,32}", event).prop_map(|(wall_ms, mono_ms, dev, event)| {
        Record {
            wall_ms,
            mono_ms,
            device: short(&dev),
            event,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_record_round_trips(records in proptest::collection::vec(record(), 1..20)) {
        let (bytes, _) = encode_all(&records);
        let d = decode_all(&bytes);
        prop_assert!(d.damaged.is_empty());
        let got: Vec<Record> = d.records.into_iter().map(|(_, r)| r).collect();
        prop_assert_eq!(got, records);
    }

    /// Flipped bytes anywhere: every record whose span is untouched comes back, at its offset,
    /// and nothing that was not written comes back.
    #[test]
    fn random_corruption_loses_only_touched_records(
        records in proptest::collection::vec(record(), 1..30),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
    ) {
        let (mut bytes, spans) = encode_all(&records);
        let hit: Vec<usize> = flips.iter().map(|(i, _)| i.index(bytes.len())).collect();
        for ((_, x), &at) in flips.iter().zip(&hit) {
            bytes[at] ^= x;
        }
        let d = decode_all(&bytes);
        for (r, (s, e)) in records.iter().zip(&spans) {
            if !hit.iter().any(|h| (s..=e).contains(&h)) {
                prop_assert!(d.records.iter().any(|(off, g)| *off == (*s + 1) as u64 && g == r),
                    "intact record at {} lost", s + 1);
            }
        }
        for (off, g) in &d.records {
            let i = spans.iter().position(|(s, _)| (*s + 1) as u64 == *off);
            prop_assert!(i.is_some_and(|i| &records[i] == g), "invented record at {off}");
        }
    }
}

// ---------------------------------------------------------------- the writer

/// Free space that the test sets (the disk-full edge; everything else is the real file system).
struct SetSpace(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl FreeSpace for SetSpace {
    fn free_bytes(&self, _dir: &Path) -> std::io::Result<u64> {
        Ok(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

fn read_dir_records(dir: &Path) -> Vec<Record> {
    record_files(dir)
        .unwrap()
        .iter()
        .flat_map(|f| decode_file(f).unwrap().records)
        .map(|(_, r)| r)
        .collect()
}

#[test]
fn writer_rotates_and_keeps_the_newest_files() {
    let dir = scratch("rotate");
    let cfg = RecordsConfig {
        rotate_kib: 16,
        keep_files: 3,
        flush_ms: 0,
        min_free_mib: 0,
        ..RecordsConfig::default()
    };
    let space = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let mut w = RecordWriter::open(&dir, cfg.clone(), Box::new(SetSpace(space.clone()))).unwrap();
    let total = 2000u64; // ~60 B each: about 7 files of 16 KiB
    for i in 0..total {
        w.write(&face(1, i, Label::Real)).unwrap();
    }
    w.flush(true).unwrap();
    let files = record_files(&dir).unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    let kept = read_dir_records(&dir);
    // The newest records survive, in order, ending with the last one written.
    let frames: Vec<u64> = kept
        .iter()
        .map(|r| match &r.event {
            Event::Face(f) => f.frame,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(*frames.last().unwrap(), total - 1);
    assert!(frames.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(
        frames.len() as u64 > 16 * 1024 * 2 / 64,
        "{} kept",
        frames.len()
    );

    // A restart continues the numbering instead of overwriting.
    drop(w);
    let mut w = RecordWriter::open(&dir, cfg, Box::new(SetSpace(space))).unwrap();
    w.write(&face(9, 0, Label::Fake)).unwrap();
    w.flush(true).unwrap();
    let after = record_files(&dir).unwrap();
    assert!(after.last().unwrap() > files.last().unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writer_pauses_when_the_disk_is_nearly_full_and_resumes() {
    let dir = scratch("space");
    let cfg = RecordsConfig {
        flush_ms: 0,
        min_free_mib: 64,
        ..RecordsConfig::default()
    };
    let space = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1 << 40));
    let mut w = RecordWriter::open(&dir, cfg, Box::new(SetSpace(space.clone()))).unwrap();
    w.write(&face(1, 0, Label::Real)).unwrap();
    space.store(10 << 20, std::sync::atomic::Ordering::Relaxed);
    // The space check runs at most once a second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for i in 1..5 {
        w.write(&face(1, i, Label::Real)).unwrap();
    }
    assert_eq!(w.skipped, 4);
    space.store(1 << 40, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    w.write(&face(1, 5, Label::Fake)).unwrap();
    let frames: Vec<u64> = read_dir_records(&dir)
        .iter()
        .map(|r| match &r.event {
            Event::Face(f) => f.frame,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(frames, [0, 5]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn follow_moves_on_across_rotations_and_never_rereads_a_deleted_file() {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    let dir = scratch("follow");
    let cfg = RecordsConfig {
        dir: dir.display().to_string(),
        flush_ms: 0,
        rotate_kib: 1,
        keep_files: 2,
        min_free_mib: 0,
        ..RecordsConfig::default()
    };
    let space = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
    let mut writer = RecordWriter::open(&dir, cfg, Box::new(SetSpace(space))).unwrap();
    writer.write(&face(1, 0, Label::Real)).unwrap();
    let (tx, rx) = mpsc::channel();
    let followed = dir.clone();
    std::thread::spawn(move || {
        let _ = veriface::sinks::records::follow(&followed, |file, _, r| {
            let Event::Face(f) = &r.event else {
                return Ok(());
            };
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            tx.send((f.frame, name))
                .map_err(|_| anyhow::anyhow!("test over"))
        });
    });
    // About 25 records a file, two files kept: each file is deleted about a second after the
    // daemon left it (the follower polls every 200 ms, so it has moved on long before).
    let last = 150u64;
    for frame in 1..=last {
        writer.write(&face(1, frame, Label::Real)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut files = Vec::new();
    while got.last() != Some(&last) {
        let left = Duration::from_secs(20).saturating_sub(t0.elapsed());
        let (frame, file) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("follow stopped after frames {got:?}"));
        got.push(frame);
        if files.last() != Some(&file) {
            files.push(file);
        }
    }
    let expected: Vec<u64> = (0..=last).collect();
    assert_eq!(got, expected, "every record once, in order");
    assert!(files.len() >= 5, "followed across rotations: {files:?}");
    assert!(
        record_files(&dir).unwrap().len() <= 2,
        "older files were deleted"
    );
    // The file being followed is deleted (nothing newer): nothing is read again.
    writer.flush(true).unwrap();
    for file in record_files(&dir).unwrap() {
        std::fs::remove_file(file).unwrap();
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(800)).is_err(),
        "a deleted file was read again"
    );
}
