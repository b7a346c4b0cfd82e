//! `models` and `models prepare`: check, load and warm every model.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use veriface::face::DetectorRange;
use veriface::pipeline::EngineConfig;

use super::flags::Cli;
use super::resolve::engine_config;

pub(crate) fn models_prepare(cli: &Cli, config: &Path) -> Result<ExitCode> {
    let daemon_cfg = veriface::daemon::config::Config::load(config)?;
    let mut cfg = engine_config(cli, DetectorRange::Short, None);
    if cli.models.is_none() {
        cfg.manifest = daemon_cfg.models_path();
    }
    cfg.backend = daemon_cfg.backend_choice();
    cfg.threads = daemon_cfg.engine.threads as usize;
    models(&cfg, true)
}

/// Loads every manifest model through the chosen backend and says what runs it; `warm` also
/// runs each once (TensorRT engine build) and times load + first run.
pub(crate) fn models(cfg: &EngineConfig, warm: bool) -> Result<ExitCode> {
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
