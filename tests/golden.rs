//! Golden tests: the Rust preprocessing and tract inference against the Python tools' numpy
//! preprocessing and onnxruntime outputs in models/golden/ (written by models/tools/build.py).
//! Tolerances are stated in golden.json: model outputs |rust - ort| <= abs + rel*|ort|.

mod common;

use common::*;
use veriface::analysis::CropSpec;
use veriface::face::{self, FaceDetector};
use veriface::infer::{tract::TractBackend, Backend, Tensor};
use veriface::manifest::Manifest;
use veriface::source::read_image;

fn manifest() -> Manifest {
    Manifest::load(&repo().join("models/manifest.toml")).expect("manifest loads")
}

fn tol(golden: &serde_json::Value, key: &str) -> f32 {
    golden["tolerance"][key].as_f64().unwrap() as f32
}

/// Every model in golden.json: run its stored input through tract, compare every output.
#[test]
fn every_model_matches_onnxruntime() {
    check_against_onnxruntime(manifest(), 1, |_| true);
}

/// tract's matrix-multiply thread pool splits the work differently: the f32 models must still
/// match within the same tolerance.
#[test]
fn f32_models_match_onnxruntime_with_a_thread_pool() {
    check_against_onnxruntime(manifest(), 2, |key| !key.contains("int8"));
}

/// The manifest picks tract's convolution layout per model; the other layout (what
/// `bench --tract-layout` measures) must compute the same outputs.
#[test]
fn f32_models_match_onnxruntime_in_the_other_convolution_layout() {
    let mut m = manifest();
    let mut flipped = (0, 0);
    for spec in m.models.values_mut() {
        spec.tract_channels_last = !spec.tract_channels_last;
        match spec.tract_channels_last {
            true => flipped.0 += 1,
            false => flipped.1 += 1,
        }
    }
    assert!(
        flipped.0 > 0 && flipped.1 > 0,
        "both layouts are exercised: {flipped:?}"
    );
    check_against_onnxruntime(m, 1, |key| !key.contains("int8"));
}

fn check_against_onnxruntime(m: Manifest, threads: usize, wanted: impl Fn(&str) -> bool) {
    let golden = golden_json();
    let (abs, rel) = (tol(&golden, "model_abs"), tol(&golden, "model_rel"));
    let cases = golden["models"].as_object().unwrap();
    assert!(cases.len() >= 7, "golden covers {} models", cases.len());
    let backend = TractBackend::new(threads);
    for (key, case) in cases.iter().filter(|(key, _)| wanted(key)) {
        let model = backend
            .load(&m, key)
            .unwrap_or_else(|e| panic!("{key}: {e:#}"));
        let inputs = golden_inputs(case);
        let outputs = model.run(&inputs).unwrap();
        let spec = m.model(key).unwrap();
        for (i, name) in spec.outputs.iter().enumerate() {
            let file = case["outputs"][name]
                .as_str()
                .unwrap_or_else(|| panic!("{key}: golden lacks output {name}"));
            let (shape, expected) = read_npy(&golden_dir().join(file));
            assert_eq!(
                outputs[i].data.len(),
                expected.len(),
                "{key}/{name}: shape {:?} vs {shape:?}",
                outputs[i].shape
            );
            if key.contains("int8") {
                // Integer kernels round differently per runtime (tract dequantizes QDQ to float,
                // onnxruntime runs int8 arithmetic): compare direction and scale, not bits.
                let cos = cosine(&outputs[i].data, &expected);
                let min_cos = tol(&golden, "int8_cosine");
                eprintln!("{key}/{name}: cosine to onnxruntime {cos:.5}");
                assert!(
                    cos >= min_cos,
                    "{key}/{name}: cosine {cos} to onnxruntime below {min_cos}"
                );
            } else {
                let excess = max_excess(&outputs[i].data, &expected, rel);
                assert!(excess <= abs, "{key}/{name}: differs from onnxruntime by {excess} beyond rel {rel} (allowed {abs})");
            }
        }
    }
}

