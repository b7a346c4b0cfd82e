//! The human-readable report (one line per frame and face, then a verdict block) and its JSON twin.

use std::fmt::Write as _;

use serde::Serialize;

use crate::verdict::Label;
use crate::verdict::{FrameResult, Summary};

/// `frame 120  t=4.80s  face 1  deepfake 0.872  emotion neutral 0.71`
pub fn frame_lines(f: &FrameResult) -> Vec<String> {
    if f.faces.is_empty() {
        return vec![format!("frame {}  t={:.2}s  no face", f.index, f.seconds)];
    }
    f.faces
        .iter()
        .map(|face| {
            let mut s = format!(
                "frame {}  t={:.2}s  face {}",
                f.index, f.seconds, face.track
            );
            match face.analysis.deepfake {
                Some(p) => write!(s, "  deepfake {p:.3}").unwrap(),
                None => s.push_str("  deepfake -"),
            }
            if let Some(t) = face.analysis.temporal {
                write!(s, "  temporal {t:.3}").unwrap();
            }
            if let Some(e) = &face.analysis.emotion {
                write!(s, "  emotion {} {:.2}", e.label, e.confidence).unwrap();
            }
            s
        })
        .collect()
}

/// The final verdict block for one file.
pub fn summary_block(s: &Summary) -> String {
    let mut out = String::new();
    match s.label {
        Label::NoFace => {
            writeln!(
                out,
                "verdict     NO FACE  (no face in {} frame{})",
                s.frames,
                if s.frames == 1 { "" } else { "s" }
            )
            .unwrap();
            return out;
        }
        Label::Unscored => {
            writeln!(
                out,
                "verdict     UNSCORED  (no deepfake model in the manifest)"
            )
            .unwrap();
        }
        label => {
            writeln!(
                out,
                "verdict     {label}  (confidence {:.2}, consistency {:.2})",
                s.confidence, s.consistency
            )
            .unwrap();
            if let Some(score) = s.score {
                write!(out, "deepfake    {score:.3} ({})", s.score_source).unwrap();
                if let Some(m) = s.frame_mean {
                    write!(out, ", frame mean {m:.3}").unwrap();
                }
                out.push('\n');
            }
        }
    }
    writeln!(
        out,
        "frames      {} analysed, {} with faces, {} face track{}",
        s.frames,
        s.frames_with_faces,
        s.tracks,
        if s.tracks == 1 { "" } else { "s" }
    )
    .unwrap();
    if !s.emotions.is_empty() {
        let parts: Vec<String> = s
            .emotions
            .iter()
            .map(|(n, share)| format!("{n} {:.0}%", share * 100.0))
            .collect();
        writeln!(out, "emotion     {}", parts.join(", ")).unwrap();
    }
    out
}

/// JSON for one analysed file.
#[derive(Serialize)]
pub struct FileReport<'a> {
    pub file: String,
    pub kind: &'static str,
    pub width: usize,
    pub height: usize,
    pub summary: &'a Summary,
    pub frames: &'a [FrameResult],
}

/// JSON for a whole `analyze` run; files that failed are listed with their error.
#[derive(Serialize)]
pub struct RunReport<'a> {
    pub version: &'static str,
    pub backend: &'a str,
    pub detector: &'a str,
    pub models: Vec<ModelId<'a>>,
    pub files: Vec<serde_json::Value>,
    pub errors: Vec<FileError>,
}

#[derive(Serialize)]
pub struct ModelId<'a> {
    pub key: &'a str,
    pub file: &'a str,
    pub sha256: &'a str,
}

#[derive(Serialize)]
pub struct FileError {
    pub file: String,
    pub error: String,
}
