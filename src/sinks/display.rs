//! The verdict screen. One state ([`Screen`]) drawn with embedded-graphics on an [`RgbCanvas`]
//! in one of two layouts (compact monochrome for 128x64 OLEDs, colour for 320x240 and up), then
//! handed to a [`Panel`] that only pushes finished frames: a PNG file or the Linux framebuffer.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use embedded_graphics::mono_font::{ascii::FONT_10X20, ascii::FONT_6X10, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Text};
use serde::{Deserialize, Serialize};

use super::canvas::RgbCanvas;
use super::output::{DaemonEvent, LiveView, Output, SESSION_HOLD};
use crate::verdict::session::Decision;
use crate::verdict::Label;

/// The `[display]` section of the daemon config: which panel, and where it is. Each kind carries
/// only what it needs, so a panel kind without its path is refused when the config is read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DisplayConfig {
    /// No display.
    None {
        /// Ignored. Configs written before kinds were checked say `path = ""` here.
        #[serde(default, skip_serializing)]
        path: Option<PathBuf>,
    },
    /// A 320x240 colour PNG, rewritten when the shown state changes.
    Png { path: PathBuf },
    /// The 128x64 monochrome layout as a PNG.
    PngOled { path: PathBuf },
    /// A Linux framebuffer device (HDMI, DSI, fbtft SPI panels).
    Fb { path: PathBuf },
    /// A 128x64 SSD1306 OLED on an I2C bus device (address 0x3C).
    Ssd1306 { path: PathBuf },
}

impl Default for DisplayConfig {
    fn default() -> Self {
        DisplayConfig::None { path: None }
    }
}

impl DisplayConfig {
    pub const KINDS: &'static str = "none, png, png-oled, fb, ssd1306";

    /// From a kind name and a path (the `--display KIND:PATH` override).
    pub fn from_kind(kind: &str, path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        Ok(match kind {
            "none" => DisplayConfig::None { path: None },
            "png" => DisplayConfig::Png { path },
            "png-oled" => DisplayConfig::PngOled { path },
            "fb" => DisplayConfig::Fb { path },
            "ssd1306" => DisplayConfig::Ssd1306 { path },
            other => bail!("display.kind = {other:?}: one of {}", Self::KINDS),
        })
    }

    /// The panel's file or device; None without a display.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DisplayConfig::None { .. } => None,
            DisplayConfig::Png { path }
            | DisplayConfig::PngOled { path }
            | DisplayConfig::Fb { path }
            | DisplayConfig::Ssd1306 { path } => Some(path),
        }
    }

    /// The kind as the config spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            DisplayConfig::None { .. } => "none",
            DisplayConfig::Png { .. } => "png",
            DisplayConfig::PngOled { .. } => "png-oled",
            DisplayConfig::Fb { .. } => "fb",
            DisplayConfig::Ssd1306 { .. } => "ssd1306",
        }
    }
}

/// Everything the screen shows; the panel is redrawn only when this changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Screen {
    pub label: Label,
    /// Smoothed fake probability in percent.
    pub fake_percent: Option<u8>,
    /// Emotion and its confidence in percent.
    pub emotion: Option<(String, u8)>,
    pub faces: usize,
    pub fps: u16,
    pub camera: String,
    /// A verification session in progress or just ended: shown instead of the verdict.
    pub session: Option<SessionScreen>,
}

/// What the screen says during a verification session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionScreen {
    /// Look at the camera: `frames` of the `needed` (0 until the first progress) are in;
    /// `prompt` is the active challenge's instruction (empty without one).
    Verifying {
        frames: u8,
        needed: u8,
        prompt: String,
    },
    Verified,
    /// With the reasons, comma-separated.
    Rejected(String),
}

impl Screen {
    /// Nothing seen yet.
    pub fn idle() -> Screen {
        Screen {
            label: Label::NoFace,
            fake_percent: None,
            emotion: None,
            faces: 0,
            fps: 0,
            camera: String::new(),
            session: None,
        }
    }

    /// The state for one analysed frame: the verdict of the main face (`FrameResult::main_face`).
    pub fn from_view(view: &LiveView) -> Screen {
        let main = view.result.main_face();
        Screen {
            label: main.map_or(Label::NoFace, |f| f.verdict.label),
            fake_percent: main
                .and_then(|f| f.verdict.smoothed)
                .map(|p| (p.clamp(0.0, 1.0) * 100.0).round() as u8),
            emotion: main.and_then(|f| {
                f.analysis
                    .emotion
                    .as_ref()
                    .map(|e| (e.label.clone(), (e.confidence * 100.0).round() as u8))
            }),
            faces: view.result.faces.len(),
            fps: view.fps.round().clamp(0.0, 999.0) as u16,
            camera: view.camera.name().to_string(),
            session: None,
        }
    }
}

