//! The real camera: V4L2 through the `v4l` crate (USB webcams, the Pi camera via its V4L2
//! driver, Jetson CSI cameras through nvargus' v4l2 bridge).
//!
//! Reads wait in `poll()` with a timeout (the crate's plain blocking dequeue hangs on unplug),
//! and only two buffers are queued: a slow analysis never sees frames older than one interval.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use v4l::buffer::Type;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::{FrameSizeEnum, Stepwise as FrameSizeStepwise};
use v4l::io::traits::CaptureStream;
use v4l::prelude::MmapStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

use super::camera::{
    fourcc_str, mjpeg_to_rgb, negotiate, yuyv_to_rgb, CameraDevice, CameraError, CameraIdentity,
    CameraOpener, Mode, Wanted, MJPG,
};
use crate::frame::Frame;

/// Opens `/dev/videoN` by path, or the first capture device whose name contains `device`.
/// A camera that was unplugged while something still held its old node comes back under another
/// number (/dev/video1 for /dev/video0): when the configured node is gone, the opener looks for
/// the camera it had before by driver, card and bus, so the daemon finds it again.
pub struct V4l2Opener {
    pub device: String,
    pub wanted: Wanted,
    /// Who the last opened camera was (driver, card, bus).
    last: Option<(String, String, String)>,
}

impl V4l2Opener {
    pub fn new(device: String, wanted: Wanted) -> Self {
        V4l2Opener {
            device,
            wanted,
            last: None,
        }
    }
}

/// The capture node of the camera with this driver, card and bus, by asking every video node.
fn find_same_camera(driver: &str, card: &str, bus: &str) -> Option<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/sys/class/video4linux")
        .ok()?
        .flatten()
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    nodes.sort();
    nodes.into_iter().find(|node| {
        Device::with_path(node)
            .and_then(|d| d.query_caps())
            .is_ok_and(|c| {
                c.capabilities
                    .contains(v4l::capability::Flags::VIDEO_CAPTURE)
                    && (c.driver.as_str(), c.card.as_str(), c.bus.as_str()) == (driver, card, bus)
            })
    })
}

/// Resolve a configured camera to a device node: a path as is, else a name from sysfs.
pub fn resolve(device: &str) -> Result<PathBuf, CameraError> {
    if device.starts_with('/') {
        return Ok(PathBuf::from(device));
    }
    let sys = Path::new("/sys/class/video4linux");
    let mut entries: Vec<_> = std::fs::read_dir(sys)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for entry in entries {
        let name = std::fs::read_to_string(entry.join("name")).unwrap_or_default();
        if name.trim().contains(device) {
            if let Some(node) = entry.file_name() {
                return Ok(Path::new("/dev").join(node));
            }
        }
    }
    Err(CameraError::NotFound(format!("camera named {device:?}")))
}

fn classify(path: &Path, e: io::Error) -> CameraError {
    let name = path.display().to_string();
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENXIO) => CameraError::NotFound(name),
        Some(libc::EACCES) | Some(libc::EPERM) => CameraError::Permission(name),
        Some(libc::ENODEV) => CameraError::Gone(name, e.to_string()),
        Some(libc::ENOTTY) | Some(libc::EINVAL) => {
            CameraError::NotACamera(name, "not a V4L2 device".into())
        }
        // qemu-user passes unknown ioctls back as ENOSYS: no V4L2 through that layer either.
        Some(libc::ENOSYS) => CameraError::NotACamera(
            name,
            "V4L2 ioctls not implemented (under an emulator?)".into(),
        ),
        _ => CameraError::Io(name, e.to_string()),
    }
}

/// Every (format, size, rates) the device offers. A device that lists no sizes for a format
/// (HDMI capture, whose size follows the incoming signal) offers that format at its current size.
fn modes(dev: &Device, wanted: &Wanted) -> io::Result<Vec<Mode>> {
    let mut out = Vec::new();
    let current = dev.format()?;
    for desc in dev.enum_formats()? {
        let mut sizes = Vec::new();
        for size in dev.enum_framesizes(desc.fourcc).unwrap_or_default() {
            match size.size {
                FrameSizeEnum::Discrete(d) => sizes.push((d.width, d.height)),
                FrameSizeEnum::Stepwise(s) => {
                    sizes.extend(stepwise_sizes(&s, wanted.width, wanted.height))
                }
            }
        }
        if sizes.is_empty() {
            sizes.push((current.width, current.height));
        }
        for (width, height) in sizes {
            let fps = dev
                .enum_frameintervals(desc.fourcc, width, height)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| match i.interval {
                    FrameIntervalEnum::Discrete(f) if f.numerator > 0 => {
                        Some(f.denominator as f64 / f.numerator as f64)
                    }
                    FrameIntervalEnum::Stepwise(s) if s.min.numerator > 0 => {
                        Some(s.min.denominator as f64 / s.min.numerator as f64)
                    }
                    _ => None,
                })
                .collect();
            out.push(Mode {
                fourcc: desc.fourcc.repr,
                width,
                height,
                fps,
            });
        }
    }
    Ok(out)
}

