//! Face stage: BlazeFace detection (anchors, sigmoid scores, weighted NMS), a FaceMesh presence
//! check that drops detections that are not human faces, an IoU tracker that keeps a stable id
//! per face, and square crops for the downstream models.
//!
//! Decoding mirrors `models/tools/preprocess.py`; the golden tests compare the two.

mod eyes;
mod similarity;
mod warp;
pub use eyes::{openness_of, EyeModel, EYES_TASK};
pub use similarity::Similarity;
pub use warp::warp_rgb;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::frame::{crop_resize_into, letterbox_into, Colour, Frame, Letterbox, Normalise, Region};
use crate::infer::{Model, Tensor};
use crate::manifest::{DetectorSpec, ModelSpec};

/// Axis-aligned box in frame pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BoxF {
    pub xmin: f64,
    pub ymin: f64,
    pub xmax: f64,
    pub ymax: f64,
}

impl BoxF {
    pub fn width(&self) -> f64 {
        self.xmax - self.xmin
    }
    pub fn height(&self) -> f64 {
        self.ymax - self.ymin
    }
    pub fn area(&self) -> f64 {
        self.width().max(0.0) * self.height().max(0.0)
    }
    pub fn iou(&self, other: &BoxF) -> f64 {
        let ix = (self.xmax.min(other.xmax) - self.xmin.max(other.xmin)).max(0.0);
        let iy = (self.ymax.min(other.ymax) - self.ymin.max(other.ymin)).max(0.0);
        let inter = ix * iy;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// The main face among several: the largest box; of equal boxes, the first. The one rule for the
/// screen, the LEDs, the status file and the evaluations, so they never name different faces.
pub fn largest<T>(faces: &[T], bbox: impl Fn(&T) -> &BoxF) -> Option<&T> {
    faces
        .iter()
        .fold(None, |best: Option<&T>, face| match best {
            Some(b) if bbox(b).area() >= bbox(face).area() => Some(b),
            _ => Some(face),
        })
}

/// One detected face: box, score and the six BlazeFace keypoints (eyes, nose, mouth, ears).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    pub score: f64,
    pub bbox: BoxF,
    pub keypoints: [(f64, f64); 6],
}

/// Anchor centres, normalised, in the order of the model's outputs.
pub fn anchors(spec: &DetectorSpec) -> Vec<(f64, f64)> {
    let mut centres = Vec::new();
    let mut layer = 0;
    while layer < spec.strides.len() {
        let stride = spec.strides[layer];
        let same = spec.strides[layer..]
            .iter()
            .take_while(|s| **s == stride)
            .count();
        let per_cell = same * spec.anchors_per_layer;
        let fm = spec.size.div_ceil(stride);
        for y in 0..fm {
            for x in 0..fm {
                for _ in 0..per_cell {
                    centres.push(((x as f64 + 0.5) / fm as f64, (y as f64 + 0.5) / fm as f64));
                }
            }
        }
        layer += same;
    }
    centres
}

/// Decode raw BlazeFace outputs into detections normalised to the detector input.
pub fn decode(
    regressors: &[f32],
    scores: &[f32],
    anchors: &[(f64, f64)],
    spec: &DetectorSpec,
) -> Vec<Detection> {
    let size = spec.size as f64;
    let mut cand: Vec<Detection> = Vec::new();
    for (i, (&logit, &(ax, ay))) in scores.iter().zip(anchors).enumerate() {
        let prob = 1.0 / (1.0 + (-(logit as f64).clamp(-100.0, 100.0)).exp());
        if prob < spec.score_threshold as f64 {
            continue;
        }
        let r = &regressors[i * 16..i * 16 + 16];
        let cx = r[0] as f64 / size + ax;
        let cy = r[1] as f64 / size + ay;
        let w = r[2] as f64 / size;
        let h = r[3] as f64 / size;
        let mut keypoints = [(0.0, 0.0); 6];
        for (k, kp) in keypoints.iter_mut().enumerate() {
            *kp = (
                r[4 + 2 * k] as f64 / size + ax,
                r[5 + 2 * k] as f64 / size + ay,
            );
        }
        let bbox = BoxF {
            xmin: cx - w / 2.0,
            ymin: cy - h / 2.0,
            xmax: cx + w / 2.0,
            ymax: cy + h / 2.0,
        };
        cand.push(Detection {
            score: prob,
            bbox,
            keypoints,
        });
    }
    weighted_nms(cand, spec.nms_iou as f64)
}

/// MediaPipe's weighted NMS: each kept face is the score-weighted mean of the boxes it absorbs.
fn weighted_nms(mut cand: Vec<Detection>, iou_threshold: f64) -> Vec<Detection> {
    // Stable sort: equal scores keep anchor order, as Python's sort does.
    cand.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut faces = Vec::new();
    while let Some(best) = cand.first().cloned() {
        let (group, rest): (Vec<_>, Vec<_>) = cand
            .into_iter()
            .partition(|c| best.bbox.iou(&c.bbox) > iou_threshold);
        let total: f64 = group.iter().map(|c| c.score).sum();
        let mut merged = Detection {
            score: best.score,
            bbox: BoxF {
                xmin: 0.0,
                ymin: 0.0,
                xmax: 0.0,
                ymax: 0.0,
            },
            keypoints: [(0.0, 0.0); 6],
        };
        for c in &group {
            let w = c.score / total;
            merged.bbox.xmin += w * c.bbox.xmin;
            merged.bbox.ymin += w * c.bbox.ymin;
            merged.bbox.xmax += w * c.bbox.xmax;
            merged.bbox.ymax += w * c.bbox.ymax;
            for (m, k) in merged.keypoints.iter_mut().zip(&c.keypoints) {
                m.0 += w * k.0;
                m.1 += w * k.1;
            }
        }
        faces.push(merged);
        cand = rest;
    }
    faces
}

/// Which BlazeFace model finds the faces; the CLI and the daemon config both use this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DetectorRange {
    /// BlazeFace short range: faces within about 2 m (kiosks)
    Short,
    /// BlazeFace full range: faces up to about 5 m (field devices)
    Full,
    /// Short range first, full range on frames where it finds no face (files of any framing)
    Auto,
}

