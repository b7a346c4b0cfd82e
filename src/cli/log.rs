//! `log decode` and `log stats`: reading the daemon's verdict records.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use super::flags::LogCommand;

pub(crate) fn log_command(cmd: &LogCommand) -> Result<ExitCode> {
    use veriface::sinks::records;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cmd {
        LogCommand::Decode { paths, csv, follow } => {
            if *follow {
                let [path] = paths.as_slice() else {
                    anyhow::bail!(
                        "--follow takes one record file or folder ({} given)",
                        paths.len()
                    );
                };
                if *csv {
                    writeln!(out, "{}", records::CSV_HEADER)?;
                }
                records::follow(path, |file, off, r| {
                    let line = if *csv {
                        records::to_csv(r)
                    } else {
                        records::to_json(file, off, r).to_string()
                    };
                    writeln!(out, "{line}")?;
                    out.flush()?;
                    Ok(())
                })?;
            } else {
                let files = records::expand_paths(paths)?;
                records::write_decoded(&files, *csv, &mut out)?;
            }
        }
        LogCommand::Stats { paths, json } => {
            let files = records::expand_paths(paths)?;
            let mut stats = records::Stats::default();
            records::decode_files(&files, |_, d| {
                stats.add(d);
                Ok(())
            })?;
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&stats)?)?;
            } else {
                write!(out, "{}", stats.render())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
