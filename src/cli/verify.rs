//! `verify`: one 1:1 verification session on a file or a camera.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;

use veriface::liveness::camera::{CameraCheck, CameraPolicy, CheckedOpener};
use veriface::liveness::challenge::{Challenge, Prompt};
use veriface::pipeline::{Engine, VerifyResult};
use veriface::source::camera::{LiveSource, PixelFormat, Wanted};
use veriface::source::v4l2::V4l2Opener;
use veriface::source::{self, FrameSource};
use veriface::verdict::session::{Component, Decision};

use super::flags::{Cli, VerifyArgs};
use super::resolve::{check_threshold, engine_config};

/// Exit status of a rejected session (0 verified, 1 error).
const REJECTED: u8 = 2;

pub(crate) fn verify(cli: &Cli, args: &VerifyArgs) -> Result<ExitCode> {
    check_threshold(args.threshold)?;
    if let Some(t) = args.match_threshold {
        if !(-1.0..=1.0).contains(&t) {
            anyhow::bail!("--match-threshold {t}: a cosine similarity within -1..1");
        }
    }
    if !(0.0..=1.0).contains(&args.pad_threshold) {
        anyhow::bail!("--pad-threshold {}: within 0..1", args.pad_threshold);
    }
    if args.prompt_timeout.is_nan() || args.prompt_timeout <= 0.0 {
        anyhow::bail!(
            "--prompt-timeout {}: must be above 0 s",
            args.prompt_timeout
        );
    }
    if args.timeout.is_nan() || args.timeout <= 0.0 {
        anyhow::bail!("--timeout {}: must be above 0 s", args.timeout);
    }
    if let Some(socket) = &args.daemon {
        return through_daemon(socket, args);
    }
    let reference = source::read_image(&args.reference)
        .with_context(|| format!("reference {}", args.reference.display()))?;
    let mut config = engine_config(cli, args.detector, args.threshold);
    config.identity = true;
    config.passive = veriface::liveness::PassiveSettings {
        models: args.pad_models.clone(),
        threshold: Some(args.pad_threshold),
    };
    let engine = Engine::load(config)?;
    let enrolled = engine
        .enroll(&reference)
        .with_context(|| format!("reference {}", args.reference.display()))?;
    let match_threshold = match args.match_threshold {
        Some(t) => t,
        None => engine.match_threshold()?,
    };
    let mut camera_check = None;
    let mut frames: Box<dyn FrameSource> = match (&args.source, &args.camera) {
        (Some(path), _) => source::open(path)?,
        (None, Some(device)) => {
            let (camera, check) = open_camera(device, args.allow_virtual_camera)?;
            camera_check = check;
            Box::new(camera)
        }
        (None, None) => unreachable!("clap requires --source or --camera"),
    };
    let mut stream = engine.stream();
    let mut session = engine.verify_session(enrolled, match_threshold, args.min_frames as usize)?;
    session.set_camera(camera_check);
    if args.challenge > 0 {
        let pool = match args.challenge_prompts.is_empty() {
            true => Prompt::DEFAULT_POOL.to_vec(),
            false => args.challenge_prompts.clone(),
        };
        let seed = args.challenge_seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let challenge =
            Challenge::from_pool(seed, args.challenge as usize, &pool, args.prompt_timeout);
        let words: Vec<&str> = challenge
            .prompts()
            .iter()
            .map(|p| p.instruction())
            .collect();
        eprintln!("challenge: {}", words.join(", then "));
        session = session.with_challenge(challenge);
    }
    let mut watched = 0.0;
    let mut first_seconds = None;
    let result = loop {
        let Some(tf) = frames.next_frame()? else {
            break session.end_of_source(watched);
        };
        watched = tf.seconds - *first_seconds.get_or_insert(tf.seconds);
        if watched > args.timeout {
            break session.timed_out(watched);
        }
        let analysed = stream.process(&tf)?;
        if let Some(result) = session.observe(&engine, &tf, &analysed)? {
            break result;
        }
    };
    finish(args, &result)
}

