//! Binary detection metrics, with "fake" as the positive class (an attack presentation in
//! ISO/IEC 30107-3 terms) and a score at or above the threshold counting as fake.

use anyhow::{bail, Result};
use serde::Serialize;

/// One scored item: whether it is fake, and its fake probability.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scored {
    pub fake: bool,
    pub score: f32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Fakes called fake.
    pub true_fake: u64,
    /// Reals called fake (bona fide presentations rejected).
    pub false_fake: u64,
    /// Reals called real.
    pub true_real: u64,
    /// Fakes called real (attack presentations accepted).
    pub false_real: u64,
}

impl Confusion {
    pub fn at(items: &[Scored], threshold: f32) -> Confusion {
        let mut c = Confusion::default();
        for s in items {
            match (s.fake, s.score >= threshold) {
                (true, true) => c.true_fake += 1,
                (true, false) => c.false_real += 1,
                (false, true) => c.false_fake += 1,
                (false, false) => c.true_real += 1,
            }
        }
        c
    }

    /// Attack presentations accepted as real, over all attacks.
    pub fn apcer(&self) -> f64 {
        ratio(self.false_real, self.false_real + self.true_fake)
    }

    /// Bona fide presentations rejected as fake, over all bona fide ones.
    pub fn bpcer(&self) -> f64 {
        ratio(self.false_fake, self.false_fake + self.true_real)
    }
}

/// 0/0 is reported as 0: it only happens when a class is absent, which `Metrics::compute`
/// refuses before any ratio is taken, or for precision with nothing called fake.
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metrics {
    pub items: usize,
    pub real: usize,
    pub fake: usize,
    pub threshold: f32,
    pub auc: f64,
    /// Equal error rate: where BPCER and APCER cross, and the threshold there.
    pub eer: f64,
    pub eer_threshold: f32,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub apcer: f64,
    pub bpcer: f64,
    pub confusion: Confusion,
}

impl Metrics {
    pub fn compute(items: &[Scored], threshold: f32) -> Result<Metrics> {
        let fake = items.iter().filter(|s| s.fake).count();
        let real = items.len() - fake;
        if items.is_empty() {
            bail!("no scored items: nothing to measure");
        }
        if fake == 0 || real == 0 {
            bail!(
                "only {} items ({} scored): AUC, EER and the error rates need both real and fake",
                if fake == 0 { "real" } else { "fake" },
                items.len()
            );
        }
        let c = Confusion::at(items, threshold);
        let precision = ratio(c.true_fake, c.true_fake + c.false_fake);
        let recall = ratio(c.true_fake, c.true_fake + c.false_real);
        let (eer, eer_threshold) = eer(items);
        Ok(Metrics {
            items: items.len(),
            real,
            fake,
            threshold,
            auc: auc(items),
            eer,
            eer_threshold,
            accuracy: ratio(c.true_fake + c.true_real, items.len() as u64),
            precision,
            recall,
            f1: if precision + recall > 0.0 {
                2.0 * precision * recall / (precision + recall)
            } else {
                0.0
            },
            apcer: c.apcer(),
            bpcer: c.bpcer(),
            confusion: c,
        })
    }
}

/// ROC AUC: the probability that a random fake scores above a random real, ties counting half
/// (Mann-Whitney U). Both classes must be present (checked by the caller).
pub fn auc(items: &[Scored]) -> f64 {
    let mut sorted: Vec<Scored> = items.to_vec();
    sorted.sort_by(|a, b| a.score.total_cmp(&b.score));
    // Average ranks over tied scores, then U from the fakes' rank sum.
    let mut rank_sum_fake = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].score == sorted[i].score {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum_fake += avg_rank * sorted[i..j].iter().filter(|s| s.fake).count() as f64;
        i = j;
    }
    let fake = items.iter().filter(|s| s.fake).count() as f64;
    let real = items.len() as f64 - fake;
    (rank_sum_fake - fake * (fake + 1.0) / 2.0) / (fake * real)
}

/// Candidate thresholds: every distinct score, plus one above the highest (nothing fake).
fn thresholds(items: &[Scored]) -> Vec<f32> {
    let mut t: Vec<f32> = items.iter().map(|s| s.score).collect();
    t.sort_by(f32::total_cmp);
    t.dedup();
    let top = t.last().copied().unwrap_or(1.0);
    t.push(if top < 1.0 { 1.0 } else { top + 1e-6 });
    t
}

/// Equal error rate: at the threshold where |APCER - BPCER| is smallest, their mean.
pub fn eer(items: &[Scored]) -> (f64, f32) {
    let mut best = (f64::INFINITY, 0.0, 0.5f32);
    for t in thresholds(items) {
        let c = Confusion::at(items, t);
        let gap = (c.apcer() - c.bpcer()).abs();
        if gap < best.0 {
            best = (gap, (c.apcer() + c.bpcer()) / 2.0, t);
        }
    }
    (best.1, best.2)
}

/// ROC points (false-fake rate, true-fake rate), from threshold +inf down to the lowest score.
pub fn roc(items: &[Scored]) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = thresholds(items)
        .into_iter()
        .rev()
        .map(|t| {
            let c = Confusion::at(items, t);
            (c.bpcer(), 1.0 - c.apcer())
        })
        .collect();
    pts.push((1.0, 1.0));
    pts.dedup();
    pts
}