/// Banner colour per verdict.
pub fn verdict_colour(label: Label) -> Rgb888 {
    match label {
        Label::Real => Rgb888::new(0, 160, 60),
        Label::Fake => Rgb888::new(210, 30, 30),
        Label::Uncertain => Rgb888::new(240, 160, 0),
        Label::Unscored | Label::NoFace => Rgb888::new(120, 120, 120),
    }
}

fn banner_text(label: Label) -> &'static str {
    match label {
        Label::Real => "REAL",
        Label::Fake => "FAKE",
        Label::Uncertain => "UNCERTAIN",
        Label::Unscored => "NO MODEL",
        Label::NoFace => "NO FACE",
    }
}

fn text(c: &mut RgbCanvas, s: &str, at: Point, font_large: bool, colour: Rgb888, align: Alignment) {
    let font = if font_large { &FONT_10X20 } else { &FONT_6X10 };
    let _ = Text::with_alignment(s, at, MonoTextStyle::new(font, colour), align).draw(c);
}

fn fill(c: &mut RgbCanvas, x: i32, y: i32, w: u32, h: u32, colour: Rgb888) {
    let _ = Rectangle::new(Point::new(x, y), Size::new(w, h))
        .into_styled(PrimitiveStyle::with_fill(colour))
        .draw(c);
}

fn outline(c: &mut RgbCanvas, x: i32, y: i32, w: u32, h: u32, colour: Rgb888) {
    let _ = Rectangle::new(Point::new(x, y), Size::new(w, h))
        .into_styled(PrimitiveStyle::with_stroke(colour, 1))
        .draw(c);
}

/// Panels narrower than this get the compact monochrome layout.
const COMPACT_BELOW: u32 = 200;

/// Draw the screen for a panel of `width` x `height`.
pub fn render(screen: &Screen, width: u32, height: u32) -> RgbCanvas {
    if let Some(session) = &screen.session {
        return render_session(session, width, height);
    }
    if width < COMPACT_BELOW || height < 100 {
        render_compact(screen, width, height)
    } else {
        render_colour(screen, width, height)
    }
}

/// A verification session: the prompt with its progress, then the decision. On the OLED in
/// white on black (inverted banner for the decision), on colour panels blue / green / red.
fn render_session(session: &SessionScreen, width: u32, height: u32) -> RgbCanvas {
    let compact = width < COMPACT_BELOW || height < 100;
    let (title, detail, colour) = match session {
        SessionScreen::Verifying { prompt, .. } => (
            "LOOK HERE",
            match prompt.is_empty() {
                true => "verifying identity".to_string(),
                false => prompt.clone(),
            },
            Rgb888::new(30, 90, 200),
        ),
        SessionScreen::Verified => ("VERIFIED", String::new(), verdict_colour(Label::Real)),
        SessionScreen::Rejected(reasons) => {
            ("REJECTED", reasons.clone(), verdict_colour(Label::Fake))
        }
    };
    let white = Rgb888::WHITE;
    let mut c = RgbCanvas::new(
        width,
        height,
        if compact {
            Rgb888::BLACK
        } else {
            Rgb888::new(16, 16, 20)
        },
    );
    let w = width as i32;
    let banner_h = if compact { 24 } else { height * 2 / 5 };
    let decided = !matches!(session, SessionScreen::Verifying { .. });
    let ink = match (compact, decided) {
        (true, true) => {
            fill(&mut c, 0, 0, width, banner_h, white);
            Rgb888::BLACK
        }
        (true, false) => {
            outline(&mut c, 0, 0, width, banner_h, white);
            white
        }
        (false, _) => {
            fill(&mut c, 0, 0, width, banner_h, colour);
            white
        }
    };
    text(
        &mut c,
        title,
        Point::new(w / 2, banner_h as i32 / 2 + 7),
        true,
        ink,
        Alignment::Center,
    );
    let below = banner_h as i32 + if compact { 4 } else { 14 };
    if let SessionScreen::Verifying { frames, needed, .. } = session {
        if *needed > 0 {
            let (x, bar_w, bar_h) = if compact {
                (0, width, 8)
            } else {
                (10, width - 20, 18)
            };
            outline(&mut c, x, below, bar_w, bar_h, white);
            let filled = (u32::from(*frames.min(needed)) * (bar_w - 2)) / u32::from(*needed);
            fill(
                &mut c,
                x + 1,
                below + 1,
                filled,
                bar_h - 2,
                if compact { white } else { colour },
            );
        }
    }
    let at = if compact {
        Point::new(0, below + 20)
    } else {
        Point::new(10, below + 44)
    };
    text(&mut c, &detail, at, false, white, Alignment::Left);
    c
}

