//! Frames in: still images and Motion JPEG video (AVI or bare streams, decoded in Rust, see
//! `mjpeg`) and every other video file (decoded by the `ffmpeg` program).
//!
//! Why ffmpeg as a subprocess: FaceForensics++, DFDC and phone clips are H.264 in profiles up to
//! High 4:4:4 Predictive, which pure-Rust and openh264 decoders cannot decode; libavcodec can.
//! A subprocess needs no libclang or FFmpeg headers at build time, cross-compiles untouched, and a
//! decoder crash on a hostile file cannot take the daemon down. Boards get ffmpeg from apt.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::frame::Frame;

pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp"];
pub const VIDEO_EXTENSIONS: &[&str] = &[
    "mp4", "mov", "mkv", "avi", "webm", "m4v", "mjpeg", "mjpg", "y4m",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

pub fn media_kind(path: &Path) -> Option<MediaKind> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        Some(MediaKind::Image)
    } else if VIDEO_EXTENSIONS.contains(&ext.as_str()) {
        Some(MediaKind::Video)
    } else {
        None
    }
}

/// A decoded frame with its position in the stream.
#[derive(Debug)]
pub struct TimedFrame {
    pub index: u64,
    pub seconds: f64,
    pub frame: Frame,
}

/// Anything that yields frames in order.
pub trait FrameSource: Send {
    /// The next frame, None at the end. An error names the file and the cause.
    fn next_frame(&mut self) -> Result<Option<TimedFrame>>;
    /// Total frames if known (for progress).
    fn frame_count(&self) -> Option<u64> {
        None
    }
}

/// Decode a still image to RGB.
pub fn read_image(path: &Path) -> Result<Frame> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.is_empty() {
        bail!("{}: empty file", path.display());
    }
    let img = image::load_from_memory(&bytes)
        .map_err(|e| anyhow!("{}: not a readable image: {e}", path.display()))?;
    let rgb = img.to_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Frame::new(w as usize, h as usize, rgb.into_raw()))
}

/// One still image as a one-frame source.
pub struct ImageSource {
    frame: Option<Frame>,
}

impl ImageSource {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(ImageSource {
            frame: Some(read_image(path)?),
        })
    }
}

impl FrameSource for ImageSource {
    fn next_frame(&mut self) -> Result<Option<TimedFrame>> {
        Ok(self.frame.take().map(|frame| TimedFrame {
            index: 0,
            seconds: 0.0,
            frame,
        }))
    }
    fn frame_count(&self) -> Option<u64> {
        Some(1)
    }
}

/// A folder of still images played in name order as one clip at `fps` (what a camera dump or an
/// exported frame sequence looks like).
pub struct FolderSource {
    files: std::vec::IntoIter<std::path::PathBuf>,
    count: u64,
    index: u64,
    fps: f64,
}

impl FolderSource {
    pub fn open(dir: &Path, fps: f64) -> Result<Self> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(media_kind(p), Some(MediaKind::Image)))
            .collect();
        if files.is_empty() {
            bail!("{}: no images in the folder", dir.display());
        }
        files.sort();
        Ok(FolderSource {
            count: files.len() as u64,
            files: files.into_iter(),
            index: 0,
            fps: fps.max(1e-3),
        })
    }
}

impl FrameSource for FolderSource {
    fn next_frame(&mut self) -> Result<Option<TimedFrame>> {
        let Some(path) = self.files.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        Ok(Some(TimedFrame {
            index,
            seconds: index as f64 / self.fps,
            frame: read_image(&path)?,
        }))
    }
    fn frame_count(&self) -> Option<u64> {
        Some(self.count)
    }
}

/// Stream facts from ffprobe.
#[derive(Clone, Debug)]
pub struct VideoInfo {
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    pub frames: Option<u64>,
}

