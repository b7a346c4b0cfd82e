//! The daemon's one TOML file (`/etc/veriface/veriface.toml`) and the board profiles in boards/.
//!
//! Every key has a default, unknown keys are errors (a typo must not silently keep a default),
//! and values are range-checked at start and on SIGHUP. `cross/veriface.toml` documents them all.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::face::DetectorRange;
use crate::pipeline::Schedule;
use crate::source::camera::PixelFormat;
use crate::verdict::VerdictConfig;

pub const DEFAULT_CONFIG: &str = "/etc/veriface/veriface.toml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names this device in records and the status file.
    pub device_id: String,
    pub camera: CameraConfig,
    pub engine: EngineSection,
    pub verdict: VerdictConfig,
    pub display: DisplayConfig,
    pub leds: LedConfig,
    pub records: RecordsConfig,
    pub status: StatusConfig,
    pub watchdog: WatchdogConfig,
    pub privacy: PrivacyConfig,
    pub onnxruntime: crate::infer::accel::OrtOptions,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// `/dev/videoN`, or part of the camera's name as V4L2 reports it.
    pub device: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub format: PixelFormat,
    /// Seconds without a frame before the camera counts as lost and is reopened.
    pub timeout_s: f64,
    /// Longest wait between reopen attempts (back-off doubles from 0.5 s up to this).
    pub reopen_max_s: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Tract,
    /// ONNX Runtime with the `[onnxruntime]` providers (TensorRT -> CUDA -> CPU by default);
    /// `tensorrt` is the same backend under the name board profiles use.
    #[serde(alias = "tensorrt")]
    Onnxruntime,
    /// ONNX Runtime where the build has it, a GPU answers and the library is found; else tract.
    Auto,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Model manifest; empty: the default search ($VERIFACE_MODELS, ./models, installed models).
    pub models: String,
    pub detector: DetectorRange,
    /// Manifest key of the frame deepfake model (e.g. the int8 form on boards where it pays).
    pub deepfake_model: String,
    pub backend: BackendKind,
    /// Inference threads.
    pub threads: u32,
    /// Run the face detector on every Nth frame; tracks carry faces in between.
    pub detect_every: u32,
    /// Re-analyse a tracked face only when its 16x16 grey thumbnail changed by more than this
    /// many grey levels (mean absolute difference); 0 analyses every frame.
    pub min_change: f32,
    /// ...and at least once every this many frames of the track.
    pub max_reuse: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DisplayConfig {
    /// none | png (320x240 colour) | png-oled (128x64 mono) | fb | ssd1306
    pub kind: String,
    /// png: output file; fb: framebuffer device; ssd1306: I2C bus device.
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedConfig {
    /// none | rppal | gpiocdev
    pub kind: String,
    /// gpiocdev: the chip (e.g. /dev/gpiochip0).
    pub chip: String,
    /// BCM / line numbers; -1 = not fitted.
    pub green: i32,
    pub red: i32,
    pub amber: i32,
    pub buzzer: i32,
    pub active_low: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    pub enabled: bool,
    pub dir: String,
    /// 0: flush after every record; else at most this many ms of records can be lost.
    pub flush_ms: u64,
    pub rotate_kib: u64,
    pub keep_files: u32,
    /// Stop writing (one warning) below this much free space; resume above it.
    pub min_free_mib: u64,
    /// A face record per track at verdict changes and at most this often otherwise (0: every
    /// analysed frame).
    pub face_interval_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Status snapshot (JSON), replaced atomically; empty: none.
    pub path: String,
    pub interval_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// One frame's analysis taking longer than this is reported as stuck.
    pub inference_stall_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Write face snapshots (PNG) at each verdict change. Off: no face pixels leave memory.
    pub snapshots: bool,
    pub snapshot_dir: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: "veriface".into(),
            camera: CameraConfig::default(),
            engine: EngineSection::default(),
            verdict: VerdictConfig::default(),
            display: DisplayConfig::default(),
            leds: LedConfig::default(),
            records: RecordsConfig::default(),
            status: StatusConfig::default(),
            watchdog: WatchdogConfig::default(),
            privacy: PrivacyConfig::default(),
            onnxruntime: Default::default(),
        }
    }
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            device: "/dev/video0".into(),
            width: 640,
            height: 480,
            fps: 15.0,
            format: PixelFormat::Auto,
            timeout_s: 5.0,
            reopen_max_s: 30.0,
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            models: String::new(),
            detector: DetectorRange::Short,
            deepfake_model: crate::analysis::DEEPFAKE_KEY.into(),
            backend: BackendKind::Tract,
            threads: 1,
            detect_every: DAEMON_SCHEDULE.detect_every,
            min_change: DAEMON_SCHEDULE.min_change,
            max_reuse: DAEMON_SCHEDULE.max_reuse,
        }
    }
}

impl Default for DisplayConfig {
    fn default() -> Self {
        DisplayConfig {
            kind: "none".into(),
            path: String::new(),
        }
    }
}

impl Default for LedConfig {
    fn default() -> Self {
        LedConfig {
            kind: "none".into(),
            chip: "/dev/gpiochip0".into(),
            green: -1,
            red: -1,
            amber: -1,
            buzzer: -1,
            active_low: false,
        }
    }
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            enabled: true,
            dir: "/var/lib/veriface/records".into(),
            flush_ms: 1000,
            rotate_kib: 4096,
            keep_files: 16,
            min_free_mib: 64,
            face_interval_ms: 1000,
        }
    }
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            path: "/run/veriface/status.json".into(),
            interval_s: 1.0,
        }
    }
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            inference_stall_s: 10.0,
        }
    }
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            snapshots: false,
            snapshot_dir: "/var/lib/veriface/snapshots".into(),
        }
    }
}

