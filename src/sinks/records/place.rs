//! A record's place in a record folder, and reading forward from one: what the MQTT spool and
//! the operator page both need.
//!
//! A record's place is its `seq`: the record file's number in the high 32 bits and the frame's
//! byte offset in the low 32 (a record file is far smaller than 4 GiB: `records.rotate_kib`), so
//! later records always have larger numbers, across rotations and restarts. Every file starts
//! with a delimiter, so no record sits at offset 0 and `seq(n, 0)` comes before all of file n.

use std::ops::ControlFlow;
use std::path::Path;

use anyhow::Result;

use super::format::{decode_file_from, Record};
use super::writer::{file_number, record_files};

pub fn seq(file_number: u64, offset: u64) -> u64 {
    (file_number << 32) | (offset & 0xffff_ffff)
}

/// (file number, byte offset) of a seq.
pub fn split(seq: u64) -> (u64, u64) {
    (seq >> 32, seq & 0xffff_ffff)
}

/// Every intact record after `after`, oldest first, one file in memory at a time. The newest
/// file's last bytes may be a record still being written: left for the next read.
pub fn each_after(
    dir: &Path,
    after: u64,
    mut each: impl FnMut(u64, Record) -> ControlFlow<()>,
) -> Result<()> {
    let (after_file, after_offset) = split(after);
    let files = record_files(dir)?;
    let newest = files.len().saturating_sub(1);
    for (i, path) in files.iter().enumerate() {
        let Some(number) = file_number(path) else {
            continue;
        };
        if number < after_file {
            continue;
        }
        let from = if number == after_file {
            after_offset
        } else {
            0
        };
        let decoded = match decode_file_from(path, from, i != newest) {
            Ok(d) => d,
            // Rotated away between the listing and the read: its records are gone.
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        };
        for (offset, record) in decoded.records {
            let s = seq(number, offset);
            if s > after && each(s, record).is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The seq of the newest record in a folder (0: none).
pub fn last_seq(dir: &Path) -> Result<u64> {
    for path in record_files(dir)?.iter().rev() {
        let Some(number) = file_number(path) else {
            continue;
        };
        let decoded = match decode_file_from(path, 0, false) {
            Ok(d) => d,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        };
        if let Some((offset, _)) = decoded.records.last() {
            return Ok(seq(number, *offset));
        }
    }
    Ok(0)
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}
