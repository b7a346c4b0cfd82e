//! `veriface bench`: per-stage latency on real models, one thread or --threads N, as a table or JSON.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::pipeline::{Engine, EngineConfig, Schedule, StageTimings, DAEMON_SCHEDULE};
use crate::source::{self, TimedFrame};

#[derive(Serialize)]
pub struct StageRow {
    pub stage: String,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub runs: usize,
}

fn row(stage: &str, mut samples: Vec<Duration>) -> StageRow {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = samples.len().max(1);
    StageRow {
        stage: stage.into(),
        mean_ms: samples.iter().map(|d| ms(*d)).sum::<f64>() / n as f64,
        p50_ms: samples.get(n / 2).map(|d| ms(*d)).unwrap_or(0.0),
        p90_ms: samples.get(n * 9 / 10).map(|d| ms(*d)).unwrap_or(0.0),
        runs: samples.len(),
    }
}

fn time<T>(iterations: u32, mut f: impl FnMut() -> Result<T>) -> Result<Vec<Duration>> {
    f()?; // warm-up: first run allocates
    let mut v = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(v)
}

/// One manifest model on zero inputs: load time, then `iterations` timed runs (no warm-up run,
/// so an instruction count over N runs is exactly load + N inferences). `choice` overrides the
/// manifest's tract convolution layout and own-op choice, to measure both.
pub fn one_model(
    config: &EngineConfig,
    key: &str,
    choice: TractChoice,
    iterations: u32,
    json: bool,
) -> Result<std::process::ExitCode> {
    let manifest = model_manifest(config, key, choice)?;
    let t = Instant::now();
    let backend = crate::infer::open_backend(&config.backend, config.threads)?;
    let model = backend.load(&manifest, key)?;
    let load = t.elapsed();
    let inputs = crate::infer::zero_inputs(&manifest, key)?;
    let mut runs = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let t = Instant::now();
        model.run(&inputs)?;
        runs.push(t.elapsed());
    }
    let rows = vec![
        row(&format!("{key} load ({})", model.provider()), vec![load]),
        row(&format!("{key} run ({})", model.provider()), runs),
    ];
    print_rows(&rows, None, json)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// How one model runs under tract, where a bench overrides the manifest's choice.
#[derive(Clone, Copy, Debug, Default)]
pub struct TractChoice {
    /// Convolutions channel-last (`tract_channels_last`).
    pub channels_last: Option<bool>,
    /// veriface's depthwise, pointwise and max-pool ops in place of tract's (`tract_own_ops`).
    pub own_ops: Option<bool>,
}

/// The manifest, with `key`'s tract choices overridden where asked.
fn model_manifest(
    config: &EngineConfig,
    key: &str,
    choice: TractChoice,
) -> Result<crate::manifest::Manifest> {
    let mut manifest = crate::manifest::Manifest::load(&config.manifest)?;
    let spec = manifest.model_mut(key)?;
    if let Some(channels_last) = choice.channels_last {
        spec.tract_channels_last = channels_last;
    }
    if let Some(own_ops) = choice.own_ops {
        spec.tract_own_ops = own_ops;
    }
    Ok(manifest)
}

