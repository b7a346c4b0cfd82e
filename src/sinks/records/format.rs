//! The on-disk format: record types, COBS framing with a version byte and a CRC, and the
//! decoder that finds intact records again in damaged bytes.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::verdict::session::Reason;
use crate::verdict::Label;

/// The schema written now. Older versions stay decodable (see [`decode_payload`]).
/// 2: `Event::Session` added at the end (postcard numbers enum variants in order, so every
/// version-1 record decodes with the version-2 types unchanged).
pub const SCHEMA_VERSION: u8 = 2;
// The largest record (a session record with a 512-value embedding) is about 560 bytes, a start
// record listing 16 models with 32-byte keys about 720.
const MAX_PAYLOAD: usize = 1024;
pub const MAX_FRAME: usize = MAX_PAYLOAD + MAX_PAYLOAD / 254 + 2;
pub const EXTENSION: &str = "vfr";

/// A manifest model: its key and the first 8 bytes of its sha256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelId {
    pub key: heapless::String<32>,
    pub sha256_prefix: [u8; 8],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceRecord {
    pub track: u32,
    pub frame: u64,
    /// xmin, ymin, xmax, ymax in frame pixels.
    pub bbox: [i16; 4],
    /// Fake probabilities in 1/10000 (frame model, smoothed); None without a deepfake model.
    pub frame_prob: Option<u16>,
    pub smoothed_prob: Option<u16>,
    pub verdict: Label,
    pub emotion: Option<u8>,
    /// Emotion confidence in 1/100.
    pub emotion_conf: u8,
    /// First 4 bytes of the deepfake model's sha256: which model decided (survives rotation
    /// of the file that holds the start record).
    pub model: u32,
}

// Start is large in memory (fixed-capacity model list) but rare, and its encoded size is what
// counts; boxing it would put an allocation on the record path for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Start {
        version: heapless::String<16>,
        models: heapless::Vec<ModelId, 16>,
    },
    Stop,
    CameraLost {
        reason: heapless::String<64>,
    },
    CameraBack,
    Face(FaceRecord),
    /// One 1:1 verification session (schema 2).
    Session(SessionRecord),
}

/// A verification session's decision: scores and reasons, never pixels; the embedding only when
/// the operator opted in (`privacy.store_embeddings`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub verified: bool,
    pub reasons: heapless::Vec<Reason, 8>,
    /// Match similarity (cosine) and its threshold in 1/10000; a cosine may be negative.
    pub match_score: Option<i16>,
    pub match_threshold: i16,
    /// Fake probability and threshold in 1/10000.
    pub deepfake_prob: Option<u16>,
    pub deepfake_threshold: u16,
    /// Passive liveness: the fused live probability and its threshold in 1/10000; None when no
    /// PAD model was on.
    pub live_prob: Option<u16>,
    pub live_threshold: Option<u16>,
    /// Single-face frames the decision rests on, and the session's length.
    pub frames: u16,
    pub duration_ms: u32,
    /// First 4 bytes of the embedding model's sha256.
    pub model: u32,
    /// The session face's embedding (opt-in only).
    pub embedding: Option<StoredEmbedding>,
}

/// An embedding in int8: value = `values[i] * scale`, the scale putting the largest magnitude at
/// 127 (an L2-normalised 512-d vector has values near +-0.05, so a fixed x127 would keep none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEmbedding {
    pub scale: f32,
    pub values: heapless::Vec<i8, 512>,
}

impl StoredEmbedding {
    /// At most 512 values; more are cut.
    pub fn quantise(values: &[f32]) -> StoredEmbedding {
        let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        StoredEmbedding {
            scale,
            values: values
                .iter()
                .take(512)
                .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8)
                .collect(),
        }
    }

    pub fn values(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32 * self.scale).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unix time in ms (wall clock: may jump when NTP syncs) and ms since the daemon started.
    pub wall_ms: u64,
    pub mono_ms: u64,
    pub device: heapless::String<32>,
    pub event: Event,
}