/// The sizes worth asking of a camera that takes any size in a range (stepwise or continuous):
/// the wanted size fitted to the range and its steps, and the range's ends. Listing every step
/// instead is millions of sizes (16..4096 by 1 in each direction) and ran a VM out of memory.
fn stepwise_sizes(s: &FrameSizeStepwise, width: u32, height: u32) -> Vec<(u32, u32)> {
    let fit = |want: u32, min: u32, max: u32, step: u32| {
        let step = step.max(1);
        let want = want.clamp(min, max.max(min));
        min + (want - min) / step * step
    };
    let mut sizes = vec![
        (
            fit(width, s.min_width, s.max_width, s.step_width),
            fit(height, s.min_height, s.max_height, s.step_height),
        ),
        (s.min_width, s.min_height),
        (s.max_width, s.max_height),
    ];
    sizes.dedup();
    sizes
}

impl CameraOpener for V4l2Opener {
    fn open(&mut self) -> Result<Box<dyn CameraDevice>, CameraError> {
        let mut path = resolve(&self.device)?;
        if !path.exists() {
            let moved = self
                .last
                .as_ref()
                .and_then(|(driver, card, bus)| find_same_camera(driver, card, bus));
            match moved {
                Some(node) => {
                    log::warn!(
                        "{}: gone; the same camera is back as {}",
                        path.display(),
                        node.display()
                    );
                    path = node;
                }
                None => return Err(CameraError::NotFound(path.display().to_string())),
            }
        }
        let name = path.display().to_string();
        let dev = Device::with_path(&path).map_err(|e| classify(&path, e))?;
        let caps = dev.query_caps().map_err(|e| classify(&path, e))?;
        if !caps
            .capabilities
            .contains(v4l::capability::Flags::VIDEO_CAPTURE)
        {
            return Err(CameraError::NotACamera(
                name,
                format!("{} has no video capture", caps.card),
            ));
        }
        let offered = modes(&dev, &self.wanted).map_err(|e| classify(&path, e))?;
        let choice = negotiate(&offered, &self.wanted).ok_or_else(|| {
            let list: Vec<String> = offered.iter().map(|m| fourcc_str(m.fourcc)).collect();
            CameraError::NoUsableFormat(name.clone(), list.join(", "))
        })?;
        let mut fmt = dev.format().map_err(|e| classify(&path, e))?;
        fmt.width = choice.width;
        fmt.height = choice.height;
        fmt.fourcc = FourCC::new(&choice.fourcc);
        let fmt = dev.set_format(&fmt).map_err(|e| classify(&path, e))?;
        let fps = choice.fps.round().max(1.0) as u32;
        if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(fps)) {
            log::warn!("{name}: cannot set {fps} fps ({e}); using the driver's rate");
        }
        let what = format!(
            "{name} ({}) {} {}x{} @ {fps} fps",
            caps.card,
            fourcc_str(fmt.fourcc.repr),
            fmt.width,
            fmt.height
        );
        if choice.exact {
            log::info!("camera: {what}");
        } else {
            log::warn!(
                "camera: asked for {:?} {}x{} @ {} fps, the camera offers {what}",
                self.wanted.format,
                self.wanted.width,
                self.wanted.height,
                self.wanted.fps
            );
        }
        self.last = Some((caps.driver.clone(), caps.card.clone(), caps.bus.clone()));
        let identity = CameraIdentity {
            node: name.clone(),
            driver: caps.driver.clone(),
            card: caps.card.clone(),
            bus_info: caps.bus.clone(),
            ..usb_descriptor(&path)
        };
        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, 2)
            .map_err(|e| classify(&path, e))?;
        stream.set_timeout(Duration::from_millis(200));
        Ok(Box::new(V4l2Camera {
            _dev: dev,
            stream,
            path,
            fourcc: fmt.fourcc.repr,
            width: fmt.width as usize,
            height: fmt.height as usize,
            stride: fmt.stride as usize,
            what,
            identity,
            fps: f64::from(fps),
        }))
    }

    fn name(&self) -> String {
        self.device.clone()
    }
}

