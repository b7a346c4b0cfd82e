//! Verdict LEDs: green REAL, red FAKE, amber blinking UNCERTAIN, amber steady while the camera
//! is lost, an optional buzzer beep when a face turns FAKE; all off on stop, error and panic.
//! The pattern logic drives [`Pin`]s, which have one job; back ends: the GPIO character device
//! (any board, Pi 5 and Jetson included) and rppal (Raspberry Pi).

use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::output::{DaemonEvent, LiveView, Output, SESSION_HOLD};
use crate::verdict::session::Decision;
use crate::verdict::Label;

/// The `[leds]` section of the daemon config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedConfig {
    pub kind: LedDriver,
    /// gpiocdev: the chip (e.g. /dev/gpiochip0).
    pub chip: String,
    /// BCM / line numbers; leave a key out where that LED is not fitted.
    #[serde(deserialize_with = "pin", skip_serializing_if = "Option::is_none")]
    pub green: Option<u32>,
    #[serde(deserialize_with = "pin", skip_serializing_if = "Option::is_none")]
    pub red: Option<u32>,
    #[serde(deserialize_with = "pin", skip_serializing_if = "Option::is_none")]
    pub amber: Option<u32>,
    #[serde(deserialize_with = "pin", skip_serializing_if = "Option::is_none")]
    pub buzzer: Option<u32>,
    pub active_low: bool,
}

/// A pin number. -1 meant "not fitted" before pins were optional, and configs kept across
/// package upgrades still say it, so it still reads as not fitted.
fn pin<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u32>, D::Error> {
    let v = <i64 as serde::Deserialize>::deserialize(d)?;
    match v {
        -1 => Ok(None),
        0..=0xFFFF_FFFF => Ok(Some(v as u32)),
        _ => Err(serde::de::Error::custom(format!(
            "{v}: a GPIO line number (leave the key out where no LED is fitted)"
        ))),
    }
}

/// How the LEDs are driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedDriver {
    /// No LEDs.
    None,
    /// Raspberry Pi GPIO through rppal (Pi 4 and earlier).
    Rppal,
    /// Any board's GPIO character device (Pi 5, Jetson).
    Gpiocdev,
}

impl std::str::FromStr for LedDriver {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => LedDriver::None,
            "rppal" => LedDriver::Rppal,
            "gpiocdev" => LedDriver::Gpiocdev,
            other => bail!("leds.kind = {other:?}: one of none, rppal, gpiocdev"),
        })
    }
}

impl std::fmt::Display for LedDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LedDriver::None => "none",
            LedDriver::Rppal => "rppal",
            LedDriver::Gpiocdev => "gpiocdev",
        })
    }
}

impl Default for LedConfig {
    fn default() -> Self {
        LedConfig {
            kind: LedDriver::None,
            chip: "/dev/gpiochip0".into(),
            green: None,
            red: None,
            amber: None,
            buzzer: None,
            active_low: false,
        }
    }
}

/// One output line.
pub trait Pin: Send {
    fn set(&mut self, on: bool) -> Result<()>;
}

/// What each LED should show at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lights {
    pub green: bool,
    pub red: bool,
    pub amber: bool,
    pub buzzer: bool,
}

const BLINK_MS: u64 = 250;
const BEEP_MS: u64 = 300;

/// The pattern: what to show for a verdict (or a lost camera) at `now_ms`.
#[derive(Debug, Default)]
pub struct Pattern {
    label: Option<Label>,
    camera_lost: bool,
    beep_until: u64,
    session: Option<SessionLights>,
}

/// A verification session on the LEDs: green blinking while it looks, then green (verified) or
/// red (rejected, with a beep) held until `until_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionLights {
    Verifying,
    Verified { until_ms: u64 },
    Rejected { until_ms: u64 },
}

impl Pattern {
    pub fn session(&mut self, session: SessionLights, now_ms: u64) {
        if matches!(session, SessionLights::Rejected { .. }) {
            self.beep_until = now_ms + BEEP_MS;
        }
        self.session = Some(session);
    }

    pub fn verdict(&mut self, label: Label, now_ms: u64) {
        if label == Label::Fake && self.label != Some(Label::Fake) {
            self.beep_until = now_ms + BEEP_MS;
        }
        self.label = Some(label);
        self.camera_lost = false;
    }

    pub fn camera_lost(&mut self) {
        self.camera_lost = true;
        self.label = None;
    }

