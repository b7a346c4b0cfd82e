//! `eval`: metrics on a labelled folder.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use veriface::manifest::Manifest;
use veriface::verdict::{VerdictConfig, VerdictSettings};

use super::flags::{Cli, EvalArgs, EvalTask};
use super::resolve::{check_threshold, engine_config};

use veriface::eval::{self, metrics, plots, verify, EvalOptions, EvalReport, Outcome};

pub(crate) fn eval(cli: &Cli, args: &EvalArgs) -> Result<ExitCode> {
    check_threshold(args.threshold)?;
    match args.task {
        EvalTask::Verify => return verify(cli, args),
        EvalTask::Pad => return pad(cli, args),
        EvalTask::Deepfake => {}
    }
    let [dir] = args.dirs.as_slice() else {
        anyhow::bail!(
            "--task deepfake reads one folder (with real/ and fake/), got {}",
            args.dirs.len()
        );
    };
    if let Some(t) = args.calibrate {
        if !(0.0..1.0).contains(&t) {
            anyhow::bail!("--calibrate {t}: a BPCER rate within 0..1, e.g. 0.01");
        }
    }
    let items = eval::collect_items(dir)?;
    let mut config = engine_config(cli, args.detector, args.threshold);
    config.deepfake = args.deepfake_model.clone();
    // Every worker's engine and the report use one threshold, resolved once here.
    let operating = match args.threshold {
        Some(t) => t,
        None => Manifest::load(&config.manifest)?.operating_threshold(&config.deepfake)?,
    };
    config.verdict = VerdictSettings::at(operating);
    let opts = EvalOptions {
        every: args.every,
        max_frames: args.max_frames,
        cropped: args.cropped,
        jobs: args.jobs as usize,
    };
    let outcomes = eval::score_all(&config, &items, &opts, &progress_bar("items"))?;
    let threshold = match args.calibrate {
        Some(target) => calibrate(&outcomes, target)?,
        None => operating,
    };
    let report = eval::report(outcomes, threshold)?;
    print!("{}", report.render());
    if let Some(dir) = &args.plots {
        write_plots(&report, threshold, dir)?;
    }
    finish(args, &report, report.failed.is_empty())
}

/// `--task pad`: passive presentation-attack detection on live/ and attack/ media.
fn pad(cli: &Cli, args: &EvalArgs) -> Result<ExitCode> {
    let [dir] = args.dirs.as_slice() else {
        anyhow::bail!(
            "--task pad reads one folder (with live/ and attack/), got {}",
            args.dirs.len()
        );
    };
    if args.pad_models.is_empty() {
        anyhow::bail!("--task pad needs --pad-model FILE (repeat to fuse several)");
    }
    if !(0.0..=1.0).contains(&args.pad_threshold) {
        anyhow::bail!("--pad-threshold {}: within 0..1", args.pad_threshold);
    }
    let items = eval::pad::collect(dir)?;
    let mut config = engine_config(cli, args.detector, None);
    config.passive = veriface::liveness::PassiveSettings {
        models: args.pad_models.clone(),
        threshold: Some(args.pad_threshold),
    };
    let opts = eval::pad::PadEvalOptions {
        every: args.every,
        max_frames: args.max_frames.unwrap_or(10),
        jobs: args.jobs as usize,
    };
    let scores = eval::pad::score_all(&config, &items, &opts, &progress_bar("items"))?;
    let report = eval::pad::report(scores, 1.0 - args.pad_threshold)?;
    print!("{}", report.render());
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create plot folder", dir.display()))?;
        let all = eval::pad::scored(&report.items);
        plots::roc_plot(&[("item", &all, report.metrics.auc)], &dir.join("roc.png"))?;
        plots::histogram_plot(
            &[("attack probability", &all)],
            report.threshold,
            &dir.join("histograms.png"),
        )?;
    }
    finish(args, &report, report.failed.is_empty())
}

/// `--task verify`: match accuracy on faces labelled by person.
fn verify(cli: &Cli, args: &EvalArgs) -> Result<ExitCode> {
    if args.calibrate.is_some() || args.cropped || args.plots.is_some() {
        anyhow::bail!("--calibrate, --cropped and --plots are for --task deepfake");
    }
    if !(args.fmr > 0.0 && args.fmr < 1.0 && args.gap >= 0.0) {
        anyhow::bail!(
            "--fmr {} must be within 0..1 and --gap {} not negative",
            args.fmr,
            args.gap
        );
    }
    let mut subjects = Vec::new();
    for path in &args.dirs {
        subjects.extend(verify::collect_subjects(path)?);
    }
    let mut config = engine_config(cli, args.detector, None);
    config.identity = true;
    let manifest = Manifest::load(&config.manifest)?;
    let operating = match args.threshold {
        Some(t) => Some(t),
        None => manifest
            .key_for_task(veriface::identity::EMBEDDING_TASK)
            .and_then(|k| manifest.models[&k].threshold),
    };
    let opts = verify::VerifyEvalOptions {
        gap_s: args.gap,
        per_video: args.per_video as usize,
        jobs: args.jobs as usize,
    };
    let (samples, outcomes) = verify::embed_all(&config, &subjects, &opts, &progress_bar("files"))?;
    let report = verify::report(
        &subjects, &samples, &outcomes, args.gap, args.fmr, operating,
    )?;
    print!("{}", report.render());
    finish(args, &report, report.failed.is_empty())
}

/// A progress bar on stderr when it is a terminal.
fn progress_bar(what: &'static str) -> impl Fn(usize, usize) + Sync {
    let show = std::io::stderr().is_terminal();
    move |done, total| {
        if show {
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total} {what}",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            if done == total {
                eprintln!();
            }
        }
    }
}

/// `--json`, then exit 1 if any file was unreadable.
fn finish(args: &EvalArgs, report: &impl serde::Serialize, all_read: bool) -> Result<ExitCode> {
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(if all_read {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--calibrate`: the threshold for this BPCER on the video scores, printed as a config section.
fn calibrate(outcomes: &[Outcome], target: f64) -> Result<f32> {
    let (_, videos, _) = eval::scored(outcomes);
    let (t, c) = metrics::threshold_for_bpcer(&videos, target)?;
    println!(
        "# calibrated on {} items for BPCER <= {target}: BPCER {:.4}, APCER {:.4}",
        videos.len(),
        c.bpcer(),
        c.apcer()
    );
    let v = VerdictConfig::centred_on(t);
    println!(
        "[verdict]\nthreshold = {}\nfake_enter = {}\nfake_exit = {}\nreal_enter = {}\nreal_exit = {}\n",
        v.threshold, v.fake_enter, v.fake_exit, v.real_enter, v.real_exit
    );
    Ok(t)
}

/// `--plots`: ROC curves and score histograms.
fn write_plots(report: &EvalReport, threshold: f32, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create plot folder", dir.display()))?;
    let (frames, videos, means) = eval::scored(
        &report
            .items
            .iter()
            .cloned()
            .map(Outcome::Scored)
            .collect::<Vec<_>>(),
    );
    plots::roc_plot(
        &[
            ("frame", &frames, report.frame.auc),
            ("video", &videos, report.video.auc),
            ("video (frame mean)", &means, report.video_frame_mean.auc),
        ],
        &dir.join("roc.png"),
    )?;
    plots::histogram_plot(
        &[("frame", &frames), ("video", &videos)],
        threshold,
        &dir.join("histograms.png"),
    )
}
