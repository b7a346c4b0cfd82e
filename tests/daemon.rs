//! The daemon end to end: `veriface run --source` on the bundled clip with the example config,
//! status file, records, systemd notifications, SIGTERM; config files and their errors.

mod common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{repo, scratch, wait_for};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_veriface"));
    c.current_dir(repo()).env("RUST_LOG", "warn");
    c
}

/// Everything left in a child's output pipe.
fn drain(pipe: Option<impl Read>) -> String {
    let mut text = String::new();
    pipe.expect("pipe was captured")
        .read_to_string(&mut text)
        .unwrap();
    text
}

fn spawn_run(dir: &Path, extra_env: &[(&str, &Path)]) -> Child {
    let mut c = bin();
    c.args([
        "run",
        "--source",
        "tests/data/astronaut_zoom.mp4",
        "--loop",
        "--config",
        "cross/veriface.toml",
        "--records",
    ])
    .arg(dir.join("records"))
    .arg("--status")
    .arg(dir.join("status.json"))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn status(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("status.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// SIGTERM, then the exit status; panics if the daemon takes longer than 2 s to stop.
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if t0.elapsed() > Duration::from_secs(2) {
            let _ = child.kill();
            panic!("daemon did not stop within 2 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_on_a_file_prints_verdicts_writes_status_and_records_and_stops_on_sigterm() {
    let dir = scratch("run");
    let mut child = spawn_run(&dir, &[]);
    // The status file appears once models load; wait until frames have been analysed.
    wait_for(
        "analysed frames in the status file",
        Duration::from_secs(60),
        || status(&dir).is_some_and(|s| s["frames"].as_u64().unwrap_or(0) >= 5),
    );
    let s = status(&dir).unwrap();
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["camera"], "streaming", "{s}");
    assert!(s["faces"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["last_verdict"]["emotion"], "happy", "{s}");
    let p = s["last_verdict"]["probability"]
        .as_f64()
        .expect("a deepfake probability");
    assert!((0.0..=1.0).contains(&p));

    let exit = terminate(&mut child);
    assert!(exit.success(), "exit {exit:?}");
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" face ")).collect();
    assert!(
        !lines.is_empty(),
        "no verdict lines; stdout {out:?} stderr {err:?}"
    );
    assert!(lines.iter().all(|l| l.contains("emotion")), "{lines:?}");
    assert_eq!(status(&dir).unwrap()["state"], "stopped");

    // The records written are readable by `veriface log decode`, start to stop.
    let o = bin()
        .args(["log", "decode"])
        .arg(dir.join("records"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let kinds: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("start"),
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("stop"), "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "face"), "{kinds:?}");
    let faces = kinds.iter().filter(|k| *k == "face").count();

    // CSV carries the same records, and stats count them.
    let o = bin()
        .args(["log", "decode", "--csv"])
        .arg(dir.join("records"))
        .output()
        .unwrap();
    let csv = String::from_utf8(o.stdout).unwrap();
    assert!(csv.starts_with("time,wall_ms,"), "{csv}");
    assert_eq!(csv.lines().count(), kinds.len() + 1);
    let o = bin()
        .args(["log", "stats", "--json"])
        .arg(dir.join("records"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["records"], kinds.len());
    assert_eq!(stats["starts"], 1);
    assert_eq!(stats["stops"], 1);
    let per_verdict: u64 = stats["per_verdict"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_verdict as usize, faces);
}

/// SIGHUP re-reads the config without dropping the camera; a broken edit is refused and the
/// running config kept.
#[test]
fn sighup_reloads_the_config_and_keeps_running() {
    let dir = scratch("hup");
    let config = dir.join("veriface.toml");
    std::fs::copy(repo().join("cross/veriface.toml"), &config).unwrap();
    let mut c = bin();
    c.env("RUST_LOG", "info")
        .args([
            "run",
            "--source",
            "tests/data/astronaut_zoom.mp4",
            "--loop",
            "--quiet",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--records")
        .arg(dir.join("records"))
        .arg("--status")
        .arg(dir.join("status.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    wait_for("analysed frames", Duration::from_secs(60), || {
        status(&dir).is_some_and(|s| s["frames"].as_u64().unwrap_or(0) >= 3)
    });
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("window = 15", "window = 9")).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&config, "[verdict]\nwindow = 0\n").unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(800));
    let frames_before = status(&dir).unwrap()["frames"].as_u64().unwrap();
    wait_for("frames after the reloads", Duration::from_secs(30), || {
        status(&dir).is_some_and(|s| s["frames"].as_u64().unwrap_or(0) > frames_before)
    });
    assert_eq!(status(&dir).unwrap()["camera_outages"], 0);
    assert!(terminate(&mut child).success());
    let err = drain(child.stderr.take());
    assert!(err.contains("SIGHUP:") && err.contains("re-read"), "{err}");
    assert!(
        err.contains("config rejected, keeping the running one"),
        "{err}"
    );
}

/// Faults under a running daemon: its status path blocked (the folder is a file) and then freed,
/// and a model file replaced by another followed by SIGHUP. The daemon stays up through both,
/// says one line for each, keeps the running models and loses no record.
#[test]
fn faults_keep_the_daemon_up_with_one_line_each() {
    let dir = scratch("faults");
    // A private manifest whose files link to the real ones, so one can be replaced.
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    for entry in std::fs::read_dir(repo().join("models")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if path.extension().is_some_and(|e| e == "onnx") {
            std::os::unix::fs::symlink(&path, models.join(&name)).unwrap();
        } else if name == "manifest.toml" {
            std::fs::copy(&path, models.join(&name)).unwrap();
        }
    }
    let blocked = dir.join("blocked");
    std::fs::write(&blocked, "a file where the status folder should be").unwrap();
    let mut child = bin()
        .env("RUST_LOG", "info")
        .args([
            "run",
            "--source",
            "tests/data/astronaut_zoom.mp4",
            "--loop",
            "--quiet",
        ])
        .args(["--config", "cross/veriface.toml", "--models"])
        .arg(models.join("manifest.toml"))
        .arg("--records")
        .arg(dir.join("records"))
        .arg("--status")
        .arg(blocked.join("status.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Several status intervals (1 s) fail; then the path is freed and the file appears.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(child.try_wait().unwrap().is_none(), "the daemon stopped");
    std::fs::remove_file(&blocked).unwrap();
    wait_for(
        "the status file once its path is free",
        Duration::from_secs(30),
        || status(&blocked).is_some_and(|s| s["frames"].as_u64().unwrap_or(0) >= 3),
    );
    // Another model under the deepfake model's name, then SIGHUP: refused, the old one runs on.
    let frame_model = models.join("deepfake_effnet_lite0.onnx");
    std::fs::remove_file(&frame_model).unwrap();
    std::fs::copy(
        repo().join("models/deepfake_effnet_lite0_int8_qdq.onnx"),
        &frame_model,
    )
    .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(1500));
    let frames_before = status(&blocked).unwrap()["frames"].as_u64().unwrap();
    wait_for(
        "frames after the refused reload",
        Duration::from_secs(30),
        || status(&blocked).is_some_and(|s| s["frames"].as_u64().unwrap_or(0) > frames_before),
    );
    assert!(terminate(&mut child).success());
    let err = drain(child.stderr.take());
    let said = |needle: &str| err.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(said("cannot create folder"), 1, "{err}");
    assert_eq!(said("status file written again"), 1, "{err}");
    assert_eq!(
        said("reload failed, keeping the running models"),
        1,
        "{err}"
    );
    assert!(
        err.contains("deepfake_effnet_lite0.onnx: sha256") && err.contains("does not match"),
        "{err}"
    );
    // Every record intact, from the start to the stop.
    let out = bin()
        .args(["log", "decode"])
        .arg(dir.join("records"))
        .output()
        .unwrap();
    let decoded = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && out.stderr.is_empty(), "{:?}", out);
    assert!(decoded
        .lines()
        .next()
        .unwrap()
        .contains(r#""event":"start""#));
    assert!(decoded
        .lines()
        .last()
        .unwrap()
        .contains(r#""event":"stop""#));
    assert!(decoded.contains(r#""event":"face""#));
}

#[test]
fn systemd_is_told_ready_and_stopping() {
    let dir = scratch("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = spawn_run(&dir, &[("NOTIFY_SOCKET", &socket_path)]);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while !seen.iter().any(|m: &String| m.contains("READY=1")) {
        let n = socket.recv(&mut buf).expect("a notification within 60 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let exit = terminate(&mut child);
    let err = drain(child.stderr.take());
    assert!(exit.success(), "{exit:?}: {err}");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen.iter().any(|m| m.contains("STOPPING=1")), "{seen:?}");
}

#[test]
fn example_config_documents_every_key_and_every_profile_checks() {
    let o = bin().args(["config", "defaults"]).output().unwrap();
    assert!(o.status.success());
    let defaults = String::from_utf8(o.stdout).unwrap();
    let example = std::fs::read_to_string(repo().join("cross/veriface.toml")).unwrap();
    let mut section = String::new();
    for line in defaults.lines() {
        if line.starts_with('[') {
            section = line.to_string();
            assert!(example.contains(line), "example lacks {line}");
        } else if let Some((key, _)) = line.split_once(" = ") {
            let scope = if section.is_empty() {
                example.as_str()
            } else {
                example.split(&format!("\n{section}\n")).nth(1).unwrap()
            };
            let documented = scope.lines().any(|l| l.starts_with(&format!("{key} = ")));
            assert!(documented, "example lacks {section} {key}");
        }
    }
    let mut files = vec![repo().join("cross/veriface.toml")];
    for entry in std::fs::read_dir(repo().join("boards")).unwrap() {
        files.push(entry.unwrap().path());
    }
    assert!(files.len() >= 6, "five board profiles and the example");
    let o = bin()
        .args(["config", "check"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn bad_config_and_missing_source_give_one_line_naming_the_cause() {
    let dir = scratch("bad");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[camera]\nwidth = 640\nfsp = 30\n").unwrap();
    for args in [
        vec![
            "config".to_string(),
            "check".into(),
            bad.display().to_string(),
        ],
        vec![
            "run".into(),
            "--config".into(),
            bad.display().to_string(),
            "--source".into(),
            "samples/astronaut.png".into(),
        ],
    ] {
        let o = bin().args(&args).output().unwrap();
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.contains("bad.toml") && last.contains("line 3") && last.contains("fsp"),
            "{args:?}: {err}"
        );
    }
    let o = bin()
        .args(["run", "--source", "no-such-clip.mp4", "--config"])
        .arg(dir.join("absent.toml"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-clip.mp4"), "{err}");
}

#[test]
fn onnxruntime_that_cannot_start_is_one_clear_error_or_a_loud_tract_fallback() {
    let dir = scratch("ort-config");
    let config = dir.join("veriface.toml");
    let write = |fallback: &str| {
        std::fs::write(
            &config,
            format!(
                "[engine]\nbackend = \"onnxruntime\"\n[onnxruntime]\nlibrary = \
                 \"/nonexistent/ort/libonnxruntime.so\"\nfallback = \"{fallback}\"\n\
                 providers = [\"cpu\"]\n"
            ),
        )
        .unwrap();
    };
    write("fail");
    let o = bin()
        .args(["models", "prepare", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let cause = if cfg!(feature = "tensorrt") {
        "/nonexistent/ort/libonnxruntime.so"
    } else {
        "--features tensorrt"
    };
    assert!(err.contains(cause), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "{err}"
    );

    write("tract");
    let o = bin()
        .args(["models", "prepare", "--config"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(err.contains("NOT USED") && err.contains(cause), "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok    emotion") && l.contains("tract")),
        "{out}"
    );
}

/// The local API against `run --source`: garbage gets an error line and the connection and the
/// daemon live on; `status` answers; `verify --daemon` verifies the person in the clip and
/// rejects another for the match; each session is one record; the socket is 0660 and removed
/// at the stop.
#[test]
fn api_socket_runs_verification_sessions_against_the_live_source() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let dir = scratch("api");
    let socket = dir.join("api.sock");
    let config = dir.join("veriface.toml");
    std::fs::copy(repo().join("cross/veriface.toml"), &config).unwrap();
    let faces = common::shared().join("data/faces/real");
    let mut child = bin()
        .args(["run", "--source"])
        .arg(faces.join("liveportrait_driving_videos/lp_d11.mp4"))
        .arg("--loop")
        .arg("--config")
        .arg(&config)
        .arg("--records")
        .arg(dir.join("records"))
        .arg("--api")
        .arg(&socket)
        .arg("--display")
        .arg(format!("png:{}", dir.join("screen.png").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the API socket", Duration::from_secs(60), || {
        socket.exists()
    });
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    let conn = UnixStream::connect(&socket).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut lines = BufReader::new(conn).lines();
    writer.write_all(b"\x00\xffnot json at all\n").unwrap();
    let reply: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(
        reply["error"].as_str().unwrap().starts_with("bad request"),
        "{reply}"
    );
    writer
        .write_all(b"{\"verify\": {\"reference\": \"/no/such.jpg\"}}\n")
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(
        reply["error"].as_str().unwrap().contains("/no/such.jpg"),
        "{reply}"
    );
    writer.write_all(b"{\"status\": {}}\n").unwrap();
    let reply: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(reply["status"]["device_id"], "veriface", "{reply}");

    let verify = |reference: &Path| {
        bin()
            .args(["verify", "--reference"])
            .arg(reference)
            .arg("--daemon")
            .arg(&socket)
            .output()
            .unwrap()
    };
    let same = verify(&faces.join("liveportrait_driving/lp_d11_f0128.jpg"));
    let text = String::from_utf8_lossy(&same.stdout).to_string();
    assert_eq!(
        same.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&same.stderr)
    );
    assert!(text.starts_with("VERIFIED\n"), "{text}");
    assert!(String::from_utf8_lossy(&same.stderr).contains("progress: 1/5 frames"));
    let other = verify(&repo().join("samples/astronaut.png"));
    let text = String::from_utf8_lossy(&other.stdout).to_string();
    assert_eq!(other.status.code(), Some(2), "{text}");
    assert!(text.starts_with("REJECTED: match\n"), "{text}");
    // The screen holds the decision over the live verdict (REAL, green, on this clip).
    let red = {
        use embedded_graphics::pixelcolor::RgbColor;
        let c = veriface::sinks::display::verdict_colour(veriface::verdict::Label::Fake);
        [c.r(), c.g(), c.b()]
    };
    wait_for("REJECTED on screen", Duration::from_secs(2), || {
        image::open(dir.join("screen.png")).is_ok_and(|img| img.to_rgb8().get_pixel(5, 5).0 == red)
    });

    // SIGHUP with the active challenge turned on: the next session announces its prompt.
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("challenge_prompts = 0"));
    std::fs::write(
        &config,
        text.replace("challenge_prompts = 0", "challenge_prompts = 1")
            .replace("prompt_timeout_s = 5.0", "prompt_timeout_s = 1.0"),
    )
    .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(1500));
    let challenged = verify(&faces.join("liveportrait_driving/lp_d11_f0128.jpg"));
    let err = String::from_utf8_lossy(&challenged.stderr).to_string();
    assert!(err.contains("prompt 1/1: "), "{err}");

    assert!(terminate(&mut child).success());
    assert!(!socket.exists(), "the socket is removed at the stop");
    let decoded = bin()
        .args(["log", "decode"])
        .arg(dir.join("records"))
        .output()
        .unwrap();
    let sessions: Vec<serde_json::Value> = String::from_utf8_lossy(&decoded.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["event"] == "session")
        .collect();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(sessions[0]["decision"], "VERIFIED");
    assert_eq!(sessions[1]["decision"], "REJECTED");
    assert_eq!(sessions[1]["reasons"][0], "match");
    assert!(
        sessions.iter().all(|s| s.get("embedding").is_none()),
        "no embedding unless opted in"
    );
}