struct V4l2Camera {
    _dev: Device,
    stream: MmapStream<'static>,
    path: PathBuf,
    fourcc: [u8; 4],
    width: usize,
    height: usize,
    stride: usize,
    what: String,
    identity: CameraIdentity,
    fps: f64,
}

/// The USB vendor:product and serial of a video node, from sysfs: the node's `device` link
/// points at the USB interface; its parent holds idVendor, idProduct and serial. Empty for a
/// camera that is not on USB (CSI, virtual).
fn usb_descriptor(node: &Path) -> CameraIdentity {
    let mut out = CameraIdentity::default();
    let Some(name) = node.file_name() else {
        return out;
    };
    let Ok(mut dir) = std::fs::canonicalize(
        Path::new("/sys/class/video4linux")
            .join(name)
            .join("device"),
    ) else {
        return out;
    };
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    for _ in 0..4 {
        if let (Some(v), Some(p)) = (read(dir.join("idVendor")), read(dir.join("idProduct"))) {
            out.usb_id = Some(format!("{v}:{p}"));
            out.serial = read(dir.join("serial")).filter(|s| !s.is_empty());
            break;
        }
        if !dir.pop() {
            break;
        }
    }
    out
}

impl CameraDevice for V4l2Camera {
    fn read(&mut self, timeout: Duration) -> Result<Option<Frame>, CameraError> {
        self.stream
            .set_timeout(timeout.max(Duration::from_millis(1)));
        let (data, meta) = match CaptureStream::next(&mut self.stream) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(None),
            Err(e) => {
                let err = classify(&self.path, e);
                return Err(match err {
                    CameraError::Io(p, m) | CameraError::NotACamera(p, m) => {
                        CameraError::Gone(p, m)
                    }
                    other => other,
                });
            }
        };
        let used = (meta.bytesused as usize).min(data.len());
        let frame = if self.fourcc == MJPG {
            mjpeg_to_rgb(&data[..used])
        } else {
            yuyv_to_rgb(
                &data[..used],
                self.width,
                self.height,
                self.stride.max(self.width * 2),
            )
        };
        // A corrupt frame (USB glitch) is skipped, not fatal; the timeout catches a dead camera.
        if frame.is_none() {
            log::debug!("{}: undecodable frame skipped", self.path.display());
        }
        Ok(frame)
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn identity(&self) -> Option<CameraIdentity> {
        Some(self.identity.clone())
    }

    fn fps(&self) -> Option<f64> {
        Some(self.fps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::camera::PixelFormat;

    fn opener(device: &str) -> V4l2Opener {
        V4l2Opener::new(
            device.into(),
            Wanted {
                format: PixelFormat::Auto,
                width: 640,
                height: 480,
                fps: 15.0,
            },
        )
    }

    #[test]
    fn a_camera_taking_any_size_is_asked_for_a_few() {
        let any = FrameSizeStepwise {
            min_width: 16,
            max_width: 4096,
            step_width: 1,
            min_height: 16,
            max_height: 2160,
            step_height: 1,
        };
        let sizes = stepwise_sizes(&any, 640, 480);
        assert_eq!(sizes, vec![(640, 480), (16, 16), (4096, 2160)]);
        // Steps and bounds: the wanted size snapped down to a step inside the range.
        let coarse = FrameSizeStepwise {
            min_width: 160,
            max_width: 1280,
            step_width: 64,
            min_height: 120,
            max_height: 720,
            step_height: 16,
        };
        assert_eq!(stepwise_sizes(&coarse, 650, 490)[0], (608, 488));
        assert_eq!(stepwise_sizes(&coarse, 3840, 2160)[0], (1248, 712));
        assert_eq!(stepwise_sizes(&coarse, 8, 8)[0], (160, 120));
    }

    #[test]
    fn missing_device_is_not_found() {
        let e = opener("/dev/video-does-not-exist").open().err().unwrap();
        assert!(matches!(e, CameraError::NotFound(_)), "{e}");
        let e = opener("No Such Camera Model").open().err().unwrap();
        assert!(e.to_string().contains("no such camera"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_camera_says_so() {
        // /dev/null opens but answers VIDIOC_QUERYCAP with ENOTTY: the real ioctl path runs.
        let e = opener("/dev/null").open().err().unwrap();
        assert!(matches!(e, CameraError::NotACamera(..)), "{e}");
        // Under qemu-user (the aarch64 test run) the same ioctl answers ENOSYS.
        let text = e.to_string();
        assert!(
            text == "/dev/null: not a camera (not a V4L2 device)"
                || text.starts_with("/dev/null: not a camera (V4L2 ioctls not implemented"),
            "{text}"
        );
    }
}