/// Where one model's time goes under tract: per operator type, then the slowest nodes.
pub fn profile_model(
    config: &EngineConfig,
    key: &str,
    choice: TractChoice,
    iterations: u32,
    mark_nodes: bool,
    json: bool,
) -> Result<std::process::ExitCode> {
    let manifest = model_manifest(config, key, choice)?;
    let backend = crate::infer::tract::TractBackend::new(config.threads);
    let nodes = backend.profile(&manifest, key, iterations, mark_nodes)?;
    let total: f64 = nodes.iter().map(|n| n.mean_ms).sum();
    let mut ops: Vec<OpTime> = Vec::new();
    for node in &nodes {
        match ops.iter_mut().find(|o| o.op == node.op) {
            Some(o) => {
                o.nodes += 1;
                o.mean_ms += node.mean_ms;
            }
            None => ops.push(OpTime {
                op: node.op.clone(),
                nodes: 1,
                mean_ms: node.mean_ms,
            }),
        }
    }
    ops.sort_by(|a, b| b.mean_ms.total_cmp(&a.mean_ms));
    let spec = manifest.model(key)?;
    let layout = match spec.tract_channels_last {
        true => "NHWC",
        false => "NCHW",
    };
    let ops_from = match spec.tract_own_ops {
        true => "veriface's depthwise, pointwise and max-pool ops",
        false => "tract's ops only",
    };
    if json {
        let doc = serde_json::json!({
            "model": key, "conv_layout": layout, "own_ops": spec.tract_own_ops,
            "threads": config.threads, "runs": iterations,
            "total_ms": total, "ops": ops, "nodes": nodes,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "{key} under tract, convolutions {layout}, {ops_from}, {} thread(s): {total:.2} ms per \
         inference (sum of node times, mean of {iterations} runs)",
        config.threads
    );
    println!(
        "{:28} {:>6} {:>9} {:>6}",
        "operator", "nodes", "mean ms", "share"
    );
    for o in &ops {
        println!(
            "{:28} {:>6} {:>9.3} {:>5.1}%",
            o.op,
            o.nodes,
            o.mean_ms,
            100.0 * o.mean_ms / total.max(f64::MIN_POSITIVE)
        );
    }
    println!("slowest nodes:");
    for n in nodes.iter().take(15) {
        println!(
            "{:>9.3} ms  {:20} {:4} {:?}  {}",
            n.mean_ms, n.op, n.output_type, n.output_shape, n.name
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct OpTime {
    op: String,
    nodes: usize,
    mean_ms: f64,
}

/// Every stage on the clip's first frame (`iterations` runs each), then the clip end to end
/// `passes` times, each pass with a fresh stream (tracker, GRU state, schedule).
pub fn run(
    config: EngineConfig,
    clip: &Path,
    iterations: u32,
    passes: u32,
    json: bool,
) -> Result<std::process::ExitCode> {
    let t = Instant::now();
    let engine = Engine::load(config.clone())?;
    let load = t.elapsed();
    let mut rows = vec![row("model load (all)", vec![load])];

    let t = Instant::now();
    let mut src = source::open(clip)?;
    let mut frames = Vec::new();
    while let Some(f) = src.next_frame()? {
        frames.push(f);
    }
    let decode = t.elapsed();
    if frames.is_empty() {
        bail!("{}: no frames", clip.display());
    }
    rows.push(row(
        "decode (per frame)",
        vec![decode / frames.len() as u32],
    ));
    let frame = &frames[0].frame;
    rows.push(row(
        "detect: preprocess",
        time(iterations, || Ok(engine.detector.input(frame)))?,
    ));
    rows.push(row(
        "detect: total",
        time(iterations, || engine.detector.detect(frame))?,
    ));
    let det = engine
        .detector
        .detect(frame)?
        .into_iter()
        .next()
        .with_context(|| format!("{}: no face in the first frame", clip.display()))?;
    // Part of "detect: total" for every face found; the peer has no such check.
    if let Some(check) = engine.detector.presence_check() {
        rows.push(row(
            "detect: presence check (per face)",
            time(iterations, || check.presence(frame, &det))?,
        ));
    }
    rows.extend(face_stage_rows(&engine, frame, &det, iterations)?);
    // End to end, like the peer: every model on every frame.
    let every = end_to_end(&engine, &frames, Schedule::EVERY_FRAME, passes)?;
    rows.push(row(
        "end to end per frame (no decode)",
        vec![every.per_frame],
    ));
    // The daemon's schedule: detector every 3rd frame, faces re-analysed when they changed.
    let realtime = end_to_end(&engine, &frames, DAEMON_SCHEDULE, passes)?;
    rows.push(row(
        "end to end per frame, realtime schedule",
        vec![realtime.per_frame],
    ));
    let summary = Summary {
        clip: clip.to_path_buf(),
        frames: frames.len(),
        passes,
        threads: engine.config.threads,
        fps: every.fps,
        realtime_fps: realtime.fps,
        realtime_detector_runs: realtime.timings.detector_runs,
        realtime_analyses: realtime.timings.analyses,
        realtime_reused: realtime.timings.reused,
        every_frame_split: SplitMs::per_frame(&every.timings, frames.len()),
        peak_rss_mib: peak_rss_mib(),
    };
    print_rows(&rows, Some(&summary), json)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Per-face stages on one face: crops, the deepfake frame model and GRU step, emotion, and the
/// backbone forms the manifest holds.
fn face_stage_rows(
    engine: &Engine,
    frame: &crate::frame::Frame,
    det: &crate::face::Detection,
    iterations: u32,
) -> Result<Vec<StageRow>> {
    let mut rows = Vec::new();
    if let Some(df) = &engine.analyzer.deepfake {
        rows.push(row(
            "deepfake crop+resize",
            time(iterations, || Ok(df.crop.tensor(frame, det)))?,
        ));
        rows.push(row(
            "deepfake frame model",
            time(iterations, || engine.analyzer.deepfake_frame(frame, det))?,
        ));
        if let Some(tm) = &engine.analyzer.temporal {
            let (_, features) = engine
                .analyzer
                .deepfake_frame(frame, det)?
                .expect("deepfake model present");
            let mut memory = tm.start();
            rows.push(row(
                "temporal GRU step",
                time(iterations, || tm.step(&mut memory, &features))?,
            ));
        }
    }
    if let Some(em) = &engine.analyzer.emotion {
        rows.push(row(
            "emotion crop+resize",
            time(iterations, || Ok(em.crop.tensor(frame, det)))?,
        ));
        rows.push(row(
            "emotion model",
            time(iterations, || engine.analyzer.emotion(frame, det))?,
        ));
    }
    // Backbone forms, on the same crop, whatever the manifest holds.
    let backend = crate::infer::open_backend(&engine.config.backend, engine.config.threads)?;
    for key in ["backbone", "backbone_int8_qdq", "backbone_int8_qop"] {
        let Some(spec) = engine.manifest.models.get(key) else {
            continue;
        };
        let model = backend.load(&engine.manifest, key)?;
        let crop = crate::analysis::CropSpec::from_model(spec)?;
        let input = crop.tensor(frame, det);
        rows.push(row(
            &format!("{key} ({})", model.provider()),
            time(iterations, || model.run(std::slice::from_ref(&input)))?,
        ));
    }
    Ok(rows)
}

struct EndToEnd {
    per_frame: Duration,
    fps: f64,
    timings: StageTimings,
}

/// Mean time per frame over `passes` passes; the counts are those of one pass (every pass
/// sees the same frames from the same fresh state, so they are equal).
fn end_to_end(
    engine: &Engine,
    frames: &[TimedFrame],
    schedule: Schedule,
    passes: u32,
) -> Result<EndToEnd> {
    let mut took = Duration::ZERO;
    let mut timings = StageTimings::default();
    for _ in 0..passes.max(1) {
        let mut stream = engine.stream().with_schedule(schedule)?;
        let t = Instant::now();
        for f in frames {
            stream.process(f)?;
        }
        took += t.elapsed();
        timings = stream.timings.clone();
    }
    let frames_run = (frames.len() * passes.max(1) as usize).max(1);
    Ok(EndToEnd {
        per_frame: took / frames_run as u32,
        fps: frames_run as f64 / took.as_secs_f64(),
        timings,
    })
}

/// Peak resident memory of this process so far (VmHWM), in MiB; None off Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The clip-level figures of a bench run.
#[derive(Serialize)]
struct Summary {
    clip: std::path::PathBuf,
    frames: usize,
    /// Passes over the clip the end-to-end figures average.
    passes: u32,
    threads: usize,
    /// Every model on every frame.
    fps: f64,
    /// ...and where its frame time went, ms per frame (last pass).
    every_frame_split: SplitMs,
    /// The daemon's schedule, and what it ran.
    realtime_fps: f64,
    realtime_detector_runs: u64,
    realtime_analyses: u64,
    realtime_reused: u64,
    peak_rss_mib: Option<f64>,
}

/// A stream's stage times in ms per frame.
#[derive(Serialize)]
struct SplitMs {
    detect: f64,
    deepfake: f64,
    temporal: f64,
    emotion: f64,
}

impl SplitMs {
    fn per_frame(t: &StageTimings, frames: usize) -> SplitMs {
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / frames.max(1) as f64;
        SplitMs {
            detect: ms(t.detect),
            deepfake: ms(t.deepfake),
            temporal: ms(t.temporal),
            emotion: ms(t.emotion),
        }
    }
}

/// A table, or JSON for tools; `summary` adds the end-to-end lines.
fn print_rows(rows: &[StageRow], summary: Option<&Summary>, json: bool) -> Result<()> {
    if json {
        let mut doc = serde_json::json!({ "stages": rows });
        if let Some(summary) = summary {
            let serde_json::Value::Object(fields) = serde_json::to_value(summary)? else {
                unreachable!("a struct serialises to an object")
            };
            doc.as_object_mut().expect("object").extend(fields);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{:36} {:>9} {:>9} {:>9} {:>6}",
        "stage", "mean ms", "p50 ms", "p90 ms", "runs"
    );
    for r in rows {
        println!(
            "{:36} {:>9.2} {:>9.2} {:>9.2} {:>6}",
            r.stage, r.mean_ms, r.p50_ms, r.p90_ms, r.runs
        );
    }
    if let Some(s) = summary {
        println!(
            "end to end: {:.1} frames/s over {} frames of {} ({} thread(s)), every model on every frame",
            s.fps,
            s.frames,
            s.clip.display(),
            s.threads
        );
        let split = &s.every_frame_split;
        println!(
            "  per frame: detect {:.2} ms, deepfake crop+model {:.2} ms, GRU {:.2} ms, emotion crop+model {:.2} ms",
            split.detect, split.deepfake, split.temporal, split.emotion
        );
        println!(
            "realtime schedule: {:.1} frames/s; detector on {} frames, {} face analyses run, {} kept",
            s.realtime_fps, s.realtime_detector_runs, s.realtime_analyses, s.realtime_reused
        );
        if let Some(mib) = s.peak_rss_mib {
            println!("peak RSS: {mib:.1} MiB (every model form above loaded at once)");
        }
    }
    Ok(())
}
