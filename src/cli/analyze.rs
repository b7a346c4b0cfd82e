//! `analyze`: verdicts for images, videos and folders, with JSON, plots and heat maps.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use veriface::pipeline::{Engine, FrameResult};
use veriface::sinks::{plot, report};
use veriface::source::{self, MediaKind};

use super::flags::{AnalyzeArgs, Cli};
use super::resolve::{check_threshold, engine_config};

pub(crate) struct Progress {
    enabled: bool,
    total: Option<u64>,
}

impl Progress {
    fn tick(&self, done: u64) {
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr();
        match self.total {
            Some(t) if t > 0 => {
                let filled = ((done.min(t) * 30) / t) as usize;
                let _ = write!(
                    err,
                    "\r[{}{}] {done}/{t}",
                    "#".repeat(filled),
                    " ".repeat(30 - filled)
                );
            }
            _ => {
                let _ = write!(err, "\r{done} frames");
            }
        }
        let _ = err.flush();
    }
    fn clear(&self) {
        if self.enabled {
            let _ = write!(std::io::stderr(), "\r{}\r", " ".repeat(50));
        }
    }
}

pub(crate) fn analyze(cli: &Cli, args: &AnalyzeArgs) -> Result<ExitCode> {
    check_threshold(args.threshold)?;
    let (files, mut errors) = collect_inputs(&args.inputs);
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create plot folder", dir.display()))?;
    }
    let mut config = engine_config(cli, args.detector, args.threshold);
    config.deepfake = args.deepfake_model.clone();
    if args.realtime {
        config.schedule = veriface::pipeline::DAEMON_SCHEDULE;
    }
    let engine = Engine::load(config)?;
    let mut json_files = Vec::new();
    for file in &files {
        match analyze_file(&engine, file, args) {
            Ok(result) => {
                if let Some(json) = report_file(&engine, file, args, result)? {
                    json_files.push(json);
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                errors.push(report::FileError {
                    file: file.display().to_string(),
                    error: format!("{e:#}"),
                });
            }
        }
    }
    let code = if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if let Some(path) = &args.json {
        write_json(&engine, path, json_files, errors)?;
    }
    Ok(code)
}

/// The media files under the inputs; an input that cannot be read is an error line, not a stop.
fn collect_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<report::FileError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        match source::collect_media(input) {
            Ok(found) => files.extend(found),
            Err(e) => errors.push(report::FileError {
                file: input.display().to_string(),
                error: format!("{e:#}"),
            }),
        }
    }
    for e in &errors {
        eprintln!("error: {}", e.error);
    }
    (files, errors)
}

/// One analysed file: its frame lines and verdict block on stdout, its plots, and its JSON
/// object when a JSON report was asked for.
fn report_file(
    engine: &Engine,
    file: &Path,
    args: &AnalyzeArgs,
    (summary, frames, (w, h), kind): FileResult,
) -> Result<Option<serde_json::Value>> {
    if !args.quiet {
        print_frames(&frames)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "== {}", file.display())?;
    write!(out, "{}", report::summary_block(&summary))?;
    writeln!(out)?;
    if let Some(dir) = &args.plots {
        let stem = plot_stem(file);
        let title = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        plot::deepfake_plot(
            &frames,
            engine.verdict.threshold,
            &title,
            &dir.join(format!("{stem}_deepfake.png")),
        )?;
        plot::emotion_plot(
            &frames,
            &engine.emotion_classes(),
            summary.main_track,
            &title,
            &dir.join(format!("{stem}_emotion.png")),
        )?;
    }
    if args.json.is_none() {
        return Ok(None);
    }
    let fr = report::FileReport {
        file: file.display().to_string(),
        kind: if kind == MediaKind::Video {
            "video"
        } else {
            "image"
        },
        width: w,
        height: h,
        summary: &summary,
        frames: &frames,
    };
    Ok(Some(serde_json::to_value(&fr)?))
}

