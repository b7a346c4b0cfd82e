//! Live frames in: the camera edge (open, read with a timeout), format negotiation, and the
//! supervisor that keeps a camera alive for months: timeouts, unplug, reopen with back-off.
//!
//! Hardware sits behind [`CameraOpener`] / [`CameraDevice`]; the V4L2 implementation is in
//! [`super::v4l2`], a file-backed one below, and tests drive the supervisor with fakes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::frame::Frame;

/// Why a camera could not be opened or read. Each variant prints as one line with the remedy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CameraError {
    #[error("{0}: no such camera (is it plugged in? `v4l2-ctl --list-devices` lists cameras)")]
    NotFound(String),
    #[error("{0}: permission denied (add the user to the `video` group)")]
    Permission(String),
    #[error("{0}: not a camera ({1})")]
    NotACamera(String, String),
    #[error("{0}: camera offers no format veriface can decode (offered: {1}; needs MJPG or YUYV)")]
    NoUsableFormat(String, String),
    #[error("{0}: camera disappeared ({1})")]
    Gone(String, String),
    #[error("{0}: {1}")]
    Io(String, String),
    /// A file source reached its end (not an error for `--source` without `--loop`).
    #[error("{0}: end of input")]
    Ended(String),
    /// The device opened but is not the camera the kiosk trusts (a virtual camera, a swapped
    /// one): refused, and retried like a missing camera.
    #[error("{0}: refused: {1}")]
    Refused(String, String),
}

/// Who the kernel says a camera is: V4L2 QUERYCAP, and the USB descriptor from sysfs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CameraIdentity {
    /// The device node it was opened as.
    pub node: String,
    pub driver: String,
    pub card: String,
    pub bus_info: String,
    /// `vendor:product` in hex, for a USB camera.
    pub usb_id: Option<String>,
    pub serial: Option<String>,
}

/// One open capture stream.
pub trait CameraDevice: Send {
    /// The next frame, or None when none arrived within `timeout`. Never blocks longer.
    fn read(&mut self, timeout: Duration) -> Result<Option<Frame>, CameraError>;
    /// What was negotiated, for logs and the status file.
    fn describe(&self) -> String;
    /// Who the device says it is; None for a file source.
    fn identity(&self) -> Option<CameraIdentity> {
        None
    }
    /// The negotiated frame rate, where there is one.
    fn fps(&self) -> Option<f64> {
        None
    }
}

/// Opens the configured camera; called again after every loss.
pub trait CameraOpener: Send {
    fn open(&mut self) -> Result<Box<dyn CameraDevice>, CameraError>;
    fn name(&self) -> String;
}

/// One open camera as a frame source (for one-shot commands such as `verify --camera`; the daemon
/// uses the `Supervisor`, which also reopens a lost camera). Frame times are seconds since open.
pub struct LiveSource {
    device: Box<dyn CameraDevice>,
    opened: std::time::Instant,
    index: u64,
    /// A silence this long is an error, not a wait.
    pub timeout: Duration,
}

impl LiveSource {
    pub fn open(
        opener: &mut dyn CameraOpener,
        timeout: Duration,
    ) -> Result<LiveSource, CameraError> {
        Ok(LiveSource {
            device: opener.open()?,
            opened: std::time::Instant::now(),
            index: 0,
            timeout,
        })
    }

    pub fn describe(&self) -> String {
        self.device.describe()
    }
}

