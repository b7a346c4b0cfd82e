//! Accelerator policy for the ONNX Runtime backend: which library, which execution providers in
//! which order, what to do when the one asked for does not come up, where TensorRT caches its
//! engines. Pure logic, compiled into every build so it is tested without ONNX Runtime.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// An ONNX Runtime execution provider veriface knows how to configure; the CLI (`--providers`)
/// and the config (`onnxruntime.providers`) both use this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl Provider {
    /// The name ONNX Runtime reports (`GetAvailableProviders`).
    pub fn ort_name(self) -> &'static str {
        match self {
            Provider::Tensorrt => "TensorrtExecutionProvider",
            Provider::Cuda => "CUDAExecutionProvider",
            Provider::Cpu => "CPUExecutionProvider",
        }
    }
}

/// What to do when no configured provider comes up (or the library cannot be loaded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Say so loudly and run that model under tract.
    Tract,
    /// Refuse to start.
    Fail,
}

/// The `[onnxruntime]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrtOptions {
    /// libonnxruntime.so to load; empty: $ORT_DYLIB_PATH, then the usual install places.
    pub library: String,
    /// Tried in this order; the first that comes up runs the model.
    pub providers: Vec<Provider>,
    pub fallback: Fallback,
    /// TensorRT: allow fp16 kernels (every Jetson GPU has them).
    pub fp16: bool,
    /// TensorRT: allow int8 kernels (Xavier/Orin; the Jetson Nano's Maxwell GPU has none).
    pub int8: bool,
    /// TensorRT: run on this DLA core (Xavier/Orin NX and AGX); -1: the GPU.
    pub dla_core: i32,
    pub device_id: u32,
    /// TensorRT engine and timing cache: the first-start build (minutes) happens once.
    pub cache_dir: String,
}

pub const DEFAULT_CACHE_DIR: &str = "/var/cache/veriface/tensorrt";

impl Default for OrtOptions {
    fn default() -> Self {
        OrtOptions {
            library: String::new(),
            providers: vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            fallback: Fallback::Tract,
            fp16: true,
            int8: false,
            dla_core: -1,
            device_id: 0,
            cache_dir: DEFAULT_CACHE_DIR.into(),
        }
    }
}

impl OrtOptions {
    pub fn validate(&self) -> Result<()> {
        if self.providers.is_empty() {
            bail!("onnxruntime.providers is empty: name at least one of tensorrt, cuda, cpu");
        }
        for (i, p) in self.providers.iter().enumerate() {
            if self.providers[..i].contains(p) {
                bail!("onnxruntime.providers names {p:?} twice");
            }
        }
        if self.dla_core < -1 {
            bail!(
                "onnxruntime.dla_core = {}: -1 (GPU) or a DLA core number",
                self.dla_core
            );
        }
        if self.providers.contains(&Provider::Tensorrt) && self.cache_dir.trim().is_empty() {
            bail!("onnxruntime.cache_dir is empty: TensorRT needs a folder for its engines");
        }
        Ok(())
    }
}