fn ffmpeg_missing(program: &str, path: &Path, e: std::io::Error) -> anyhow::Error {
    let path = path.display();
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow!("{path}: `{program}` not found: this video needs FFmpeg (Motion JPEG AVI does not; Debian/Ubuntu: apt install ffmpeg)")
    } else {
        anyhow!("{path}: cannot run `{program}`: {e}")
    }
}

pub fn probe(path: &Path) -> Result<VideoInfo> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if meta.len() == 0 {
        bail!("{}: empty file", path.display());
    }
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,avg_frame_rate,r_frame_rate,nb_frames:stream_tags=rotate:\
             stream_side_data=rotation",
            "-of",
            "json",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ffmpeg_missing("ffprobe", path, e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let stream = parsed.get("streams").and_then(|s| s.get(0));
    let Some(stream) = stream.filter(|_| out.status.success()) else {
        let cause = last_line(&stderr).unwrap_or("no video stream");
        bail!("{}: not a readable video: {cause}", path.display());
    };
    let dim = |k: &str| stream.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    let (mut width, mut height) = (dim("width"), dim("height"));
    if width == 0 || height == 0 {
        bail!("{}: not a readable video: no frame size", path.display());
    }
    // Phone clips are stored sideways with a rotation to apply on display; ffmpeg applies it
    // while decoding, so the frames it pipes are the rotated size, not the stored one.
    if rotation_degrees(stream).rem_euclid(180) == 90 {
        std::mem::swap(&mut width, &mut height);
    }
    let rate = |k: &str| {
        let s = stream.get(k).and_then(|v| v.as_str()).unwrap_or("0/1");
        let (n, d) = s.split_once('/').unwrap_or((s, "1"));
        let (n, d): (f64, f64) = (n.parse().unwrap_or(0.0), d.parse().unwrap_or(1.0));
        if d > 0.0 {
            n / d
        } else {
            0.0
        }
    };
    let fps = [rate("avg_frame_rate"), rate("r_frame_rate")]
        .into_iter()
        .find(|r| *r > 0.0 && r.is_finite())
        .unwrap_or(25.0);
    let frames = stream
        .get("nb_frames")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok());
    Ok(VideoInfo {
        width,
        height,
        fps,
        frames,
    })
}

/// The display rotation of a video stream: the display matrix (side data) where there is one,
/// else the older `rotate` tag; 0 for none.
fn rotation_degrees(stream: &serde_json::Value) -> i64 {
    let side_data = stream
        .get("side_data_list")
        .and_then(|l| l.as_array())
        .into_iter()
        .flatten()
        .find_map(|d| d.get("rotation").and_then(|r| r.as_f64()));
    let tag = stream
        .get("tags")
        .and_then(|t| t.get("rotate"))
        .and_then(|r| r.as_str())
        .and_then(|r| r.trim().parse::<f64>().ok());
    side_data.or(tag).unwrap_or(0.0).round() as i64
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// Raw RGB frames piped out of an `ffmpeg` child process.
pub struct VideoSource {
    path: PathBuf,
    info: VideoInfo,
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
    next_index: u64,
    finished: bool,
}

impl VideoSource {
    pub fn open(path: &Path) -> Result<Self> {
        let info = probe(path)?;
        let mut child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(path)
            .args([
                "-map",
                "0:v:0",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-vsync",
                "passthrough",
                "-",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| ffmpeg_missing("ffmpeg", path, e))?;
        // Drain stderr on a thread so a chatty decoder cannot block on a full pipe.
        let mut err: ChildStderr = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(VideoSource {
            path: path.to_path_buf(),
            info,
            child,
            stderr: Some(stderr),
            next_index: 0,
            finished: false,
        })
    }

    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn finish(&mut self) -> Result<()> {
        self.finished = true;
        let status = self
            .child
            .wait()
            .with_context(|| format!("{}: ffmpeg did not exit", self.path.display()))?;
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if !status.success() || !stderr.trim().is_empty() {
            let cause = last_line(&stderr).unwrap_or("decoder failed");
            bail!(
                "{}: truncated or corrupt video after {} frames: {cause}",
                self.path.display(),
                self.next_index
            );
        }
        if self.next_index == 0 {
            bail!("{}: video has no decodable frames", self.path.display());
        }
        Ok(())
    }
}

impl FrameSource for VideoSource {
    fn next_frame(&mut self) -> Result<Option<TimedFrame>> {
        if self.finished {
            return Ok(None);
        }
        let size = self.info.width * self.info.height * 3;
        let mut buf = vec![0u8; size];
        let stdout = self.child.stdout.as_mut().expect("stdout is piped");
        let mut filled = 0;
        while filled < size {
            match stdout.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(anyhow!(
                        "{}: reading decoded frames: {e}",
                        self.path.display()
                    ))
                }
            }
        }
        if filled < size {
            self.finish()?;
            if filled > 0 {
                bail!(
                    "{}: truncated video: last frame incomplete",
                    self.path.display()
                );
            }
            return Ok(None);
        }
        let index = self.next_index;
        self.next_index += 1;
        Ok(Some(TimedFrame {
            index,
            seconds: index as f64 / self.info.fps,
            frame: Frame::new(self.info.width, self.info.height, buf),
        }))
    }

    fn frame_count(&self) -> Option<u64> {
        self.info.frames
    }
}

