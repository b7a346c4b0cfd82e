//! Camera-injection checks: is the device the kiosk's own camera, not a virtual camera fed with a
//! video (v4l2loopback, OBS's virtual camera, vivid) or a swapped device; and do its frames
//! come as a real sensor's do? A wrapper around any `CameraOpener`, so the same rules run on
//! V4L2 and on the fakes of the tests.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::frame::Frame;
use crate::source::camera::{CameraDevice, CameraError, CameraIdentity, CameraOpener};

/// Drivers and card names of virtual cameras (lower case, matched as substrings): v4l2loopback
/// (driver "v4l2 loopback", also behind OBS's and most "virtual webcam" tools), vivid (the
/// kernel's test driver), akvcam (Webcamoid), OBS's own card name.
pub const VIRTUAL_CAMERAS: [&str; 5] = [
    "v4l2 loopback",
    "v4l2loopback",
    "vivid",
    "akvcam",
    "obs virtual",
];

/// `[camera.expect]`: pin the one camera this kiosk trusts; empty keys are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraExpect {
    /// V4L2 driver name (QUERYCAP), e.g. "uvcvideo".
    pub driver: String,
    /// USB vendor:product in hex, e.g. "046d:085c".
    pub usb_id: String,
    pub serial: String,
}

/// What a camera must be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CameraPolicy {
    /// Accept virtual cameras (tests on vivid; never on a kiosk).
    pub allow_virtual: bool,
    pub expect: CameraExpect,
}

/// The camera check's answer, for the verification JSON and the status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CameraCheck {
    pub driver: String,
    pub card: String,
    pub usb_id: Option<String>,
    pub accepted: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

/// Judge a camera's identity against the policy.
pub fn judge(id: &CameraIdentity, policy: &CameraPolicy) -> CameraCheck {
    let mut check = CameraCheck {
        driver: id.driver.clone(),
        card: id.card.clone(),
        usb_id: id.usb_id.clone(),
        accepted: true,
        reason: None,
    };
    let (driver, card) = (id.driver.to_lowercase(), id.card.to_lowercase());
    let refuse = |why: String| CameraCheck {
        accepted: false,
        reason: Some(why),
        ..check.clone()
    };
    if !policy.allow_virtual {
        if let Some(v) = VIRTUAL_CAMERAS
            .iter()
            .find(|v| driver.contains(*v) || card.contains(*v))
        {
            return refuse(format!(
                "driver {:?} (card {:?}) is a virtual camera ({v}): a video could be injected (camera.allow_virtual = true only for tests)",
                id.driver, id.card
            ));
        }
    }
    let e = &policy.expect;
    let mismatch = |what: &str, want: &str, got: Option<&str>| {
        format!(
            "{what} {} is not the expected {want:?} (a swapped camera?)",
            got.map_or("none".to_string(), |g| format!("{g:?}"))
        )
    };
    if !e.driver.is_empty() && id.driver != e.driver {
        return refuse(mismatch("driver", &e.driver, Some(&id.driver)));
    }
    if !e.usb_id.is_empty()
        && !id
            .usb_id
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(&e.usb_id))
    {
        return refuse(mismatch("usb_id", &e.usb_id, id.usb_id.as_deref()));
    }
    if !e.serial.is_empty() && id.serial.as_deref() != Some(e.serial.as_str()) {
        return refuse(mismatch("serial", &e.serial, id.serial.as_deref()));
    }
    check.reason = None;
    check
}

/// Frame timing a real sensor cannot produce: frames much faster than the negotiated rate, or
/// the very same image for seconds (sensor noise changes every real frame).
#[derive(Debug)]
pub struct FrameTiming {
    fps: Option<f64>,
    last_at: Option<Instant>,
    intervals: std::collections::VecDeque<f64>,
    last_hash: Option<u64>,
    identical_since: Option<Instant>,
}

/// Intervals kept for the rate check.
const TIMING_WINDOW: usize = 30;
/// Frames faster than this share of the negotiated interval are implausible.
const FASTEST_SHARE: f64 = 0.6;
/// Identical frames for this long are a frozen or injected feed.
const FROZEN_AFTER: Duration = Duration::from_secs(2);

impl FrameTiming {
    pub fn new(fps: Option<f64>) -> FrameTiming {
        FrameTiming {
            fps: fps.filter(|f| *f > 0.0),
            last_at: None,
            intervals: Default::default(),
            last_hash: None,
            identical_since: None,
        }
    }

