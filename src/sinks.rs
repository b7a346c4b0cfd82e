//! Outputs: the text/JSON report and PNG plots for one-shot runs; for the daemon, the records
//! (and the display and LEDs), each behind [`crate::daemon::Output`].

pub mod canvas;
pub mod display;
pub mod explain;
pub mod leds;
pub mod plot;
pub mod records;
pub mod report;

use std::fs::File;
use std::path::Path;

use crate::daemon::config::Config;
use crate::daemon::Output;

/// The outputs a config asks for. One that cannot start is reported in one line and left out:
/// the daemon goes on with the others.
pub fn outputs(cfg: &Config) -> Vec<Box<dyn Output>> {
    let mut out: Vec<Box<dyn Output>> = Vec::new();
    if cfg.records.enabled {
        match records::RecordsOutput::open(cfg) {
            Ok(r) => out.push(Box::new(r)),
            Err(e) => log::error!("records off: {e:#}"),
        }
    }
    if cfg.display.kind != "none" {
        match display::open(&cfg.display.kind, &cfg.display.path) {
            Ok(panel) => out.push(Box::new(display::DisplayOutput::new(panel))),
            Err(e) => log::error!("display off: {e:#}"),
        }
    }
    if cfg.leds.kind != "none" {
        match leds::open(&cfg.leds) {
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
