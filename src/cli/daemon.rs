//! `run`, `status` and `config`: the daemon and its files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use super::flags::{Cli, RunArgs};

pub(crate) fn run(cli: &Cli, args: &RunArgs) -> Result<ExitCode> {
    let opts = veriface::daemon::RunOptions {
        models: cli.models.clone(),
        config: args.config.clone(),
        source: args.source.clone(),
        looped: args.looped,
        records: args.records.clone(),
        status: args.status.clone(),
        display: args.display.clone(),
        leds: args.leds.clone(),
        api: args.api.clone(),
        quiet: args.quiet,
    };
    veriface::daemon::run(&opts)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn config_defaults() -> Result<ExitCode> {
    print!(
        "{}",
        toml::to_string(&veriface::daemon::config::Config::default())?
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn status(file: Option<&Path>, config: &Path, json: bool) -> Result<ExitCode> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => {
            let cfg = if config.exists() {
                veriface::daemon::config::Config::load(config)?
            } else {
                veriface::daemon::config::Config::default()
            };
            PathBuf::from(cfg.status.path)
        }
    };
    let status = veriface::daemon::status::Status::read(&path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn config_check(files: &[PathBuf]) -> Result<ExitCode> {
    let mut ok = true;
    for f in files {
        match veriface::daemon::config::Config::load(f) {
            Ok(_) => println!("ok    {}", f.display()),
            Err(e) => {
                ok = false;
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
