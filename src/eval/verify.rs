//! `eval --task verify`: 1:1 face match accuracy on faces labelled by person, in ISO/IEC
//! 19795-1 terms. FMR: impostor comparisons accepted; FNMR: genuine comparisons rejected; EER
//! where they meet; and the lowest threshold that keeps FMR at or under a target (0.1 %).
//!
//! Samples: one per image, and frames at least `gap_s` apart from each video (a kiosk compares
//! a reference taken at another time, not the next frame). Genuine pairs: two samples of the
//! same person from different files, or from one video at least `gap_s` apart. Impostor pairs:
//! samples of different identity groups (a group joins people who may be confused in the
//! labels, e.g. FaceForensics++'s source and target of a swap).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::identity::Embedding;
use crate::pipeline::{Engine, EngineConfig};
use crate::source::{self, MediaKind};

/// One labelled file.
#[derive(Clone, Debug, PartialEq)]
pub struct Subject {
    pub path: PathBuf,
    pub identity: String,
    /// Impostor pairs are made only across groups; the identity when the data has no groups.
    pub group: String,
}

/// Column names read from a CSV: the first present of each list. The aliases read the layouts
/// of ../shared (`files.csv`: identity_if_known; FaceForensics++ `videos.csv`: video and
/// identity_group) as well as the documented `path,identity[,group][,label]`.
const IDENTITY_COLUMNS: [&str; 3] = ["identity", "identity_if_known", "video"];
const GROUP_COLUMNS: [&str; 2] = ["group", "identity_group"];

/// The labelled files: a CSV (`path` relative to the CSV's folder, an identity column, optional
/// group; rows with a `label` other than `real` and rows without an identity are skipped), or a
/// folder with one sub-folder of images and videos per person.
pub fn collect_subjects(path: &Path) -> Result<Vec<Subject>> {
    let subjects = if path.is_dir() {
        from_folders(path)?
    } else {
        from_csv(path)?
    };
    let people: std::collections::BTreeSet<&str> =
        subjects.iter().map(|s| s.identity.as_str()).collect();
    if people.len() < 2 {
        bail!(
            "{}: {} labelled people; verification needs at least two",
            path.display(),
            people.len()
        );
    }
    Ok(subjects)
}

fn from_folders(dir: &Path) -> Result<Vec<Subject>> {
    let mut out = Vec::new();
    let mut people: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    people.sort();
    for person in people {
        let identity = person
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for file in source::collect_media(&person)? {
            out.push(Subject {
                path: file,
                identity: identity.clone(),
                group: identity.clone(),
            });
        }
    }
    Ok(out)
}

fn from_csv(file: &Path) -> Result<Vec<Subject>> {
    let mut reader = csv::Reader::from_path(file).with_context(|| {
        format!(
            "{}: cannot read (a CSV or a folder of people)",
            file.display()
        )
    })?;
    let headers = reader
        .headers()
        .with_context(|| format!("{}: no CSV header", file.display()))?
        .clone();
    let column = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| headers.iter().position(|h| h == *n))
    };
    let path_col =
        column(&["path"]).with_context(|| format!("{}: no `path` column", file.display()))?;
    let id_col = column(&IDENTITY_COLUMNS).with_context(|| {
        format!(
            "{}: no identity column (one of {})",
            file.display(),
            IDENTITY_COLUMNS.join(", ")
        )
    })?;
    let group_col = column(&GROUP_COLUMNS);
    let label_col = column(&["label"]);
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (line, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("{}: row {}", file.display(), line + 2))?;
        let field = |c: usize| row.get(c).unwrap_or("").trim();
        if label_col.is_some_and(|c| field(c) != "real") || field(id_col).is_empty() {
            continue;
        }
        let identity = field(id_col).to_string();
        out.push(Subject {
            path: base.join(field(path_col)),
            group: group_col
                .map(|c| field(c).to_string())
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| identity.clone()),
            identity,
        });
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug)]
pub struct VerifyEvalOptions {
    /// Seconds between samples of one video (and the least gap of a genuine pair within it).
    pub gap_s: f64,
    /// Samples per video at most.
    pub per_video: usize,
    pub jobs: usize,
}

