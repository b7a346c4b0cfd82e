//! `veriface eval DIR`: the analyze pipeline over a labelled set (`real/`, `fake/`), scored at
//! frame and at video level, with the metrics a kiosk buyer reads (APCER / BPCER at the
//! operating threshold, EER, AUC) and every file without a face or unreadable listed.

pub mod metrics;
pub mod pad;
pub mod plots;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::face::{BoxF, Detection};
use crate::pipeline::{Engine, EngineConfig};
use crate::source::{self, MediaKind, TimedFrame};
use metrics::{Metrics, Scored};

/// What one labelled item is made of.
#[derive(Clone, Debug, PartialEq)]
pub enum Media {
    Image(PathBuf),
    Video(PathBuf),
    /// A folder of frames, played in name order as one video.
    Frames(PathBuf, Vec<PathBuf>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub fake: bool,
    pub media: Media,
}

impl Item {
    pub fn path(&self) -> &Path {
        match &self.media {
            Media::Image(p) | Media::Video(p) | Media::Frames(p, _) => p,
        }
    }

    fn kind(&self) -> &'static str {
        match self.media {
            Media::Image(_) => "image",
            Media::Video(_) => "video",
            Media::Frames(..) => "frames",
        }
    }
}

/// The items under `dir/real` and `dir/fake`, at any depth. Images directly in a class folder
/// are one item each; a deeper folder holding images is one item (its frames); videos anywhere
/// are one item each.
pub fn collect_items(dir: &Path) -> Result<Vec<Item>> {
    if !dir.is_dir() {
        bail!(
            "{}: not a folder (expected real/ and fake/ in it)",
            dir.display()
        );
    }
    let mut items = Vec::new();
    for (class, fake) in [("real", false), ("fake", true)] {
        let root = dir.join(class);
        if !root.is_dir() {
            continue;
        }
        // Images grouped by the folder that holds them; videos are items on their own.
        let mut folders: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
        for entry in walkdir::WalkDir::new(&root).follow_links(true) {
            let Some(entry) = source::walk_entry(entry, &root)? else {
                continue;
            };
            if entry.file_type().is_dir() {
                continue;
            }
            let p = entry.into_path();
            match source::media_kind(&p) {
                Some(MediaKind::Video) => items.push(Item {
                    fake,
                    media: Media::Video(p),
                }),
                Some(MediaKind::Image) => {
                    let folder = p.parent().unwrap_or(&root).to_path_buf();
                    folders.entry(folder).or_default().push(p);
                }
                None => {}
            }
        }
        for (folder, mut images) in folders {
            images.sort();
            if folder == root {
                items.extend(images.into_iter().map(|p| Item {
                    fake,
                    media: Media::Image(p),
                }));
            } else {
                items.push(Item {
                    fake,
                    media: Media::Frames(folder, images),
                });
            }
        }
    }
    items.sort_by(|a, b| a.path().cmp(b.path()));
    if items.is_empty() {
        bail!(
            "{}: no images or videos under real/ or fake/",
            dir.display()
        );
    }
    Ok(items)
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Analyse every Nth frame of videos and frame folders.
    pub every: u64,
    pub max_frames: Option<u64>,
    /// Each image is an aligned face crop: no detector.
    pub cropped: bool,
    pub jobs: usize,
}

/// One item's scores.
#[derive(Clone, Debug, Serialize)]
pub struct ItemScores {
    pub file: String,
    pub kind: &'static str,
    pub fake: bool,
    /// The main face's frame probabilities, in order.
    pub frame_scores: Vec<f32>,
    /// Video-level score: the temporal model's output, else the median of frame scores.
    pub video_score: f32,
    pub video_score_source: &'static str,
    pub frame_mean: f32,
}

#[derive(Clone, Debug, Serialize)]
pub enum Outcome {
    Scored(ItemScores),
    /// Analysed, but no face was found (or no deepfake model scored it).
    NoFace {
        file: String,
        fake: bool,
    },
    Failed {
        file: String,
        error: String,
    },
}

/// Frames of one item, in order.
fn frames_of(item: &Item) -> Result<Box<dyn Iterator<Item = Result<TimedFrame>>>> {
    Ok(match &item.media {
        Media::Image(p) | Media::Video(p) => {
            let mut src = source::open(p)?;
            Box::new(std::iter::from_fn(move || src.next_frame().transpose()))
        }
        Media::Frames(_, files) => {
            let files = files.clone();
            Box::new(files.into_iter().enumerate().map(|(i, f)| {
                Ok(TimedFrame {
                    index: i as u64,
                    seconds: i as f64,
                    frame: source::read_image(&f)?,
                })
            }))
        }
    })
}