/// 128x64 monochrome: white on black only, so an OLED shows exactly this.
fn render_compact(s: &Screen, width: u32, height: u32) -> RgbCanvas {
    let white = Rgb888::WHITE;
    let mut c = RgbCanvas::new(width, height, Rgb888::BLACK);
    let w = width as i32;
    // Inverted banner for a decision, outlined for anything else.
    let decided = matches!(s.label, Label::Real | Label::Fake);
    if decided {
        fill(&mut c, 0, 0, width, 24, white);
    } else {
        outline(&mut c, 0, 0, width, 24, white);
    }
    let ink = if decided { Rgb888::BLACK } else { white };
    text(
        &mut c,
        banner_text(s.label),
        Point::new(w / 2, 17),
        true,
        ink,
        Alignment::Center,
    );
    // Probability bar.
    outline(&mut c, 0, 28, width, 8, white);
    if let Some(p) = s.fake_percent {
        let filled = (u32::from(p) * (width - 2)) / 100;
        fill(&mut c, 1, 29, filled, 6, white);
    }
    let line1 = match (&s.fake_percent, &s.emotion) {
        (Some(p), Some((e, q))) => format!("fake {p}%  {e} {q}%"),
        (Some(p), None) => format!("fake {p}%"),
        (None, Some((e, q))) => format!("{e} {q}%"),
        (None, None) => String::new(),
    };
    text(
        &mut c,
        &line1,
        Point::new(0, 47),
        false,
        white,
        Alignment::Left,
    );
    let line2 = format!("{}f {}fps {}", s.faces, s.fps, s.camera);
    text(
        &mut c,
        &line2,
        Point::new(0, 60),
        false,
        white,
        Alignment::Left,
    );
    c
}

/// 320x240 and up, colour.
fn render_colour(s: &Screen, width: u32, height: u32) -> RgbCanvas {
    let mut c = RgbCanvas::new(width, height, Rgb888::new(16, 16, 20));
    let (w, h) = (width as i32, height as i32);
    let grey = Rgb888::new(200, 200, 200);
    let banner_h = height * 2 / 5;
    fill(&mut c, 0, 0, width, banner_h, verdict_colour(s.label));
    text(
        &mut c,
        banner_text(s.label),
        Point::new(w / 2, banner_h as i32 / 2 + 7),
        true,
        Rgb888::WHITE,
        Alignment::Center,
    );
    // Probability bar, with the scale's middle marked.
    let bar_y = banner_h as i32 + 14;
    text(
        &mut c,
        "fake probability",
        Point::new(10, bar_y - 3),
        false,
        grey,
        Alignment::Left,
    );
    outline(&mut c, 10, bar_y, width - 20, 18, grey);
    if let Some(p) = s.fake_percent {
        let filled = (u32::from(p) * (width - 24)) / 100;
        let colour = verdict_colour(if p >= 50 { Label::Fake } else { Label::Real });
        fill(&mut c, 12, bar_y + 2, filled, 14, colour);
        text(
            &mut c,
            &format!("{p}%"),
            Point::new(w - 12, bar_y - 3),
            false,
            grey,
            Alignment::Right,
        );
    }
    fill(&mut c, w / 2, bar_y + 18, 1, 4, grey);
    let emotion = match &s.emotion {
        Some((e, q)) => format!("{e} {q}%"),
        None => "-".into(),
    };
    text(
        &mut c,
        "emotion",
        Point::new(10, bar_y + 40),
        false,
        grey,
        Alignment::Left,
    );
    text(
        &mut c,
        &emotion,
        Point::new(10, bar_y + 60),
        true,
        Rgb888::WHITE,
        Alignment::Left,
    );
    let status = format!(
        "{} face{}   {} fps   camera {}",
        s.faces,
        if s.faces == 1 { "" } else { "s" },
        s.fps,
        s.camera
    );
    text(
        &mut c,
        &status,
        Point::new(10, h - 8),
        false,
        grey,
        Alignment::Left,
    );
    c
}

