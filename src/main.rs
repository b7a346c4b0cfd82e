//! The veriface command line. Everything else lives in the library.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use veriface::face::DetectorRange;
use veriface::infer::accel::Provider;
use veriface::infer::BackendChoice;
use veriface::pipeline::{Engine, EngineConfig, FrameResult};
use veriface::sinks::{plot, report};
use veriface::source::{self, MediaKind};
use veriface::verdict::VerdictConfig;

#[derive(Parser)]
#[command(
    name = "veriface",
    version,
    about = "Live person or deepfake, and which emotion, face by face — on edge boards"
)]
struct Cli {
    /// Model manifest (default: $VERIFACE_MODELS/manifest.toml, ./models, or the installed models)
    #[arg(long, global = true, value_name = "FILE")]
    models: Option<PathBuf>,
    /// Inference backend for analyze, eval, bench and models (the daemon reads its config)
    #[arg(long, global = true, value_enum, default_value = "tract")]
    backend: BackendArg,
    /// ONNX Runtime execution providers, tried in order (with --backend onnxruntime|auto)
    #[arg(
        long,
        global = true,
        value_enum,
        value_delimiter = ',',
        default_value = "tensorrt,cuda,cpu"
    )]
    providers: Vec<ProviderArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    /// Pure Rust, every board
    Tract,
    /// ONNX Runtime (libonnxruntime.so from $ORT_DYLIB_PATH or the usual places); needs a
    /// build with --features tensorrt; fails if no provider comes up
    Onnxruntime,
    /// ONNX Runtime where the build has it, a GPU and the library are found; else tract
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProviderArg {
    Tensorrt,
    Cuda,
    Cpu,
}