/// One face embedded from one file.
#[derive(Clone, Debug)]
pub struct Sample {
    pub subject: usize,
    pub seconds: f64,
    pub embedding: Embedding,
}

/// What happened to one file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SubjectOutcome {
    pub samples: usize,
    /// Sampled frames where no face was found.
    pub no_face: usize,
    pub error: Option<String>,
}

/// The largest face of each sampled frame, embedded.
fn samples_of(
    engine: &Engine,
    index: usize,
    subject: &Subject,
    opts: &VerifyEvalOptions,
) -> Result<(Vec<Sample>, usize)> {
    let embedder = engine
        .identity
        .as_ref()
        .context("the engine was loaded without the identity models")?;
    let video = matches!(source::media_kind(&subject.path), Some(MediaKind::Video));
    let mut src = source::open(&subject.path)?;
    let (mut out, mut no_face) = (Vec::new(), 0);
    let mut next_at = 0.0;
    while out.len() + no_face < opts.per_video.max(1) {
        let Some(tf) = src.next_frame()? else { break };
        if tf.seconds + 1e-6 < next_at {
            continue;
        }
        next_at = tf.seconds + opts.gap_s;
        let faces = engine.detector.detect(&tf.frame)?;
        match crate::face::largest(&faces, |f| &f.bbox) {
            Some(face) => out.push(Sample {
                subject: index,
                seconds: tf.seconds,
                embedding: embedder.identify(&tf.frame, face)?.embedding,
            }),
            None => no_face += 1,
        }
        if !video {
            break;
        }
    }
    Ok((out, no_face))
}

/// Embed every subject on `opts.jobs` threads (each with its own engine).
pub fn embed_all(
    config: &EngineConfig,
    subjects: &[Subject],
    opts: &VerifyEvalOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Vec<Sample>, Vec<SubjectOutcome>)> {
    let mut config = config.clone();
    config.identity = true;
    let first = Engine::load(config.clone())?;
    let indexed: Vec<(usize, &Subject)> = subjects.iter().enumerate().collect();
    let results = super::on_workers(
        &config,
        first,
        &indexed,
        opts.jobs,
        progress,
        |engine, (i, subject)| samples_of(engine, *i, subject, opts),
    )?;
    let (mut samples, mut outcomes) = (Vec::new(), Vec::new());
    for result in results {
        outcomes.push(match result {
            Ok((found, no_face)) => {
                let n = found.len();
                samples.extend(found);
                SubjectOutcome {
                    samples: n,
                    no_face,
                    error: None,
                }
            }
            Err(e) => SubjectOutcome {
                error: Some(format!("{e:#}")),
                ..Default::default()
            },
        });
    }
    // Samples come in subject order already; within a subject, in time order.
    Ok((samples, outcomes))
}

/// Similarity scores of every genuine and impostor pair.
#[derive(Clone, Debug, Default)]
pub struct PairScores {
    pub genuine: Vec<f32>,
    pub impostor: Vec<f32>,
}

pub fn pair_scores(samples: &[Sample], subjects: &[Subject], gap_s: f64) -> PairScores {
    let mut scores = PairScores::default();
    for (i, a) in samples.iter().enumerate() {
        let sa = &subjects[a.subject];
        for b in &samples[i + 1..] {
            let sb = &subjects[b.subject];
            if sa.identity == sb.identity {
                let apart = a.subject != b.subject || (a.seconds - b.seconds).abs() + 1e-6 >= gap_s;
                if apart {
                    scores.genuine.push(a.embedding.similarity(&b.embedding));
                }
            } else if sa.group != sb.group {
                scores.impostor.push(a.embedding.similarity(&b.embedding));
            }
        }
    }
    scores
}

/// FMR and FNMR at one threshold (accept when score >= threshold).
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct OperatingPoint {
    pub threshold: f32,
    pub fmr: f64,
    pub fnmr: f64,
}

pub fn at_threshold(scores: &PairScores, threshold: f32) -> OperatingPoint {
    let share = |v: &[f32], pred: &dyn Fn(f32) -> bool| {
        v.iter().filter(|&&s| pred(s)).count() as f64 / v.len().max(1) as f64
    };
    OperatingPoint {
        threshold,
        fmr: share(&scores.impostor, &|s| s >= threshold),
        fnmr: share(&scores.genuine, &|s| s < threshold),
    }
}