    pub fn lights(&self, now_ms: u64) -> Lights {
        let blink_on = (now_ms / BLINK_MS).is_multiple_of(2);
        let beep = now_ms < self.beep_until;
        match self.session {
            Some(SessionLights::Verifying) => {
                return Lights {
                    green: blink_on,
                    buzzer: beep,
                    ..Lights::default()
                }
            }
            Some(SessionLights::Verified { until_ms }) if now_ms < until_ms => {
                return Lights {
                    green: true,
                    buzzer: beep,
                    ..Lights::default()
                }
            }
            Some(SessionLights::Rejected { until_ms }) if now_ms < until_ms => {
                return Lights {
                    red: true,
                    buzzer: beep,
                    ..Lights::default()
                }
            }
            _ => {}
        }
        if self.camera_lost {
            return Lights {
                amber: true,
                ..Lights::default()
            };
        }
        let mut l = match self.label {
            Some(Label::Real) => Lights {
                green: true,
                ..Lights::default()
            },
            Some(Label::Fake) => Lights {
                red: true,
                ..Lights::default()
            },
            Some(Label::Uncertain) => Lights {
                amber: blink_on,
                ..Lights::default()
            },
            Some(Label::Unscored) | Some(Label::NoFace) | None => Lights::default(),
        };
        l.buzzer = beep;
        l
    }
}

/// A pin and its last state, so lines are written only on change.
struct Led {
    pin: Box<dyn Pin>,
    on: Option<bool>,
}

impl Led {
    fn set(&mut self, on: bool) -> Result<()> {
        if self.on != Some(on) {
            self.pin.set(on)?;
            self.on = Some(on);
        }
        Ok(())
    }
}

pub struct LedOutput {
    green: Option<Led>,
    red: Option<Led>,
    amber: Option<Led>,
    buzzer: Option<Led>,
    pattern: Pattern,
    started: std::time::Instant,
    describe: String,
}

impl LedOutput {
    /// Pins in order green, red, amber, buzzer; None where not fitted.
    pub fn new(pins: [Option<Box<dyn Pin>>; 4], describe: String) -> Self {
        let [green, red, amber, buzzer] = pins.map(|p| p.map(|pin| Led { pin, on: None }));
        LedOutput {
            green,
            red,
            amber,
            buzzer,
            pattern: Pattern::default(),
            started: std::time::Instant::now(),
            describe,
        }
    }

    pub fn show(&mut self, l: Lights) -> Result<()> {
        for (led, on) in [
            (&mut self.green, l.green),
            (&mut self.red, l.red),
            (&mut self.amber, l.amber),
            (&mut self.buzzer, l.buzzer),
        ] {
            if let Some(led) = led {
                led.set(on)?;
            }
        }
        Ok(())
    }