/// `--daemon`: the session runs in the daemon on its camera; progress goes to stderr.
fn through_daemon(socket: &Path, args: &VerifyArgs) -> Result<ExitCode> {
    // The daemon may run as another user in another folder: send the photo itself.
    let bytes = std::fs::read(&args.reference)
        .with_context(|| format!("reference {}: cannot read", args.reference.display()))?;
    let request = serde_json::json!({"verify": {
        "reference_b64": base64::engine::general_purpose::STANDARD.encode(bytes),
        "timeout_s": args.timeout,
    }});
    let last = veriface::api::client_session(socket, &request, |event| {
        if let Some(kind) = event.get("event").and_then(|e| e.as_str()) {
            let field = |k: &str| event.get(k).cloned().unwrap_or_default();
            match kind {
                "progress" => eprintln!("{kind}: {}/{} frames", field("frames"), field("needed")),
                "prompt" => eprintln!(
                    "{kind} {}/{}: {}",
                    field("index").as_u64().unwrap_or(0) + 1,
                    field("count"),
                    field("instruction").as_str().unwrap_or_default()
                ),
                _ => eprintln!("{kind}"),
            }
        }
    })?;
    if let Some(error) = last.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("{}: {error}", socket.display());
    }
    let result: VerifyResult = serde_json::from_value(last["result"].clone())
        .with_context(|| format!("{}: not a session result: {last}", socket.display()))?;
    finish(args, &result)
}

fn finish(args: &VerifyArgs, result: &VerifyResult) -> Result<ExitCode> {
    print!("{}", render(result));
    if let Some(path) = &args.json {
        write_json(path, result)?;
    }
    Ok(match result.outcome.decision {
        Decision::Verified => ExitCode::SUCCESS,
        Decision::Rejected => ExitCode::from(REJECTED),
    })
}

/// The camera behind the camera-injection checks: a virtual or unexpected camera is one error.
fn open_camera(device: &str, allow_virtual: bool) -> Result<(LiveSource, Option<CameraCheck>)> {
    let v4l2 = V4l2Opener::new(
        device.to_string(),
        Wanted {
            format: PixelFormat::Auto,
            width: 1280,
            height: 720,
            fps: 30.0,
        },
    );
    let policy = CameraPolicy {
        allow_virtual,
        ..Default::default()
    };
    let mut opener = CheckedOpener::new(Box::new(v4l2), policy);
    let source = LiveSource::open(&mut opener, Duration::from_secs(5))?;
    let check = opener.state.lock().map(|c| c.clone()).unwrap_or(None);
    Ok((source, check))
}

/// The decision line, then one line per component.
fn render(result: &VerifyResult) -> String {
    let o = &result.outcome;
    let mut s = match o.decision {
        Decision::Verified => "VERIFIED\n".to_string(),
        Decision::Rejected => {
            let reasons: Vec<&str> = o.reasons.iter().map(|r| r.name()).collect();
            format!("REJECTED: {}\n", reasons.join(", "))
        }
    };
    let component = |c: &Component| {
        let score = c.score.map_or("-".to_string(), |v| format!("{v:.3}"));
        let word = if c.accepted { "accepted" } else { "rejected" };
        format!("{score} (threshold {:.4}) {word}", c.threshold)
    };
    s += &format!("match       {}\n", component(&o.matched));
    s += &format!("deepfake    {}\n", component(&o.deepfake));
    match o.liveness.as_ref().and_then(|l| l.passive.as_ref()) {
        Some(passive) => s += &format!("liveness    {} (passive PAD)\n", component(passive)),
        None => s += "liveness    not checked (no PAD model configured: --pad-model)\n",
    }
    if let Some(c) = o.liveness.as_ref().and_then(|l| l.challenge.as_ref()) {
        let names: Vec<&str> = c.prompts.iter().map(|p| p.event()).collect();
        s += &format!(
            "challenge   {}/{} done ({}) {}\n",
            c.completed,
            c.prompts.len(),
            names.join(", "),
            if c.accepted { "accepted" } else { "rejected" }
        );
    }
    if let Some(c) = o.liveness.as_ref().and_then(|l| l.camera.as_ref()) {
        let usb = c
            .usb_id
            .as_deref()
            .map_or(String::new(), |u| format!(" usb {u}"));
        s += &format!(
            "camera      {} ({}{usb}) {}\n",
            c.driver,
            c.card,
            match &c.reason {
                Some(why) if !c.accepted => format!("rejected: {why}"),
                _ => "accepted".into(),
            }
        );
    }
    s += &format!("frames      {} in {:.1} s\n", o.frames, result.duration_s);
    s
}

fn write_json(path: &Path, result: &VerifyResult) -> Result<()> {
    let text = serde_json::to_string_pretty(result)?;
    std::fs::write(path, text + "\n").with_context(|| format!("{}: cannot write", path.display()))
}