/// The lowest threshold whose FMR is at or under `target`: above the impostor score ranked
/// `floor(target * n) + 1` from the top.
pub fn threshold_for_fmr(scores: &PairScores, target: f64) -> Result<OperatingPoint> {
    if scores.impostor.is_empty() || scores.genuine.is_empty() {
        bail!(
            "{} genuine and {} impostor pairs: both are needed",
            scores.genuine.len(),
            scores.impostor.len()
        );
    }
    let mut desc = scores.impostor.clone();
    desc.sort_by(|a, b| b.total_cmp(a));
    let allowed = (target * desc.len() as f64).floor() as usize;
    let threshold = match desc.get(allowed) {
        Some(&s) => next_up(s),
        None => desc[desc.len() - 1],
    };
    Ok(at_threshold(scores, threshold))
}

/// The next f32 above a finite `x` (`f32::next_up` needs Rust 1.86; the crate supports 1.84).
fn next_up(x: f32) -> f32 {
    if x == 0.0 {
        f32::from_bits(1)
    } else if x > 0.0 {
        f32::from_bits(x.to_bits() + 1)
    } else {
        f32::from_bits(x.to_bits() - 1)
    }
}

/// Where FMR and FNMR meet: (EER, threshold), from one sweep over the sorted scores.
pub fn equal_error(scores: &PairScores) -> (f64, f32) {
    let mut all: Vec<(f32, bool)> = scores
        .genuine
        .iter()
        .map(|&s| (s, true))
        .chain(scores.impostor.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ng, ni) = (
        scores.genuine.len().max(1) as f64,
        scores.impostor.len().max(1) as f64,
    );
    // Threshold at all[k].0: genuine below k are rejected, impostors from k up accepted.
    let (mut genuine_below, mut impostor_below) = (0usize, 0usize);
    let mut best = (f64::INFINITY, 0.5, 0.0f32);
    let mut k = 0;
    while k < all.len() {
        let t = all[k].0;
        let (fnmr, fmr) = (genuine_below as f64 / ng, 1.0 - impostor_below as f64 / ni);
        if (fnmr - fmr).abs() < best.0 {
            best = ((fnmr - fmr).abs(), (fnmr + fmr) / 2.0, t);
        }
        while k < all.len() && all[k].0 == t {
            match all[k].1 {
                true => genuine_below += 1,
                false => impostor_below += 1,
            }
            k += 1;
        }
    }
    (best.1, best.2)
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub files: usize,
    pub people: usize,
    pub samples: usize,
    pub files_without_face: usize,
    pub failed: Vec<(String, String)>,
    pub genuine_pairs: usize,
    pub impostor_pairs: usize,
    pub eer: f64,
    pub eer_threshold: f32,
    /// The lowest threshold with FMR <= `fmr_target`: the one to ship.
    pub fmr_target: f64,
    pub threshold: f32,
    pub at_threshold: OperatingPoint,
    /// Reported at this threshold too (the manifest's, or --threshold).
    pub operating: Option<OperatingPoint>,
    pub at_fmr_1pct: OperatingPoint,
    pub genuine_mean: f64,
    pub impostor_mean: f64,
}

pub fn report(
    subjects: &[Subject],
    samples: &[Sample],
    outcomes: &[SubjectOutcome],
    gap_s: f64,
    fmr_target: f64,
    operating: Option<f32>,
) -> Result<VerifyReport> {
    let scores = pair_scores(samples, subjects, gap_s);
    let chosen = threshold_for_fmr(&scores, fmr_target)?;
    let (eer, eer_threshold) = equal_error(&scores);
    let mean = |v: &[f32]| v.iter().map(|&s| s as f64).sum::<f64>() / v.len().max(1) as f64;
    let people: std::collections::BTreeSet<&str> =
        subjects.iter().map(|s| s.identity.as_str()).collect();
    Ok(VerifyReport {
        files: subjects.len(),
        people: people.len(),
        samples: samples.len(),
        files_without_face: outcomes
            .iter()
            .filter(|o| o.error.is_none() && o.samples == 0)
            .count(),
        failed: subjects
            .iter()
            .zip(outcomes)
            .filter_map(|(s, o)| o.error.clone().map(|e| (s.path.display().to_string(), e)))
            .collect(),
        genuine_pairs: scores.genuine.len(),
        impostor_pairs: scores.impostor.len(),
        eer,
        eer_threshold,
        fmr_target,
        threshold: chosen.threshold,
        at_threshold: chosen,
        operating: operating.map(|t| at_threshold(&scores, t)),
        at_fmr_1pct: threshold_for_fmr(&scores, 0.01)?,
        genuine_mean: mean(&scores.genuine),
        impostor_mean: mean(&scores.impostor),
    })
}