    pub fn all_off(&mut self) -> Result<()> {
        self.show(Lights::default())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

impl Output for LedOutput {
    fn name(&self) -> String {
        self.describe.clone()
    }

    fn frame(&mut self, view: &LiveView) -> Result<()> {
        let main = view.result.main_face();
        let now = self.now_ms();
        self.pattern
            .verdict(main.map_or(Label::NoFace, |f| f.verdict.label), now);
        self.show(self.pattern.lights(now))
    }

    fn event(&mut self, event: &DaemonEvent) -> Result<()> {
        match event {
            DaemonEvent::CameraLost(_) => {
                self.pattern.camera_lost();
                self.show(self.pattern.lights(self.now_ms()))
            }
            DaemonEvent::Stopping => self.all_off(),
            DaemonEvent::SessionStarted => {
                let now = self.now_ms();
                self.pattern.session(SessionLights::Verifying, now);
                self.show(self.pattern.lights(now))
            }
            DaemonEvent::SessionEnded(end) => {
                let now = self.now_ms();
                let until_ms = now + SESSION_HOLD.as_millis() as u64;
                let lights = match end.outcome.decision {
                    Decision::Verified => SessionLights::Verified { until_ms },
                    Decision::Rejected => SessionLights::Rejected { until_ms },
                };
                self.pattern.session(lights, now);
                self.show(self.pattern.lights(now))
            }
            _ => Ok(()),
        }
    }

    fn shutdown(&mut self) -> Result<()> {
        self.all_off()
    }
}

impl Drop for LedOutput {
    /// Also runs while a panic unwinds: no LED is left claiming a verdict.
    fn drop(&mut self) {
        let _ = self.all_off();
    }
}

// ---------------------------------------------------------------- GPIO character device

/// A line of `/dev/gpiochipN`, requested as an output through the kernel's GPIO v1 uAPI (no C
/// library needed; works on every board with a 4.8+ kernel).
pub struct CdevPin {
    fd: std::os::fd::OwnedFd,
    active_low: bool,
}

// linux/gpio.h
const GPIOHANDLES_MAX: usize = 64;
const GPIOHANDLE_REQUEST_OUTPUT: u32 = 1 << 1;
const GPIOHANDLE_REQUEST_ACTIVE_LOW: u32 = 1 << 2;

#[repr(C)]
struct GpioHandleRequest {
    lineoffsets: [u32; GPIOHANDLES_MAX],
    flags: u32,
    default_values: [u8; GPIOHANDLES_MAX],
    consumer_label: [u8; 32],
    lines: u32,
    fd: libc::c_int,
}

#[repr(C)]
struct GpioHandleData {
    values: [u8; GPIOHANDLES_MAX],
}

/// _IOWR(0xB4, nr, size)
const fn iowr(nr: libc::c_ulong, size: usize) -> libc::c_ulong {
    (3 << 30) | ((size as libc::c_ulong) << 16) | (0xB4 << 8) | nr
}
const GPIO_GET_LINEHANDLE_IOCTL: libc::c_ulong = iowr(0x03, size_of::<GpioHandleRequest>());
const GPIOHANDLE_SET_LINE_VALUES_IOCTL: libc::c_ulong = iowr(0x09, size_of::<GpioHandleData>());

impl CdevPin {
    pub fn open(chip: &Path, line: u32, active_low: bool) -> Result<Self> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let file = super::open_device(
            chip,
            "no such GPIO chip (`ls /dev/gpiochip*` lists them; set leds.chip)",
            "gpio",
        )?;
        let mut req = GpioHandleRequest {
            lineoffsets: [0; GPIOHANDLES_MAX],
            flags: GPIOHANDLE_REQUEST_OUTPUT
                | if active_low {
                    GPIOHANDLE_REQUEST_ACTIVE_LOW
                } else {
                    0
                },
            default_values: [0; GPIOHANDLES_MAX],
            consumer_label: [0; 32],
            lines: 1,
            fd: -1,
        };
        req.lineoffsets[0] = line;
        req.consumer_label[..8].copy_from_slice(b"veriface");
        // SAFETY: the fd is open and `req` is the kernel's gpiohandle_request layout.
        if unsafe { libc::ioctl(file.as_raw_fd(), GPIO_GET_LINEHANDLE_IOCTL as _, &mut req) } != 0 {
            let err = std::io::Error::last_os_error();
            bail!(
                "{}: cannot claim line {line} as an output: {err} (a wrong line number, a line \
                 in use, or not a GPIO chip)",
                chip.display()
            );
        }
        // SAFETY: on success the kernel returned a new fd that we now own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(req.fd) };
        // The kernel applies active-low itself; kept for the description only.
        Ok(CdevPin { fd, active_low })
    }
}

impl Pin for CdevPin {
    fn set(&mut self, on: bool) -> Result<()> {
        use std::os::fd::AsRawFd;
        let mut data = GpioHandleData {
            values: [0; GPIOHANDLES_MAX],
        };
        data.values[0] = on as u8;
        // SAFETY: a line-handle fd from GPIO_GET_LINEHANDLE_IOCTL and the matching data layout.
        if unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                GPIOHANDLE_SET_LINE_VALUES_IOCTL as _,
                &mut data,
            )
        } != 0
        {
            bail!(
                "GPIO line write failed{}: {}",
                if self.active_low { " (active-low)" } else { "" },
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- rppal (Raspberry Pi)

pub struct RppalPin {
    pin: rppal::gpio::OutputPin,
    active_low: bool,
}

impl RppalPin {
    pub fn open(bcm: u8, active_low: bool) -> Result<Self> {
        let gpio = rppal::gpio::Gpio::new().map_err(|e| {
            anyhow::anyhow!(
                "rppal: {e} (Raspberry Pi only; add the user to the gpio group; on a Pi 5 or \
                 another board use leds.kind = \"gpiocdev\")"
            )
        })?;
        let pin = gpio
            .get(bcm)
            .map_err(|e| anyhow::anyhow!("rppal: GPIO {bcm}: {e}"))?
            .into_output();
        Ok(RppalPin { pin, active_low })
    }
}

impl Pin for RppalPin {
    fn set(&mut self, on: bool) -> Result<()> {
        if on != self.active_low {
            self.pin.set_high();
        } else {
            self.pin.set_low();
        }
        Ok(())
    }
}

/// The LEDs a config asks for; a pin left out is not fitted.
pub fn open(cfg: &LedConfig) -> Result<LedOutput> {
    let lines = [cfg.green, cfg.red, cfg.amber, cfg.buzzer];
    if lines.iter().all(Option::is_none) {
        bail!(
            "leds.kind = {:?} but no pin is set (leds.green/red/amber/buzzer)",
            cfg.kind.to_string()
        );
    }
    let mut pins: [Option<Box<dyn Pin>>; 4] = [None, None, None, None];
    for (slot, &line) in pins.iter_mut().zip(&lines) {
        let Some(line) = line else {
            continue;
        };
        *slot = Some(match cfg.kind {
            LedDriver::Gpiocdev => {
                Box::new(CdevPin::open(Path::new(&cfg.chip), line, cfg.active_low)?)
            }
            LedDriver::Rppal => {
                let bcm = u8::try_from(line).map_err(|_| {
                    anyhow::anyhow!("leds: pin {line} is not a Raspberry Pi BCM pin")
                })?;
                Box::new(RppalPin::open(bcm, cfg.active_low)?)
            }
            LedDriver::None => bail!("leds.kind = \"none\": no LEDs to open"),
        });
    }
    let fitted: Vec<String> = lines
        .iter()
        .map(|l| l.map_or("-".to_string(), |l| l.to_string()))
        .collect();
    let describe = format!("LEDs ({}) [{}]", cfg.kind, fitted.join(", "));
    let mut out = LedOutput::new(pins, describe);
    out.all_off()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The hardware edge for tests: records every write.
    struct RecordingPin(Arc<Mutex<Vec<bool>>>);

    impl Pin for RecordingPin {
        fn set(&mut self, on: bool) -> Result<()> {
            self.0.lock().unwrap().push(on);
            Ok(())
        }
    }

    #[test]
    fn patterns_per_verdict() {
        let mut p = Pattern::default();
        p.verdict(Label::Real, 0);
        assert_eq!(
            p.lights(0),
            Lights {
                green: true,
                ..Lights::default()
            }
        );
        p.verdict(Label::Uncertain, 1000);
        let blinks: Vec<bool> = (0..4)
            .map(|i| p.lights(1000 + i * BLINK_MS).amber)
            .collect();
        assert_eq!(blinks, [true, false, true, false]);
        assert!(!p.lights(1000).green && !p.lights(1000).red);
        // Turning FAKE beeps once, briefly; staying FAKE does not beep again.
        p.verdict(Label::Fake, 2000);
        assert!(p.lights(2000).red && p.lights(2000).buzzer);
        assert!(!p.lights(2000 + BEEP_MS).buzzer);
        p.verdict(Label::Fake, 3000);
        assert!(!p.lights(3000).buzzer);
        p.camera_lost();
        assert_eq!(
            p.lights(4000),
            Lights {
                amber: true,
                ..Lights::default()
            }
        );
        p.verdict(Label::NoFace, 5000);
        assert_eq!(p.lights(5000), Lights::default());
    }

    #[test]
    fn a_session_blinks_green_then_holds_its_decision_over_the_verdict() {
        let mut p = Pattern::default();
        p.verdict(Label::Fake, 0);
        p.session(SessionLights::Verifying, 1000);
        let blinks: Vec<bool> = (0..4)
            .map(|i| p.lights(1000 + i * BLINK_MS).green)
            .collect();
        assert_eq!(blinks, [true, false, true, false]);
        assert!(
            !p.lights(1000).red,
            "the live verdict waits while a session runs"
        );
        p.session(SessionLights::Rejected { until_ms: 5000 }, 2000);
        assert!(p.lights(2000).red && p.lights(2000).buzzer);
        assert!(!p.lights(2000 + BEEP_MS).buzzer);
        assert!(p.lights(4999).red && !p.lights(4999).green);
        // Held time over: the live verdict (FAKE) again, no second beep.
        p.session(SessionLights::Verified { until_ms: 7000 }, 6000);
        assert!(p.lights(6000).green && !p.lights(6000).buzzer);
        assert_eq!(
            p.lights(7000),
            Lights {
                red: true,
                ..Lights::default()
            }
        );
    }

    #[test]
    fn lines_are_written_on_change_and_switched_off_on_stop_and_drop() {
        let logs: Vec<Arc<Mutex<Vec<bool>>>> = (0..3).map(|_| Arc::default()).collect();
        let mut out = LedOutput::new(
            [
                Some(Box::new(RecordingPin(logs[0].clone()))),
                Some(Box::new(RecordingPin(logs[1].clone()))),
                None,
                Some(Box::new(RecordingPin(logs[2].clone()))),
            ],
            "test".into(),
        );
        let real = Lights {
            green: true,
            ..Lights::default()
        };
        out.show(real).unwrap();
        out.show(real).unwrap();
        assert_eq!(*logs[0].lock().unwrap(), [true]);
        out.event(&DaemonEvent::Stopping).unwrap();
        assert_eq!(*logs[0].lock().unwrap(), [true, false]);
        out.show(real).unwrap();
        drop(out);
        assert_eq!(*logs[0].lock().unwrap(), [true, false, true, false]);
        assert_eq!(*logs[1].lock().unwrap(), [false]);
        assert_eq!(*logs[2].lock().unwrap(), [false]);
    }

    #[test]
    fn missing_chip_and_non_gpio_device_are_clear_errors() {
        let e = CdevPin::open(Path::new("/dev/gpiochip-none"), 17, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no such GPIO chip"), "{e}");
        let e = CdevPin::open(Path::new("/dev/null"), 17, false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("cannot claim line 17"), "{e}");
    }
}