/// `--json`: every file's object, the models and their hashes, the files that failed.
fn write_json(
    engine: &Engine,
    path: &Path,
    files: Vec<serde_json::Value>,
    errors: Vec<report::FileError>,
) -> Result<()> {
    let run = report::RunReport {
        version: env!("CARGO_PKG_VERSION"),
        backend: &engine.backend,
        detector: &engine.config.detector.label(),
        models: engine
            .manifest
            .models
            .iter()
            .map(|(k, m)| report::ModelId {
                key: k,
                file: &m.file,
                sha256: &m.sha256,
            })
            .collect(),
        files,
        errors,
    };
    let text = serde_json::to_string_pretty(&run)?;
    std::fs::write(path, text + "\n")
        .with_context(|| format!("{}: cannot write JSON", path.display()))
}

/// The frame (and box) on which each track looked most fake so far.
type MostFake =
    std::collections::BTreeMap<u32, (f32, veriface::frame::Frame, veriface::face::Detection)>;

pub(crate) fn keep_most_fake(best: &mut MostFake, result: &FrameResult, tf: &source::TimedFrame) {
    for face in &result.faces {
        let Some(p) = face.analysis.deepfake else {
            continue;
        };
        if best.get(&face.track).is_none_or(|(q, ..)| p > *q) {
            let det = veriface::face::Detection {
                score: face.score,
                bbox: face.bbox,
                keypoints: [(0.0, 0.0); 6],
            };
            best.insert(face.track, (p, tf.frame.clone(), det));
        }
    }
}

/// Occlusion heat maps: one PNG per track, `<file>_track<N>_explain.png`.
pub(crate) fn explain(engine: &Engine, file: &Path, dir: &Path, best: &MostFake) -> Result<()> {
    let Some(df) = &engine.analyzer.deepfake else {
        anyhow::bail!("--explain needs a deepfake model in the manifest");
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create folder", dir.display()))?;
    for (track, (p, frame, det)) in best {
        let map = df.occlusion(frame, det, 32, 16)?;
        let path = dir.join(format!("{}_track{track}_explain.png", plot_stem(file)));
        veriface::sinks::explain::save_heatmap(&map, df.crop.norm, &path)?;
        eprintln!(
            "explain: {} (track {track}, fake probability {p:.3})",
            path.display()
        );
    }
    Ok(())
}

pub(crate) fn plot_stem(file: &Path) -> String {
    file.to_string_lossy()
        .trim_start_matches("./")
        .replace(['/', '\\'], "_")
        .replace('.', "_")
}

type FileResult = (
    veriface::pipeline::Summary,
    Vec<FrameResult>,
    (usize, usize),
    MediaKind,
);

pub(crate) fn print_frames(frames: &[FrameResult]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for f in frames {
        for line in report::frame_lines(f) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

pub(crate) fn analyze_file(engine: &Engine, file: &Path, args: &AnalyzeArgs) -> Result<FileResult> {
    let kind = source::media_kind(file).context("unsupported file type")?;
    let mut src = source::open(file)?;
    let mut stream = engine.stream();
    let progress = Progress {
        enabled: kind == MediaKind::Video && std::io::stderr().is_terminal(),
        total: src.frame_count().map(|t| t.div_ceil(args.every)),
    };
    let mut frames = Vec::new();
    let mut size = (0, 0);
    let mut analysed = 0u64;
    let mut best = MostFake::new();
    let outcome: Result<()> = (|| {
        while let Some(tf) = src.next_frame()? {
            size = (tf.frame.width, tf.frame.height);
            if tf.index % args.every != 0 {
                continue;
            }
            let result = stream.process(&tf)?;
            if args.explain.is_some() {
                keep_most_fake(&mut best, &result, &tf);
            }
            frames.push(result);
            analysed += 1;
            progress.tick(analysed);
            if args.max_frames.is_some_and(|m| analysed >= m) {
                break;
            }
        }
        Ok(())
    })();
    progress.clear();
    if let Some(dir) = &args.explain {
        explain(engine, file, dir, &best)?;
    }
    if let Err(e) = outcome {
        // Frames decoded before the damage are still reported; the file still counts as failed.
        if !args.quiet {
            print_frames(&frames)?;
        }
        return Err(e);
    }
    Ok((stream.summary(), frames, size, kind))
}