    /// One frame arrived at `at`; Some(why) when the timing is implausible.
    pub fn observe(&mut self, at: Instant, frame: &Frame) -> Option<String> {
        if let Some(last) = self.last_at.replace(at) {
            self.intervals
                .push_back(at.duration_since(last).as_secs_f64());
            if self.intervals.len() > TIMING_WINDOW {
                self.intervals.pop_front();
            }
        }
        let hash = frame_hash(frame);
        if self.last_hash.replace(hash) == Some(hash) {
            let since = *self.identical_since.get_or_insert(at);
            if at.duration_since(since) >= FROZEN_AFTER {
                return Some(format!(
                    "identical frames for {:.1} s (a frozen or injected feed)",
                    at.duration_since(since).as_secs_f64()
                ));
            }
        } else {
            self.identical_since = None;
        }
        if let (Some(fps), true) = (self.fps, self.intervals.len() >= TIMING_WINDOW) {
            let mut sorted: Vec<f64> = self.intervals.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            if median < FASTEST_SHARE / fps {
                return Some(format!(
                    "frames arrive at {:.0} fps, the camera negotiated {fps:.0}",
                    1.0 / median.max(1e-6)
                ));
            }
        }
        None
    }
}

/// A cheap fingerprint: 4096 pixels spread over the frame.
fn frame_hash(frame: &Frame) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let step = (frame.rgb.len() / 4096).max(1);
    for b in frame.rgb.iter().step_by(step) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The current camera's check, shared with whoever reports it (a verification session).
pub type SharedCameraCheck = Arc<Mutex<Option<CameraCheck>>>;

/// Opens through `inner`, refuses a camera the policy does not trust (one clear error, retried
/// like a missing camera), and watches the frame timing of the one it accepts.
pub struct CheckedOpener {
    inner: Box<dyn CameraOpener>,
    policy: CameraPolicy,
    pub state: SharedCameraCheck,
}

impl CheckedOpener {
    pub fn new(inner: Box<dyn CameraOpener>, policy: CameraPolicy) -> CheckedOpener {
        CheckedOpener {
            inner,
            policy,
            state: Default::default(),
        }
    }
}

