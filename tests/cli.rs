//! The `veriface` binary on good, bad and odd input: messages, exit codes, outputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{repo, scratch};

fn veriface(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veriface"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn analyzes_the_bundled_photo_and_writes_json_and_plots() {
    let dir = scratch("photo");
    let json = dir.join("out.json");
    let plots = dir.join("plots");
    let o = veriface(&[
        "analyze",
        "samples/astronaut.png",
        "--json",
        json.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("frame 0  t=0.00s  face 1"), "{out}");
    assert!(out.contains("emotion happy"), "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let file = &report["files"][0];
    assert_eq!(file["width"], 512);
    assert_eq!(file["summary"]["frames_with_faces"], 1);
    assert_eq!(file["summary"]["emotions"][0][0], "happy");
    assert!(report["models"].as_array().unwrap().len() >= 5);
    for suffix in ["deepfake", "emotion"] {
        let png = plots.join(format!("samples_astronaut_png_{suffix}.png"));
        let img = image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(img.width() >= 600);
    }
}

#[test]
fn analyzes_the_h264_clip_frame_by_frame_with_one_track() {
    let o = veriface(&["analyze", "tests/data/astronaut_zoom.mp4", "--every", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("frame ")).collect();
    assert_eq!(lines.len(), 10, "every 3rd of 30 frames: {out}");
    assert!(
        lines[1].starts_with("frame 3  t=0.30s  face 1"),
        "{}",
        lines[1]
    );
    assert!(
        lines.iter().all(|l| l.contains("face 1")),
        "the zooming face keeps track 1: {out}"
    );
    assert!(
        out.contains("10 analysed, 10 with faces, 1 face track"),
        "{out}"
    );
}

#[test]
fn image_without_a_face_says_so_and_is_not_a_verdict() {
    let dir = scratch("noface");
    let path = dir.join("sky.png");
    let img = image::RgbImage::from_fn(160, 120, |x, y| {
        image::Rgb([(x * 255 / 160) as u8, (y * 255 / 120) as u8, 200])
    });
    img.save(&path).unwrap();
    let o = veriface(&["analyze", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("frame 0  t=0.00s  no face"), "{out}");
    assert!(out.contains("verdict     NO FACE"), "{out}");
    assert!(!out.contains("REAL") && !out.contains("FAKE"), "{out}");
}

fn assert_one_error(o: &Output, file: &Path, cause: &str) {
    assert!(
        !o.status.success(),
        "expected failure, got success: {}",
        stdout(o)
    );
    assert_eq!(o.status.code(), Some(1));
    let errors = error_lines(o);
    assert_eq!(errors.len(), 1, "one error line expected: {}", stderr(o));
    assert!(
        errors[0].contains(&file.display().to_string()),
        "error names the file: {}",
        errors[0]
    );
    assert!(
        errors[0].contains(cause),
        "error says {cause:?}: {}",
        errors[0]
    );
}

#[test]
fn corrupt_image_is_one_clear_error() {
    let dir = scratch("corrupt");
    let path = dir.join("broken.jpg");
    std::fs::write(&path, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    assert_one_error(
        &veriface(&["analyze", path.to_str().unwrap()]),
        &path,
        "not a readable image",
    );
}

#[test]
fn empty_files_are_one_clear_error() {
    let dir = scratch("empty");
    for name in ["empty.png", "empty.mp4"] {
        let path = dir.join(name);
        std::fs::write(&path, b"").unwrap();
        assert_one_error(
            &veriface(&["analyze", path.to_str().unwrap()]),
            &path,
            "empty file",
        );
    }
}

/// README's first command works on a machine without FFmpeg: the bundled clip is Motion JPEG,
/// decoded in-process; any other video still names the missing program and the remedy.
#[test]
fn the_bundled_samples_need_no_ffmpeg() {
    let empty_path = scratch("no-ffmpeg-path");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_veriface"))
            .args(args)
            .current_dir(repo())
            .env("PATH", &empty_path)
            .output()
            .expect("binary runs")
    };
    let o = run(&["analyze", "samples/", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.matches("== samples/").count(), 3, "{out}");
    assert!(out.contains("== samples/astronaut_zoom.avi"), "{out}");
    assert!(
        out.contains("30 analysed, 30 with faces, 1 face track"),
        "{out}"
    );
    let o = run(&["analyze", "tests/data/astronaut_zoom.mp4"]);
    assert_one_error(
        &o,
        Path::new("tests/data/astronaut_zoom.mp4"),
        "apt install ffmpeg",
    );
}

#[test]
fn truncated_video_reports_good_frames_then_fails() {
    let dir = scratch("truncated");
    let bytes = std::fs::read(repo().join("tests/data/astronaut_zoom.mp4")).unwrap();
    let path = dir.join("cut.mp4");
    std::fs::write(&path, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let o = veriface(&["analyze", path.to_str().unwrap()]);
    assert_one_error(&o, &path, "truncated or corrupt video");
    let frames = stdout(&o)
        .lines()
        .filter(|l| l.starts_with("frame "))
        .count();
    assert!(
        frames > 0 && frames < 30,
        "frames before the cut are still reported: {frames}"
    );
}

#[test]
fn a_bad_file_in_a_folder_does_not_lose_the_good_ones() {
    let dir = scratch("mixed");
    std::fs::copy(repo().join("samples/astronaut.png"), dir.join("a_good.png")).unwrap();
    std::fs::write(dir.join("b_bad.png"), b"garbage").unwrap();
    let json = dir.join("r.json");
    let o = veriface(&[
        "analyze",
        dir.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_one_error(&o, &dir.join("b_bad.png"), "not a readable image");
    assert!(stdout(&o).contains("a_good.png"));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["files"].as_array().unwrap().len(), 1);
    assert!(report["errors"][0]["file"]
        .as_str()
        .unwrap()
        .ends_with("b_bad.png"));
}

#[test]
fn a_link_back_to_a_parent_folder_is_skipped_not_walked_forever() {
    let dir = scratch("linkloop");
    std::fs::create_dir_all(dir.join("people")).unwrap();
    std::fs::copy(
        repo().join("samples/astronaut.png"),
        dir.join("people/astronaut.png"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..", dir.join("people/up")).unwrap();
    let o = veriface(&["analyze", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).matches("astronaut.png").count(),
        1,
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("a link back to a folder above it"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn missing_input_is_one_clear_error() {
    let o = veriface(&["analyze", "no/such/clip.mp4"]);
    assert_one_error(&o, Path::new("no/such/clip.mp4"), "no such file or folder");
}

/// A copy of models/ (files linked, manifest copied) whose one file can be damaged.
fn model_copy(name: &str) -> PathBuf {
    let dir = scratch(name);
    for entry in std::fs::read_dir(repo().join("models")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    dir
}

#[test]
fn wrong_or_missing_model_file_is_named() {
    let dir = model_copy("badmodel");
    let emotion = dir.join("emotion_mini_xception.onnx");
    let mut bytes = std::fs::read(&emotion).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&emotion, &bytes).unwrap();
    let manifest = dir.join("manifest.toml");
    let o = veriface(&[
        "analyze",
        "samples/astronaut.png",
        "--models",
        manifest.to_str().unwrap(),
    ]);
    assert_one_error(&o, &emotion, "does not match the manifest");

    std::fs::remove_file(&emotion).unwrap();
    let o = veriface(&[
        "analyze",
        "samples/astronaut.png",
        "--models",
        manifest.to_str().unwrap(),
    ]);
    assert_one_error(&o, &emotion, "cannot read model file");
}

#[test]
fn a_model_with_fewer_outputs_than_its_manifest_names_is_a_load_error() {
    // The features-only backbone under the deepfake key, with its own hash: the file verifies
    // and its input fits, but it gives one output where the stage reads (features, fake_logit).
    let dir = model_copy("fewoutputs");
    let manifest = dir.join("manifest.toml");
    let mut doc: toml::Table = std::fs::read_to_string(&manifest).unwrap().parse().unwrap();
    let models = doc["models"].as_table_mut().unwrap();
    let backbone = models["backbone"].as_table().unwrap().clone();
    let deepfake = models["deepfake"].as_table_mut().unwrap();
    for key in ["file", "sha256", "normalise", "crop_scale"] {
        deepfake.insert(key.into(), backbone[key].clone());
    }
    std::fs::write(&manifest, doc.to_string()).unwrap();
    let o = veriface(&[
        "analyze",
        "samples/astronaut.png",
        "--models",
        manifest.to_str().unwrap(),
    ]);
    assert_one_error(
        &o,
        &dir.join("efficientnet_lite0_features.onnx"),
        "the model gives 1 output, the manifest names 2 (features, fake_logit)",
    );
}

#[test]
fn unreadable_manifest_is_named() {
    let dir = scratch("manifest");
    let manifest = dir.join("manifest.toml");
    std::fs::write(&manifest, "schema = [[[").unwrap();
    let o = veriface(&[
        "analyze",
        "samples/astronaut.png",
        "--models",
        manifest.to_str().unwrap(),
    ]);
    assert_one_error(&o, &manifest, "invalid manifest");
}

#[test]
fn models_command_checks_every_file() {
    let o = veriface(&["models"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.lines().filter(|l| l.starts_with("ok ")).count() >= 7,
        "{out}"
    );
}

#[test]
fn help_exists_for_every_command() {
    for cmd in [
        vec!["--help"],
        vec!["analyze", "--help"],
        vec!["models", "--help"],
        vec!["bench", "--help"],
    ] {
        let o = veriface(&cmd);
        assert!(o.status.success());
        assert!(stdout(&o).contains("Usage"), "{cmd:?}");
    }
}

/// With a deepfake model chosen, every face line has a frame and a temporal score in [0, 1],
/// and the file gets a REAL / FAKE / UNCERTAIN verdict from the temporal model.
#[test]
fn deepfake_model_scores_every_face_and_the_gru_gives_the_verdict() {
    let dir = scratch("deepfake");
    let json = dir.join("r.json");
    let o = veriface(&[
        "analyze",
        "tests/data/astronaut_zoom.mp4",
        "--deepfake-model",
        "deepfake",
        "--max-frames",
        "8",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let file = &report["files"][0];
    let frames = file["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 8);
    for f in frames {
        let face = &f["faces"][0];
        for key in ["deepfake", "temporal"] {
            let p = face[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {face}"));
            assert!((0.0..=1.0).contains(&p));
        }
    }
    let summary = &file["summary"];
    assert_eq!(summary["score_source"], "temporal model");
    // The summary score is the GRU's output after the last frame.
    assert_eq!(summary["score"], frames[7]["faces"][0]["temporal"]);
    assert!(["REAL", "FAKE", "UNCERTAIN"].contains(&summary["label"].as_str().unwrap()));
}

#[test]
fn unknown_deepfake_model_key_is_named() {
    let o = veriface(&[
        "analyze",
        "samples/astronaut.png",
        "--deepfake-model",
        "nope",
    ]);
    assert!(!o.status.success());
    assert!(
        error_lines(&o)[0].contains("no model \"nope\""),
        "{}",
        stderr(&o)
    );
}

/// `eval` on a small labelled set made from the samples: the report, JSON objects with every
/// metric, both plots, a face-less image counted and a corrupt file listed, never dropped.
#[test]
fn eval_reports_metrics_json_plots_and_lists_what_it_could_not_score() {
    let dir = scratch("eval");
    let set = dir.join("set");
    for d in ["real/clip", "fake"] {
        std::fs::create_dir_all(set.join(d)).unwrap();
    }
    let samples = repo().join("samples");
    std::fs::copy(
        samples.join("astronaut.png"),
        set.join("real/astronaut.png"),
    )
    .unwrap();
    // A folder of frames is one item: two copies of the portrait, slightly cropped.
    let img = image::open(samples.join("astronaut.png")).unwrap();
    img.crop_imm(0, 0, 500, 500)
        .save(set.join("real/clip/0001.png"))
        .unwrap();
    img.crop_imm(10, 10, 490, 490)
        .save(set.join("real/clip/0002.png"))
        .unwrap();
    std::fs::copy(
        repo().join("tests/data/astronaut_zoom.mp4"),
        set.join("fake/zoom.mp4"),
    )
    .unwrap();
    image::RgbImage::from_pixel(320, 240, image::Rgb([90, 90, 90]))
        .save(set.join("fake/blank.png"))
        .unwrap();
    std::fs::write(set.join("fake/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let json = dir.join("eval.json");
    let plots = dir.join("plots");
    let o = veriface(&[
        "eval",
        set.to_str().unwrap(),
        "--max-frames",
        "6",
        "--jobs",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    // The corrupt file makes the run fail, after everything else is reported.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("APCER") && out.contains("BPCER"), "{out}");
    assert!(
        out.contains("no face: ") && out.contains("blank.png"),
        "{out}"
    );
    assert!(
        out.contains("unreadable: ") && out.contains("broken.png"),
        "{out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for level in ["frame", "video"] {
        for key in [
            "auc",
            "eer",
            "accuracy",
            "precision",
            "recall",
            "f1",
            "apcer",
            "bpcer",
            "confusion",
            "threshold",
        ] {
            assert!(!report[level][key].is_null(), "{level}.{key} missing");
        }
    }
    // Items: the portrait, the frame folder, the video; 6 + 2 + 1 frames.
    assert_eq!(report["video"]["items"], 3);
    assert_eq!(report["frame"]["items"], 9);
    assert_eq!(report["items"].as_array().unwrap().len(), 3);
    for png in ["roc.png", "histograms.png"] {
        let img = image::open(plots.join(png)).unwrap();
        assert!(img.width() > 300, "{png}");
    }

    // Calibration: the printed config snippet parses and meets its BPCER target (or, where a
    // real item scores 1.0, one error line says no threshold can).
    let o = veriface(&[
        "eval",
        set.to_str().unwrap(),
        "--max-frames",
        "6",
        "--calibrate",
        "0.0",
    ]);
    let out = stdout(&o);
    if !out.contains("[verdict]") {
        let errors = error_lines(&o);
        assert!(
            errors.len() == 1 && errors[0].contains("no threshold up to 1.0"),
            "{}",
            stderr(&o)
        );
        return;
    }
    let snippet: String = out
        .lines()
        .skip_while(|l| *l != "[verdict]")
        .take(6)
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = veriface::daemon::config::Config::parse(&snippet)
        .unwrap_or_else(|e| panic!("{e:#}\n{snippet}"));
    assert!(out.contains("BPCER 0.0000"), "{out}");
    let threshold = cfg
        .verdict
        .threshold
        .expect("the printed [verdict] has a threshold");
    assert!((0.0..=1.0 + 1e-5).contains(&threshold));
}

#[test]
fn eval_of_a_folder_without_classes_is_one_clear_error() {
    let dir = scratch("eval-empty");
    let o = veriface(&["eval", dir.to_str().unwrap()]);
    assert!(!o.status.success());
    let errors = error_lines(&o);
    assert_eq!(errors.len(), 1, "{}", stderr(&o));
    assert!(errors[0].contains("real/ or fake/"), "{errors:?}");
}

/// `--cropped`: every image is one aligned face, so even a blank crop is scored (no detector
/// to miss it), one frame per image.
#[test]
fn eval_cropped_scores_every_image_without_detection() {
    let dir = scratch("eval-cropped");
    let img = image::open(repo().join("samples/astronaut.png")).unwrap();
    for (class, i) in [("real", 0), ("real", 1), ("fake", 2), ("fake", 3)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        let crop = img.crop_imm(150 + 10 * i, 40, 200, 200);
        crop.save(dir.join(format!("{class}/{i}.png"))).unwrap();
    }
    image::RgbImage::from_pixel(112, 112, image::Rgb([128, 128, 128]))
        .save(dir.join("fake/blank.png"))
        .unwrap();
    let json = dir.join("e.json");
    let o = veriface(&[
        "eval",
        dir.to_str().unwrap(),
        "--cropped",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["video"]["items"], 5);
    assert_eq!(report["frame"]["items"], 5);
    assert_eq!(report["no_face"].as_array().unwrap().len(), 0);
}

/// `bench --model KEY --profile` times every node of the optimised plan: the node times add up
/// to the reported total, and the layout and ops flags really change the plan (channel-last adds
/// the transposes into and out of the convolutions; veriface's ops replace tract's max pools,
/// and its depthwise convolutions where the model runs channel-last).
#[test]
fn bench_profile_times_every_node_in_the_chosen_layout() {
    let mut moves = Vec::new();
    for layout in ["nchw", "nhwc"] {
        for ops_from in ["tract", "veriface"] {
            let o = veriface(&[
                "bench",
                "--model",
                "emotion",
                "--profile",
                "--tract-layout",
                layout,
                "--tract-ops",
                ops_from,
                "--iterations",
                "2",
                "--json",
            ]);
            assert!(o.status.success(), "{}", stderr(&o));
            let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
            assert_eq!(doc["conv_layout"], layout.to_uppercase());
            assert_eq!(doc["own_ops"], ops_from == "veriface");
            let nodes = doc["nodes"].as_array().unwrap();
            let sum: f64 = nodes.iter().map(|n| n["mean_ms"].as_f64().unwrap()).sum();
            let total = doc["total_ms"].as_f64().unwrap();
            assert!(
                total > 0.0 && (sum - total).abs() < 1e-6 * total.max(1.0),
                "{sum} vs {total}"
            );
            let ops = |name: &str| nodes.iter().filter(|n| n["op"] == name).count();
            let depthwise = match (layout, ops_from) {
                ("nhwc", "veriface") => "VerifaceDepthwiseNhwc",
                _ => "DepthWiseConv",
            };
            assert_eq!(
                ops(depthwise),
                8,
                "mini-Xception's separable convolutions ({layout}, {ops_from})"
            );
            let pool = match ops_from {
                "veriface" => "VerifaceMaxPool",
                _ => "OptMaxPool",
            };
            assert_eq!(ops(pool), 4, "mini-Xception's pools ({layout}, {ops_from})");
            moves.push(ops("MoveAxis"));
        }
    }
    assert_eq!(moves[..2], [0, 0], "NCHW runs the file's layout as it is");
    assert!(moves[2] > 0 && moves[3] > 0, "NHWC moves the channels last");
}

/// `bench --profile --mark-nodes` under qemu with benches/arm/insn_count.c: the plugin gives
/// every evaluated node of the one marked inference its own instruction count (the marker is a
/// system call no kernel has, so the same binary also runs natively, as the profile test above
/// shows). Run on x86_64 here, as benches/arm/node_insns.py runs it on aarch64.
#[test]
fn mark_nodes_lets_the_qemu_plugin_count_instructions_per_node() {
    let dir = scratch("mark-nodes");
    let plugin = dir.join("insn_count.so");
    let built = Command::new("gcc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&plugin)
        .arg(repo().join("benches/arm/insn_count.c"))
        .status()
        .expect("gcc (CI installs it)");
    assert!(built.success());
    let o = Command::new("qemu-x86_64")
        .arg("-plugin")
        .arg(&plugin)
        .args(["-d", "plugin"])
        .arg(env!("CARGO_BIN_EXE_veriface"))
        .args(["bench", "--model", "emotion", "--profile", "--mark-nodes"])
        .args(["--iterations", "1", "--json"])
        .current_dir(repo())
        .output()
        .expect("qemu-x86_64 (qemu-user; CI installs it)");
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mut counted = std::collections::HashMap::new();
    let mut total = 0u64;
    for line in stderr(&o).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields[..] {
            ["node", id, insns, calls] => {
                assert_eq!(calls, "1", "one marked inference: {line}");
                counted.insert(id.parse::<u64>().unwrap(), insns.parse::<u64>().unwrap());
            }
            ["insns", n] => total = n.parse().unwrap(),
            _ => {}
        }
    }
    let nodes = doc["nodes"].as_array().unwrap();
    let insns = |n: &serde_json::Value| counted.get(&n["id"].as_u64().unwrap()).copied();
    for node in nodes
        .iter()
        .filter(|n| n["op"] == "DepthWiseConv" || n["op"] == "OptMatMul")
    {
        assert!(insns(node).unwrap_or(0) > 1000, "{node}");
        assert_eq!(node["output_type"], "F32");
    }
    let sum: u64 = counted.values().sum();
    assert!(sum > 0 && sum < total, "nodes {sum} of {total}");
    let heaviest = nodes.iter().max_by_key(|n| insns(n).unwrap_or(0)).unwrap();
    assert_ne!(heaviest["op"], "Const", "constants do no work: {heaviest}");
}
