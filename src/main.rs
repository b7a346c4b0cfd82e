//! The veriface command line: parse the flags, dispatch to the command, print one error line.
//! Everything else lives in the library; the commands are in `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::flags::{Cli, Command, ConfigCommand, ModelsAction, TractLayout, TractOps};
use cli::resolve::engine_config;
use veriface::face::DetectorRange;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_)) {
        // One-shot commands piped into `head` or `grep -q` should end quietly like any Unix
        // tool, not panic on a closed stdout. The daemon keeps ignoring SIGPIPE.
        // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match &cli.command {
        Command::Analyze(args) => cli::analyze::analyze(&cli, args),
        Command::Eval(args) => cli::eval::eval(&cli, args),
        Command::Models { action: None } => {
            let cfg = engine_config(&cli, DetectorRange::Short, None);
            cli::models::models(&cfg, false)
        }
        Command::Models {
            action: Some(ModelsAction::Prepare { config }),
        } => cli::models::models_prepare(&cli, config),
        Command::Bench(args) => {
            let mut config = engine_config(&cli, DetectorRange::Short, None);
            config.deepfake = args.deepfake_model.clone();
            config.threads = args.threads as usize;
            match &args.model {
                Some(key) => {
                    let choice = veriface::bench::TractChoice {
                        channels_last: args.tract_layout.map(|l| matches!(l, TractLayout::Nhwc)),
                        own_ops: args.tract_ops.map(|o| matches!(o, TractOps::Veriface)),
                    };
                    match args.profile {
                        true => veriface::bench::profile_model(
                            &config,
                            key,
                            choice,
                            args.iterations,
                            args.mark_nodes,
                            args.json,
                        ),
                        false => veriface::bench::one_model(
                            &config,
                            key,
                            choice,
                            args.iterations,
                            args.json,
                        ),
                    }
                }
                None => veriface::bench::run(
                    config,
                    &args.clip,
                    args.iterations,
                    args.passes,
                    args.json,
                ),
            }
        }
        Command::Verify(args) => cli::verify::verify(&cli, args),
        Command::Run(args) => cli::daemon::run(&cli, args),
        Command::Status { file, config, json } => {
            cli::daemon::status(file.as_deref(), config, *json)
        }
        Command::Config(ConfigCommand::Check { files }) => cli::daemon::config_check(files),
        Command::Config(ConfigCommand::Defaults) => cli::daemon::config_defaults(),
        Command::Log(cmd) => cli::log::log_command(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