/// Where to look for libonnxruntime.so, in order: the configured file, $ORT_DYLIB_PATH, then the
/// places a package or JetPack puts it.
pub fn library_candidates(configured: &str, env: Option<&str>) -> Vec<PathBuf> {
    if !configured.is_empty() {
        return vec![PathBuf::from(configured)];
    }
    if let Some(env) = env.filter(|e| !e.is_empty()) {
        return vec![PathBuf::from(env)];
    }
    [
        "/usr/lib/veriface/libonnxruntime.so",
        "/usr/local/lib/libonnxruntime.so",
        "/usr/lib/libonnxruntime.so",
        "/usr/lib/aarch64-linux-gnu/libonnxruntime.so",
        "/usr/lib/x86_64-linux-gnu/libonnxruntime.so",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

/// The first candidate that exists, or an error naming every place looked at.
pub fn find_library(configured: &str, env: Option<&str>) -> Result<PathBuf> {
    let candidates = library_candidates(configured, env);
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "ONNX Runtime library not found (looked at {}): install ONNX Runtime (on Jetson a build \
         with the TensorRT execution provider) or set onnxruntime.library",
        looked.join(", ")
    )
}

/// Device nodes an NVIDIA GPU driver creates: discrete/desktop (`nvidia0`), Jetson (`nvhost-*`,
/// `nvgpu`). Checked under `root` so tests can point it at a scratch folder.
pub fn gpu_present(root: &Path) -> bool {
    ["dev/nvidia0", "dev/nvhost-ctrl-gpu", "dev/nvgpu/igpu0/ctrl"]
        .iter()
        .any(|p| root.join(p).exists())
}

/// What `backend = "auto"` picks, and why (logged at start).
#[derive(Debug, PartialEq, Eq)]
pub enum AutoChoice {
    Onnxruntime(PathBuf),
    Tract(String),
}

pub fn choose_auto(built_with_ort: bool, library: Result<PathBuf>, gpu: bool) -> AutoChoice {
    if !built_with_ort {
        return AutoChoice::Tract("this build has no ONNX Runtime backend".into());
    }
    if !gpu {
        return AutoChoice::Tract("no NVIDIA GPU device found".into());
    }
    match library {
        Ok(lib) => AutoChoice::Onnxruntime(lib),
        Err(e) => AutoChoice::Tract(format!("{e:#}")),
    }
}

/// One provider's attempt for one model: `Err` holds ONNX Runtime's reason.
pub type Attempt = (Provider, std::result::Result<(), String>);

/// The decision for one model after trying the providers in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This provider runs it; `skipped` came first and failed (each is reported loudly).
    Run {
        provider: Provider,
        skipped: Vec<(Provider, String)>,
    },
    /// No provider came up; the config says tract.
    Tract { reason: String },
    /// No provider came up; the config says stop.
    Fail { reason: String },
}

pub fn decide(attempts: &[Attempt], fallback: Fallback) -> Outcome {
    let mut skipped = Vec::new();
    for (provider, result) in attempts {
        match result {
            Ok(()) => {
                return Outcome::Run {
                    provider: *provider,
                    skipped,
                }
            }
            Err(e) => skipped.push((*provider, e.clone())),
        }
    }
    let reason = if skipped.is_empty() {
        "no execution provider configured".to_string()
    } else {
        skipped
            .iter()
            .map(|(p, e)| format!("{}: {e}", p.ort_name()))
            .collect::<Vec<_>>()
            .join("; ")
    };
    match fallback {
        Fallback::Tract => Outcome::Tract { reason },
        Fallback::Fail => Outcome::Fail { reason },
    }
}