fn positive(name: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{name} = {v}: must be a positive number");
    }
    Ok(())
}

fn one_of(name: &str, v: &str, allowed: &[&str]) -> Result<()> {
    if !allowed.contains(&v) {
        bail!("{name} = {v:?}: must be one of {}", allowed.join(", "));
    }
    Ok(())
}

/// The daemon's default schedule: a live camera gives many near-identical frames.
/// detect_every 3: at 30 frames/s a face moves little in 100 ms, and tracks carry it between.
/// min_change 2 grey levels: above what sensor noise leaves after the thumbnail's averaging.
/// max_reuse 10: every face is analysed afresh at least 3 times a second at 30 frames/s.
pub const DAEMON_SCHEDULE: Schedule = Schedule {
    detect_every: 3,
    min_change: 2.0,
    max_reuse: 10,
};

impl Config {
    pub fn schedule(&self) -> Schedule {
        Schedule {
            detect_every: self.engine.detect_every,
            min_change: self.engine.min_change,
            max_reuse: self.engine.max_reuse,
        }
    }

    /// The backend to build from `engine.backend` and `[onnxruntime]`.
    pub fn backend_choice(&self) -> crate::infer::BackendChoice {
        use crate::infer::BackendChoice;
        match self.engine.backend {
            BackendKind::Tract => BackendChoice::Tract,
            BackendKind::Onnxruntime => BackendChoice::Onnxruntime(self.onnxruntime.clone()),
            BackendKind::Auto => BackendChoice::Auto(self.onnxruntime.clone()),
        }
    }

    /// Parse and check; the error names the file and the key.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config", path.display()))?;
        Config::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines with a source excerpt: keep the first line
            // and the key it names, so the error stays one line.
            let msg = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string();
            match e.span() {
                Some(span) => {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
                    anyhow::anyhow!("line {line}: {msg}")
                }
                None => anyhow::anyhow!("{msg}"),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        if self.device_id.is_empty() || self.device_id.len() > 32 {
            bail!("device_id = {:?}: 1 to 32 characters", self.device_id);
        }
        let c = &self.camera;
        if c.device.is_empty() {
            bail!("camera.device: empty (a path like /dev/video0 or a camera name)");
        }
        if !(16..=8192).contains(&c.width) || !(16..=8192).contains(&c.height) {
            bail!(
                "camera.width/height = {}x{}: out of range",
                c.width,
                c.height
            );
        }
        positive("camera.fps", c.fps)?;
        positive("camera.timeout_s", c.timeout_s)?;
        positive("camera.reopen_max_s", c.reopen_max_s)?;
        if !(1..=64).contains(&self.engine.threads) {
            bail!("engine.threads = {}: 1 to 64", self.engine.threads);
        }
        self.schedule()
            .validate()
            .map_err(|e| anyhow::anyhow!("engine.{e}"))?;
        if self.engine.backend != BackendKind::Tract {
            self.onnxruntime.validate()?;
        }
        self.verdict
            .validate()
            .map_err(|e| anyhow::anyhow!("verdict: {e}"))?;
        one_of(
            "display.kind",
            &self.display.kind,
            &["none", "png", "png-oled", "fb", "ssd1306"],
        )?;
        if self.display.kind != "none" && self.display.path.is_empty() {
            bail!(
                "display.path: needed for display.kind = {:?}",
                self.display.kind
            );
        }
        one_of("leds.kind", &self.leds.kind, &["none", "rppal", "gpiocdev"])?;
        for (name, pin) in [
            ("leds.green", self.leds.green),
            ("leds.red", self.leds.red),
            ("leds.amber", self.leds.amber),
            ("leds.buzzer", self.leds.buzzer),
        ] {
            if !(-1..=511).contains(&pin) {
                bail!("{name} = {pin}: a GPIO line number, or -1 for none");
            }
        }
        let r = &self.records;
        if r.enabled && r.dir.is_empty() {
            bail!("records.dir: empty while records.enabled = true");
        }
        if r.rotate_kib < 16 {
            bail!("records.rotate_kib = {}: at least 16", r.rotate_kib);
        }
        if r.keep_files == 0 {
            bail!("records.keep_files = 0: keep at least 1 file");
        }
        positive("status.interval_s", self.status.interval_s)?;
        positive(
            "watchdog.inference_stall_s",
            self.watchdog.inference_stall_s,
        )?;
        if self.privacy.snapshots && self.privacy.snapshot_dir.is_empty() {
            bail!("privacy.snapshot_dir: empty while privacy.snapshots = true");
        }
        Ok(())
    }

    pub fn models_path(&self) -> PathBuf {
        if self.engine.models.is_empty() {
            crate::manifest::default_manifest_path()
        } else {
            PathBuf::from(&self.engine.models)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[camera]\ndevise = \"/dev/video0\"\n").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("devise") && msg.starts_with("line 2"), "{msg}");
        assert_eq!(msg.lines().count(), 1);
    }

    #[test]
    fn bad_values_are_named() {
        for (text, key) in [
            ("[camera]\nfps = 0\n", "camera.fps"),
            ("[camera]\nformat = \"h264\"\n", "h264"),
            ("[display]\nkind = \"hdmi\"\n", "display.kind"),
            ("[verdict]\nfake_enter = 0.2\n", "verdict"),
            ("[leds]\nred = 900\n", "leds.red"),
            ("[records]\nkeep_files = 0\n", "records.keep_files"),
            ("[engine]\ndetector = \"medium\"\n", "medium"),
        ] {
            let msg = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(msg.contains(key), "{text:?} -> {msg}");
        }
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }
}