impl DetectorRange {
    /// The manifest keys of the detectors, in the order they are tried.
    pub fn manifest_keys(self) -> &'static [&'static str] {
        match self {
            DetectorRange::Short => &["face_short"],
            DetectorRange::Full => &["face_full"],
            DetectorRange::Auto => &["face_short", "face_full"],
        }
    }

    /// The keys as one label for reports, e.g. `face_short+face_full`.
    pub fn label(self) -> String {
        self.manifest_keys().join("+")
    }
}

/// MediaPipe's own default for FaceMesh's face presence (`min_detection_confidence` 0.5): below
/// it the landmark model says the crop holds no face.
pub const MIN_FACE_PRESENCE: f32 = 0.5;

/// FaceMesh used as a second opinion on each detection: BlazeFace fires on animal faces and
/// face-like patterns (the bundled cat photo: detector score 0.52, presence 0.0003); FaceMesh's
/// presence output is trained to tell a human face from anything else. On 134 photos of people
/// from 12 public sources every face kept a presence above 0.5.
pub struct PresenceCheck {
    model: Box<dyn Model>,
    size: usize,
    crop_scale: f64,
    norm: Normalise,
}

impl PresenceCheck {
    pub fn new(model: Box<dyn Model>, model_spec: &ModelSpec) -> Result<Self> {
        Ok(PresenceCheck {
            model,
            size: square_input(model_spec, "landmark")?,
            crop_scale: model_spec.crop_scale.unwrap_or(1.5) as f64,
            norm: model_spec.normalise(),
        })
    }

    /// The probability that the detection's crop holds a human face.
    pub fn presence(&self, frame: &Frame, det: &Detection) -> Result<f32> {
        Ok(self.landmarks(frame, det)?.presence)
    }

