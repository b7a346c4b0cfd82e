//! Flag definitions: what the user can type, as clap parses it. Resolution into library
//! settings is in `resolve.rs`; the commands are in their own files.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use veriface::face::DetectorRange;
use veriface::infer::accel::Provider;
use veriface::infer::BackendKind;

#[derive(Parser)]
#[command(
    name = "veriface",
    version,
    about = "Live person or deepfake, and which emotion, face by face — on edge boards"
)]
pub(crate) struct Cli {
    /// Model manifest (default: $VERIFACE_MODELS/manifest.toml, ./models, or the installed models)
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) models: Option<PathBuf>,
    /// Inference backend for analyze, eval, bench and models (the daemon reads its config)
    #[arg(long, global = true, value_enum, default_value = "tract")]
    pub(crate) backend: BackendKind,
    /// ONNX Runtime execution providers, tried in order (with --backend onnxruntime|auto)
    #[arg(
        long,
        global = true,
        value_enum,
        value_delimiter = ',',
        default_value = "tensorrt,cuda,cpu"
    )]
    pub(crate) providers: Vec<Provider>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// 1:1 verification: is the face in view the person in the reference photo, and not a
    /// deepfake? Prints VERIFIED or REJECTED: <reasons>; exit 0 verified, 2 rejected, 1 error
    Verify(VerifyArgs),
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
pub(crate) enum LogCommand {
    /// Every intact record as JSON lines (or CSV); damaged spans reported on stderr
    Decode {
        /// Record files, or folders of them (decoded oldest first)
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// CSV with a header instead of JSON lines
        #[arg(long)]
        csv: bool,
        /// Keep reading as the daemon writes: one record file, or a record folder from its newest
        /// file on, across rotations
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
pub(crate) enum ModelsAction {
    /// Load every model through the daemon's configured backend and run it once, so TensorRT
    /// builds and caches its engines now (install scripts) rather than at the first start
    Prepare {
        /// Daemon config file ([engine] backend and threads, [onnxruntime])
        #[arg(long, default_value = veriface::daemon::config::DEFAULT_CONFIG, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check a config file (or board profile): unknown keys and bad values are named
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the built-in defaults as TOML
    Defaults,
}

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// deepfake: a folder with real/ and fake/ sub-folders (any depth). verify: CSVs (path and
    /// identity columns, optional group and label) or folders with one sub-folder per person.
    /// pad: a folder with live/ and attack/ (attack/<species>/ reported per species)
    #[arg(required = true, num_args = 1.., value_name = "DIR")]
    pub(crate) dirs: Vec<PathBuf>,
    /// What to measure: the deepfake detector, 1:1 face verification (FMR, FNMR, EER), or
    /// passive presentation-attack detection (DIR with live/ and attack/: APCER, BPCER, ACER)
    #[arg(long, value_enum, default_value_t = EvalTask::Deepfake)]
    pub(crate) task: EvalTask,
    /// pad: a PAD model file (repeat to fuse several)
    #[arg(long = "pad-model", value_name = "FILE")]
    pub(crate) pad_models: Vec<PathBuf>,
    /// pad: live at or above this fused live probability
    #[arg(long, default_value_t = veriface::liveness::DEFAULT_THRESHOLD, value_name = "P")]
    pub(crate) pad_threshold: f32,
    /// verify: seconds between the frames sampled from one video (and the least gap of a
    /// genuine pair within one video)
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    pub(crate) gap: f64,
    /// verify: frames sampled per video at most
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) per_video: u64,
    /// verify: the false match rate the chosen threshold must keep to
    #[arg(long, default_value_t = 0.001, value_name = "RATE")]
    pub(crate) fmr: f64,
    /// Write every number and per-item score as JSON
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Write roc.png and histograms.png into DIR
    #[arg(long, value_name = "DIR")]
    pub(crate) plots: Option<PathBuf>,
    /// Operating threshold on the fake probability (score >= threshold: FAKE) [default: the
    /// deepfake model's, from the manifest]
    #[arg(long)]
    pub(crate) threshold: Option<f32>,
    /// Pick the threshold that keeps BPCER (real faces rejected) at or under this rate on this
    /// data, report at it, and print it in config-file syntax
    #[arg(long, value_name = "BPCER")]
    pub(crate) calibrate: Option<f64>,
    /// Each image is an aligned face crop: no face detection
    #[arg(long)]
    pub(crate) cropped: bool,
    /// Analyse every Nth frame of videos
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) every: u64,
    /// Stop each video after N analysed frames
    #[arg(long, value_name = "N")]
    pub(crate) max_frames: Option<u64>,
    /// Worker threads (each loads its own models)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub(crate) jobs: u64,
    /// Face detector: short (within ~2 m), full range (up to ~5 m), or auto (short first, full
    /// range on frames where it finds no face)
    #[arg(long, value_enum, default_value_t = DetectorRange::Auto)]
    pub(crate) detector: DetectorRange,
    /// Manifest key of the frame deepfake model
    #[arg(long, default_value = "deepfake", value_name = "KEY")]
    pub(crate) deepfake_model: String,
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["source", "camera", "daemon"]))]
pub(crate) struct VerifyArgs {
    /// Photo of the person (exactly one face)
    #[arg(long, value_name = "IMAGE")]
    pub(crate) reference: PathBuf,
    /// A video, a folder of frames, or a single image (a one-frame source)
    #[arg(long, value_name = "PATH")]
    pub(crate) source: Option<PathBuf>,
    /// A V4L2 camera: /dev/videoN or part of its name
    #[arg(long, value_name = "DEVICE")]
    pub(crate) camera: Option<String>,
    /// With --camera: accept a virtual camera (v4l2loopback, vivid): tests only
    #[arg(long, requires = "camera")]
    pub(crate) allow_virtual_camera: bool,
    /// Ask the running daemon (`veriface run` with its API on) to verify on its camera
    #[arg(long, value_name = "SOCKET", num_args = 0..=1, default_missing_value = veriface::api::DEFAULT_SOCKET)]
    pub(crate) daemon: Option<PathBuf>,
    /// Write the result as JSON (the documented, stable form)
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Give up after this many seconds of source time without a decision
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    pub(crate) timeout: f64,
    /// Frames of the one face in view a decision needs (a shorter source decides on all it has)
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub(crate) min_frames: u64,
    /// Accept a match at or above this similarity [default: the embedding model's, from the
    /// manifest]
    #[arg(long, value_name = "T")]
    pub(crate) match_threshold: Option<f32>,
    /// Deepfake threshold on the fake probability [default: the deepfake model's]
    #[arg(long)]
    pub(crate) threshold: Option<f32>,
    /// Passive liveness: a PAD model file (repeat to fuse several; each must match
    /// models/pad.toml)
    #[arg(long = "pad-model", value_name = "FILE")]
    pub(crate) pad_models: Vec<PathBuf>,
    /// Live at or above this fused PAD probability
    #[arg(long, default_value_t = veriface::liveness::DEFAULT_THRESHOLD, value_name = "P")]
    pub(crate) pad_threshold: f32,
    /// Active challenge: this many random prompts (0: none) the person must follow in order
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=3))]
    pub(crate) challenge: u64,
    /// The prompts the challenge draws from [default: blink, turn-left, turn-right, smile]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PROMPT")]
    pub(crate) challenge_prompts: Vec<veriface::liveness::challenge::Prompt>,
    /// Seed of the challenge's draw [default: the clock]
    #[arg(long, value_name = "SEED")]
    pub(crate) challenge_seed: Option<u64>,
    /// Seconds to follow each prompt
    #[arg(long, default_value_t = 5.0, value_name = "S")]
    pub(crate) prompt_timeout: f64,
    /// Face detector: short (within ~2 m), full range (up to ~5 m), or auto
    #[arg(long, value_enum, default_value_t = DetectorRange::Auto)]
    pub(crate) detector: DetectorRange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EvalTask {
    Deepfake,
    Verify,
    Pad,
}

