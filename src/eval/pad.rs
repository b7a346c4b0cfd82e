//! `eval --task pad`: passive presentation-attack detection on labelled media, in ISO/IEC
//! 30107-3 terms. DIR holds `live/` and `attack/` (images and videos, any depth); a sub-folder
//! of `attack/` names the attack species (print, screen, mask...), reported one by one: APCER is
//! per species, and the overall APCER is the worst species'.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::metrics::{threshold_for_bpcer, Confusion, Metrics, Scored};
use crate::pipeline::{Engine, EngineConfig};
use crate::source::{self, MediaKind};

/// One labelled file.
#[derive(Clone, Debug, PartialEq)]
pub struct PadItem {
    pub path: PathBuf,
    pub attack: bool,
    /// The attack's species (the folder under `attack/`), "live" for live items.
    pub species: String,
}

/// Every image and video under `dir/live` and `dir/attack`.
pub fn collect(dir: &Path) -> Result<Vec<PadItem>> {
    let (live, attack) = (dir.join("live"), dir.join("attack"));
    if !live.is_dir() || !attack.is_dir() {
        bail!(
            "{}: expected live/ and attack/ folders in it",
            dir.display()
        );
    }
    let mut items = Vec::new();
    for path in source::collect_media(&live)? {
        items.push(PadItem {
            path,
            attack: false,
            species: "live".into(),
        });
    }
    for path in source::collect_media(&attack)? {
        let species = path
            .strip_prefix(&attack)
            .ok()
            .and_then(|rel| {
                let mut parts = rel.components();
                let first = parts.next()?;
                // A file directly in attack/ has no species folder.
                parts
                    .next()
                    .map(|_| first.as_os_str().to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "attack".into());
        items.push(PadItem {
            path,
            attack: true,
            species,
        });
    }
    if !items.iter().any(|i| i.attack) || !items.iter().any(|i| !i.attack) {
        bail!("{}: needs both live and attack media", dir.display());
    }
    Ok(items)
}

#[derive(Clone, Copy, Debug)]
pub struct PadEvalOptions {
    /// Video frames: every Nth, at most this many.
    pub every: u64,
    pub max_frames: u64,
    pub jobs: usize,
}

/// One item's score: the mean attack probability (1 - fused P(live)) of its frames' largest face.
#[derive(Clone, Debug, Serialize)]
pub struct PadScore {
    pub file: String,
    pub species: String,
    pub attack: bool,
    pub score: Option<f32>,
    pub frames: usize,
    pub error: Option<String>,
}

fn score_item(
    engine: &Engine,
    item: &PadItem,
    opts: &PadEvalOptions,
) -> Result<(Option<f32>, usize)> {
    let pad = engine
        .passive
        .as_ref()
        .context("no PAD model configured (--pad-model FILE)")?;
    let video = matches!(source::media_kind(&item.path), Some(MediaKind::Video));
    let mut src = source::open(&item.path)?;
    let (mut sum, mut frames, mut index) = (0.0, 0usize, 0u64);
    while let Some(tf) = src.next_frame()? {
        index += 1;
        if (index - 1) % opts.every.max(1) != 0 {
            continue;
        }
        let faces = engine.detector.detect(&tf.frame)?;
        if let Some(face) = crate::face::largest(&faces, |f| &f.bbox) {
            sum += 1.0 - pad.live_probability(&tf.frame, face)?;
            frames += 1;
        }
        if !video || frames as u64 >= opts.max_frames {
            break;
        }
    }
    Ok(((frames > 0).then(|| sum / frames as f32), frames))
}

/// Score every item on `opts.jobs` threads, each with its own engine; results in item order.
pub fn score_all(
    config: &EngineConfig,
    items: &[PadItem],
    opts: &PadEvalOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<PadScore>> {
    let first = Engine::load(config.clone())?;
    if first.passive.is_none() {
        bail!("no PAD model configured (--pad-model FILE)");
    }
    super::on_workers(config, first, items, opts.jobs, progress, |engine, item| {
        let (score, frames, error) = match score_item(engine, item, opts) {
            Ok((s, f)) => (s, f, None),
            Err(e) => (None, 0, Some(format!("{e:#}"))),
        };
        PadScore {
            file: item.path.display().to_string(),
            species: item.species.clone(),
            attack: item.attack,
            score,
            frames,
            error,
        }
    })
}

/// APCER of one attack species at the threshold.
#[derive(Clone, Debug, Serialize)]
pub struct SpeciesRow {
    pub species: String,
    pub items: usize,
    pub apcer: f64,
    pub auc: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PadReport {
    /// Attack probability threshold: an item scoring at or above it is called an attack.
    pub threshold: f32,
    pub metrics: Metrics,
    /// ACER = (worst-species APCER + BPCER) / 2.
    pub acer: f64,
    pub apcer_worst: f64,
    pub species: Vec<SpeciesRow>,
    /// The lowest threshold with BPCER <= 5 % on this data, and the rates there.
    pub threshold_bpcer5: f32,
    pub at_bpcer5: Confusion,
    pub without_face: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub items: Vec<PadScore>,
}

pub fn scored(scores: &[PadScore]) -> Vec<Scored> {
    scores
        .iter()
        .filter_map(|s| {
            s.score.map(|score| Scored {
                fake: s.attack,
                score,
            })
        })
        .collect()
}

pub fn report(items: Vec<PadScore>, threshold: f32) -> Result<PadReport> {
    let all = scored(&items);
    let metrics = Metrics::compute(&all, threshold)?;
    let live: Vec<Scored> = all.iter().filter(|s| !s.fake).cloned().collect();
    let mut per_species: BTreeMap<String, Vec<Scored>> = BTreeMap::new();
    for s in items.iter().filter(|s| s.attack) {
        if let Some(score) = s.score {
            per_species
                .entry(s.species.clone())
                .or_default()
                .push(Scored { fake: true, score });
        }
    }
    let species: Vec<SpeciesRow> = per_species
        .into_iter()
        .map(|(name, attacks)| {
            let c = Confusion::at(&attacks, threshold);
            let mut both = attacks.clone();
            both.extend(live.iter().cloned());
            SpeciesRow {
                species: name,
                items: attacks.len(),
                apcer: c.apcer(),
                auc: super::metrics::auc(&both),
            }
        })
        .collect();
    let apcer_worst = species.iter().map(|s| s.apcer).fold(0.0, f64::max);
    let (threshold_bpcer5, at_bpcer5) = threshold_for_bpcer(&all, 0.05)?;
    Ok(PadReport {
        threshold,
        acer: (apcer_worst + metrics.bpcer) / 2.0,
        apcer_worst,
        metrics,
        species,
        threshold_bpcer5,
        at_bpcer5,
        without_face: items
            .iter()
            .filter(|s| s.error.is_none() && s.score.is_none())
            .map(|s| s.file.clone())
            .collect(),
        failed: items
            .iter()
            .filter_map(|s| s.error.clone().map(|e| (s.file.clone(), e)))
            .collect(),
        items,
    })
}

impl PadReport {
    pub fn render(&self) -> String {
        let m = &self.metrics;
        let pct = |v: f64| format!("{:.1} %", v * 100.0);
        let mut s = format!(
            "items: {} live, {} attack; attack probability threshold {:.3} (live probability {:.3})\n",
            m.real,
            m.fake,
            self.threshold,
            1.0 - self.threshold
        );
        s += &format!(
            "AUC {:.3}  EER {}  BPCER {}  APCER (worst species) {}  ACER {}\n",
            m.auc,
            pct(m.eer),
            pct(m.bpcer),
            pct(self.apcer_worst),
            pct(self.acer)
        );
        s += "species        items   APCER     AUC\n";
        for r in &self.species {
            s += &format!(
                "{:<14} {:>5} {:>7} {:>7.3}\n",
                r.species,
                r.items,
                pct(r.apcer),
                r.auc
            );
        }
        s += &format!(
            "BPCER <= 5 %: attack threshold {:.4} (live {:.4}): BPCER {}, APCER {}\n",
            self.threshold_bpcer5,
            1.0 - self.threshold_bpcer5,
            pct(self.at_bpcer5.bpcer()),
            pct(self.at_bpcer5.apcer())
        );
        s += &format!(
            "{} items without a face, {} failed\n",
            self.without_face.len(),
            self.failed.len()
        );
        for (file, e) in &self.failed {
            s += &format!("failed: {file}: {e}\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(species: &str, attack: bool, v: f32) -> PadScore {
        PadScore {
            file: format!("{species}-{v}"),
            species: species.into(),
            attack,
            score: Some(v),
            frames: 1,
            error: None,
        }
    }

    #[test]
    fn apcer_is_per_species_and_acer_takes_the_worst() {
        let items = vec![
            score("live", false, 0.1),
            score("live", false, 0.2),
            score("print", true, 0.9),
            score("print", true, 0.8),
            score("screen", true, 0.9),
            score("screen", true, 0.3),
        ];
        let r = report(items, 0.5).unwrap();
        assert_eq!(r.species.len(), 2);
        assert_eq!(r.species[0].apcer, 0.0);
        assert_eq!(r.species[1].apcer, 0.5);
        assert_eq!(r.apcer_worst, 0.5);
        assert_eq!(r.metrics.bpcer, 0.0);
        assert_eq!(r.acer, 0.25);
    }
}