/// Where finished frames go: one job, so every panel type is small and testable.
pub trait Panel: Send {
    fn size(&self) -> (u32, u32);
    fn show(&mut self, frame: &RgbCanvas) -> Result<()>;
    fn describe(&self) -> String;
}

/// Writes each frame to a PNG file, replaced atomically (for tests, docs, headless debugging).
pub struct PngPanel {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
}

impl Panel for PngPanel {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn show(&mut self, frame: &RgbCanvas) -> Result<()> {
        let tmp = self.path.with_extension("png.tmp");
        image::save_buffer_with_format(
            &tmp,
            frame.pixels(),
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("{}: cannot replace", self.path.display()))
    }

    fn describe(&self) -> String {
        format!(
            "PNG {} ({}x{})",
            self.path.display(),
            self.width,
            self.height
        )
    }
}

/// The Linux framebuffer (HDMI, DSI, fbtft SPI panels): size and pixel format from the kernel.
pub struct FramebufferPanel {
    file: File,
    path: PathBuf,
    width: u32,
    height: u32,
    bits_per_pixel: u32,
    line_length: u32,
    /// Bit offset and length of red, green, blue in a pixel.
    channels: [(u32, u32); 3],
}

// linux/fb.h
const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

#[repr(C)]
#[derive(Default)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    timing: [u32; 7],
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

#[repr(C)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    kind: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

