//! Flags resolved into the library's settings.

use anyhow::Result;
use veriface::face::DetectorRange;
use veriface::pipeline::EngineConfig;
use veriface::verdict::VerdictSettings;

use super::flags::Cli;

/// `--threshold`, when given, within 0..1.
pub(crate) fn check_threshold(threshold: Option<f32>) -> Result<()> {
    match threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => {
            anyhow::bail!("--threshold {t}: must be within 0..1")
        }
        _ => Ok(()),
    }
}

/// `threshold`: the operating point asked for, the verdict band centred on it; None leaves
/// both to the deepfake model's manifest entry.
pub(crate) fn engine_config(
    cli: &Cli,
    range: DetectorRange,
    threshold: Option<f32>,
) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    if let Some(m) = &cli.models {
        cfg.manifest = m.clone();
    }
    cfg.detector = range;
    cfg.verdict = threshold.map(VerdictSettings::at).unwrap_or_default();
    let opts = veriface::infer::accel::OrtOptions {
        providers: cli.providers.clone(),
        // Asked for on the command line: a provider that does not come up is an error.
        fallback: veriface::infer::accel::Fallback::Fail,
        ..Default::default()
    };
    cfg.backend = cli.backend.choice(opts);
    cfg
}