impl VerifyReport {
    pub fn render(&self) -> String {
        let pct = |v: f64| format!("{:.2} %", v * 100.0);
        let mut s = String::new();
        let mut line = |l: String| {
            s.push_str(&l);
            s.push('\n');
        };
        line(format!(
            "files {} ({} people), {} face samples; {} files without a face, {} failed",
            self.files,
            self.people,
            self.samples,
            self.files_without_face,
            self.failed.len()
        ));
        line(format!(
            "pairs: {} genuine (mean similarity {:.3}), {} impostor (mean {:.3})",
            self.genuine_pairs, self.genuine_mean, self.impostor_pairs, self.impostor_mean
        ));
        line(format!(
            "EER {} at threshold {:.4}",
            pct(self.eer),
            self.eer_threshold
        ));
        let mut row = |name: String, p: &OperatingPoint| {
            line(format!(
                "{name:<22} threshold {:.4}  FMR {:>8}  FNMR {:>8}",
                p.threshold,
                pct(p.fmr),
                pct(p.fnmr)
            ))
        };
        row(
            format!("FMR <= {}", pct(self.fmr_target)),
            &self.at_threshold,
        );
        row("FMR <= 1.00 %".into(), &self.at_fmr_1pct);
        if let Some(p) = &self.operating {
            row("operating".into(), p);
        }
        for (file, error) in &self.failed {
            line(format!("failed: {file}: {error}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(genuine: &[f32], impostor: &[f32]) -> PairScores {
        PairScores {
            genuine: genuine.to_vec(),
            impostor: impostor.to_vec(),
        }
    }

    #[test]
    fn fmr_threshold_sits_just_above_the_allowed_impostors() {
        let imp: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        let s = scores(&[0.5, 0.9995, 1.0], &imp);
        // 0.1 % of 1000 = 1 impostor may pass: the top one (0.999).
        let p = threshold_for_fmr(&s, 0.001).unwrap();
        assert!(p.threshold > 0.998 && p.threshold <= 0.999, "{p:?}");
        assert_eq!(p.fmr, 0.001);
        assert!((p.fnmr - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn eer_of_separated_and_overlapping_scores() {
        let (eer, t) = equal_error(&scores(&[0.8, 0.9], &[0.1, 0.2]));
        assert_eq!(eer, 0.0);
        assert!(t > 0.2 && t <= 0.8);
        // One genuine below one impostor out of two each: EER 50 % at the crossing.
        let (eer, _) = equal_error(&scores(&[0.3, 0.9], &[0.1, 0.5]));
        assert!((eer - 0.5).abs() < 1e-9, "{eer}");
    }

    #[test]
    fn csv_reads_aliases_skips_fakes_and_unlabelled() {
        let dir = std::env::temp_dir().join(format!("veriface-verify-csv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("files.csv");
        std::fs::write(
            &csv,
            "path,label,source,identity_if_known,sha256\na.jpg,real,x,p1,0\nb.jpg,fake,x,p1,0\nc.jpg,real,x,,0\nd.jpg,real,x,p2,0\n",
        )
        .unwrap();
        let s = collect_subjects(&csv).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].path, dir.join("a.jpg"));
        assert_eq!((s[1].identity.as_str(), s[1].group.as_str()), ("p2", "p2"));
        std::fs::write(&csv, "path,identity\na.jpg,p1\n").unwrap();
        let err = collect_subjects(&csv).unwrap_err().to_string();
        assert!(err.contains("at least two"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