impl FramebufferPanel {
    pub fn open(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let file = super::open_device(
            path,
            "no such framebuffer (is a display attached and its driver loaded?)",
            "video",
        )?;
        let mut var = FbVarScreeninfo::default();
        // SAFETY: the fd is open and `var` is the kernel's fb_var_screeninfo layout.
        if unsafe { libc::ioctl(file.as_raw_fd(), FBIOGET_VSCREENINFO as _, &mut var) } != 0 {
            bail!(
                "{}: not a framebuffer ({})",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: as above, for fb_fix_screeninfo; all-zero is a valid value of it.
        let mut fix: FbFixScreeninfo = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(file.as_raw_fd(), FBIOGET_FSCREENINFO as _, &mut fix) } != 0 {
            bail!(
                "{}: not a framebuffer ({})",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        if ![16, 24, 32].contains(&var.bits_per_pixel) {
            bail!(
                "{}: {} bits per pixel is not supported (16, 24 or 32)",
                path.display(),
                var.bits_per_pixel
            );
        }
        Ok(FramebufferPanel {
            file,
            path: path.to_path_buf(),
            width: var.xres,
            height: var.yres,
            bits_per_pixel: var.bits_per_pixel,
            line_length: fix.line_length,
            channels: [
                (var.red.offset, var.red.length),
                (var.green.offset, var.green.length),
                (var.blue.offset, var.blue.length),
            ],
        })
    }
}

/// One RGB pixel in a framebuffer's layout (little-endian, as on every supported board).
pub fn pack_pixel(rgb: [u8; 3], channels: &[(u32, u32); 3], bytes: usize, out: &mut [u8]) {
    let mut v: u32 = 0;
    for (c, &(offset, length)) in rgb.iter().zip(channels) {
        let scaled = u32::from(*c) >> (8 - length.min(8));
        v |= scaled << offset;
    }
    out[..bytes].copy_from_slice(&v.to_le_bytes()[..bytes]);
}

impl Panel for FramebufferPanel {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn show(&mut self, frame: &RgbCanvas) -> Result<()> {
        let bytes = (self.bits_per_pixel / 8) as usize;
        let mut line = vec![0u8; self.line_length as usize];
        let px = frame.pixels();
        for y in 0..self.height as usize {
            for x in 0..self.width as usize {
                let i = (y * self.width as usize + x) * 3;
                pack_pixel(
                    [px[i], px[i + 1], px[i + 2]],
                    &self.channels,
                    bytes,
                    &mut line[x * bytes..],
                );
            }
            self.file
                .seek(SeekFrom::Start(y as u64 * u64::from(self.line_length)))
                .and_then(|_| self.file.write_all(&line))
                .with_context(|| format!("{}: write failed", self.path.display()))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "framebuffer {} ({}x{}, {} bpp)",
            self.path.display(),
            self.width,
            self.height,
            self.bits_per_pixel
        )
    }
}

/// A 128x64 SSD1306 OLED on a Linux I2C bus (`/dev/i2c-N`, address 0x3C), through the
/// ssd1306 driver crate and linux-embedded-hal.
pub struct Ssd1306Panel {
    display: ssd1306::Ssd1306<
        ssd1306::prelude::I2CInterface<linux_embedded_hal::I2cdev>,
        ssd1306::size::DisplaySize128x64,
        ssd1306::mode::BufferedGraphicsMode<ssd1306::size::DisplaySize128x64>,
    >,
    path: PathBuf,
}

impl Ssd1306Panel {
    pub fn open(path: &Path) -> Result<Self> {
        use ssd1306::prelude::*;
        // Opened once by hand first: the driver's error type does not say why an open failed.
        super::open_device(
            path,
            "no such I2C bus (enable I2C, e.g. dtparam=i2c_arm=on on a Pi)",
            "i2c",
        )?;
        let i2c = linux_embedded_hal::I2cdev::new(path)
            .map_err(|e| anyhow::anyhow!("{}: not an I2C bus: {e}", path.display()))?;
        let interface = ssd1306::I2CDisplayInterface::new(i2c);
        let mut display = ssd1306::Ssd1306::new(
            interface,
            ssd1306::size::DisplaySize128x64,
            DisplayRotation::Rotate0,
        )
        .into_buffered_graphics_mode();
        display.init().map_err(|e| {
            anyhow::anyhow!(
                "{}: no SSD1306 answered at address 0x3C ({e:?}); check the wiring and `i2cdetect`",
                path.display()
            )
        })?;
        Ok(Ssd1306Panel {
            display,
            path: path.to_path_buf(),
        })
    }
}

impl Panel for Ssd1306Panel {
    fn size(&self) -> (u32, u32) {
        (128, 64)
    }

    /// The compact layout is black and white already; anything brighter than mid-grey is lit.
    fn show(&mut self, frame: &RgbCanvas) -> Result<()> {
        self.display.clear_buffer();
        for (i, px) in frame.pixels().chunks(3).enumerate().take(128 * 64) {
            let lit = px.iter().map(|&c| u32::from(c)).sum::<u32>() > 3 * 127;
            self.display
                .set_pixel((i % 128) as u32, (i / 128) as u32, lit);
        }
        self.display
            .flush()
            .map_err(|e| anyhow::anyhow!("{}: SSD1306 write failed: {e:?}", self.path.display()))
    }

    fn describe(&self) -> String {
        format!("SSD1306 128x64 on {}", self.path.display())
    }
}

/// The daemon's display output.
pub struct DisplayOutput {
    panel: Box<dyn Panel>,
    shown: Option<Screen>,
    /// The session on screen, and until when a decision stays there.
    session: Option<(SessionScreen, Option<std::time::Instant>)>,
    pub redraws: u64,
}

impl DisplayOutput {
    pub fn new(panel: Box<dyn Panel>) -> Self {
        DisplayOutput {
            panel,
            shown: None,
            session: None,
            redraws: 0,
        }
    }

    /// Show `screen` unless it is what the panel already shows.
    pub fn update(&mut self, screen: Screen) -> Result<()> {
        if self.shown.as_ref() == Some(&screen) {
            return Ok(());
        }
        let (w, h) = self.panel.size();
        self.panel.show(&render(&screen, w, h))?;
        self.redraws += 1;
        self.shown = Some(screen);
        Ok(())
    }
}

impl DisplayOutput {
    /// The challenge instruction on screen now, if any.
    fn current_prompt(&self) -> String {
        match &self.session {
            Some((SessionScreen::Verifying { prompt, .. }, _)) => prompt.clone(),
            _ => String::new(),
        }
    }
}

impl Output for DisplayOutput {
    fn name(&self) -> String {
        self.panel.describe()
    }

    fn frame(&mut self, view: &LiveView) -> Result<()> {
        if self
            .session
            .as_ref()
            .is_some_and(|(_, until)| until.is_some_and(|t| std::time::Instant::now() >= t))
        {
            self.session = None;
        }
        let mut screen = Screen::from_view(view);
        screen.session = self.session.as_ref().map(|(s, _)| s.clone());
        self.update(screen)
    }

    fn event(&mut self, event: &DaemonEvent) -> Result<()> {
        let session = match event {
            DaemonEvent::SessionStarted => Some((
                SessionScreen::Verifying {
                    frames: 0,
                    needed: 0,
                    prompt: String::new(),
                },
                None,
            )),
            DaemonEvent::SessionProgress { frames, needed } => Some((
                SessionScreen::Verifying {
                    frames: (*frames).min(255) as u8,
                    needed: (*needed).min(255) as u8,
                    prompt: self.current_prompt(),
                },
                None,
            )),
            DaemonEvent::SessionPrompt(words) => {
                let (frames, needed) = match &self.session {
                    Some((SessionScreen::Verifying { frames, needed, .. }, _)) => {
                        (*frames, *needed)
                    }
                    _ => (0, 0),
                };
                Some((
                    SessionScreen::Verifying {
                        frames,
                        needed,
                        prompt: words.clone(),
                    },
                    None,
                ))
            }
            DaemonEvent::SessionEnded(end) => Some((
                match end.outcome.decision {
                    Decision::Verified => SessionScreen::Verified,
                    Decision::Rejected => SessionScreen::Rejected(
                        end.outcome
                            .reasons
                            .iter()
                            .map(|r| r.name())
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                },
                Some(std::time::Instant::now() + SESSION_HOLD),
            )),
            _ => None,
        };
        if let Some(session) = session {
            self.session = Some(session);
            let mut screen = self.shown.clone().unwrap_or_else(Screen::idle);
            screen.session = self.session.as_ref().map(|(s, _)| s.clone());
            return self.update(screen);
        }
        if let DaemonEvent::CameraLost(_) = event {
            let mut screen = self.shown.clone().unwrap_or_else(Screen::idle);
            screen.label = Label::NoFace;
            screen.fake_percent = None;
            screen.emotion = None;
            screen.faces = 0;
            screen.fps = 0;
            screen.camera = "lost".into();
            self.update(screen)?;
        }
        Ok(())
    }

    /// A blank panel: a stopped daemon must not leave a stale verdict on the screen.
    fn shutdown(&mut self) -> Result<()> {
        let (w, h) = self.panel.size();
        self.panel.show(&RgbCanvas::new(w, h, Rgb888::BLACK))
    }
}

/// The display a config asks for; None when it asks for none.
pub fn open(cfg: &DisplayConfig) -> Result<Option<Box<dyn Panel>>> {
    let png = |path: &Path, width, height| -> Box<dyn Panel> {
        Box::new(PngPanel {
            path: path.to_path_buf(),
            width,
            height,
        })
    };
    Ok(Some(match cfg {
        DisplayConfig::None { .. } => return Ok(None),
        DisplayConfig::Png { path } => png(path, 320, 240),
        DisplayConfig::PngOled { path } => png(path, 128, 64),
        DisplayConfig::Fb { path } => Box::new(FramebufferPanel::open(path)?),
        DisplayConfig::Ssd1306 { path } => Box::new(Ssd1306Panel::open(path)?),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgb565_and_xrgb8888_packing() {
        let rgb565 = [(11, 5), (5, 6), (0, 5)];
        let mut out = [0u8; 4];
        pack_pixel([255, 0, 0], &rgb565, 2, &mut out);
        assert_eq!(u16::from_le_bytes([out[0], out[1]]), 0xF800);
        pack_pixel([0, 255, 0], &rgb565, 2, &mut out);
        assert_eq!(u16::from_le_bytes([out[0], out[1]]), 0x07E0);
        let xrgb = [(16, 8), (8, 8), (0, 8)];
        pack_pixel([0x12, 0x34, 0x56], &xrgb, 4, &mut out);
        assert_eq!(u32::from_le_bytes(out), 0x0012_3456);
    }

    #[test]
    fn missing_i2c_bus_and_a_bus_without_a_display_are_clear_errors() {
        let e = Ssd1306Panel::open(Path::new("/dev/i2c-none"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no such I2C bus"), "{e}");
        // Not an I2C adapter: the driver's first write fails and the error says what to check.
        let e = Ssd1306Panel::open(Path::new("/dev/null")).err().unwrap();
        assert!(e.to_string().contains("/dev/null"), "{e}");
    }

    #[test]
    fn missing_framebuffer_and_non_framebuffer_are_clear_errors() {
        let e = FramebufferPanel::open(Path::new("/dev/fb-none"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("no such framebuffer"), "{e}");
        let e = FramebufferPanel::open(Path::new("/dev/null"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a framebuffer"), "{e}");
    }
}