#[test]
fn detector_preprocessing_and_decoding_match_the_tools() {
    let m = manifest();
    let golden = golden_json();
    let img = read_image(&repo().join("samples/astronaut.png")).unwrap();
    for key in ["face_short", "face_full"] {
        let spec = m.detector[key].clone();
        let det = FaceDetector::new(
            TractBackend::new(1).load(&m, key).unwrap(),
            spec,
            m.model(key).unwrap(),
        )
        .unwrap();
        let (input, _) = det.input(&img);
        let (_, expected) =
            read_npy(&golden_dir().join(golden["models"][key]["input"].as_str().unwrap()));
        let excess = max_excess(&input.data, &expected, 0.0);
        assert!(
            excess <= tol(&golden, "preprocess_abs"),
            "{key}: letterbox input differs by {excess}"
        );
        let faces = det.detect(&img).unwrap();
        let want = golden["detections"][key].as_array().unwrap();
        assert_eq!(faces.len(), want.len(), "{key}: face count");
        let b = &faces[0].bbox;
        let got = [b.xmin, b.ymin, b.xmax, b.ymax];
        for (g, w) in got.iter().zip(want[0]["box"].as_array().unwrap()) {
            let w = w.as_f64().unwrap();
            assert!(
                (g - w).abs() <= tol(&golden, "box_px") as f64,
                "{key}: box {got:?} vs {:?}",
                want[0]["box"]
            );
        }
        assert!((faces[0].score - want[0]["score"].as_f64().unwrap()).abs() < 1e-3);
    }
}