/// The detection whose crop (at `scale`) is exactly the whole image: for `--cropped` sets.
fn whole_image_face(width: usize, height: usize, scale: f64) -> Detection {
    let side = width.max(height) as f64 / scale;
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    Detection {
        score: 1.0,
        bbox: BoxF {
            xmin: cx - side / 2.0,
            ymin: cy - side / 2.0,
            xmax: cx + side / 2.0,
            ymax: cy + side / 2.0,
        },
        keypoints: [(cx, cy); 6],
    }
}

fn median(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Score one item with the same pipeline as `analyze` (or, `--cropped`, the same crop resize
/// and models without the detector).
pub fn score_item(engine: &Engine, item: &Item, opts: &EvalOptions) -> Result<Outcome> {
    let file = item.path().display().to_string();
    let every = opts.every.max(1);
    let mut frame_scores = Vec::new();
    let mut temporal: Option<f32> = None;
    let mut analysed = 0u64;
    if opts.cropped {
        let df = engine
            .analyzer
            .deepfake
            .as_ref()
            .context("--cropped needs a deepfake model in the manifest")?;
        let mut memory = engine.analyzer.temporal.as_ref().map(|t| t.start());
        for tf in frames_of(item)? {
            let tf = tf?;
            if tf.index % every != 0 {
                continue;
            }
            let det = whole_image_face(tf.frame.width, tf.frame.height, df.crop.scale);
            if let Some((p, features)) = engine.analyzer.deepfake_frame(&tf.frame, &det)? {
                frame_scores.push(p);
                if let (Some(t), Some(m)) = (&engine.analyzer.temporal, memory.as_mut()) {
                    temporal = Some(t.step(m, &features)?);
                }
            }
            analysed += 1;
            if opts.max_frames.is_some_and(|m| analysed >= m) {
                break;
            }
        }
    } else {
        let mut stream = engine.stream();
        let mut results = Vec::new();
        for tf in frames_of(item)? {
            let tf = tf?;
            if tf.index % every != 0 {
                continue;
            }
            results.push(stream.process(&tf)?);
            analysed += 1;
            if opts.max_frames.is_some_and(|m| analysed >= m) {
                break;
            }
        }
        let summary = stream.summary();
        if let Some(main) = summary.main_track {
            for r in &results {
                for f in r.faces.iter().filter(|f| f.track == main) {
                    if let Some(p) = f.analysis.deepfake {
                        frame_scores.push(p);
                    }
                    if f.analysis.temporal.is_some() {
                        temporal = f.analysis.temporal;
                    }
                }
            }
        }
    }
    if frame_scores.is_empty() {
        return Ok(Outcome::NoFace {
            file,
            fake: item.fake,
        });
    }
    let frame_mean = frame_scores.iter().sum::<f32>() / frame_scores.len() as f32;
    let (video_score, video_score_source) = match temporal {
        Some(t) => (t, "temporal model"),
        None => (median(&frame_scores), "median of frames"),
    };
    Ok(Outcome::Scored(ItemScores {
        file,
        kind: item.kind(),
        fake: item.fake,
        frame_scores,
        video_score,
        video_score_source,
        frame_mean,
    }))
}

/// Score every item on `opts.jobs` threads (each with its own engine); results in item order.
/// `progress(done, total)` is called after each item.
pub fn score_all(
    config: &EngineConfig,
    items: &[Item],
    opts: &EvalOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Vec<Outcome>> {
    let first = Engine::load(config.clone())?;
    on_workers(config, first, items, opts.jobs, progress, |engine, item| {
        score_item(engine, item, opts).unwrap_or_else(|e| Outcome::Failed {
            file: item.path().display().to_string(),
            error: format!("{e:#}"),
        })
    })
}

/// `work` on every item, on `jobs` threads each with its own engine (`first` is one, loaded by
/// the caller before any thread starts, so a bad manifest is one error); results in item order,
/// `progress(done, total)` after each item.
pub fn on_workers<T: Sync, R: Send>(
    config: &EngineConfig,
    first: Engine,
    items: &[T],
    jobs: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
    work: impl Fn(&Engine, &T) -> R + Sync,
) -> Result<Vec<R>> {
    let jobs = jobs.clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    let run = |engine: Engine| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else { break };
        let result = work(&engine, item);
        results.lock().expect("no panics while holding")[i] = Some(result);
        progress(done.fetch_add(1, Ordering::Relaxed) + 1, items.len());
    };
    let run = &run;
    std::thread::scope(|scope| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 1..jobs {
            let engine = Engine::load(config.clone())?;
            handles.push(scope.spawn(move || run(engine)));
        }
        run(first);
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("an eval worker panicked"))?;
        }
        Ok(())
    })?;
    Ok(results
        .into_inner()
        .expect("workers joined")
        .into_iter()
        .map(|o| o.expect("every item done"))
        .collect())
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub threshold: f32,
    /// Every analysed frame of every scored item.
    pub frame: Metrics,
    /// One score per item: the temporal model where there is one.
    pub video: Metrics,
    /// One score per item: the mean of its frame scores (shown beside `video`).
    pub video_frame_mean: Metrics,
    pub no_face: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub items: Vec<ItemScores>,
}

