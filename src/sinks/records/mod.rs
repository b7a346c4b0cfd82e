//! The audit trail: compact verdict records that survive power loss.
//!
//! On disk each record is `COBS(version byte ++ postcard(record) ++ CRC32-LE) 0x00`, appended to
//! numbered files (`veriface-000001.vfr`, ...). COBS leaves no zero byte inside a frame, so the
//! zero delimiters find record boundaries again after any damage: a file cut at any byte, or with
//! bytes flipped, loses only the records those bytes belonged to, and the CRC keeps damaged
//! frames from being read as records. Every file starts with a delimiter so a frame cut short
//! by a power loss can never swallow the first record written after it.
//!
//! Encoding uses fixed stack buffers and heapless strings: no allocation per record.
//!
//! One file per job: `format` (records, framing, decoding), `writer` (files, rotation, space),
//! `output` (the live run's record output), `read` (JSON/CSV, statistics, follow), `place` (a
//! record's place across files, reading forward from one).

mod format;
mod output;
mod place;
mod read;
mod writer;

use serde::{Deserialize, Serialize};

pub use format::*;
pub use output::RecordsOutput;
pub use place::{each_after, last_seq, seq, split};
pub use read::*;
pub use writer::*;

/// The `[records]` section of the daemon config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    pub enabled: bool,
    pub dir: String,
    /// 0: flush after every record; else at most this many ms of records can be lost.
    pub flush_ms: u64,
    pub rotate_kib: u64,
    pub keep_files: u32,
    /// Stop writing (one warning) below this much free space; resume above it.
    pub min_free_mib: u64,
    /// A face record per track at verdict changes and at most this often otherwise (0: every
    /// analysed frame).
    pub face_interval_ms: u64,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            enabled: true,
            dir: "/var/lib/veriface/records".into(),
            flush_ms: 1000,
            rotate_kib: 4096,
            keep_files: 16,
            min_free_mib: 64,
            face_interval_ms: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Label;

    #[test]
    fn cobs_known_vectors() {
        // From the COBS paper / Wikipedia examples.
        for (raw, enc) in [
            (vec![0u8], vec![1u8, 1]),
            (vec![0, 0], vec![1, 1, 1]),
            (vec![0x11, 0x22, 0, 0x33], vec![3, 0x11, 0x22, 2, 0x33]),
            (
                vec![0x11, 0x22, 0x33, 0x44],
                vec![5, 0x11, 0x22, 0x33, 0x44],
            ),
        ] {
            let mut out = [0u8; 16];
            let n = cobs::encode(&raw, &mut out);
            assert_eq!(&out[..n], &enc[..]);
            let mut back = [0u8; 16];
            let m = cobs::decode(&enc, &mut back).unwrap();
            assert_eq!(&back[..m], &raw[..]);
        }
        let long: Vec<u8> = (1..=255u8).cycle().take(600).collect();
        let mut out = vec![0u8; 700];
        let n = cobs::encode(&long, &mut out);
        assert!(!out[..n].contains(&0));
        let mut back = vec![0u8; 700];
        let m = cobs::decode(&out[..n], &mut back).unwrap();
        assert_eq!(&back[..m], &long[..]);
        assert!(cobs::decode(&[5, 1, 2], &mut back).is_err());
        // The hand-written encoder of earlier versions ended a frame whose last block was full
        // (254 bytes) with an extra empty block (0x01); files written then must still decode.
        let full: Vec<u8> = (1..=254u8).collect();
        let old = [&[0xFF][..], &full[..], &[0x01][..]].concat();
        let m = cobs::decode(&old, &mut back).unwrap();
        assert_eq!(&back[..m], &full[..]);
    }

    #[test]
    fn verdict_codes_are_stable_on_disk() {
        // Records store Label by variant index: reordering Label would corrupt old logs.
        for (label, code) in [
            (Label::Real, 0u8),
            (Label::Fake, 1),
            (Label::Uncertain, 2),
            (Label::Unscored, 3),
            (Label::NoFace, 4),
        ] {
            assert_eq!(postcard::to_allocvec(&label).unwrap(), vec![code]);
        }
    }

    #[test]
    fn utc_formats_known_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18 11:06:40.000");
    }
}
