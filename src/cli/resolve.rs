//! Flags resolved into the library's settings.

use veriface::face::DetectorRange;
use veriface::pipeline::EngineConfig;

use super::flags::Cli;

pub(crate) fn engine_config(cli: &Cli, range: DetectorRange, threshold: f32) -> EngineConfig {
    let mut cfg = EngineConfig::default();
    if let Some(m) = &cli.models {
        cfg.manifest = m.clone();
    }
    cfg.detector = range;
    cfg.verdict.threshold = threshold;
    let opts = veriface::infer::accel::OrtOptions {
        providers: cli.providers.clone(),
        // Asked for on the command line: a provider that does not come up is an error.
        fallback: veriface::infer::accel::Fallback::Fail,
        ..Default::default()
    };
    cfg.backend = cli.backend.choice(opts);
    cfg
}