impl super::FrameSource for LiveSource {
    fn next_frame(&mut self) -> anyhow::Result<Option<super::TimedFrame>> {
        match self.device.read(self.timeout) {
            Ok(Some(frame)) => {
                self.index += 1;
                Ok(Some(super::TimedFrame {
                    index: self.index - 1,
                    seconds: self.opened.elapsed().as_secs_f64(),
                    frame,
                }))
            }
            Ok(None) => anyhow::bail!(
                "{}: no frame for {:.1} s",
                self.device.describe(),
                self.timeout.as_secs_f64()
            ),
            Err(CameraError::Ended(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------- format negotiation

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// MJPEG above 640x480 (USB 2 bandwidth), YUYV at or below (no decode cost).
    #[default]
    Auto,
    Mjpeg,
    Yuyv,
}

/// One mode a camera offers: pixel format, size and frame rates.
#[derive(Clone, Debug, PartialEq)]
pub struct Mode {
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    /// Frame rates offered at this size (frames per second); empty if the driver does not say.
    pub fps: Vec<f64>,
}

/// What to ask the camera for.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

/// The negotiated mode and whether it is exactly what was asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub exact: bool,
}

pub const MJPG: [u8; 4] = *b"MJPG";
pub const YUYV: [u8; 4] = *b"YUYV";

fn decodable(fourcc: [u8; 4]) -> bool {
    fourcc == MJPG || fourcc == YUYV
}

/// Pick the offered mode closest to the wanted one: the asked format if offered (else the other
/// decodable one), the size nearest in pixel count (larger preferred over smaller: a crop can
/// only lose detail), then the frame rate nearest the asked one.
pub fn negotiate(offered: &[Mode], wanted: &Wanted) -> Option<Choice> {
    let preferred = match wanted.format {
        PixelFormat::Mjpeg => MJPG,
        PixelFormat::Yuyv => YUYV,
        PixelFormat::Auto if wanted.width * wanted.height > 640 * 480 => MJPG,
        PixelFormat::Auto => YUYV,
    };
    let target = (wanted.width as f64) * (wanted.height as f64);
    let size_cost = |m: &Mode| {
        let px = m.width as f64 * m.height as f64;
        // Relative distance in pixel count; smaller-than-asked costs double.
        let d = (px - target).abs() / target.max(1.0);
        if px < target {
            2.0 * d
        } else {
            d
        }
    };
    let fps_of = |m: &Mode| -> f64 {
        m.fps
            .iter()
            .copied()
            .min_by(|a, b| (a - wanted.fps).abs().total_cmp(&(b - wanted.fps).abs()))
            .unwrap_or(wanted.fps)
    };
    let best = offered
        .iter()
        .filter(|m| decodable(m.fourcc))
        .min_by(|a, b| {
            let key = |m: &Mode| {
                (
                    (m.fourcc != preferred) as u8,
                    size_cost(m),
                    (fps_of(m) - wanted.fps).abs(),
                )
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(ka.2.total_cmp(&kb.2))
        })?;
    let fps = fps_of(best);
    let format_ok = wanted.format == PixelFormat::Auto || best.fourcc == preferred;
    Some(Choice {
        fourcc: best.fourcc,
        width: best.width,
        height: best.height,
        fps,
        exact: format_ok
            && best.width == wanted.width
            && best.height == wanted.height
            && (fps - wanted.fps).abs() < 0.5,
    })
}

pub fn fourcc_str(f: [u8; 4]) -> String {
    String::from_utf8_lossy(&f).into_owned()
}

// ---------------------------------------------------------------- pixel conversion

/// YUYV 4:2:2 (BT.601 limited range, what UVC webcams send) to RGB.
pub fn yuyv_to_rgb(data: &[u8], width: usize, height: usize, stride: usize) -> Option<Frame> {
    if !width.is_multiple_of(2)
        || stride < width * 2
        || data.len() < stride * (height - 1) + width * 2
    {
        return None;
    }
    let mut rgb = vec![0u8; width * height * 3];
    for y in 0..height {
        let row = &data[y * stride..y * stride + width * 2];
        let out = &mut rgb[y * width * 3..(y + 1) * width * 3];
        for (pair, px) in row.chunks_exact(4).zip(out.chunks_exact_mut(6)) {
            let (u, v) = (pair[1] as i32 - 128, pair[3] as i32 - 128);
            for (k, &luma) in [pair[0], pair[2]].iter().enumerate() {
                let c = (luma as i32 - 16).max(0) * 298;
                let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
                px[k * 3] = clamp(c + 409 * v);
                px[k * 3 + 1] = clamp(c - 100 * u - 208 * v);
                px[k * 3 + 2] = clamp(c + 516 * u);
            }
        }
    }
    Some(Frame::new(width, height, rgb))
}

/// One MJPEG frame (a JPEG, possibly without Huffman tables, which the decoder supplies).
pub fn mjpeg_to_rgb(data: &[u8]) -> Option<Frame> {
    let img = image::load_from_memory_with_format(data, image::ImageFormat::Jpeg).ok()?;
    let rgb = img.into_rgb8();
    let (w, h) = rgb.dimensions();
    Some(Frame::new(w as usize, h as usize, rgb.into_raw()))
}

// ---------------------------------------------------------------- supervisor

/// Camera state as the status file and the records show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum CameraState {
    Opening,
    Streaming(String),
    /// Lost or never opened; the supervisor retries.
    Lost(String),
    Ended,
}

impl CameraState {
    /// One word for status files and screens.
    pub fn name(&self) -> &'static str {
        match self {
            CameraState::Opening => "opening",
            CameraState::Streaming(_) => "streaming",
            CameraState::Lost(_) => "lost",
            CameraState::Ended => "ended",
        }
    }
}

/// Something the rest of the daemon should hear about.
#[derive(Clone, Debug, PartialEq)]
pub enum CameraEvent {
    Opened(String),
    OpenFailed(CameraError),
    Lost(String),
    Ended,
}

/// What one supervisor step produced.
pub enum Step {
    Frame(Frame),
    Event(CameraEvent),
    /// Nothing to do until this long from now.
    Idle(Duration),
}

#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// No frame for this long: the camera counts as lost and is reopened.
    pub timeout: Duration,
    /// One read waits at most this long, so stop requests are seen quickly.
    pub poll: Duration,
    pub backoff_start: Duration,
    pub backoff_max: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            timeout: Duration::from_secs(5),
            poll: Duration::from_millis(200),
            backoff_start: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Keeps one camera open: reopens it with exponential back-off after any loss, forever.
pub struct Supervisor {
    opener: Box<dyn CameraOpener>,
    cfg: SupervisorConfig,
    device: Option<Box<dyn CameraDevice>>,
    state: CameraState,
    backoff: Duration,
    next_attempt: Option<Instant>,
    last_frame: Instant,
    pub outages: u64,
}

impl Supervisor {
    pub fn new(opener: Box<dyn CameraOpener>, cfg: SupervisorConfig) -> Self {
        let backoff = cfg.backoff_start;
        Supervisor {
            opener,
            cfg,
            device: None,
            state: CameraState::Opening,
            backoff,
            next_attempt: None,
            last_frame: Instant::now(),
            outages: 0,
        }
    }

    pub fn state(&self) -> &CameraState {
        &self.state
    }

    pub fn name(&self) -> String {
        self.opener.name()
    }

    fn lose(&mut self, now: Instant, why: String) -> Step {
        self.device = None;
        self.outages += 1;
        self.state = CameraState::Lost(why.clone());
        self.backoff = self.cfg.backoff_start;
        self.next_attempt = Some(now + self.backoff);
        Step::Event(CameraEvent::Lost(why))
    }

    /// Advance by one action: open, read one frame, or report a loss. `now` is injected so the
    /// state machine is tested without sleeping.
    pub fn step(&mut self, now: Instant) -> Step {
        if self.state == CameraState::Ended {
            return Step::Event(CameraEvent::Ended);
        }
        let Some(device) = self.device.as_mut() else {
            if let Some(at) = self.next_attempt {
                if now < at {
                    return Step::Idle(at - now);
                }
            }
            return match self.opener.open() {
                Ok(dev) => {
                    let what = dev.describe();
                    self.device = Some(dev);
                    self.state = CameraState::Streaming(what.clone());
                    self.last_frame = now;
                    self.backoff = self.cfg.backoff_start;
                    self.next_attempt = None;
                    Step::Event(CameraEvent::Opened(what))
                }
                Err(CameraError::Ended(_)) => {
                    self.state = CameraState::Ended;
                    Step::Event(CameraEvent::Ended)
                }
                Err(e) => {
                    self.state = CameraState::Lost(e.to_string());
                    self.next_attempt = Some(now + self.backoff);
                    self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
                    Step::Event(CameraEvent::OpenFailed(e))
                }
            };
        };
        match device.read(self.cfg.poll) {
            Ok(Some(frame)) => {
                self.last_frame = now;
                Step::Frame(frame)
            }
            Ok(None) if now.duration_since(self.last_frame) >= self.cfg.timeout => {
                let secs = self.cfg.timeout.as_secs_f64();
                self.lose(now, format!("no frame for {secs:.1} s"))
            }
            Ok(None) => Step::Idle(Duration::ZERO),
            Err(CameraError::Ended(_)) => {
                self.device = None;
                self.state = CameraState::Ended;
                Step::Event(CameraEvent::Ended)
            }
            Err(e) => self.lose(now, e.to_string()),
        }
    }
}

// ---------------------------------------------------------------- file source as a camera

/// `run --source FILE`: a video, an image, or a folder of them, paced at the file's frame rate
/// (or `fps` for images), optionally looped. Lets the whole daemon run where no camera exists.
pub struct FileOpener {
    pub path: PathBuf,
    pub looped: bool,
    pub fps: f64,
    opened: bool,
}

impl FileOpener {
    pub fn new(path: PathBuf, looped: bool, fps: f64) -> Self {
        FileOpener {
            path,
            looped,
            fps,
            opened: false,
        }
    }
}

impl CameraOpener for FileOpener {
    fn open(&mut self) -> Result<Box<dyn CameraDevice>, CameraError> {
        let name = self.path.display().to_string();
        if self.opened && !self.looped {
            return Err(CameraError::Ended(name));
        }
        let files = super::collect_media(&self.path).map_err(|e| {
            if self.path.exists() {
                CameraError::Io(name.clone(), format!("{e:#}"))
            } else {
                CameraError::NotFound(name.clone())
            }
        })?;
        if files.is_empty() {
            return Err(CameraError::Io(name, "no images or videos".into()));
        }
        self.opened = true;
        Ok(Box::new(FileCamera {
            files,
            next_file: 0,
            current: None,
            interval: Duration::from_secs_f64(1.0 / self.fps.max(0.1)),
            default_fps: self.fps,
            next_due: Instant::now(),
            name,
            looped: self.looped,
        }))
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

struct FileCamera {
    files: Vec<PathBuf>,
    next_file: usize,
    current: Option<Box<dyn super::FrameSource>>,
    interval: Duration,
    default_fps: f64,
    next_due: Instant,
    name: String,
    looped: bool,
}

impl CameraDevice for FileCamera {
    fn read(&mut self, timeout: Duration) -> Result<Option<Frame>, CameraError> {
        // Real-time pacing: a file plays as a camera would deliver it.
        let now = Instant::now();
        if self.next_due > now {
            let wait = self.next_due - now;
            if wait > timeout {
                std::thread::sleep(timeout);
                return Ok(None);
            }
            std::thread::sleep(wait);
        }
        loop {
            if self.current.is_none() {
                if self.looped && self.next_file >= self.files.len() {
                    self.next_file = 0;
                }
                let Some(file) = self.files.get(self.next_file) else {
                    return Err(CameraError::Ended(self.name.clone()));
                };
                self.next_file += 1;
                let src = super::open(file)
                    .map_err(|e| CameraError::Io(self.name.clone(), format!("{e:#}")))?;
                let fps = match super::media_kind(file) {
                    Some(super::MediaKind::Video) => super::video_info(file)
                        .map(|i| i.fps)
                        .unwrap_or(self.default_fps),
                    _ => self.default_fps,
                };
                self.interval = Duration::from_secs_f64(1.0 / fps.max(0.1));
                self.current = Some(src);
            }
            let src = self.current.as_mut().expect("set above");
            match src.next_frame() {
                Ok(Some(tf)) => {
                    self.next_due = Instant::now() + self.interval;
                    return Ok(Some(tf.frame));
                }
                Ok(None) => self.current = None,
                Err(e) => {
                    self.current = None;
                    return Err(CameraError::Io(self.name.clone(), format!("{e:#}")));
                }
            }
        }
    }

    fn describe(&self) -> String {
        format!("file {} ({} item(s))", self.name, self.files.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn mode(f: &[u8; 4], w: u32, h: u32, fps: &[f64]) -> Mode {
        Mode {
            fourcc: *f,
            width: w,
            height: h,
            fps: fps.to_vec(),
        }
    }

    /// Capability list recorded from a Logitech C920 (`v4l2-ctl --list-formats-ext`), abridged.
    fn c920() -> Vec<Mode> {
        vec![
            mode(b"YUYV", 640, 480, &[30.0, 24.0, 15.0]),
            mode(b"YUYV", 1280, 720, &[10.0, 5.0]),
            mode(b"YUYV", 1920, 1080, &[5.0]),
            mode(b"MJPG", 640, 480, &[30.0, 24.0, 15.0]),
            mode(b"MJPG", 1280, 720, &[30.0, 24.0, 15.0]),
            mode(b"MJPG", 1920, 1080, &[30.0, 24.0, 15.0]),
            mode(b"H264", 1920, 1080, &[30.0]),
        ]
    }

    #[test]
    fn auto_picks_mjpeg_for_hd_and_yuyv_for_vga() {
        let hd = Wanted {
            format: PixelFormat::Auto,
            width: 1280,
            height: 720,
            fps: 30.0,
        };
        let c = negotiate(&c920(), &hd).unwrap();
        assert_eq!(
            (c.fourcc, c.width, c.height, c.fps, c.exact),
            (MJPG, 1280, 720, 30.0, true)
        );
        let vga = Wanted {
            width: 640,
            height: 480,
            ..hd
        };
        let c = negotiate(&c920(), &vga).unwrap();
        assert_eq!((c.fourcc, c.width, c.exact), (YUYV, 640, true));
    }

    #[test]
    fn falls_back_to_what_the_camera_offers() {
        // A Pi camera through the unicam/bcm2835 driver: YUYV only, no 800x600.
        let offered = vec![
            mode(b"YUYV", 640, 480, &[30.0]),
            mode(b"YUYV", 1024, 768, &[15.0]),
            mode(b"RGGB", 800, 600, &[60.0]),
        ];
        let want = Wanted {
            format: PixelFormat::Mjpeg,
            width: 800,
            height: 600,
            fps: 30.0,
        };
        let c = negotiate(&offered, &want).unwrap();
        // 1024x768 is larger (preferred over the smaller 640x480 at similar distance).
        assert_eq!(
            (c.fourcc, c.width, c.height, c.fps),
            (YUYV, 1024, 768, 15.0)
        );
        assert!(!c.exact);
        assert!(negotiate(&[mode(b"H264", 640, 480, &[30.0])], &want).is_none());
    }

    #[test]
    fn yuyv_converts_grey_and_colour() {
        // Two pixels: luma 16 and 235 with neutral chroma -> black and white.
        let f = yuyv_to_rgb(&[16, 128, 235, 128], 2, 1, 4).unwrap();
        assert_eq!(f.rgb, vec![0, 0, 0, 255, 255, 255]);
        // Strong red chroma (V high) gives red dominant.
        let f = yuyv_to_rgb(&[81, 90, 81, 240], 2, 1, 4).unwrap();
        assert!(
            f.rgb[0] > 200 && f.rgb[1] < 60 && f.rgb[2] < 60,
            "{:?}",
            f.rgb
        );
        assert!(yuyv_to_rgb(&[0; 3], 2, 1, 4).is_none());
    }

    /// Scripted camera: a frame per read until the script says otherwise.
    #[derive(Clone, Copy, Debug)]
    enum Next {
        Frame,
        Nothing,
        Unplug,
    }

    struct ScriptDevice(std::sync::Arc<std::sync::Mutex<Vec<Next>>>);

    impl CameraDevice for ScriptDevice {
        fn read(&mut self, _timeout: Duration) -> Result<Option<Frame>, CameraError> {
            let mut s = self.0.lock().unwrap();
            match if s.is_empty() {
                Next::Frame
            } else {
                s.remove(0)
            } {
                Next::Frame => Ok(Some(Frame::new(2, 2, vec![0; 12]))),
                Next::Nothing => Ok(None),
                Next::Unplug => Err(CameraError::Gone("/dev/video9".into(), "ENODEV".into())),
            }
        }
        fn describe(&self) -> String {
            "script".into()
        }
    }

    struct ScriptOpener {
        /// Per open attempt: true = succeeds.
        opens: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
        reads: std::sync::Arc<std::sync::Mutex<Vec<Next>>>,
    }

    impl CameraOpener for ScriptOpener {
        fn open(&mut self) -> Result<Box<dyn CameraDevice>, CameraError> {
            let mut o = self.opens.lock().unwrap();
            if !o.is_empty() && !o.remove(0) {
                return Err(CameraError::NotFound("/dev/video9".into()));
            }
            Ok(Box::new(ScriptDevice(self.reads.clone())))
        }
        fn name(&self) -> String {
            "/dev/video9".into()
        }
    }

    fn supervisor(opens: Vec<bool>, reads: Vec<Next>) -> Supervisor {
        let opener = ScriptOpener {
            opens: std::sync::Arc::new(std::sync::Mutex::new(opens)),
            reads: std::sync::Arc::new(std::sync::Mutex::new(reads)),
        };
        Supervisor::new(Box::new(opener), SupervisorConfig::default())
    }

    fn kind(s: &Step) -> String {
        match s {
            Step::Frame(_) => "frame".into(),
            Step::Event(CameraEvent::Opened(_)) => "opened".into(),
            Step::Event(CameraEvent::OpenFailed(_)) => "open_failed".into(),
            Step::Event(CameraEvent::Lost(w)) => format!("lost: {w}"),
            Step::Event(CameraEvent::Ended) => "ended".into(),
            Step::Idle(_) => "idle".into(),
        }
    }

    #[test]
    fn frames_stop_then_camera_is_reopened() {
        let t0 = Instant::now();
        let mut sup = supervisor(vec![], vec![Next::Frame, Next::Nothing, Next::Nothing]);
        assert_eq!(kind(&sup.step(t0)), "opened");
        assert_eq!(kind(&sup.step(t0)), "frame");
        assert_eq!(kind(&sup.step(t0 + Duration::from_secs(1))), "idle");
        // 5 s without a frame: lost, then back-off, then reopened and streaming again.
        let lost = kind(&sup.step(t0 + Duration::from_secs(6)));
        assert_eq!(lost, "lost: no frame for 5.0 s");
        assert!(matches!(sup.state(), CameraState::Lost(_)));
        assert_eq!(kind(&sup.step(t0 + Duration::from_secs(6))), "idle");
        assert_eq!(kind(&sup.step(t0 + Duration::from_secs(7))), "opened");
        assert_eq!(kind(&sup.step(t0 + Duration::from_secs(7))), "frame");
        assert_eq!(sup.outages, 1);
    }

    #[test]
    fn unplugged_device_comes_back() {
        let t0 = Instant::now();
        // Unplug on the second read; the next two opens fail (device gone), the third works.
        let mut sup = supervisor(
            vec![true, false, false, true],
            vec![Next::Frame, Next::Unplug],
        );
        assert_eq!(kind(&sup.step(t0)), "opened");
        assert_eq!(kind(&sup.step(t0)), "frame");
        assert!(kind(&sup.step(t0)).starts_with("lost: /dev/video9: camera disappeared"));
        let mut t = t0;
        let mut seen = Vec::new();
        for _ in 0..200 {
            t += Duration::from_millis(100);
            let k = kind(&sup.step(t));
            if k != "idle" {
                seen.push(k.clone());
            }
            if k == "frame" {
                break;
            }
        }
        assert_eq!(seen, ["open_failed", "open_failed", "opened", "frame"]);
        assert!(matches!(sup.state(), CameraState::Streaming(_)));
    }

    #[test]
    fn camera_that_never_opens_retries_with_growing_backoff() {
        let t0 = Instant::now();
        let mut sup = supervisor(vec![false; 100], vec![]);
        let mut attempts = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(60) {
            if let Step::Event(CameraEvent::OpenFailed(e)) = sup.step(t) {
                assert_eq!(e.to_string().lines().count(), 1);
                attempts.push(t.duration_since(t0).as_secs_f64());
            }
            t += Duration::from_millis(100);
        }
        // 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 (back-off doubles up to 30 s): never gives up.
        assert!(attempts.len() >= 6, "{attempts:?}");
        let gaps: Vec<f64> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0] - 0.11), "{gaps:?}");
        assert!(matches!(sup.state(), CameraState::Lost(_)));
    }

    fn frames_read(looped: bool, reads: usize) -> (usize, bool) {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/astronaut.png");
        let mut opener = FileOpener::new(sample, looped, 1000.0);
        let mut cam = opener.open().unwrap();
        let mut frames = 0;
        for _ in 0..reads {
            match cam.read(Duration::from_millis(50)) {
                Ok(Some(_)) => frames += 1,
                Ok(None) => {}
                Err(CameraError::Ended(_)) => return (frames, true),
                Err(e) => panic!("{e}"),
            }
        }
        (frames, false)
    }

    #[test]
    fn file_source_plays_once_or_loops() {
        assert_eq!(frames_read(false, 5), (1, true));
        let (frames, ended) = frames_read(true, 5);
        assert!(!ended && frames >= 3, "{frames} frames, ended {ended}");
    }
}