/// The face crop: same box -> same square region -> same resized, normalised tensor.
#[test]
fn face_crops_match_the_tools() {
    let m = manifest();
    let golden = golden_json();
    let img = read_image(&repo().join("samples/astronaut.png")).unwrap();
    let spec = m.detector["face_short"].clone();
    let det = FaceDetector::new(
        TractBackend::new(1).load(&m, "face_short").unwrap(),
        spec,
        m.model("face_short").unwrap(),
    )
    .unwrap();
    let face = det.detect(&img).unwrap().remove(0);
    for (key, region_key) in [
        ("backbone", "backbone_region"),
        ("emotion", "emotion_region"),
    ] {
        let crop = CropSpec::from_model(m.model(key).unwrap()).unwrap();
        let region = face::square_region(&face.bbox, crop.scale);
        let want: Vec<i64> = golden["crops"][region_key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(
            vec![region.x0, region.y0, region.width as i64],
            want,
            "{key}: crop region"
        );
        let tensor = crop.tensor(&img, &face);
        let (shape, expected) =
            read_npy(&golden_dir().join(golden["models"][key]["input"].as_str().unwrap()));
        assert_eq!(tensor.shape, shape);
        let excess = max_excess(&tensor.data, &expected, 0.0);
        assert!(
            excess <= tol(&golden, "preprocess_abs"),
            "{key}: crop tensor differs by {excess}"
        );
    }
}

#[test]
fn models_say_what_they_should() {
    let m = manifest();
    let golden = golden_json();
    // Backbone: the cat photo is an ImageNet domestic cat (classes 281-285).
    let logits = TractBackend::new(1).load(&m, "backbone_logits").unwrap();
    let (shape, data) = read_npy(&golden_dir().join("cat_input.npy"));
    let out = logits.run(&[Tensor::new(shape, data)]).unwrap();
    let top = argmax(&out[0].data);
    assert!(
        (281..=285).contains(&top),
        "cat classified as ImageNet {top}"
    );
    // Emotion: the astronaut smiles.
    let emotion = TractBackend::new(1).load(&m, "emotion").unwrap();
    let (shape, data) = read_npy(&golden_dir().join("emotion_input.npy"));
    let probs = emotion.run(&[Tensor::new(shape, data)]).unwrap();
    let top = argmax(&probs[0].data);
    assert_eq!(m.model("emotion").unwrap().classes[top], "happy");
    assert_eq!(golden["emotion_top"], "happy");
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0
}

/// `--explain`'s occlusion map: hiding parts of the face moves the fake score more than hiding
/// the crop's border (hair, background), on the sample portrait with the trained model.
#[test]
fn occluding_the_face_matters_more_than_the_background() {
    let engine = veriface::pipeline::Engine::load(veriface::pipeline::EngineConfig::default())
        .expect("engine loads");
    let img = read_image(&repo().join("samples/astronaut.png")).unwrap();
    let det = engine.detector.detect(&img).unwrap().remove(0);
    let df = engine.analyzer.deepfake.as_ref().expect("deepfake model");
    let map = df.occlusion(&img, &det, 32, 16).unwrap();
    assert_eq!((map.rows, map.cols), (13, 13));
    let (mut centre, mut border) = (Vec::new(), Vec::new());
    for r in 0..map.rows {
        for c in 0..map.cols {
            let d = map.drops[r * map.cols + c].abs();
            if r == 0 || c == 0 || r == map.rows - 1 || c == map.cols - 1 {
                border.push(d);
            } else if (3..=9).contains(&r) && (3..=9).contains(&c) {
                centre.push(d);
            }
        }
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    eprintln!(
        "mean |logit change|: face {:.3}, border {:.3} (base logit {:.2})",
        mean(&centre),
        mean(&border),
        map.base_logit
    );
    assert!(mean(&centre) > mean(&border));
}

/// Identity: FaceMesh's five points, the similarity onto the ArcFace template, the warped face and
/// the embedding, against models/tools/identity.py (scikit-image's estimate and warp,
/// onnxruntime's models) on the astronaut. Tolerances are in identity.json.
#[test]
fn identity_alignment_and_embedding_match_the_tools() {
    use veriface::identity::{self, Embedder};
    let m = manifest();
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("identity.json")).unwrap())
            .unwrap();
    let tol = |k: &str| case["tolerance"][k].as_f64().unwrap();
    let img = read_image(&repo().join(case["image"].as_str().unwrap())).unwrap();
    let det = detection(&case["face_box"]);
    let backend = TractBackend::new(1);
    let embedder = Embedder::load(&backend, &m).unwrap();
    let mesh = face::PresenceCheck::new(
        backend.load(&m, "face_mesh").unwrap(),
        m.model("face_mesh").unwrap(),
    )
    .unwrap();
    let points = identity::five_points(&mesh.landmarks(&img, &det).unwrap()).unwrap();
    let want: Vec<[f64; 2]> = serde_json::from_value(case["points"].clone()).unwrap();
    for (got, want) in points.iter().zip(&want) {
        let d = (got[0] - want[0]).hypot(got[1] - want[1]);
        assert!(d <= tol("points_px"), "point {got:?} vs {want:?}: {d} px");
    }
    // From the tools' points, so the matrix and warp are compared on the same input.
    let want_points: identity::FivePoints = want.clone().try_into().unwrap();
    let matrix = identity::alignment(&want_points).unwrap().matrix();
    let want_m: Vec<Vec<f64>> = serde_json::from_value(case["matrix"].clone()).unwrap();
    for r in 0..2 {
        for c in 0..3 {
            assert!(
                (matrix[r][c] - want_m[r][c]).abs() <= tol("matrix_abs"),
                "matrix {matrix:?} vs {want_m:?}"
            );
        }
    }
    let aligned = embedder.align(&img, &want_points).unwrap();
    let (_, want_aligned) = read_npy(&golden_dir().join(case["aligned"].as_str().unwrap()));
    let excess = max_excess(&aligned, &want_aligned, 0.0);
    assert!(
        excess as f64 <= tol("aligned_abs"),
        "aligned face differs by {excess} grey levels"
    );
    let (_, want_input) = read_npy(&golden_dir().join(case["input"].as_str().unwrap()));
    let input = embedder.input(&want_aligned);
    assert!(max_excess(&input.data, &want_input, 0.0) <= 1e-5);
    let (_, raw) = read_npy(&golden_dir().join(case["embedding"].as_str().unwrap()));
    let from_tools = embedder.embed_aligned(&want_aligned).unwrap();
    let cos = cosine(from_tools.values(), &raw);
    assert!(
        cos >= tol("embedding_cosine") as f32,
        "embedding cosine {cos}"
    );
    // The whole Rust chain on the Rust points lands on the same identity.
    let whole = embedder.identify(&img, &det).unwrap();
    let cos = cosine(whole.embedding.values(), &raw);
    assert!(
        cos >= tol("embedding_cosine") as f32,
        "end-to-end embedding cosine {cos}"
    );
}