/// Creates the engine cache folder and proves it is writable, so a read-only or mistyped path
/// fails at start with its name, not minutes later inside TensorRT.
pub fn prepare_cache_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "{}: cannot create the TensorRT cache folder (set onnxruntime.cache_dir, or give the \
             veriface user write access)",
            dir.display()
        )
    })?;
    let probe = dir.join(format!(".veriface-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| {
        format!(
            "{}: the TensorRT cache folder is not writable (give the veriface user write access)",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(dir.to_path_buf())
}

/// Engine files are named by model key so two models never share (or clobber) one engine.
pub fn engine_cache_prefix(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(p: Provider, why: &str) -> Attempt {
        (p, Err(why.into()))
    }

    #[test]
    fn first_provider_that_comes_up_runs_and_earlier_failures_are_kept() {
        let attempts = [
            err(Provider::Tensorrt, "libnvinfer.so.8: not found"),
            (Provider::Cuda, Ok(())),
            (Provider::Cpu, Ok(())),
        ];
        assert_eq!(
            decide(&attempts, Fallback::Fail),
            Outcome::Run {
                provider: Provider::Cuda,
                skipped: vec![(Provider::Tensorrt, "libnvinfer.so.8: not found".into())],
            }
        );
        let clean = [(Provider::Tensorrt, Ok(()))];
        assert_eq!(
            decide(&clean, Fallback::Tract),
            Outcome::Run {
                provider: Provider::Tensorrt,
                skipped: vec![]
            }
        );
    }

    #[test]
    fn nothing_up_follows_the_fallback_policy_with_every_reason() {
        let attempts = [
            err(Provider::Tensorrt, "not built in"),
            err(Provider::Cuda, "no device"),
        ];
        match decide(&attempts, Fallback::Tract) {
            Outcome::Tract { reason } => {
                assert!(reason.contains("TensorrtExecutionProvider: not built in"));
                assert!(reason.contains("CUDAExecutionProvider: no device"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decide(&attempts, Fallback::Fail),
            Outcome::Fail { .. }
        ));
        assert!(matches!(decide(&[], Fallback::Fail), Outcome::Fail { .. }));
    }

    #[test]
    fn library_search_order() {
        assert_eq!(
            library_candidates("/opt/ort/libonnxruntime.so", Some("/env/lib.so")),
            vec![PathBuf::from("/opt/ort/libonnxruntime.so")]
        );
        assert_eq!(
            library_candidates("", Some("/env/lib.so")),
            vec![PathBuf::from("/env/lib.so")]
        );
        let defaults = library_candidates("", Some(""));
        assert!(defaults.len() > 2);
        assert!(defaults
            .iter()
            .all(|p| p.ends_with("libonnxruntime.so") && p.is_absolute()));
    }

    #[test]
    fn missing_library_error_names_the_places_and_the_remedy() {
        let e = find_library("/nonexistent/libonnxruntime.so", None).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
        assert!(msg.contains("onnxruntime.library"), "{msg}");
        let dir = tempdir("lib");
        let lib = dir.join("libonnxruntime.so");
        std::fs::write(&lib, b"").unwrap();
        assert_eq!(find_library(lib.to_str().unwrap(), None).unwrap(), lib);
    }

    #[test]
    fn auto_needs_the_feature_a_gpu_and_the_library() {
        let lib = || Ok(PathBuf::from("/usr/lib/libonnxruntime.so"));
        assert_eq!(
            choose_auto(true, lib(), true),
            AutoChoice::Onnxruntime(PathBuf::from("/usr/lib/libonnxruntime.so"))
        );
        assert!(
            matches!(choose_auto(false, lib(), true), AutoChoice::Tract(r) if r.contains("build"))
        );
        assert!(
            matches!(choose_auto(true, lib(), false), AutoChoice::Tract(r) if r.contains("GPU"))
        );
        let missing = find_library("/nonexistent/libonnxruntime.so", None);
        assert!(
            matches!(choose_auto(true, missing, true), AutoChoice::Tract(r) if r.contains("not found"))
        );
    }

    #[test]
    fn gpu_detection_looks_for_driver_nodes() {
        let root = tempdir("gpu");
        assert!(!gpu_present(&root));
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/nvhost-ctrl-gpu"), b"").unwrap();
        assert!(gpu_present(&root));
    }

    #[test]
    fn cache_dir_is_created_and_checked() {
        let root = tempdir("cache");
        let dir = root.join("a/b/tensorrt");
        assert_eq!(prepare_cache_dir(&dir).unwrap(), dir);
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "probe removed");
        // A file where the folder should be: the error names the path.
        let blocked = root.join("file");
        std::fs::write(&blocked, b"x").unwrap();
        let e = prepare_cache_dir(&blocked.join("sub")).unwrap_err();
        assert!(format!("{e:#}").contains("file/sub"), "{e:#}");
        assert_eq!(engine_cache_prefix("deepfake_int8"), "deepfake_int8");
        assert_eq!(engine_cache_prefix("a/b c"), "a_b_c");
    }

    #[test]
    fn options_are_validated() {
        assert!(OrtOptions::default().validate().is_ok());
        let empty = OrtOptions {
            providers: vec![],
            ..OrtOptions::default()
        };
        assert!(empty.validate().is_err());
        let twice = OrtOptions {
            providers: vec![Provider::Cuda, Provider::Cuda],
            ..OrtOptions::default()
        };
        assert!(format!("{:#}", twice.validate().unwrap_err()).contains("twice"));
        let dla = OrtOptions {
            dla_core: -2,
            ..OrtOptions::default()
        };
        assert!(dla.validate().is_err());
        let no_cache = OrtOptions {
            cache_dir: " ".into(),
            ..OrtOptions::default()
        };
        assert!(no_cache.validate().is_err());
        let cpu_only = OrtOptions {
            providers: vec![Provider::Cpu],
            cache_dir: String::new(),
            ..OrtOptions::default()
        };
        assert!(cpu_only.validate().is_ok());
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "veriface-accel-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