    /// FaceMesh on the detection's square crop: the presence probability and the 468 landmarks
    /// in frame pixels (x, y; z in the same scale, relative to the face's centre plane).
    pub fn landmarks(&self, frame: &Frame, det: &Detection) -> Result<FaceLandmarks> {
        let size = self.size;
        let mut data = vec![0f32; 3 * size * size];
        let region = square_region(&det.bbox, self.crop_scale);
        crop_resize_into(frame, region, size, size, Colour::Rgb, self.norm, &mut data);
        let out = self
            .model
            .run(&[Tensor::new(vec![1, 3, size, size], data)])?;
        let logit = out
            .get(1)
            .and_then(|t| t.data.first())
            .copied()
            .ok_or_else(|| anyhow::anyhow!("landmark model has no face presence output"))?;
        let raw = &out[0].data;
        if raw.len() != MESH_POINTS * 3 {
            bail!(
                "landmark model gives {} values, not {MESH_POINTS} x 3",
                raw.len()
            );
        }
        let scale = region.width as f32 / size as f32;
        let points = raw
            .chunks_exact(3)
            .map(|p| {
                [
                    region.x0 as f32 + p[0] * scale,
                    region.y0 as f32 + p[1] * scale,
                    p[2] * scale,
                ]
            })
            .collect();
        Ok(FaceLandmarks {
            presence: 1.0 / (1.0 + (-logit.clamp(-80.0, 80.0)).exp()),
            points,
        })
    }
}

/// The side of a model's square image input.
fn square_input(model_spec: &ModelSpec, what: &str) -> Result<usize> {
    let (h, w) = model_spec.image_size()?;
    if h != w {
        bail!("{}: {what} input {w}x{h} is not square", model_spec.file);
    }
    Ok(h)
}

/// FaceMesh's landmark count.
pub const MESH_POINTS: usize = 468;

/// One face's FaceMesh answer, in frame pixels.
#[derive(Clone, Debug)]
pub struct FaceLandmarks {
    pub presence: f32,
    /// `MESH_POINTS` points: x, y in frame pixels, z (depth) in the same scale.
    pub points: Vec<[f32; 3]>,
}

/// One BlazeFace model plus its anchors.
struct BlazeFace {
    model: Box<dyn Model>,
    spec: DetectorSpec,
    anchors: Vec<(f64, f64)>,
    norm: Normalise,
}

impl BlazeFace {
    fn new(model: Box<dyn Model>, spec: DetectorSpec, model_spec: &ModelSpec) -> Result<Self> {
        let anchors = anchors(&spec);
        let (h, w) = model_spec.image_size()?;
        if h != spec.size || w != spec.size {
            bail!(
                "{}: detector input {w}x{h} does not match anchor size {}",
                model_spec.file,
                spec.size
            );
        }
        Ok(BlazeFace {
            model,
            spec,
            anchors,
            norm: model_spec.normalise(),
        })
    }

    fn input(&self, frame: &Frame) -> (Tensor, Letterbox) {
        let size = self.spec.size;
        let lb = Letterbox::new(frame.width, frame.height, size);
        let mut data = vec![0f32; 3 * size * size];
        letterbox_into(frame, &lb, self.norm, &mut data);
        (Tensor::new(vec![1, 3, size, size], data), lb)
    }

    fn detect(&self, frame: &Frame) -> Result<Vec<Detection>> {
        let (input, lb) = self.input(frame);
        let out = self.model.run(&[input])?;
        if out.len() < 2
            || out[0].data.len() != self.anchors.len() * 16
            || out[1].data.len() != self.anchors.len()
        {
            bail!(
                "face detector outputs do not match {} anchors",
                self.anchors.len()
            );
        }
        Ok(
            decode(&out[0].data, &out[1].data, &self.anchors, &self.spec)
                .iter()
                .map(|d| to_frame(d, &lb))
                .collect(),
        )
    }
}

/// The face detector: one BlazeFace model, or several tried in turn until one finds a face
/// (`DetectorRange::Auto`), and the presence check when the manifest has a landmark model.
pub struct FaceDetector {
    ranges: Vec<BlazeFace>,
    presence: Option<PresenceCheck>,
}