/// The eye model (the blink cue): each eye's crop against models/tools/eyes.py (scipy's
/// bilinear sampling), the contour against onnxruntime, the openness against the tools'; then
/// the whole Rust chain (tract's FaceMesh points) on the astronaut. Tolerances are in eyes.json.
#[test]
fn eye_crops_model_and_openness_match_the_tools() {
    let m = manifest();
    let case: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("eyes.json")).unwrap())
            .unwrap();
    let tol = |k: &str| case["tolerance"][k].as_f64().unwrap() as f32;
    let img = read_image(&repo().join(case["image"].as_str().unwrap())).unwrap();
    let backend = TractBackend::new(1);
    let eyes = face::EyeModel::new(
        backend.load(&m, "face_eyes").unwrap(),
        m.model("face_eyes").unwrap(),
    )
    .unwrap();
    let iris = backend.load(&m, "face_eyes").unwrap();
    let corner_index = [[33, 133], [362, 263]];
    let mut want_openness = Vec::new();
    for (eye, want) in case["eyes"].as_array().unwrap().iter().enumerate() {
        let mut points = vec![[0f32; 3]; face::MESH_POINTS];
        let corners: Vec<[f32; 2]> = serde_json::from_value(want["corners"].clone()).unwrap();
        for (&i, c) in corner_index[eye].iter().zip(&corners) {
            points[i] = [c[0], c[1], 0.0];
        }
        let matrix = eyes.transform(&points, eye).unwrap();
        let want_m: Vec<Vec<f64>> = serde_json::from_value(want["matrix"].clone()).unwrap();
        for r in 0..2 {
            for c in 0..3 {
                assert!(
                    (matrix[r][c] - want_m[r][c]).abs() <= 1e-5,
                    "eye {eye}: matrix {matrix:?} vs {want_m:?}"
                );
            }
        }
        let input = eyes.input(&img, &matrix);
        let (_, want_input) = read_npy(&golden_dir().join(want["input"].as_str().unwrap()));
        let excess = max_excess(&input, &want_input, 0.0);
        assert!(
            excess <= tol("input_abs"),
            "eye {eye}: crop differs by {excess}"
        );
        let contour = eyes.contour(want_input).unwrap();
        let (_, want_contour) = read_npy(
            &golden_dir().join(
                want["outputs"]["output_eyes_contours_and_brows"]
                    .as_str()
                    .unwrap(),
            ),
        );
        let excess = max_excess(&contour, &want_contour, 0.0);
        assert!(
            excess <= tol("model_abs"),
            "eye {eye}: contour differs by {excess} px"
        );
        // The iris points too (unused by the blink cue; they check the whole model).
        let (shape, input) = read_npy(&golden_dir().join(want["input"].as_str().unwrap()));
        let out = iris.run(&[Tensor::new(shape, input)]).unwrap();
        let (_, want_iris) =
            read_npy(&golden_dir().join(want["outputs"]["output_iris"].as_str().unwrap()));
        let excess = max_excess(&out[1].data, &want_iris, 0.0);
        assert!(
            excess <= tol("model_abs"),
            "eye {eye}: iris differs by {excess} px"
        );
        let openness = want["openness"].as_f64().unwrap() as f32;
        let from_tools = face::openness_of(&want_contour).unwrap();
        assert!(
            (from_tools - openness).abs() <= tol("openness_abs"),
            "eye {eye}: openness {from_tools} vs {openness}"
        );
        want_openness.push(openness);
    }
    // FaceMesh under tract places the corners within a tenth of a pixel of onnxruntime's.
    let det = FaceDetector::new(
        backend.load(&m, "face_short").unwrap(),
        m.detector["face_short"].clone(),
        m.model("face_short").unwrap(),
    )
    .unwrap()
    .detect(&img)
    .unwrap()
    .remove(0);
    let mesh = face::PresenceCheck::new(
        backend.load(&m, "face_mesh").unwrap(),
        m.model("face_mesh").unwrap(),
    )
    .unwrap();
    let got = eyes
        .openness(&img, &mesh.landmarks(&img, &det).unwrap())
        .unwrap();
    for (g, w) in got.iter().zip(&want_openness) {
        assert!(
            (g - w).abs() <= tol("openness_end_to_end_abs"),
            "end to end openness {got:?} vs {want_openness:?}"
        );
    }
}

