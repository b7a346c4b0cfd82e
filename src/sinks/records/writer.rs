//! Appending records to numbered files: rotation, retention, flushing and the free-space guard.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::format::*;
use super::RecordsConfig;

/// Free space on the file system of a folder (a trait so the guard is testable).
pub trait FreeSpace: Send {
    fn free_bytes(&self, dir: &Path) -> std::io::Result<u64>;
}

pub struct StatVfs;

impl FreeSpace for StatVfs {
    fn free_bytes(&self, dir: &Path) -> std::io::Result<u64> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        // What an unprivileged writer may use (f_bavail), in fragment-size units.
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }
}

pub struct RecordWriter {
    dir: PathBuf,
    cfg: RecordsConfig,
    file: Option<(BufWriter<File>, PathBuf, u64)>,
    next_number: u64,
    last_flush: Instant,
    last_space_check: Option<Instant>,
    suspended: bool,
    space: Box<dyn FreeSpace>,
    /// Records not written because the disk was nearly full.
    pub skipped: u64,
}

/// The number of a rotated record file (`veriface-<n>.vfr`); None for any other name.
pub fn file_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("veriface-")?
        .strip_suffix(&format!(".{EXTENSION}"))?
        .parse()
        .ok()
}

/// Record files of a folder, oldest first.
pub fn record_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .flatten()
        .filter_map(|e| file_number(&e.path()).map(|n| (n, e.path())))
        .collect();
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

impl RecordWriter {
    /// The folder the records go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn open(dir: &Path, cfg: RecordsConfig, space: Box<dyn FreeSpace>) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create record folder", dir.display()))?;
        let next_number = record_files(dir)?
            .last()
            .and_then(|p| file_number(p))
            .map_or(1, |n| n + 1);
        Ok(RecordWriter {
            dir: dir.to_path_buf(),
            cfg,
            file: None,
            next_number,
            last_flush: Instant::now(),
            last_space_check: None,
            suspended: false,
            space,
            skipped: 0,
        })
    }

    pub fn current_file(&self) -> Option<&Path> {
        self.file.as_ref().map(|f| f.1.as_path())
    }

    fn start_file(&mut self) -> Result<()> {
        let path = self
            .dir
            .join(format!("veriface-{:06}.{EXTENSION}", self.next_number));
        self.next_number += 1;
        let mut f = BufWriter::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("{}: cannot open", path.display()))?,
        );
        f.write_all(&[0])?;
        self.file = Some((f, path, 1));
        // Rotation: keep the newest `keep_files`, the one just opened included.
        let files = record_files(&self.dir)?;
        let excess = files.len().saturating_sub(self.cfg.keep_files as usize);
        for old in &files[..excess] {
            if let Err(e) = std::fs::remove_file(old) {
                log::warn!("{}: cannot remove old records: {e}", old.display());
            }
        }
        Ok(())
    }

    /// Append one record; flushes by policy. When the disk is nearly full, records are skipped
    /// with one warning until space returns.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        let check_due = self
            .last_space_check
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if check_due {
            self.last_space_check = Some(Instant::now());
            let free = self.space.free_bytes(&self.dir).unwrap_or(u64::MAX);
            let low = free < self.cfg.min_free_mib * 1024 * 1024;
            if low && !self.suspended {
                log::warn!(
                    "{}: less than {} MiB free; records paused until space returns",
                    self.dir.display(),
                    self.cfg.min_free_mib
                );
                self.flush(true)?;
            } else if !low && self.suspended {
                log::warn!(
                    "{}: space available again; records resumed ({} skipped)",
                    self.dir.display(),
                    self.skipped
                );
            }
            self.suspended = low;
        }
        if self.suspended {
            self.skipped += 1;
            return Ok(());
        }
        if self
            .file
            .as_ref()
            .is_none_or(|f| f.2 >= self.cfg.rotate_kib * 1024)
        {
            self.flush(true)?;
            self.start_file()?;
        }
        let mut frame = [0u8; MAX_FRAME + 1];
        let n = encode_frame(record, &mut frame)?;
        let (f, path, bytes) = self.file.as_mut().expect("opened above");
        f.write_all(&frame[..n])
            .with_context(|| format!("{}: write failed", path.display()))?;
        *bytes += n as u64;
        if self.cfg.flush_ms == 0
            || self.last_flush.elapsed() >= Duration::from_millis(self.cfg.flush_ms)
        {
            self.flush(true)?;
        }
        Ok(())
    }

    /// Push buffered records to the OS, and to the disk itself when `sync` (power-loss safe).
    pub fn flush(&mut self, sync: bool) -> Result<()> {
        self.last_flush = Instant::now();
        if let Some((f, path, _)) = self.file.as_mut() {
            f.flush()
                .with_context(|| format!("{}: flush failed", path.display()))?;
            if sync {
                f.get_ref()
                    .sync_data()
                    .with_context(|| format!("{}: sync failed", path.display()))?;
            }
        }
        Ok(())
    }
}