impl FaceDetector {
    pub fn new(model: Box<dyn Model>, spec: DetectorSpec, model_spec: &ModelSpec) -> Result<Self> {
        Ok(FaceDetector {
            ranges: vec![BlazeFace::new(model, spec, model_spec)?],
            presence: None,
        })
    }

    /// A further detector, run on frames where the ones before it found no face.
    pub fn with_fallback(
        mut self,
        model: Box<dyn Model>,
        spec: DetectorSpec,
        model_spec: &ModelSpec,
    ) -> Result<Self> {
        self.ranges.push(BlazeFace::new(model, spec, model_spec)?);
        Ok(self)
    }

    /// Keep only detections the landmark model calls a human face.
    pub fn with_presence_check(mut self, check: PresenceCheck) -> Self {
        self.presence = Some(check);
        self
    }

    /// The presence check, when the manifest has a landmark model.
    pub fn presence_check(&self) -> Option<&PresenceCheck> {
        self.presence.as_ref()
    }

    /// The first detector's letterboxed, normalised input tensor for a frame.
    pub fn input(&self, frame: &Frame) -> (Tensor, Letterbox) {
        self.ranges[0].input(frame)
    }

    /// Faces in frame pixels, highest score first.
    pub fn detect(&self, frame: &Frame) -> Result<Vec<Detection>> {
        for range in &self.ranges {
            let mut faces = Vec::new();
            for d in range.detect(frame)? {
                match &self.presence {
                    Some(check) if check.presence(frame, &d)? < MIN_FACE_PRESENCE => {}
                    _ => faces.push(d),
                }
            }
            if !faces.is_empty() {
                return Ok(faces);
            }
        }
        Ok(Vec::new())
    }
}

/// Map a detection from letterboxed-normalised to frame pixel coordinates.
pub fn to_frame(d: &Detection, lb: &Letterbox) -> Detection {
    let (xmin, ymin) = lb.to_frame(d.bbox.xmin, d.bbox.ymin);
    let (xmax, ymax) = lb.to_frame(d.bbox.xmax, d.bbox.ymax);
    let mut keypoints = d.keypoints;
    for k in keypoints.iter_mut() {
        *k = lb.to_frame(k.0, k.1);
    }
    Detection {
        score: d.score,
        bbox: BoxF {
            xmin,
            ymin,
            xmax,
            ymax,
        },
        keypoints,
    }
}

/// Square crop region centred on the box; side = longer box side x `scale`.
pub fn square_region(b: &BoxF, scale: f64) -> Region {
    let cx = (b.xmin + b.xmax) / 2.0;
    let cy = (b.ymin + b.ymax) / 2.0;
    let side = b.width().max(b.height()) * scale;
    let side_i = ((side + 0.5).floor() as usize).max(1);
    Region {
        x0: (cx - side / 2.0 + 0.5).floor() as i64,
        y0: (cy - side / 2.0 + 0.5).floor() as i64,
        width: side_i,
        height: side_i,
    }
}

/// A face followed across frames.
#[derive(Clone, Debug)]
pub struct Track {
    pub id: u32,
    pub detection: Detection,
    pub last_seen: u64,
    pub hits: u32,
    /// Box corner motion per frame (xmin, ymin, xmax, ymax), from the last two detections.
    pub velocity: [f64; 4],
}

/// Greedy IoU tracker: each detection joins the overlapping track it matches best, or starts one.
pub struct Tracker {
    tracks: Vec<Track>,
    next_id: u32,
    min_iou: f64,
    max_missed_frames: u64,
    /// The frame of the last `update`: tracks seen then are the live faces.
    last_update: Option<u64>,
    /// Tracks dropped by updates since the last `take_ended`.
    ended: Vec<u32>,
}

impl Tracker {
    pub fn new(min_iou: f64, max_missed_frames: u64) -> Self {
        Tracker {
            tracks: Vec::new(),
            next_id: 1,
            min_iou,
            max_missed_frames,
            last_update: None,
            ended: Vec::new(),
        }
    }