#[derive(Subcommand)]
enum Command {
    /// Analyse images, videos, or every image and video under a folder
    Analyze(AnalyzeArgs),
    /// Metrics on a labelled set: DIR/real and DIR/fake (images, videos, folders of frames)
    Eval(EvalArgs),
    /// Check the model manifest: every file present, sha256 matching, loadable by the backend
    Models {
        #[command(subcommand)]
        action: Option<ModelsAction>,
    },
    /// Per-stage latency and end-to-end frames per second on a clip (--threads N, default one)
    Bench(BenchArgs),
    /// The daemon: capture from the camera (or --source), analyse every face live
    Run(RunArgs),
    /// Print the running daemon's status snapshot
    Status {
        /// Status file (default: status.path from the config)
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Daemon config file
        #[arg(long, default_value = veriface::daemon::config::DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
        /// Print the raw JSON
        #[arg(long)]
        json: bool,
    },
    /// Daemon config files
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Verdict records written by the daemon (.vfr files)
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Subcommand)]
enum LogCommand {
    /// Every intact record as JSON lines (or CSV); damaged spans reported on stderr
    Decode {
        /// Record files, or folders of them (decoded oldest first)
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// CSV with a header instead of JSON lines
        #[arg(long)]
        csv: bool,
        /// Keep reading the (single) file as the daemon appends to it
        #[arg(long)]
        follow: bool,
    },
    /// Counts per verdict and per hour, camera outages
    Stats {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Load every model through the daemon's configured backend and run it once, so TensorRT
    /// builds and caches its engines now (install scripts) rather than at the first start
    Prepare {
        /// Daemon config file ([engine] backend and threads, [onnxruntime])
        #[arg(long, default_value = veriface::daemon::config::DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file (or board profile): unknown keys and bad values are named
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the built-in defaults as TOML
    Defaults,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Folder with real/ and fake/ sub-folders (any depth)
    dir: PathBuf,
    /// Write every number and per-item score as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write roc.png and histograms.png into DIR
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Operating threshold on the fake probability (score >= threshold: FAKE)
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Pick the threshold that keeps BPCER (real faces rejected) at or under this rate on this
    /// data, report at it, and print it in config-file syntax
    #[arg(long, value_name = "BPCER")]
    calibrate: Option<f64>,
    /// Each image is an aligned face crop: no face detection
    #[arg(long)]
    cropped: bool,
    /// Analyse every Nth frame of videos
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Stop each video after N analysed frames
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
    /// Worker threads (each loads its own models)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    jobs: u64,
    /// Face detector: short (within ~2 m), full range (up to ~5 m), or auto (short first, full
    /// range on frames where it finds no face)
    #[arg(long, value_enum, default_value_t = DetectorRange::Auto)]
    detector: DetectorRange,
    /// Manifest key of the frame deepfake model
    #[arg(long, default_value = "deepfake", value_name = "KEY")]
    deepfake_model: String,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Config file (missing default file: built-in defaults)
    #[arg(long, default_value = veriface::daemon::config::DEFAULT_CONFIG, value_name = "FILE")]
    config: PathBuf,
    /// Video, image or folder to analyse instead of the camera (played in real time)
    #[arg(long, value_name = "PATH")]
    source: Option<PathBuf>,
    /// Play --source again and again
    #[arg(long = "loop", requires = "source")]
    looped: bool,
    /// Record folder (overrides records.dir and turns records on)
    #[arg(long, value_name = "DIR")]
    records: Option<PathBuf>,
    /// Status file (overrides status.path)
    #[arg(long, value_name = "FILE")]
    status: Option<PathBuf>,
    /// Display: none, png:FILE, fb:/dev/fbN, ssd1306:/dev/i2c-N (overrides [display])
    #[arg(long, value_name = "KIND[:PATH]")]
    display: Option<String>,
    /// LEDs: none, rppal, gpiocdev (overrides leds.kind)
    #[arg(long, value_name = "KIND")]
    leds: Option<String>,
    /// No verdict lines on stdout
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// Image (jpg, png, webp, bmp), video (mp4, mov, mkv, avi, webm, mjpeg, y4m) or folder
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Write the full results as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write PNG plots (deepfake probability over time, emotion timeline) per file into DIR
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Analyse every Nth frame of a video
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Stop after this many analysed frames per video
    #[arg(long)]
    max_frames: Option<u64>,
    /// Face detector range (auto: short first, full range on frames where it finds no face)
    #[arg(long, value_enum, default_value_t = DetectorRange::Auto)]
    detector: DetectorRange,
    /// Operating threshold on the fake probability
    #[arg(long, default_value_t = 0.5)]
    threshold: f32,
    /// Manifest key of the frame deepfake model (absent from the manifest: no deepfake score)
    #[arg(long, default_value = "deepfake", value_name = "KEY")]
    deepfake_model: String,
    /// Write an occlusion heat map per face track (on its most fake-looking frame) into DIR
    #[arg(long, value_name = "DIR")]
    explain: Option<PathBuf>,
    /// Print only the verdict blocks, not a line per frame
    #[arg(long, short)]
    quiet: bool,
    /// The daemon's realtime schedule: the detector on every 3rd frame and a face re-analysed
    /// only when it changed (default: every model on every analysed frame)
    #[arg(long)]
    realtime: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Clip to run end to end (default: the bundled sample clip)
    #[arg(long, default_value = "samples/astronaut_zoom.avi")]
    clip: PathBuf,
    /// Repetitions per stage
    #[arg(long, default_value_t = 20)]
    iterations: u32,
    /// Passes over the clip for the end-to-end figures (each from a fresh stream)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    passes: u32,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
    /// Manifest key of the frame deepfake model to time
    #[arg(long, default_value = "deepfake", value_name = "KEY")]
    deepfake_model: String,
    /// Inference threads (tract's matrix-multiply pool, or ONNX Runtime's intra-op pool)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Time only this manifest model on zero inputs (load, then --iterations runs): for
    /// instruction counting under qemu (benches/arm) and per-model comparisons
    #[arg(long, value_name = "KEY")]
    model: Option<String>,
    /// With --model: the convolution layout tract runs it in (default: the manifest's choice)
    #[arg(long, value_enum, requires = "model")]
    tract_layout: Option<TractLayout>,
    /// With --model: time every node of the model under tract (per operator type, then the
    /// slowest nodes) instead of the whole inference
    #[arg(long, requires = "model")]
    profile: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TractLayout {
    /// channels first, as the ONNX file stores it
    Nchw,
    /// channels last (tract's conv_nhwc rewrite)
    Nhwc,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // One-shot commands piped into `head` or `grep -q` should end quietly like any Unix
        // tool, not panic on a closed stdout. The daemon keeps ignoring SIGPIPE.
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match &cli.command {
        Command::Analyze(args) => analyze(&cli, args),
        Command::Eval(args) => eval(&cli, args),
        Command::Models { action: None } => {
            let cfg = engine_config(&cli, DetectorRange::Short, 0.5);
            models(&cfg, false)
        }
        Command::Models {
            action: Some(ModelsAction::Prepare { config }),
        } => models_prepare(&cli, config),
        Command::Bench(args) => {
            let mut config = engine_config(&cli, DetectorRange::Short, 0.5);
            config.deepfake = args.deepfake_model.clone();
            config.threads = args.threads as usize;
            match &args.model {
                Some(key) => {
                    let channels_last = args.tract_layout.map(|l| matches!(l, TractLayout::Nhwc));
                    let bench = match args.profile {
                        true => veriface::bench::profile_model,
                        false => veriface::bench::one_model,
                    };
                    bench(&config, key, channels_last, args.iterations, args.json)
                }
                None => veriface::bench::run(
                    config,
                    &args.clip,
                    args.iterations,
                    args.passes,
                    args.json,
                ),
            }
        }
        Command::Run(args) => run(&cli, args),
        Command::Status { file, config, json } => status(file.as_deref(), config, *json),
        Command::Config(ConfigCommand::Check { files }) => config_check(files),
        Command::Config(ConfigCommand::Defaults) => config_defaults(),
        Command::Log(cmd) => log_command(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn engine_config(cli: &Cli, range: DetectorRange, threshold: f32) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    if let Some(m) = &cli.models {
        cfg.manifest = m.clone();
    }
    cfg.detector = range;
    cfg.verdict.threshold = threshold;
    let opts = veriface::infer::accel::OrtOptions {
        providers: cli
            .providers
            .iter()
            .map(|p| match p {
                ProviderArg::Tensorrt => Provider::Tensorrt,
                ProviderArg::Cuda => Provider::Cuda,
                ProviderArg::Cpu => Provider::Cpu,
            })
            .collect(),
        // Asked for on the command line: a provider that does not come up is an error.
        fallback: veriface::infer::accel::Fallback::Fail,
        ..Default::default()
    };
    cfg.backend = match cli.backend {
        BackendArg::Tract => BackendChoice::Tract,
        BackendArg::Onnxruntime => BackendChoice::Onnxruntime(opts),
        BackendArg::Auto => BackendChoice::Auto(opts),
    };
    cfg
}

fn run(cli: &Cli, args: &RunArgs) -> Result<ExitCode> {
    let opts = veriface::daemon::RunOptions {
        models: cli.models.clone(),
        config: args.config.clone(),
        source: args.source.clone(),
        looped: args.looped,
        records: args.records.clone(),
        status: args.status.clone(),
        display: args.display.clone(),
        leds: args.leds.clone(),
        quiet: args.quiet,
    };
    veriface::daemon::run(&opts, &veriface::sinks::outputs)?;
    Ok(ExitCode::SUCCESS)
}

fn log_command(cmd: &LogCommand) -> Result<ExitCode> {
    use veriface::sinks::records;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        LogCommand::Decode { paths, csv, follow } => {
            let files = records::expand_paths(paths)?;
            if *follow {
                let [file] = files.as_slice() else {
                    anyhow::bail!("--follow takes one record file ({} given)", files.len());
                };
                if *csv {
                    writeln!(out, "{}", records::CSV_HEADER)?;
                }
                records::follow(file, |off, r| {
                    let line = if *csv {
                        records::to_csv(r)
                    } else {
                        records::to_json(file, off, r).to_string()
                    };
                    writeln!(out, "{line}")?;
                    out.flush()?;
                    Ok(())
                })?;
            } else {
                records::write_decoded(&files, *csv, &mut out)?;
            }
        }
        LogCommand::Stats { paths, json } => {
            let files = records::expand_paths(paths)?;
            let mut stats = records::Stats::default();
            records::decode_files(&files, |_, d| {
                stats.add(d);
                Ok(())
            })?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&stats)?)?;
            } else {
                write!(out, "{}", stats.render())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn eval(cli: &Cli, args: &EvalArgs) -> Result<ExitCode> {
    use veriface::eval::{self, metrics, plots, EvalOptions};
    if !(0.0..=1.0).contains(&args.threshold) {
        anyhow::bail!("--threshold {}: must be within 0..1", args.threshold);
    }
    if let Some(t) = args.calibrate {
        if !(0.0..1.0).contains(&t) {
            anyhow::bail!("--calibrate {t}: a BPCER rate within 0..1, e.g. 0.01");
        }
    }
    let items = eval::collect_items(&args.dir)?;
    let mut config = engine_config(cli, args.detector, args.threshold);
    config.verdict = VerdictConfig::centred_on(args.threshold);
    config.deepfake = args.deepfake_model.clone();
    let opts = EvalOptions {
        every: args.every,
        max_frames: args.max_frames,
        cropped: args.cropped,
        jobs: args.jobs as usize,
    };
    let show = std::io::stderr().is_terminal();
    let outcomes = eval::score_all(&config, &items, &opts, &|done, total| {
        if show {
            let width = 30;
            let filled = done * width / total.max(1);
            eprint!(
                "\r[{}{}] {done}/{total} items",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            if done == total {
                eprintln!();
            }
        }
    })?;
    let mut threshold = args.threshold;
    if let Some(target) = args.calibrate {
        let (_, videos, _) = eval::scored(&outcomes);
        let (t, c) = metrics::threshold_for_bpcer(&videos, target)?;
        threshold = t;
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
    }
    let report = eval::report(outcomes, threshold)?;
    print!("{}", report.render());
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create plot folder", dir.display()))?;
        let (frames, videos, means) = eval::scored(
            &report
                .items
                .iter()
                .cloned()
                .map(eval::Outcome::Scored)
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
        )?;
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn config_defaults() -> Result<ExitCode> {
    print!(
        "{}",
        toml::to_string(&veriface::daemon::config::Config::default())?
    );
    Ok(ExitCode::SUCCESS)
}

fn status(file: Option<&Path>, config: &Path, json: bool) -> Result<ExitCode> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => {
            let cfg = if config.exists() {
                veriface::daemon::config::Config::load(config)?
            } else {
                veriface::daemon::config::Config::default()
            };
            PathBuf::from(cfg.status.path)
        }
    };
    let status = veriface::daemon::status::Status::read(&path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn config_check(files: &[PathBuf]) -> Result<ExitCode> {
    let mut ok = true;
    for f in files {
        match veriface::daemon::config::Config::load(f) {
            Ok(_) => println!("ok    {}", f.display()),
            Err(e) => {
                ok = false;
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn models_prepare(cli: &Cli, config: &Path) -> Result<ExitCode> {
    let daemon_cfg = veriface::daemon::config::Config::load(config)?;
    let mut cfg = engine_config(cli, DetectorRange::Short, 0.5);
    if cli.models.is_none() {
        cfg.manifest = daemon_cfg.models_path();
    }
    cfg.backend = daemon_cfg.backend_choice();
    cfg.threads = daemon_cfg.engine.threads as usize;
    models(&cfg, true)
}

/// Loads every manifest model through the chosen backend and says what runs it; `warm` also
/// runs each once (TensorRT engine build) and times load + first run.
fn models(cfg: &EngineConfig, warm: bool) -> Result<ExitCode> {
    let manifest = veriface::manifest::Manifest::load(&cfg.manifest)?;
    let backend = veriface::infer::open_backend(&cfg.backend, cfg.threads)?;
    let mut failed = false;
    for (key, spec) in &manifest.models {
        let started = std::time::Instant::now();
        let loaded = backend.load(&manifest, key).and_then(|m| {
            if warm {
                veriface::infer::warm_up(m.as_ref(), &manifest, key)?;
            }
            Ok(m)
        });
        match loaded {
            Ok(m) if warm => println!(
                "ok    {key:26} {:26} {:>7.0} ms  {}",
                m.provider(),
                started.elapsed().as_secs_f64() * 1e3,
                spec.file
            ),
            Ok(m) => println!(
                "ok    {key:26} {:44} {:10} {} ({})",
                spec.file,
                m.provider(),
                spec.licence,
                spec.task
            ),
            Err(e) => {
                failed = true;
                println!("FAIL  {key:26} {e:#}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

struct Progress {
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

fn analyze(cli: &Cli, args: &AnalyzeArgs) -> Result<ExitCode> {
    let verdict = VerdictConfig {
        threshold: args.threshold,
        ..VerdictConfig::default()
    };
    verdict
        .validate()
        .map_err(|e| anyhow::anyhow!("--threshold {}: {e}", args.threshold))?;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for input in &args.inputs {
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
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create plot folder", dir.display()))?;
    }
    let mut config = engine_config(cli, args.detector, args.threshold);
    config.deepfake = args.deepfake_model.clone();
    if args.realtime {
        config.schedule = veriface::daemon::config::DAEMON_SCHEDULE;
    }
    let engine = Engine::load(config)?;
    let mut json_files = Vec::new();
    let stdout = std::io::stdout();
    for file in &files {
        match analyze_file(&engine, file, args) {
            Ok((summary, frames, (w, h), kind)) => {
                if !args.quiet {
                    print_frames(&frames)?;
                }
                let mut out = stdout.lock();
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
                        args.threshold,
                        &title,
                        &dir.join(format!("{stem}_deepfake.png")),
                    )?;
                    let classes = engine.emotion_classes();
                    plot::emotion_plot(
                        &frames,
                        &classes,
                        summary.main_track,
                        &title,
                        &dir.join(format!("{stem}_emotion.png")),
                    )?;
                }
                if args.json.is_some() {
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
                    json_files.push(serde_json::to_value(&fr)?);
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
            files: json_files,
            errors,
        };
        let text = serde_json::to_string_pretty(&run)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("{}: cannot write JSON", path.display()))?;
    }
    Ok(code)
}

/// The frame (and box) on which each track looked most fake so far.
type MostFake =
    std::collections::BTreeMap<u32, (f32, veriface::frame::Frame, veriface::face::Detection)>;

fn keep_most_fake(best: &mut MostFake, result: &FrameResult, tf: &source::TimedFrame) {
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
fn explain(engine: &Engine, file: &Path, dir: &Path, best: &MostFake) -> Result<()> {
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

fn plot_stem(file: &Path) -> String {
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

fn print_frames(frames: &[FrameResult]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for f in frames {
        for line in report::frame_lines(f) {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn analyze_file(engine: &Engine, file: &Path, args: &AnalyzeArgs) -> Result<FileResult> {
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
