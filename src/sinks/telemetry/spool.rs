//! The record files read as the publisher's spool: records after a position (a record's `seq`,
//! `sinks::records::seq`), and the position of the last record the broker acknowledged, kept
//! beside the records.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::sinks::records::{each_after, last_seq, Record};

pub const CURSOR_FILE: &str = "mqtt.cursor";

pub struct Spool {
    dir: PathBuf,
    /// The last record acknowledged (0: none yet).
    acked: u64,
    saved: u64,
}

impl Spool {
    /// The spool of a record folder. Without a saved cursor (telemetry just switched on), the
    /// records already there count as sent: a new broker is not flooded with the device's past.
    pub fn open(dir: &Path) -> Result<Spool> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create record folder", dir.display()))?;
        let cursor_path = dir.join(CURSOR_FILE);
        let last = last_seq(dir)?;
        let acked = match std::fs::read_to_string(&cursor_path) {
            Ok(text) => match text.trim().parse::<u64>() {
                // Records beyond the cursor are gone (the folder was emptied and numbering began
                // again): everything there is new.
                Ok(c) if c > last => 0,
                Ok(c) => c,
                Err(_) => {
                    log::warn!(
                        "{}: not a cursor; publishing from the newest records",
                        cursor_path.display()
                    );
                    last
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => last,
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot read", cursor_path.display()))
            }
        };
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            acked,
            saved: u64::MAX,
        };
        spool.save()?;
        Ok(spool)
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The broker has everything up to `seq` (or it was skipped): the cursor moves there.
    pub fn ack(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
    }

    /// Write the cursor if it moved (atomically: a power cut leaves the old or the new one).
    pub fn save(&mut self) -> Result<()> {
        if self.saved == self.acked {
            return Ok(());
        }
        let path = self.dir.join(CURSOR_FILE);
        let tmp = self.dir.join(format!("{CURSOR_FILE}.tmp"));
        std::fs::write(&tmp, format!("{}\n", self.acked))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        self.saved = self.acked;
        Ok(())
    }

    /// Up to `max` records after `after`, oldest first, each with its seq. The newest file's
    /// last bytes may be a record still being written: left for the next read.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<(u64, Record)>> {
        let mut out = Vec::new();
        each_after(&self.dir, after, |s, record| {
            out.push((s, record));
            match out.len() >= max {
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            }
        })?;
        Ok(out)
    }

    /// How many records there are after `after`, and the seq before the newest `keep` of them
    /// (where to skip to when more than `keep` wait). Holds `keep + 1` seqs, not the records: a
    /// long outage can leave a million of them.
    pub fn backlog(&self, after: u64, keep: usize) -> Result<(usize, Option<u64>)> {
        let mut waiting = 0;
        let mut newest = VecDeque::with_capacity(keep + 1);
        each_after(&self.dir, after, |s, _| {
            waiting += 1;
            if newest.len() > keep {
                newest.pop_front();
            }
            newest.push_back(s);
            ControlFlow::Continue(())
        })?;
        let skip_to = (waiting > keep).then(|| newest[0]);
        Ok((waiting, skip_to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::records::{record_files, Event, RecordWriter, RecordsConfig, StatVfs};

    fn record(n: u64) -> Record {
        Record {
            wall_ms: n,
            mono_ms: n,
            device: crate::sinks::records::short("d"),
            event: Event::CameraBack,
        }
    }

    fn writer(dir: &Path) -> RecordWriter {
        let cfg = RecordsConfig {
            flush_ms: 0,
            rotate_kib: 16,
            ..RecordsConfig::default()
        };
        RecordWriter::open(dir, cfg, Box::new(StatVfs)).unwrap()
    }

    #[test]
    fn reads_after_a_cursor_across_rotation_and_restarts() {
        let dir = std::env::temp_dir().join(format!("veriface-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = writer(&dir);
        w.write(&record(1)).unwrap();
        // Records already there when telemetry is switched on count as sent.
        let mut spool = Spool::open(&dir).unwrap();
        assert!(spool.read_after(spool.acked(), 100).unwrap().is_empty());
        // Enough records to rotate (16 KiB files, ~14 bytes a record).
        for n in 2..=4000 {
            w.write(&record(n)).unwrap();
        }
        assert!(record_files(&dir).unwrap().len() > 2);
        let got = spool.read_after(spool.acked(), 10_000).unwrap();
        let walls: Vec<u64> = got.iter().map(|(_, r)| r.wall_ms).collect();
        assert_eq!(walls, (2..=4000).collect::<Vec<_>>());
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "seq grows");
        // Acknowledge up to record 700; a new spool (a restart) resumes after it.
        spool.ack(got[698].0);
        spool.save().unwrap();
        let spool = Spool::open(&dir).unwrap();
        let rest = spool.read_after(spool.acked(), 5).unwrap();
        assert_eq!(rest[0].1.wall_ms, 701);
        assert_eq!(rest.len(), 5);
        // The backlog bound: 3300 wait; keeping 100 skips to just before record 3901.
        let (waiting, skip_to) = spool.backlog(spool.acked(), 100).unwrap();
        assert_eq!(waiting, 3300);
        let after_skip = spool.read_after(skip_to.unwrap(), 1).unwrap();
        assert_eq!(after_skip[0].1.wall_ms, 3901);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