impl Drop for VideoSource {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Frames per second given to a folder of frames by `open`.
pub const FOLDER_FPS: f64 = 30.0;

/// Open a file as a frame source by its extension; a folder is its images in name order.
pub fn open(path: &Path) -> Result<Box<dyn FrameSource>> {
    if path.is_dir() {
        return Ok(Box::new(FolderSource::open(path, FOLDER_FPS)?));
    }
    match media_kind(path) {
        Some(MediaKind::Image) => Ok(Box::new(ImageSource::open(path)?)),
        Some(MediaKind::Video) if mjpeg::decodes(path) => Ok(Box::new(MjpegSource::open(path)?)),
        Some(MediaKind::Video) => Ok(Box::new(VideoSource::open(path)?)),
        None => bail!(
            "{}: unsupported file type (images: {}; videos: {})",
            path.display(),
            IMAGE_EXTENSIONS.join(", "),
            VIDEO_EXTENSIONS.join(", ")
        ),
    }
}

/// Stream facts of a video, from the in-process decoder where it reads the file, else ffprobe.
pub fn video_info(path: &Path) -> Result<VideoInfo> {
    if mjpeg::decodes(path) {
        mjpeg::info(path)
    } else {
        probe(path)
    }
}

/// One entry of a folder walk that follows links: a link back to a folder above it (a loop) is
/// skipped with a warning, since everything below it is listed already; any other error is one
/// line naming the place.
pub fn walk_entry(
    entry: walkdir::Result<walkdir::DirEntry>,
    root: &Path,
) -> Result<Option<walkdir::DirEntry>> {
    match entry {
        Ok(entry) => Ok(Some(entry)),
        Err(e) if e.loop_ancestor().is_some() => {
            let at = e.path().unwrap_or(root).display();
            log::warn!("{at}: skipped, a link back to a folder above it");
            Ok(None)
        }
        Err(e) => {
            let at = e.path().unwrap_or(root).display().to_string();
            Err(anyhow!("{at}: cannot list folder: {e}"))
        }
    }
}

/// Media files under a path: the file itself, or every image/video below a folder, sorted.
pub fn collect_media(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{}: no such file or folder", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(path).follow_links(true) {
        let Some(entry) = walk_entry(entry, path)? else {
            continue;
        };
        if !entry.file_type().is_dir() && media_kind(entry.path()).is_some() {
            out.push(entry.into_path());
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{}: no images or videos found", path.display());
    }
    Ok(out)
}

pub mod camera;
pub mod mjpeg;
pub mod v4l2;

pub use mjpeg::MjpegSource;