    /// The ids of the tracks that ended (unseen for more than `max_missed_frames`) since the last
    /// call: whoever keeps state per track drops it then, so a kiosk that sees thousands of people
    /// holds state only for those in view.
    pub fn take_ended(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.ended)
    }

    /// Assign track ids to this frame's detections; returns (track id, detection) pairs.
    pub fn update(&mut self, frame_no: u64, detections: &[Detection]) -> Vec<(u32, Detection)> {
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (t, track) in self.tracks.iter().enumerate() {
            for (d, det) in detections.iter().enumerate() {
                let iou = track.detection.bbox.iou(&det.bbox);
                if iou >= self.min_iou {
                    pairs.push((iou, t, d));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_used = vec![false; self.tracks.len()];
        let mut assigned: Vec<Option<u32>> = vec![None; detections.len()];
        for (_, t, d) in pairs {
            if track_used[t] || assigned[d].is_some() {
                continue;
            }
            track_used[t] = true;
            let track = &mut self.tracks[t];
            let gap = frame_no.saturating_sub(track.last_seen).max(1) as f64;
            let (old, new) = (&track.detection.bbox, &detections[d].bbox);
            track.velocity = [
                (new.xmin - old.xmin) / gap,
                (new.ymin - old.ymin) / gap,
                (new.xmax - old.xmax) / gap,
                (new.ymax - old.ymax) / gap,
            ];
            track.detection = detections[d].clone();
            track.last_seen = frame_no;
            track.hits += 1;
            assigned[d] = Some(track.id);
        }
        for (d, slot) in assigned.iter_mut().enumerate() {
            if slot.is_none() {
                let id = self.next_id;
                self.next_id += 1;
                self.tracks.push(Track {
                    id,
                    detection: detections[d].clone(),
                    last_seen: frame_no,
                    hits: 1,
                    velocity: [0.0; 4],
                });
                *slot = Some(id);
            }
        }
        let max_missed = self.max_missed_frames;
        let ended = &mut self.ended;
        self.tracks.retain(|t| {
            let live = frame_no.saturating_sub(t.last_seen) <= max_missed;
            if !live {
                ended.push(t.id);
            }
            live
        });
        self.last_update = Some(frame_no);
        assigned
            .into_iter()
            .flatten()
            .zip(detections.iter().cloned())
            .collect()
    }
}

impl Tracker {
    /// The faces of the last detection, moved on at their last velocity to `frame_no`: what the
    /// pipeline uses on the frames between detector runs. Keypoints move with the box.
    pub fn predict(&self, frame_no: u64) -> Vec<(u32, Detection)> {
        let Some(updated) = self.last_update else {
            return Vec::new();
        };
        let ahead = frame_no.saturating_sub(updated) as f64;
        self.tracks
            .iter()
            .filter(|t| t.last_seen == updated)
            .map(|t| {
                let mut det = t.detection.clone();
                let v = t.velocity;
                let b = &mut det.bbox;
                b.xmin += v[0] * ahead;
                b.ymin += v[1] * ahead;
                b.xmax += v[2] * ahead;
                b.ymax += v[3] * ahead;
                let (dx, dy) = ((v[0] + v[2]) / 2.0 * ahead, (v[1] + v[3]) / 2.0 * ahead);
                for k in det.keypoints.iter_mut() {
                    k.0 += dx;
                    k.1 += dy;
                }
                (t.id, det)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f64, y: f64, s: f64, score: f64) -> Detection {
        Detection {
            score,
            bbox: BoxF {
                xmin: x,
                ymin: y,
                xmax: x + s,
                ymax: y + s,
            },
            keypoints: [(0.0, 0.0); 6],
        }
    }

    #[test]
    fn anchor_counts_match_blazeface() {
        let short = DetectorSpec {
            size: 128,
            strides: vec![8, 16, 16, 16],
            anchors_per_layer: 2,
            score_threshold: 0.5,
            nms_iou: 0.3,
        };
        let full = DetectorSpec {
            size: 192,
            strides: vec![4],
            anchors_per_layer: 1,
            score_threshold: 0.5,
            nms_iou: 0.3,
        };
        assert_eq!(anchors(&short).len(), 896);
        assert_eq!(anchors(&full).len(), 2304);
        assert_eq!(anchors(&short)[0], (1.0 / 32.0, 1.0 / 32.0));
    }

    #[test]
    fn weighted_nms_merges_overlaps_and_keeps_separate_faces() {
        let faces = weighted_nms(
            vec![
                det(0.0, 0.0, 10.0, 0.9),
                det(1.0, 0.0, 10.0, 0.6),
                det(50.0, 50.0, 10.0, 0.7),
            ],
            0.3,
        );
        assert_eq!(faces.len(), 2);
        assert_eq!(faces[0].score, 0.9);
        let expected_x = (0.9 * 0.0 + 0.6 * 1.0) / 1.5;
        assert!((faces[0].bbox.xmin - expected_x).abs() < 1e-12);
        assert_eq!(faces[1].bbox.xmin, 50.0);
    }

    #[test]
    fn tracker_keeps_ids_while_faces_move_and_forgets_lost_ones() {
        let mut tracker = Tracker::new(0.3, 2);
        let a = tracker.update(0, &[det(0.0, 0.0, 10.0, 0.9), det(100.0, 0.0, 10.0, 0.9)]);
        assert_eq!(a.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 2]);
        // Both move a little, listed in the other order: ids follow the faces, not the order.
        let b = tracker.update(1, &[det(102.0, 1.0, 10.0, 0.9), det(1.0, 1.0, 10.0, 0.9)]);
        assert_eq!(b.iter().map(|p| p.0).collect::<Vec<_>>(), vec![2, 1]);
        // Face 2 vanishes for longer than the allowed gap; a face in its place is new.
        tracker.update(2, &[det(1.0, 1.0, 10.0, 0.9)]);
        tracker.update(5, &[det(1.0, 1.0, 10.0, 0.9)]);
        let c = tracker.update(6, &[det(1.0, 1.0, 10.0, 0.9), det(102.0, 1.0, 10.0, 0.9)]);
        assert_eq!(c.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn tracker_reports_each_ended_track_once() {
        let mut tracker = Tracker::new(0.3, 2);
        tracker.update(0, &[det(0.0, 0.0, 10.0, 0.9), det(100.0, 0.0, 10.0, 0.9)]);
        tracker.update(2, &[det(0.0, 0.0, 10.0, 0.9)]);
        assert!(tracker.take_ended().is_empty(), "face 2 is within its gap");
        tracker.update(3, &[det(0.0, 0.0, 10.0, 0.9)]);
        assert_eq!(tracker.take_ended(), vec![2]);
        assert!(tracker.take_ended().is_empty(), "reported once");
        tracker.update(9, &[]);
        assert_eq!(tracker.take_ended(), vec![1]);
    }

    #[test]
    fn prediction_moves_live_faces_at_their_velocity_and_drops_lost_ones() {
        let mut tracker = Tracker::new(0.3, 10);
        assert!(tracker.predict(0).is_empty(), "nothing detected yet");
        tracker.update(0, &[det(0.0, 0.0, 10.0, 0.9), det(100.0, 0.0, 10.0, 0.9)]);
        // Detector every 3 frames: face 1 moved 3 px right, face 2 is gone.
        tracker.update(3, &[det(3.0, 0.0, 10.0, 0.9)]);
        let p = tracker.predict(5);
        assert_eq!(
            p.len(),
            1,
            "only faces seen at the last detection are predicted"
        );
        assert_eq!(p[0].0, 1);
        let b = p[0].1.bbox;
        assert!((b.xmin - 5.0).abs() < 1e-9 && (b.xmax - 15.0).abs() < 1e-9);
        assert!(b.ymin.abs() < 1e-9);
    }

    #[test]
    fn square_region_is_centred_and_scaled() {
        let r = square_region(
            &BoxF {
                xmin: 10.0,
                ymin: 20.0,
                xmax: 30.0,
                ymax: 60.0,
            },
            1.5,
        );
        assert_eq!(
            r,
            Region {
                x0: -10,
                y0: 10,
                width: 60,
                height: 60
            }
        );
    }
}