/// Frame-level and video-level scores of the scored items.
pub fn scored(outcomes: &[Outcome]) -> (Vec<Scored>, Vec<Scored>, Vec<Scored>) {
    let (mut frames, mut videos, mut means) = (Vec::new(), Vec::new(), Vec::new());
    for o in outcomes {
        if let Outcome::Scored(s) = o {
            frames.extend(s.frame_scores.iter().map(|&score| Scored {
                fake: s.fake,
                score,
            }));
            videos.push(Scored {
                fake: s.fake,
                score: s.video_score,
            });
            means.push(Scored {
                fake: s.fake,
                score: s.frame_mean,
            });
        }
    }
    (frames, videos, means)
}

pub fn report(outcomes: Vec<Outcome>, threshold: f32) -> Result<EvalReport> {
    let (frames, videos, means) = scored(&outcomes);
    let frame = Metrics::compute(&frames, threshold).context("frame level")?;
    let video = Metrics::compute(&videos, threshold).context("video level")?;
    let video_frame_mean = Metrics::compute(&means, threshold).context("video level")?;
    let mut no_face = Vec::new();
    let mut failed = Vec::new();
    let mut items = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Scored(s) => items.push(s),
            Outcome::NoFace { file, .. } => no_face.push(file),
            Outcome::Failed { file, error } => failed.push((file, error)),
        }
    }
    Ok(EvalReport {
        threshold,
        frame,
        video,
        video_frame_mean,
        no_face,
        failed,
        items,
    })
}

fn row(name: &str, m: &Metrics) -> String {
    format!(
        "{name:<22} {:>5} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.3}   {}/{}/{}/{}\n",
        m.items,
        m.auc,
        m.eer,
        m.accuracy,
        m.precision,
        m.recall,
        m.f1,
        m.apcer,
        m.bpcer,
        m.confusion.true_fake,
        m.confusion.false_fake,
        m.confusion.true_real,
        m.confusion.false_real
    )
}

impl EvalReport {
    /// The printed report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "operating threshold {:.3} (score >= threshold: FAKE)\n\
             {:<22} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}   TF/FF/TR/FR\n",
            self.threshold,
            "level",
            "n",
            "AUC",
            "EER",
            "acc",
            "prec",
            "recall",
            "F1",
            "APCER",
            "BPCER"
        );
        s += &row("frame", &self.frame);
        s += &row(
            &format!("video ({})", short_source(&self.items)),
            &self.video,
        );
        s += &row("video (frame mean)", &self.video_frame_mean);
        s += &format!(
            "items: {} scored ({} real, {} fake), {} without a face, {} unreadable\n",
            self.items.len(),
            self.video.real,
            self.video.fake,
            self.no_face.len(),
            self.failed.len()
        );
        s += "APCER: fakes accepted as real; BPCER: real faces rejected as fake (ISO/IEC 30107-3).\n\
              TF/FF/TR/FR: fake called fake / real called fake / real called real / fake called real.\n";
        for f in &self.no_face {
            s += &format!("no face: {f}\n");
        }
        for (f, e) in &self.failed {
            // Errors usually name the file already.
            if e.contains(f.as_str()) {
                s += &format!("unreadable: {e}\n");
            } else {
                s += &format!("unreadable: {f}: {e}\n");
            }
        }
        s
    }
}

fn short_source(items: &[ItemScores]) -> &'static str {
    if items
        .iter()
        .all(|i| i.video_score_source == "temporal model")
    {
        "GRU"
    } else {
        "GRU/median"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_images_videos_and_frame_folders() {
        let dir = std::env::temp_dir().join(format!("veriface-eval-items-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for f in [
            "real/a.png",
            "real/clip/0001.png",
            "real/clip/0002.png",
            "fake/deep/x.mp4",
            "fake/b.jpg",
            "fake/notes.txt",
        ] {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        let items = collect_items(&dir).unwrap();
        let got: Vec<(bool, &str, String)> = items
            .iter()
            .map(|i| {
                (
                    i.fake,
                    i.kind(),
                    i.path().strip_prefix(&dir).unwrap().display().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (true, "image", "fake/b.jpg".to_string()),
                (true, "video", "fake/deep/x.mp4".to_string()),
                (false, "image", "real/a.png".to_string()),
                (false, "frames", "real/clip".to_string()),
            ]
        );
        let e = collect_items(&dir.join("real/clip"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no images or videos under real/ or fake/"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn whole_image_face_crops_exactly_the_image() {
        let det = whole_image_face(200, 100, 1.25);
        let r = crate::face::square_region(&det.bbox, 1.25);
        assert_eq!((r.x0, r.y0, r.width, r.height), (0, -50, 200, 200));
    }
}