/// A heapless string from any text, cut at a character boundary if too long.
pub fn short<const N: usize>(s: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in s.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// One record as it goes on disk, delimiter included, into `out`; returns the length.
pub fn encode_frame(record: &Record, out: &mut [u8; MAX_FRAME + 1]) -> Result<usize> {
    let mut payload = [0u8; MAX_PAYLOAD];
    payload[0] = SCHEMA_VERSION;
    let used = postcard::to_slice(record, &mut payload[1..MAX_PAYLOAD - 4])
        .context("record too large to encode")?
        .len();
    let crc = crc32fast::hash(&payload[..1 + used]);
    payload[1 + used..5 + used].copy_from_slice(&crc.to_le_bytes());
    let n = cobs::encode(&payload[..5 + used], &mut out[..MAX_FRAME]);
    out[n] = 0;
    Ok(n + 1)
}

/// Decode a CRC-checked payload by its schema version.
pub fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    let (&version, body) = payload.split_first().ok_or("empty frame")?;
    match version {
        1 | 2 => postcard::from_bytes::<Record>(body).map_err(|e| format!("schema {version}: {e}")),
        v => Err(format!("unknown schema version {v} (newer veriface?)")),
    }
}

/// A byte range that held no intact record.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Damage {
    pub start: u64,
    pub end: u64,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Decoded {
    /// (byte offset of the frame, record)
    pub records: Vec<(u64, Record)>,
    pub damaged: Vec<Damage>,
}

/// Decode every intact record of a byte stream; never panics, reports every damaged span.
/// `final_chunk`: whether bytes after the last delimiter are complete (false while following a
/// live file, where they are a record still being written).
pub fn decode(bytes: &[u8], base: u64, final_chunk: bool, into: &mut Decoded) -> usize {
    let mut start = 0;
    // Decoded COBS is never longer than its encoding.
    let mut buf = vec![0u8; MAX_FRAME];
    let mut consumed = 0;
    while start < bytes.len() {
        let end = match bytes[start..].iter().position(|&b| b == 0) {
            Some(p) => start + p,
            None if final_chunk => bytes.len(),
            None => break,
        };
        let chunk = &bytes[start..end];
        if !chunk.is_empty() {
            let damage = |reason: &str| Damage {
                start: base + start as u64,
                end: base + end as u64,
                reason: reason.into(),
            };
            if buf.len() < chunk.len() {
                buf.resize(chunk.len(), 0);
            }
            match cobs::decode(chunk, &mut buf) {
                Err(_) => into.damaged.push(damage("bad framing")),
                Ok(n) if n < 5 => into.damaged.push(damage("frame too short")),
                Ok(n) => {
                    let (payload, crc) = buf[..n].split_at(n - 4);
                    let want = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
                    if crc32fast::hash(payload) != want {
                        into.damaged.push(damage(if end == bytes.len() {
                            "record cut short (power loss?)"
                        } else {
                            "checksum mismatch"
                        }));
                    } else {
                        match decode_payload(payload) {
                            Ok(r) => into.records.push((base + start as u64, r)),
                            Err(e) => into.damaged.push(damage(&e)),
                        }
                    }
                }
            }
        }
        start = end + 1;
        consumed = start.min(bytes.len());
    }
    consumed
}

pub fn decode_file(path: &Path) -> Result<Decoded> {
    decode_file_from(path, 0, true)
}

/// The records of a file from byte `offset` (a frame boundary) on; `final_chunk` as in
/// [`decode`]: false for a file still being written, whose last bytes may be half a record.
/// A missing file is an `io::Error` of kind `NotFound` under the context.
pub fn decode_file_from(path: &Path, offset: u64, final_chunk: bool) -> Result<Decoded> {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            f.read_to_end(&mut bytes)
        })
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut d = Decoded::default();
    decode(&bytes, offset, final_chunk, &mut d);
    Ok(d)
}