#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// Config file (missing default file: built-in defaults)
    #[arg(long, default_value = veriface::daemon::config::DEFAULT_CONFIG, value_name = "FILE")]
    pub(crate) config: PathBuf,
    /// Video, image or folder to analyse instead of the camera (played in real time)
    #[arg(long, value_name = "PATH")]
    pub(crate) source: Option<PathBuf>,
    /// Play --source again and again
    #[arg(long = "loop", requires = "source")]
    pub(crate) looped: bool,
    /// Record folder (overrides records.dir and turns records on)
    #[arg(long, value_name = "DIR")]
    pub(crate) records: Option<PathBuf>,
    /// Status file (overrides status.path)
    #[arg(long, value_name = "FILE")]
    pub(crate) status: Option<PathBuf>,
    /// Display: none, png:FILE, fb:/dev/fbN, ssd1306:/dev/i2c-N (overrides [display])
    #[arg(long, value_name = "KIND[:PATH]")]
    pub(crate) display: Option<String>,
    /// LEDs: none, rppal, gpiocdev (overrides leds.kind)
    #[arg(long, value_name = "KIND")]
    pub(crate) leds: Option<String>,
    /// Serve the local API (verification sessions, status) on this Unix socket (overrides
    /// [api]; the config's default socket is /run/veriface/api.sock)
    #[arg(long, value_name = "SOCKET")]
    pub(crate) api: Option<PathBuf>,
    /// No verdict lines on stdout
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(clap::Args)]
pub(crate) struct AnalyzeArgs {
    /// Image (jpg, png, webp, bmp), video (mp4, mov, mkv, avi, webm, mjpeg, y4m) or folder
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
    /// Write the full results as JSON
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Write PNG plots (deepfake probability over time, emotion timeline) per file into DIR
    #[arg(long, value_name = "DIR")]
    pub(crate) plots: Option<PathBuf>,
    /// Analyse every Nth frame of a video
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) every: u64,
    /// Stop after this many analysed frames per video
    #[arg(long)]
    pub(crate) max_frames: Option<u64>,
    /// Face detector range (auto: short first, full range on frames where it finds no face)
    #[arg(long, value_enum, default_value_t = DetectorRange::Auto)]
    pub(crate) detector: DetectorRange,
    /// Operating threshold on the fake probability [default: the deepfake model's, from the
    /// manifest]
    #[arg(long)]
    pub(crate) threshold: Option<f32>,
    /// Manifest key of the frame deepfake model (absent from the manifest: no deepfake score)
    #[arg(long, default_value = "deepfake", value_name = "KEY")]
    pub(crate) deepfake_model: String,
    /// Write an occlusion heat map per face track (on its most fake-looking frame) into DIR
    #[arg(long, value_name = "DIR")]
    pub(crate) explain: Option<PathBuf>,
    /// Print only the verdict blocks, not a line per frame
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// The daemon's realtime schedule: the detector on every 3rd frame and a face re-analysed
    /// only when it changed (default: every model on every analysed frame)
    #[arg(long)]
    pub(crate) realtime: bool,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// Clip to run end to end (default: the bundled sample clip)
    #[arg(long, default_value = "samples/astronaut_zoom.avi")]
    pub(crate) clip: PathBuf,
    /// Repetitions per stage
    #[arg(long, default_value_t = 20)]
    pub(crate) iterations: u32,
    /// Passes over the clip for the end-to-end figures (each from a fresh stream)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) passes: u32,
    /// Print JSON instead of a table
    #[arg(long)]
    pub(crate) json: bool,
    /// Manifest key of the frame deepfake model to time
    #[arg(long, default_value = "deepfake", value_name = "KEY")]
    pub(crate) deepfake_model: String,
    /// Inference threads (tract's matrix-multiply pool, or ONNX Runtime's intra-op pool)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) threads: u16,
    /// Time only this manifest model on zero inputs (load, then --iterations runs): for
    /// instruction counting under qemu (benches/arm) and per-model comparisons
    #[arg(long, value_name = "KEY")]
    pub(crate) model: Option<String>,
    /// With --model: the convolution layout tract runs it in (default: the manifest's choice)
    #[arg(long, value_enum, requires = "model")]
    pub(crate) tract_layout: Option<TractLayout>,
    /// With --model: whose depthwise/stem/pointwise convolution and max-pool ops tract runs
    /// (default: the manifest's choice, veriface's unless a model says otherwise)
    #[arg(long, value_enum, requires = "model")]
    pub(crate) tract_ops: Option<TractOps>,
    /// With --model: time every node of the model under tract (per operator type, then the
    /// slowest nodes) instead of the whole inference
    #[arg(long, requires = "model")]
    pub(crate) profile: bool,
    /// With --profile: bracket each node with a marker system call that
    /// benches/arm/insn_count.c uses to count guest instructions per node under qemu
    #[arg(long, requires = "profile")]
    pub(crate) mark_nodes: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum TractOps {
    /// tract's own lowering of every node
    Tract,
    /// veriface's depthwise, RGB-stem and (channel-last, x86) pointwise convolutions and max
    /// pool where they apply
    Veriface,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum TractLayout {
    /// channels first, as the ONNX file stores it
    Nchw,
    /// channels last (tract's conv_nhwc rewrite)
    Nhwc,
}
