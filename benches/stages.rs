//! Criterion benchmarks of every pipeline stage on the bundled models, photo and clip:
//! `cargo bench --bench stages` (add `-- <filter>` for one stage). `veriface bench` prints the
//! same stages as one table or JSON, which benches/peer/compare.sh sets against the peer.
//! Timings, so run them on an idle machine; tests never assert on time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use veriface::analysis::CropSpec;
use veriface::daemon::config::DAEMON_SCHEDULE;
use veriface::infer::open_backend;
use veriface::manifest::Manifest;
use veriface::pipeline::{Engine, EngineConfig, Schedule};
use veriface::source::{read_image, TimedFrame};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn engine(threads: usize) -> Engine {
    Engine::load(EngineConfig {
        manifest: repo("models/manifest.toml"),
        threads,
        ..EngineConfig::default()
    })
    .expect("bundled models load")
}

fn clip_frames() -> Vec<TimedFrame> {
    let mut source =
        veriface::source::open(&repo("samples/astronaut_zoom.avi")).expect("sample clip");
    let mut frames = Vec::new();
    while let Some(f) = source.next_frame().expect("sample clip decodes") {
        frames.push(f);
    }
    frames
}

fn stages(c: &mut Criterion) {
    let engine = engine(1);
    let photo = repo("samples/astronaut.png");
    let frame = read_image(&photo).expect("sample photo");
    let face = engine.detector.detect(&frame).expect("detect")[0].clone();

    let mut g = c.benchmark_group("stage");
    g.bench_function("decode png", |b| b.iter(|| read_image(&photo).unwrap()));
    g.bench_function("detect", |b| {
        b.iter(|| engine.detector.detect(&frame).unwrap())
    });
    let deepfake = engine.analyzer.deepfake.as_ref().expect("deepfake model");
    g.bench_function("deepfake crop+resize", |b| {
        b.iter(|| deepfake.crop.tensor(&frame, &face))
    });
    g.bench_function("deepfake frame model", |b| {
        b.iter(|| engine.analyzer.deepfake_frame(&frame, &face).unwrap())
    });
    let (_, features) = engine
        .analyzer
        .deepfake_frame(&frame, &face)
        .unwrap()
        .unwrap();
    let temporal = engine.analyzer.temporal.as_ref().expect("GRU");
    let mut memory = temporal.start();
    g.bench_function("GRU step", |b| {
        b.iter(|| temporal.step(&mut memory, &features).unwrap())
    });
    g.bench_function("emotion (crop+model)", |b| {
        b.iter(|| engine.analyzer.emotion(&frame, &face).unwrap())
    });
    g.finish();

    // The backbone forms on one crop: f32 and the two int8 encodings (see README Performance).
    let mut g = c.benchmark_group("backbone");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let backend = open_backend(&engine.config.backend, 1).unwrap();
    for key in ["backbone", "backbone_int8_qdq", "backbone_int8_qop"] {
        let Some(spec) = engine.manifest.models.get(key) else {
            continue;
        };
        let model = backend.load(&engine.manifest, key).unwrap();
        let input = CropSpec::from_model(spec).unwrap().tensor(&frame, &face);
        g.bench_function(key, |b| {
            b.iter(|| model.run(std::slice::from_ref(&input)).unwrap())
        });
    }
    // The f32 form in the layout the manifest did not choose (tract_channels_last).
    let mut other_layout = Manifest::load(&repo("models/manifest.toml")).unwrap();
    let spec = other_layout.model_mut("backbone").unwrap();
    spec.tract_channels_last = !spec.tract_channels_last;
    let name = match spec.tract_channels_last {
        true => "backbone channels last",
        false => "backbone channels first",
    };
    let input = CropSpec::from_model(spec).unwrap().tensor(&frame, &face);
    let model = backend.load(&other_layout, "backbone").unwrap();
    g.bench_function(name, |b| {
        b.iter(|| model.run(std::slice::from_ref(&input)).unwrap())
    });
    g.finish();

    // End to end over the sample clip (decode excluded): every model on every frame, and the
    // daemon's schedule; one thread, and tract's matrix-multiply pool on every core.
    let frames = clip_frames();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut g = c.benchmark_group("clip");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    let mut run = |name: &str, engine: &Engine, schedule: Schedule, threads: usize| {
        g.bench_with_input(BenchmarkId::new(name, threads), &schedule, |b, s| {
            b.iter(|| {
                let mut stream = engine.stream().with_schedule(*s).expect("valid schedule");
                for f in &frames {
                    stream.process(f).unwrap();
                }
            })
        });
    };
    run("every frame", &engine, Schedule::EVERY_FRAME, 1);
    run("realtime", &engine, DAEMON_SCHEDULE, 1);
    if cores > 1 {
        let pooled = self::engine(cores);
        run("every frame", &pooled, Schedule::EVERY_FRAME, cores);
        run("realtime", &pooled, DAEMON_SCHEDULE, cores);
    }
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
