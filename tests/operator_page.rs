//! The operator page in a real browser: `veriface run --source` with `[http] listen`, the page
//! loaded in headless Chromium (Debian's `chromium`, which `.ci/test` installs), assertions on
//! the DOM its script rendered from the live daemon. `VERIFACE_SCREENSHOT=FILE` also saves a
//! screenshot (README's comes from it).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, repo, scratch};

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.get(9..12)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_string()))
}

fn chromium(args: &[&str], url: &str, profile: &Path) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium: install Debian's `chromium` package (.ci/test does)")
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_operator_page_renders_the_live_daemon_in_headless_chromium() {
    let dir = scratch("chromium");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.join("veriface.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"kiosk-7\"\n[records]\ndir = \"{}\"\nflush_ms = 0\n[status]\ninterval_s = 0.5\n[http]\nlisten = \"{addr}\"\n",
            dir.join("records").display()
        ),
    )
    .unwrap();
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_veriface"))
            .current_dir(repo())
            .args([
                "run",
                "--quiet",
                "--loop",
                "--source",
                "tests/data/astronaut_zoom.mp4",
            ])
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The page is served before the models load; wait until faces are in the status.
    let t0 = Instant::now();
    loop {
        let status = get(addr, "/api/status")
            .filter(|(code, _)| *code == 200)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok());
        if status.is_some_and(|s| {
            s["state"] == "running" && s["current"].as_array().is_some_and(|c| !c.is_empty())
        }) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no faces in /api/status"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Read-only: anything but GET is refused.
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "POST /api/status HTTP/1.0\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.0 405") || reply.starts_with("HTTP/1.1 405"),
        "{reply}"
    );

    let url = format!("http://{addr}/");
    let o = chromium(&["--dump-dom"], &url, &dir.join("profile"));
    let dom = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // What the script filled in from /api/status and /api/records.
    assert!(dom.contains(r#"<span id="device">kiosk-7</span>"#), "{dom}");
    assert!(dom.contains(r#"<b id="state">running</b>"#), "{dom}");
    assert!(dom.contains(r#"<b id="camera">streaming</b>"#), "{dom}");
    let faces = dom.matches(r#"<tr class="face">"#).count();
    assert!(faces >= 1, "a face row: {dom}");
    assert!(
        ["REAL", "FAKE", "UNCERTAIN"]
            .iter()
            .any(|l| dom.contains(&format!(r#"<td class="{l}">{l}</td>"#))),
        "a verdict in the faces table: {dom}"
    );
    assert!(
        dom.matches(r#"<tr class="record">"#).count() >= 2,
        "records: {dom}"
    );
    assert!(dom.contains("<td>start</td>"), "the start record: {dom}");
    let confidence = dom
        .split("<td>happy ")
        .nth(1)
        .and_then(|rest| rest.get(..4))
        .and_then(|c| c.parse::<f64>().ok());
    assert!(
        confidence.is_some_and(|c| (0.0..=1.0).contains(&c)),
        "the emotion with its confidence: {dom}"
    );
    assert!(
        dom.contains(r#"<span id="error"></span>"#),
        "no request failed: {dom}"
    );
    // No face pixels on the page.
    assert!(
        !dom.contains("<img") && !dom.contains("data:image"),
        "{dom}"
    );

    if let Ok(path) = std::env::var("VERIFACE_SCREENSHOT") {
        let o = chromium(
            &[
                &format!("--screenshot={path}"),
                "--window-size=1100,720",
                "--hide-scrollbars",
            ],
            &url,
            &dir.join("profile"),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
