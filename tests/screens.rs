//! The verdict screens: each state in both layouts matches its committed reference image pixel
//! for pixel (regenerate on purpose with VERIFACE_WRITE_SCREENS=1), and `run --display png:`
//! keeps the PNG up to date.

mod common;

use std::path::PathBuf;

use common::repo;
use veriface::sinks::display::{render, Screen, SessionScreen};
use veriface::verdict::Label;

fn screens() -> Vec<(&'static str, Screen)> {
    let base = Screen {
        label: Label::Real,
        fake_percent: Some(12),
        emotion: Some(("happy".into(), 97)),
        faces: 1,
        fps: 14,
        camera: "streaming".into(),
        session: None,
    };
    vec![
        ("real", base.clone()),
        (
            "fake",
            Screen {
                label: Label::Fake,
                fake_percent: Some(91),
                emotion: Some(("neutral".into(), 64)),
                ..base.clone()
            },
        ),
        (
            "uncertain",
            Screen {
                label: Label::Uncertain,
                fake_percent: Some(52),
                faces: 2,
                ..base.clone()
            },
        ),
        (
            "no_face",
            Screen {
                label: Label::NoFace,
                fake_percent: None,
                emotion: None,
                faces: 0,
                ..base.clone()
            },
        ),
        (
            "session_verifying",
            Screen {
                session: Some(SessionScreen::Verifying {
                    frames: 2,
                    needed: 5,
                    prompt: String::new(),
                }),
                ..base.clone()
            },
        ),
        (
            "session_prompt",
            Screen {
                session: Some(SessionScreen::Verifying {
                    frames: 3,
                    needed: 5,
                    prompt: "turn your head left".into(),
                }),
                ..base.clone()
            },
        ),
        (
            "session_verified",
            Screen {
                session: Some(SessionScreen::Verified),
                ..base.clone()
            },
        ),
        (
            "session_rejected",
            Screen {
                session: Some(SessionScreen::Rejected("match, deepfake".into())),
                ..base.clone()
            },
        ),
    ]
}

fn reference(layout: &str, state: &str) -> PathBuf {
    repo().join(format!("tests/data/screens/{layout}_{state}.png"))
}

#[test]
fn every_state_in_both_layouts_matches_its_reference() {
    let write = std::env::var_os("VERIFACE_WRITE_SCREENS").is_some();
    for (layout, (w, h)) in [("oled", (128, 64)), ("colour", (320, 240))] {
        for (state, screen) in screens() {
            let canvas = render(&screen, w, h);
            let path = reference(layout, state);
            if write {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                canvas.save_png(&path).unwrap();
            }
            let want = image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_rgb8();
            assert_eq!((want.width(), want.height()), (w, h), "{layout} {state}");
            let differing = want
                .as_raw()
                .chunks(3)
                .zip(canvas.pixels().chunks(3))
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 0, "{layout} {state}: {differing} pixels differ");
        }
    }
}

#[test]
fn the_oled_layout_is_pure_black_and_white() {
    for (state, screen) in screens() {
        let canvas = render(&screen, 128, 64);
        assert!(
            canvas
                .pixels()
                .chunks(3)
                .all(|p| p == [0, 0, 0] || p == [255, 255, 255]),
            "{state}"
        );
    }
}

#[test]
fn run_with_a_png_display_draws_the_verdict_and_blanks_it_on_stop() {
    let dir = std::env::temp_dir().join(format!("veriface-screens-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("screen.png");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_veriface"))
        .current_dir(repo())
        .args([
            "run",
            "--source",
            "tests/data/astronaut_zoom.mp4",
            "--loop",
            "--quiet",
        ])
        .args(["--config", "cross/veriface.toml", "--records"])
        .arg(dir.join("rec"))
        .arg("--status")
        .arg(dir.join("status.json"))
        .arg("--display")
        .arg(format!("png:{}", png.display()))
        .args(["--leds", "none"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let banners: Vec<[u8; 3]> = [Label::Real, Label::Fake, Label::Uncertain, Label::NoFace]
        .iter()
        .map(|&l| {
            let c = veriface::sinks::display::verdict_colour(l);
            use embedded_graphics::pixelcolor::RgbColor;
            [c.r(), c.g(), c.b()]
        })
        .collect();
    let t0 = std::time::Instant::now();
    let banner = loop {
        assert!(t0.elapsed().as_secs() < 60, "no verdict screen within 60 s");
        // The file is replaced atomically, so a read sees a whole frame or the previous one.
        if let Ok(img) = image::open(&png) {
            let p = img.to_rgb8().get_pixel(5, 5).0;
            if banners.contains(&p) {
                break p;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_ne!(banner, banners[3], "a face is in every frame of the clip");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    // A stopped daemon must not leave a stale verdict on screen.
    let img = image::open(&png).unwrap().to_rgb8();
    assert!(img.pixels().all(|p| p.0 == [0, 0, 0]));
}