/// Passive PAD: the mirrored crop against models/tools/pad.py, and the models against
/// onnxruntime's logits on it; every known file passes the PAD manifest's sha256 check. The
/// 128 px models are read from ../shared (never committed); the 80 px ones are conversions that
/// models/tools/minifasnet.py writes into models/tools/.cache/pad (it needs torch), checked
/// where they exist. Tolerances are in pad.json.
#[test]
fn pad_crop_and_models_match_the_tools() {
    use veriface::frame::{crop_resize_reflect_into, Colour, Normalise, Region};
    use veriface::liveness::PadModel;
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("pad.json")).unwrap())
            .unwrap();
    let tol = |k: &str| golden["tolerance"][k].as_f64().unwrap() as f32;
    let img = read_image(&repo().join("samples/astronaut.png")).unwrap();
    let pad_manifest = Manifest::load(&repo().join("models/pad.toml")).unwrap();
    let backend = TractBackend::new(1);
    let shared_dir = common::shared().join("models/pad");
    let converted_dir = repo().join("models/tools/.cache/pad");
    let mut models: Vec<(String, PadModel)> = Vec::new();
    for (key, spec) in &pad_manifest.models {
        let converted = spec.input.shape[2] == 80;
        let path = match converted {
            true => converted_dir.join(&spec.file),
            false => shared_dir.join(&spec.file),
        };
        if converted && !path.exists() {
            eprintln!(
                "{key}: {} not converted here (models/tools/minifasnet.py): skipped",
                path.display()
            );
            continue;
        }
        let m = PadModel::load(&backend, &pad_manifest, &path)
            .unwrap_or_else(|e| panic!("{key}: {e:#}"));
        assert_eq!(&m.key, key);
        models.push((key.clone(), m));
    }
    assert!(models.len() >= 2, "the two 128 px models in ../shared");
    let mut checked = 0;
    for group in ["cases", "cases_80"] {
        let size = golden[group]["size"].as_u64().unwrap() as usize;
        let norm = Normalise {
            mean: 0.0,
            std: golden[group]["std"].as_f64().unwrap() as f32,
        };
        for (name, case) in golden[group]["cases"].as_object().unwrap() {
            let r: Vec<i64> = serde_json::from_value(case["region"].clone()).unwrap();
            let region = Region {
                x0: r[0],
                y0: r[1],
                width: r[2] as usize,
                height: r[2] as usize,
            };
            let mut data = vec![0f32; 3 * size * size];
            crop_resize_reflect_into(&img, region, size, size, Colour::Rgb, norm, &mut data);
            let (_, want) = read_npy(&golden_dir().join(case["input"].as_str().unwrap()));
            let excess = max_excess(&data, &want, 0.0);
            assert!(
                excess <= tol("input_abs"),
                "{name}: PAD crop differs by {excess}"
            );
            let input = Tensor::new(vec![1, 3, size, size], data);
            for (key, want) in case["logits"].as_object().unwrap() {
                let Some((_, model)) = models.iter().find(|(k, _)| k == key) else {
                    continue;
                };
                let got = model.logits(&input).unwrap();
                let want: Vec<f32> = serde_json::from_value(want.clone()).unwrap();
                let allowed = if key.contains("int8") {
                    tol("int8_logit_abs")
                } else {
                    tol("logit_abs")
                };
                let excess = max_excess(&got, &want, 0.0);
                assert!(
                    excess <= allowed,
                    "{name}/{key}: logits {got:?} vs {want:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 4, "{checked} model/case pairs");
    // The face box route lands on the same crop as the tools' region, at each model's scale.
    let det = detection(&golden_json()["detections"]["face_short"][0]["box"]);
    for (key, model) in &models {
        let file = match key.as_str() {
            "minifasnetv2_80" => "pad_inside_v2_input.npy",
            "minifasnetv1se_80" => "pad_inside_v1se_input.npy",
            _ => "pad_inside_input.npy",
        };
        let (_, want) = read_npy(&golden_dir().join(file));
        let input = model.input(&img, &det);
        assert!(
            max_excess(&input.data, &want, 0.0) <= tol("input_abs"),
            "{key}: face-box crop"
        );
        if key == "minifasnetv2se_128" {
            assert!(model.live_probability(&img, &det).unwrap() > 0.5, "{key}");
        }
    }
    // A file that is not a known PAD model is refused, naming it.
    let err = PadModel::load(
        &backend,
        &pad_manifest,
        &repo().join("models/face_landmark.onnx"),
    )
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("is not a PAD model known to"),
        "{err:#}"
    );
}

/// A detection with the box the tools wrote ([xmin, ymin, xmax, ymax]).
fn detection(b: &serde_json::Value) -> face::Detection {
    let b: Vec<f64> = serde_json::from_value(b.clone()).unwrap();
    face::Detection {
        bbox: face::BoxF {
            xmin: b[0],
            ymin: b[1],
            xmax: b[2],
            ymax: b[3],
        },
        score: 1.0,
        keypoints: [(0.0, 0.0); 6],
    }
}
