//! The daemon's one TOML file (`/etc/veriface/veriface.toml`) and the board profiles in boards/.
//!
//! Every key has a default, unknown keys are errors (a typo must not silently keep a default),
//! and values are range-checked at start and on SIGHUP. `cross/veriface.toml` documents them all.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::face::DetectorRange;
pub use crate::infer::BackendKind;
// The outputs' sections: defined by the sinks that read them.
pub use crate::sinks::display::DisplayConfig;
pub use crate::sinks::leds::LedConfig;
pub use crate::sinks::records::RecordsConfig;
pub use crate::sinks::telemetry::MqttConfig;
// The local API's section: defined by the API that reads it.
pub use crate::api::http::HttpConfig;
pub use crate::api::ApiConfig;
pub use crate::liveness::camera::CameraExpect;
pub use crate::liveness::LivenessConfig;
// The realtime schedule is the pipeline's; the daemon makes it its default.
use crate::pipeline::Schedule;
pub use crate::pipeline::DAEMON_SCHEDULE;
use crate::source::camera::PixelFormat;
use crate::verdict::VerdictSettings;

pub const DEFAULT_CONFIG: &str = "/etc/veriface/veriface.toml";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names this device in records and the status file.
    pub device_id: String,
    pub camera: CameraConfig,
    pub engine: EngineSection,
    /// What is left out centres on the deepfake model's operating threshold (manifest).
    pub verdict: VerdictSettings,
    pub display: DisplayConfig,
    pub leds: LedConfig,
    pub records: RecordsConfig,
    /// Fleet telemetry (off unless `url` is set); the records are its spool.
    pub mqtt: MqttConfig,
    pub status: StatusConfig,
    pub watchdog: WatchdogConfig,
    pub privacy: PrivacyConfig,
    pub api: ApiConfig,
    /// The read-only operator page (off unless `listen` is set).
    pub http: HttpConfig,
    /// Liveness checks in verification sessions.
    pub liveness: LivenessConfig,
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
    /// Accept virtual cameras (v4l2loopback, vivid...): only for tests, never on a kiosk.
    pub allow_virtual: bool,
    /// Pin the one camera this device trusts; a different one is refused.
    pub expect: CameraExpect,
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
    /// Keep each verification session's face embedding in its record (int8). Off: reference
    /// photos and embeddings live in memory for the session only.
    pub store_embeddings: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device_id: "veriface".into(),
            camera: CameraConfig::default(),
            engine: EngineSection::default(),
            verdict: VerdictSettings::default(),
            display: DisplayConfig::default(),
            leds: LedConfig::default(),
            records: RecordsConfig::default(),
            mqtt: MqttConfig::default(),
            status: StatusConfig::default(),
            watchdog: WatchdogConfig::default(),
            privacy: PrivacyConfig::default(),
            api: ApiConfig::default(),
            http: HttpConfig::default(),
            liveness: LivenessConfig::default(),
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
            allow_virtual: false,
            expect: CameraExpect::default(),
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
            store_embeddings: false,
        }
    }
}

/// `section.key` for a `key = value` line (1-based), from the nearest `[section]` above it.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let key = here.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') || key.starts_with('#') {
        return None;
    }
    let section = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match section {
        Some(s) => format!("{s}.{key}"),
        None => key.to_string(),
    })
}

fn positive(name: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{name} = {v}: must be a positive number");
    }
    Ok(())
}

impl CameraConfig {
    /// What the camera must be (the camera-injection checks).
    pub fn policy(&self) -> crate::liveness::camera::CameraPolicy {
        crate::liveness::camera::CameraPolicy {
            allow_virtual: self.allow_virtual,
            expect: self.expect.clone(),
        }
    }
}

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
        self.engine.backend.choice(self.onnxruntime.clone())
    }

    /// Parse and check; the error names the file and the key.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config", path.display()))?;
        Config::parse(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            // The key the error is about, e.g. `display.kind`, named as in the file.
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
                    match key_at(text, line) {
                        Some(key) => anyhow::anyhow!("line {line}: {key}: {msg}"),
                        None => anyhow::anyhow!("line {line}: {msg}"),
                    }
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
        self.api.validate()?;
        self.http.validate()?;
        self.liveness.validate()?;
        if self.verdict.needs_model_threshold() {
            bail!("verdict: fake_enter, fake_exit, real_enter and real_exit need `threshold` set too (the band surrounds it)");
        }
        // Without a threshold only window and min_frames are set: any model threshold fits them.
        self.verdict
            .resolve(0.5)
            .validate()
            .map_err(|e| anyhow::anyhow!("verdict: {e}"))?;
        if self
            .display
            .path()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            bail!(
                "display.path: needed for display.kind = {:?}",
                self.display.kind()
            );
        }
        for (name, pin) in [
            ("leds.green", self.leds.green),
            ("leds.red", self.leds.red),
            ("leds.amber", self.leds.amber),
            ("leds.buzzer", self.leds.buzzer),
        ] {
            match pin {
                Some(pin) if pin > 511 => {
                    bail!("{name} = {pin}: a GPIO line number (leave the key out for none)")
                }
                _ => {}
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
        // A record's seq keeps its offset in 32 bits.
        if r.rotate_kib > 1 << 20 {
            bail!(
                "records.rotate_kib = {}: at most 1048576 (1 GiB)",
                r.rotate_kib
            );
        }
        self.mqtt.validate()?;
        if self.mqtt.enabled() && !r.enabled {
            bail!("mqtt.url is set but records.enabled = false: the records are what MQTT publishes (and its spool while the broker is away)");
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
            ("[mqtt]\nurl = \"tcp://b\"\n", "mqtt.url"),
            ("[http]\nlisten = \"0.0.0.0:80\"\n", "http.token"),
            (
                "[records]\nenabled = false\n[mqtt]\nurl = \"mqtt://b\"\n",
                "records.enabled",
            ),
            ("[engine]\ndetector = \"medium\"\n", "medium"),
        ] {
            let fleet_section = text.contains("[mqtt]") || text.contains("[http]");
            let key = match cfg!(feature = "fleet") || !fleet_section {
                true => key,
                false => "without the `fleet` feature",
            };
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
