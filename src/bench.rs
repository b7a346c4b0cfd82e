//! `veriface bench`: per-stage latency on real models, single thread, as a table or JSON.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::pipeline::{Engine, EngineConfig};
use crate::source::{self, FrameSource};

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
/// so an instruction count over N runs is exactly load + N inferences).
pub fn one_model(
    config: &EngineConfig,
    key: &str,
    iterations: u32,
    json: bool,
) -> Result<std::process::ExitCode> {
    let manifest = crate::manifest::Manifest::load(&config.manifest)?;
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

pub fn run(
    config: EngineConfig,
    clip: &Path,
    iterations: u32,
    json: bool,
) -> Result<std::process::ExitCode> {
    let t = Instant::now();
    let engine = Engine::load(config.clone())?;
    let load = t.elapsed();
    let mut rows = vec![row("model load (all)", vec![load])];

    let t = Instant::now();
    let mut src = source::VideoSource::open(clip)?;
    let mut frames = Vec::new();
    while let Some(f) = src.next_frame()? {
        frames.push(f);
    }
    let decode = t.elapsed();
    if frames.is_empty() {
        bail!("{}: no frames", clip.display());
    }
    rows.push(row(
        "decode (ffmpeg, per frame)",
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
    if let Some(df) = &engine.analyzer.deepfake {
        rows.push(row(
            "deepfake crop+resize",
            time(iterations, || Ok(df.crop.tensor(frame, &det)))?,
        ));
        rows.push(row(
            "deepfake frame model",
            time(iterations, || engine.analyzer.deepfake_frame(frame, &det))?,
        ));
        if let Some(tm) = &engine.analyzer.temporal {
            let (_, features) = engine
                .analyzer
                .deepfake_frame(frame, &det)?
                .expect("deepfake model present");
            let mut hidden = tm.initial_state();
            rows.push(row(
                "temporal GRU step",
                time(iterations, || tm.step(&features, &mut hidden))?,
            ));
        }
    }
    if let Some(em) = &engine.analyzer.emotion {
        rows.push(row(
            "emotion crop+resize",
            time(iterations, || Ok(em.crop.tensor(frame, &det)))?,
        ));
        rows.push(row(
            "emotion model",
            time(iterations, || engine.analyzer.emotion(frame, &det))?,
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
        let input = crop.tensor(frame, &det);
        rows.push(row(
            &format!("{key} ({})", model.provider()),
            time(iterations, || model.run(std::slice::from_ref(&input)))?,
        ));
    }
    let mut stream = engine.stream();
    let t = Instant::now();
    for f in &frames {
        stream.process(f)?;
    }
    let e2e = t.elapsed();
    let fps = frames.len() as f64 / e2e.as_secs_f64();
    rows.push(row(
        "end to end per frame (no decode)",
        vec![e2e / frames.len() as u32],
    ));
    print_rows(&rows, Some((clip, frames.len(), fps)), json)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// A table, or JSON for tools; `clip` adds the end-to-end line.
fn print_rows(rows: &[StageRow], clip: Option<(&Path, usize, f64)>, json: bool) -> Result<()> {
    if json {
        let mut doc = serde_json::json!({ "stages": rows });
        if let Some((clip, frames, fps)) = clip {
            doc["clip"] = serde_json::json!(clip);
            doc["frames"] = serde_json::json!(frames);
            doc["fps"] = serde_json::json!(fps);
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
    if let Some((clip, frames, fps)) = clip {
        println!(
            "end to end: {fps:.1} frames/s over {frames} frames of {} (one thread)",
            clip.display()
        );
    }
    Ok(())
}
