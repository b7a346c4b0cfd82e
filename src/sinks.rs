//! Outputs: the text/JSON report and PNG plots for one-shot runs; for a live run, the records,
//! the display and the LEDs, each behind [`output::Output`]. Sinks know the results they are
//! given and their own config sections, nothing of the daemon that drives them.

pub mod canvas;
pub mod display;
pub mod explain;
pub mod leds;
pub mod output;
pub mod plot;
pub mod records;
pub mod report;
pub mod telemetry;

use std::fs::File;
use std::path::Path;

pub use output::{DaemonEvent, LiveView, Output};

/// What the live outputs are built from: their config sections and two facts they record.
pub struct OutputsConfig<'a> {
    pub device_id: &'a str,
    /// Manifest key of the frame deepfake model (its hash goes into the records).
    pub deepfake_model: &'a str,
    pub records: &'a records::RecordsConfig,
    pub display: &'a display::DisplayConfig,
    pub leds: &'a leds::LedConfig,
}

/// The outputs a config asks for. One that cannot start is reported in one line and left out:
/// the run goes on with the others.
pub fn open_outputs(cfg: &OutputsConfig) -> Vec<Box<dyn Output>> {
    let mut out: Vec<Box<dyn Output>> = Vec::new();
    if cfg.records.enabled {
        match records::RecordsOutput::open(cfg.records, cfg.device_id, cfg.deepfake_model) {
            Ok(r) => out.push(Box::new(r)),
            Err(e) => log::error!("records off: {e:#}"),
        }
    }
    match display::open(cfg.display) {
        Ok(Some(panel)) => out.push(Box::new(display::DisplayOutput::new(panel))),
        Ok(None) => {}
        Err(e) => log::error!("display off: {e:#}"),
    }
    if cfg.leds.kind != leds::LedDriver::None {
        match leds::open(cfg.leds) {
            Ok(l) => out.push(Box::new(l)),
            Err(e) => log::error!("LEDs off: {e:#}"),
        }
    }
    out
}

/// Open a device node read-write; a missing node or a missing permission is one line with the
/// remedy (`missing`: what to check; `group`: the group that grants access).
pub(crate) fn open_device(path: &Path, missing: &str, group: &str) -> anyhow::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!("{}: {missing}", path.display()),
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "{}: permission denied (add the user to the {group} group)",
                path.display()
            ),
            _ => anyhow::anyhow!("{}: cannot open: {e}", path.display()),
        })
}