/// The lowest threshold whose BPCER on these items is at most `target` (the operating point a
/// kiosk sets: how many genuine users it may turn away).
pub fn threshold_for_bpcer(items: &[Scored], target: f64) -> Result<(f32, Confusion)> {
    if !items.iter().any(|s| !s.fake) {
        bail!("no real items: BPCER cannot be calibrated");
    }
    // Thresholds above 1 would call nothing fake at all: not an operating point.
    for t in thresholds(items).into_iter().filter(|&t| t <= 1.0) {
        let c = Confusion::at(items, t);
        if c.bpcer() <= target {
            return Ok((t, c));
        }
    }
    bail!("no threshold up to 1.0 keeps BPCER at or under {target}: real items score 1.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(list: &[(bool, f32)]) -> Vec<Scored> {
        list.iter()
            .map(|&(fake, score)| Scored { fake, score })
            .collect()
    }

    #[test]
    fn auc_by_hand() {
        // Perfect, inverted, and with ties: fakes {0.8, 0.5}, reals {0.5, 0.2}.
        assert_eq!(auc(&s(&[(true, 0.9), (false, 0.1)])), 1.0);
        assert_eq!(auc(&s(&[(true, 0.1), (false, 0.9)])), 0.0);
        // Pairs: (0.8,0.5)=1 (0.8,0.2)=1 (0.5,0.5)=0.5 (0.5,0.2)=1 -> 3.5/4.
        let items = s(&[(true, 0.8), (true, 0.5), (false, 0.5), (false, 0.2)]);
        assert!((auc(&items) - 0.875).abs() < 1e-12);
        // All scores equal: chance.
        assert_eq!(auc(&s(&[(true, 0.3), (false, 0.3), (false, 0.3)])), 0.5);
    }

    #[test]
    fn confusion_rates_by_hand() {
        // threshold 0.5: fakes 0.9 (caught), 0.4 (accepted as real); reals 0.6 (rejected), 0.1, 0.2.
        let items = s(&[
            (true, 0.9),
            (true, 0.4),
            (false, 0.6),
            (false, 0.1),
            (false, 0.2),
        ]);
        let m = Metrics::compute(&items, 0.5).unwrap();
        assert_eq!(
            m.confusion,
            Confusion {
                true_fake: 1,
                false_fake: 1,
                true_real: 2,
                false_real: 1
            }
        );
        assert_eq!(m.apcer, 0.5);
        assert!((m.bpcer - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.precision, 0.5);
        assert_eq!(m.recall, 0.5);
        assert_eq!(m.f1, 0.5);
        assert_eq!(m.accuracy, 0.6);
        // A score equal to the threshold counts as fake.
        assert_eq!(Confusion::at(&s(&[(true, 0.5)]), 0.5).true_fake, 1);
    }

    #[test]
    fn eer_of_separable_and_overlapping_scores() {
        let (e, t) = eer(&s(&[(true, 0.9), (true, 0.8), (false, 0.2), (false, 0.1)]));
        assert_eq!(e, 0.0);
        assert!(t > 0.2 && t <= 0.8, "{t}");
        // One of two on each side wrong at the crossing: EER 0.5.
        let (e, _) = eer(&s(&[(true, 0.9), (true, 0.1), (false, 0.8), (false, 0.2)]));
        assert_eq!(e, 0.5);
    }

    #[test]
    fn one_class_or_empty_input_is_a_clear_error() {
        let e = Metrics::compute(&[], 0.5).unwrap_err().to_string();
        assert!(e.contains("no scored items"), "{e}");
        let e = Metrics::compute(&s(&[(false, 0.1), (false, 0.7)]), 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("only real"), "{e}");
        assert!(Metrics::compute(&s(&[(true, 0.1)]), 0.5).is_err());
    }

    #[test]
    fn roc_runs_from_origin_to_corner_and_calibration_meets_the_target() {
        let items = s(&[
            (true, 0.9),
            (true, 0.7),
            (false, 0.6),
            (true, 0.4),
            (false, 0.3),
            (false, 0.1),
        ]);
        let r = roc(&items);
        assert_eq!(r.first(), Some(&(0.0, 0.0)));
        assert_eq!(r.last(), Some(&(1.0, 1.0)));
        assert!(r.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1));
        // BPCER 0: the threshold must sit above the highest real (0.6): 0.7 catches 2 of 3 fakes.
        let (t, c) = threshold_for_bpcer(&items, 0.0).unwrap();
        assert_eq!(t, 0.7);
        assert_eq!(c.bpcer(), 0.0);
        assert_eq!(c.true_fake, 2);
        // BPCER <= 1/3 allows one real rejected: threshold 0.4 catches all fakes.
        let (t, _) = threshold_for_bpcer(&items, 0.34).unwrap();
        assert_eq!(t, 0.4);
        // A real item at 1.0 cannot be let through by any threshold in 0..1.
        let e = threshold_for_bpcer(&s(&[(false, 1.0), (true, 1.0)]), 0.0).unwrap_err();
        assert!(e.to_string().contains("no threshold"), "{e}");
    }
}
