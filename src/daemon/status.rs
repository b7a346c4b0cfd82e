//! The health snapshot: what `veriface status` prints, replaced atomically so a reader never
//! sees half a file.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StageMs {
    pub detect: f64,
    pub deepfake: f64,
    pub temporal: f64,
    pub emotion: f64,
    pub total: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LastVerdict {
    pub track: u32,
    pub label: String,
    pub probability: Option<f32>,
    pub emotion: Option<String>,
    pub emotion_confidence: Option<f32>,
    pub age_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub device_id: String,
    pub pid: u32,
    pub uptime_s: f64,
    pub state: String,
    pub camera: String,
    pub camera_detail: String,
    pub camera_outages: u64,
    pub backend: String,
    /// Manifest key -> what really runs it (`tract` or an ONNX Runtime execution provider).
    #[serde(default)]
    pub providers: std::collections::BTreeMap<String, String>,
    /// Frames analysed per second (recent), and frames captured but skipped as stale.
    pub fps: f64,
    pub frames: u64,
    pub dropped: u64,
    pub faces: usize,
    pub stage_ms: StageMs,
    pub last_verdict: Option<LastVerdict>,
    /// Every face of the last analysed frame (the operator page lists them).
    #[serde(default)]
    pub current: Vec<LastVerdict>,
    pub inference_stalled: bool,
    pub records: String,
    /// Heap the allocator has handed out and not had back, KiB (glibc only). Beside the RSS it
    /// tells a leak (this grows too) from allocator growth (arenas, fragmentation: it does not).
    #[serde(default)]
    pub heap_kib: Option<u64>,
}

/// Live heap bytes from glibc's `mallinfo` (every arena, mmapped blocks included). Its fields
/// are C ints, so past 2 GiB it wraps: far beyond what this daemon holds. Not `mallinfo2`: the
/// board builds link against glibc 2.31, which lacks it.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[allow(deprecated)]
        // SAFETY: takes no arguments, returns a struct by value; glibc locks the arenas itself.
        let m = unsafe { libc::mallinfo() };
        Some(m.uordblks as u32 as u64 + m.hblkhd as u32 as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

impl Status {
    pub fn write_atomic(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create folder", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot replace", path.display()))?;
        Ok(())
    }

    pub fn read(path: &Path) -> Result<Status> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "{}: cannot read status (is `veriface run` running?)",
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a veriface status file", path.display()))
    }

    /// Human-readable form for `veriface status`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "veriface {} ({}) pid {} up {:.0} s: {}\n",
            self.version, self.device_id, self.pid, self.uptime_s, self.state
        );
        s += &format!(
            "camera   {} {} (outages {})\n",
            self.camera, self.camera_detail, self.camera_outages
        );
        s += &format!(
            "speed    {:.1} fps, {} frames, {} stale frames skipped, backend {}\n",
            self.fps, self.frames, self.dropped, self.backend
        );
        if self.providers.values().any(|p| p != "tract") {
            let runs: Vec<String> = self
                .providers
                .iter()
                .map(|(k, p)| format!("{k}={p}"))
                .collect();
            s += &format!(
                "models   {}
",
                runs.join("  ")
            );
        }
        let m = &self.stage_ms;
        s +=
            &format!(
            "stage ms detect {:.1}  deepfake {:.1}  temporal {:.2}  emotion {:.1}  total {:.1}{}\n",
            m.detect,
            m.deepfake,
            m.temporal,
            m.emotion,
            m.total,
            if self.inference_stalled { "  (STALLED)" } else { "" }
        );
        match &self.last_verdict {
            Some(v) => {
                s += &format!(
                    "verdict  {} faces; track {} {} p={} {} ({:.0} s ago)\n",
                    self.faces,
                    v.track,
                    v.label,
                    v.probability.map_or("-".into(), |p| format!("{p:.3}")),
                    v.emotion.as_deref().unwrap_or("-"),
                    v.age_s
                );
            }
            None => s += "verdict  none yet\n",
        }
        s += &format!("records  {}\n", self.records);
        s
    }
}
