//! Decoding generated media: MJPEG built in Rust, an image sequence, and frame timing.

mod common;

use common::scratch;
use veriface::source::{self, FrameSource};

/// Concatenated JPEGs (what an MJPEG webcam sends) decode frame by frame with the right colours.
#[test]
fn mjpeg_stream_decodes_every_frame() {
    let dir = scratch("mjpeg");
    let path = dir.join("stripes.mjpeg");
    let mut bytes = Vec::new();
    let shades = [20u8, 120, 220, 60, 180];
    for s in shades {
        let img = image::RgbImage::from_pixel(64, 48, image::Rgb([s, 255 - s, 128]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        bytes.extend(jpeg);
    }
    std::fs::write(&path, bytes).unwrap();
    let mut src = source::open(&path).unwrap();
    let mut seen = Vec::new();
    while let Some(tf) = src.next_frame().unwrap() {
        assert_eq!((tf.frame.width, tf.frame.height), (64, 48));
        seen.push(tf.frame.rgb[0]);
    }
    assert_eq!(seen.len(), shades.len());
    for (got, want) in seen.iter().zip(shades) {
        assert!(
            (*got as i32 - want as i32).abs() <= 6,
            "decoded red {got}, encoded {want}"
        );
    }
}

#[test]
fn h264_sample_has_size_rate_and_timestamps() {
    let path = common::repo().join("tests/data/astronaut_zoom.mp4");
    let info = source::probe(&path).unwrap();
    assert_eq!((info.width, info.height), (320, 320));
    assert!((info.fps - 10.0).abs() < 1e-6);
    let mut src = source::VideoSource::open(&path).unwrap();
    let mut n = 0;
    let mut last_t = -1.0;
    while let Some(tf) = src.next_frame().unwrap() {
        assert!(tf.seconds > last_t);
        last_t = tf.seconds;
        n += 1;
    }
    assert_eq!(n, 30);
}

/// A phone clip stored sideways with a display rotation decodes upright at the rotated size: the
/// same pixels as the upright clip it was made from (lossless, so exactly).
#[test]
fn portrait_clip_with_a_rotation_decodes_upright() {
    let dir = scratch("rotated");
    let ffmpeg = |args: &[&str]| {
        let ok = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ffmpeg {args:?}");
    };
    let sample = common::repo().join("tests/data/astronaut_zoom.mp4");
    let (upright, sideways, tagged) = (
        dir.join("upright.mp4"),
        dir.join("sideways.mp4"),
        dir.join("tagged.mp4"),
    );
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    ffmpeg(&[
        "-i",
        &s(&sample),
        "-frames:v",
        "3",
        "-vf",
        "crop=320:200:0:60,format=yuv444p",
        "-c:v",
        "libx264",
        "-qp",
        "0",
        &s(&upright),
    ]);
    ffmpeg(&[
        "-i",
        &s(&upright),
        "-vf",
        "transpose=1",
        "-c:v",
        "libx264",
        "-qp",
        "0",
        &s(&sideways),
    ]);
    ffmpeg(&[
        "-i",
        &s(&sideways),
        "-c",
        "copy",
        "-metadata:s:v:0",
        "rotate=90",
        &s(&tagged),
    ]);
    let info = source::probe(&tagged).unwrap();
    assert_eq!((info.width, info.height), (320, 200));
    let frames = |p: &std::path::Path| {
        let mut src = source::VideoSource::open(p).unwrap();
        let mut out = Vec::new();
        while let Some(tf) = src.next_frame().unwrap() {
            out.push(tf.frame);
        }
        out
    };
    let (want, got) = (frames(&upright), frames(&tagged));
    assert_eq!(got.len(), 3);
    for (w, g) in want.iter().zip(&got) {
        assert_eq!((g.width, g.height), (320, 200));
        assert!(
            w.rgb == g.rgb,
            "the rotated clip's frame differs from the upright one"
        );
    }
}

#[test]
fn folders_are_searched_recursively_and_sorted() {
    let dir = scratch("tree");
    std::fs::create_dir_all(dir.join("b/c")).unwrap();
    for p in ["b/c/z.png", "a.jpg", "b/y.mp4", "notes.txt"] {
        std::fs::write(dir.join(p), b"x").unwrap();
    }
    let found = source::collect_media(&dir).unwrap();
    let names: Vec<String> = found
        .iter()
        .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
        .collect();
    assert_eq!(names, vec!["a.jpg", "b/c/z.png", "b/y.mp4"]);
    let empty = scratch("empty-tree");
    assert!(source::collect_media(&empty)
        .unwrap_err()
        .to_string()
        .contains("no images or videos"));
}

/// The bundled Motion JPEG clip decodes in-process to the frames ffmpeg decodes from the same
/// file: same count, size and timing, pixels within what two JPEG decoders' rounding and chroma
/// upsampling differ by (mean |Δ| ≤ 2 grey levels).
#[test]
fn mjpeg_avi_sample_decodes_in_process_like_ffmpeg() {
    let path = common::repo().join("samples/astronaut_zoom.avi");
    assert!(source::mjpeg::decodes(&path));
    let info = source::video_info(&path).unwrap();
    assert_eq!((info.width, info.height, info.frames), (320, 320, Some(30)));
    assert!((info.fps - 10.0).abs() < 1e-9);
    let mut ours = source::open(&path).unwrap();
    let mut theirs = source::VideoSource::open(&path).unwrap();
    let mut n = 0;
    while let Some(a) = ours.next_frame().unwrap() {
        let b = theirs
            .next_frame()
            .unwrap()
            .expect("ffmpeg has as many frames");
        assert_eq!((a.index, a.seconds), (b.index, b.seconds));
        let diff: u64 = a
            .frame
            .rgb
            .iter()
            .zip(&b.frame.rgb)
            .map(|(x, y)| x.abs_diff(*y) as u64)
            .sum();
        let mean = diff as f64 / a.frame.rgb.len() as f64;
        assert!(mean <= 2.0, "frame {n}: mean |Δ| {mean:.2}");
        n += 1;
    }
    assert!(theirs.next_frame().unwrap().is_none());
    assert_eq!(n, 30);
}