impl CameraOpener for CheckedOpener {
    fn open(&mut self) -> Result<Box<dyn CameraDevice>, CameraError> {
        let device = self.inner.open()?;
        let Some(id) = device.identity() else {
            // A file source: nothing to judge.
            *self.state.lock().expect("camera check poisoned") = None;
            return Ok(device);
        };
        let check = judge(&id, &self.policy);
        *self.state.lock().expect("camera check poisoned") = Some(check.clone());
        if let Some(reason) = check.reason.filter(|_| !check.accepted) {
            return Err(CameraError::Refused(id.node, reason));
        }
        let timing = FrameTiming::new(device.fps());
        Ok(Box::new(TimedDevice {
            inner: device,
            timing,
            state: self.state.clone(),
        }))
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

struct TimedDevice {
    inner: Box<dyn CameraDevice>,
    timing: FrameTiming,
    state: SharedCameraCheck,
}

impl CameraDevice for TimedDevice {
    fn read(&mut self, timeout: Duration) -> Result<Option<Frame>, CameraError> {
        let frame = self.inner.read(timeout)?;
        if let Some(f) = &frame {
            if let Some(why) = self.timing.observe(Instant::now(), f) {
                let mut state = self.state.lock().expect("camera check poisoned");
                if let Some(check) = state.as_mut().filter(|c| c.accepted) {
                    log::warn!("camera: {why}");
                    check.accepted = false;
                    check.reason = Some(why);
                }
            }
        }
        Ok(frame)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn identity(&self) -> Option<CameraIdentity> {
        self.inner.identity()
    }

    fn fps(&self) -> Option<f64> {
        self.inner.fps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(driver: &str, card: &str, usb: Option<&str>) -> CameraIdentity {
        CameraIdentity {
            node: "/dev/video0".into(),
            driver: driver.into(),
            card: card.into(),
            bus_info: "usb-0000:01:00.0-1".into(),
            usb_id: usb.map(Into::into),
            serial: Some("A1B2".into()),
        }
    }

    /// The hardware edge for tests: a device with a given identity and scripted frames.
    struct FakeCamera {
        id: CameraIdentity,
        frames: Vec<Frame>,
    }

    impl CameraDevice for FakeCamera {
        fn read(&mut self, _: Duration) -> Result<Option<Frame>, CameraError> {
            Ok(self.frames.pop())
        }
        fn describe(&self) -> String {
            self.id.card.clone()
        }
        fn identity(&self) -> Option<CameraIdentity> {
            Some(self.id.clone())
        }
        fn fps(&self) -> Option<f64> {
            Some(30.0)
        }
    }

    struct FakeOpener(CameraIdentity);

    impl CameraOpener for FakeOpener {
        fn open(&mut self) -> Result<Box<dyn CameraDevice>, CameraError> {
            Ok(Box::new(FakeCamera {
                id: self.0.clone(),
                frames: vec![Frame::new(2, 1, vec![1, 2, 3, 4, 5, 6])],
            }))
        }
        fn name(&self) -> String {
            "fake".into()
        }
    }

    #[test]
    fn virtual_cameras_are_refused_with_one_line_unless_allowed() {
        for (driver, card) in [
            ("v4l2 loopback", "Dummy video device (0x0000)"),
            ("v4l2 loopback", "OBS Virtual Camera"),
            ("vivid", "vivid"),
        ] {
            let mut opener = CheckedOpener::new(
                Box::new(FakeOpener(id(driver, card, None))),
                CameraPolicy::default(),
            );
            let err = opener.open().err().expect("refused").to_string();
            assert!(err.starts_with("/dev/video0: refused: driver"), "{err}");
            assert!(err.contains("virtual camera"), "{err}");
            assert!(!opener.state.lock().unwrap().as_ref().unwrap().accepted);
            let mut allowed = CheckedOpener::new(
                Box::new(FakeOpener(id(driver, card, None))),
                CameraPolicy {
                    allow_virtual: true,
                    ..Default::default()
                },
            );
            assert!(allowed.open().is_ok());
        }
        let mut real = CheckedOpener::new(
            Box::new(FakeOpener(id(
                "uvcvideo",
                "HD Pro Webcam C920",
                Some("046d:082d"),
            ))),
            CameraPolicy::default(),
        );
        let mut dev = real.open().unwrap();
        assert!(dev.read(Duration::ZERO).unwrap().is_some());
        assert!(real.state.lock().unwrap().as_ref().unwrap().accepted);
    }

    #[test]
    fn a_pinned_camera_refuses_a_swapped_one() {
        let policy = CameraPolicy {
            allow_virtual: false,
            expect: CameraExpect {
                driver: "uvcvideo".into(),
                usb_id: "046d:082d".into(),
                serial: String::new(),
            },
        };
        assert!(judge(&id("uvcvideo", "C920", Some("046D:082D")), &policy).accepted);
        let other = judge(&id("uvcvideo", "C270", Some("046d:0825")), &policy);
        assert!(!other.accepted);
        assert!(other
            .reason
            .unwrap()
            .contains("usb_id \"046d:0825\" is not the expected \"046d:082d\""));
        let csi = judge(&id("unicam", "imx219", None), &policy);
        assert!(csi.reason.unwrap().starts_with("driver \"unicam\""));
        let serial = CameraPolicy {
            expect: CameraExpect {
                serial: "ZZZ".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(!judge(&id("uvcvideo", "C920", Some("046d:082d")), &serial).accepted);
    }

    #[test]
    fn implausible_timing_is_flagged() {
        let t0 = Instant::now();
        let frame = |v: u8| Frame::new(2, 2, vec![v; 12]);
        // Frozen: the same image for more than two seconds.
        let mut t = FrameTiming::new(Some(30.0));
        let mut flagged = None;
        for i in 0..80u64 {
            flagged = flagged.or(t.observe(t0 + Duration::from_millis(33 * i), &frame(7)));
        }
        assert!(flagged.unwrap().starts_with("identical frames"));
        // Too fast: 200 frames/s from a camera that negotiated 30.
        let mut t = FrameTiming::new(Some(30.0));
        let mut flagged = None;
        for i in 0..40u64 {
            flagged = flagged.or(t.observe(t0 + Duration::from_millis(5 * i), &frame(i as u8)));
        }
        assert!(flagged.unwrap().contains("negotiated 30"));
        // A real camera: changing frames at its rate.
        let mut t = FrameTiming::new(Some(30.0));
        for i in 0..120u64 {
            assert_eq!(
                t.observe(t0 + Duration::from_millis(33 * i), &frame(i as u8)),
                None
            );
        }
    }
}
