//! The ONNX Runtime backend (`--features tensorrt`). With a libonnxruntime.so at hand (the
//! onnxruntime wheel on PyPI ships a CPU one; `.ci/run` unpacks it and sets ORT_DYLIB_PATH), every
//! golden model runs through ONNX Runtime and must match both the Python reference outputs and
//! tract. Without the library the tests say why they are skipped. The fallback policy is tested in
//! every build.

mod common;

use common::*;
use veriface::infer::accel::{Fallback, OrtOptions};
use veriface::infer::{open_backend, BackendChoice};
use veriface::manifest::Manifest;

fn manifest() -> Manifest {
    Manifest::load(&repo().join("models/manifest.toml")).expect("manifest loads")
}

fn missing_library(fallback: Fallback) -> OrtOptions {
    OrtOptions {
        library: "/nonexistent/ort/libonnxruntime.so".into(),
        fallback,
        ..OrtOptions::default()
    }
}

#[test]
fn unusable_onnxruntime_fails_or_falls_back_to_tract_as_configured() {
    let choice = BackendChoice::Onnxruntime(missing_library(Fallback::Fail));
    let msg = format!("{:#}", open_backend(&choice, 1).err().expect("must fail"));
    if cfg!(feature = "tensorrt") {
        assert!(msg.contains("/nonexistent/ort/libonnxruntime.so"), "{msg}");
    } else {
        assert!(msg.contains("--features tensorrt"), "{msg}");
    }
    let choice = BackendChoice::Onnxruntime(missing_library(Fallback::Tract));
    let backend = open_backend(&choice, 1).expect("falls back");
    assert_eq!(backend.name(), "tract");
    let model = backend.load(&manifest(), "emotion").unwrap();
    assert_eq!(model.provider(), "tract");
}

#[cfg(feature = "tensorrt")]
mod with_library {
    use super::*;
    use veriface::infer::accel::Provider;
    use veriface::infer::tract::TractBackend;
    use veriface::infer::Backend;

    /// $ORT_DYLIB_PATH, else the wheel in the model tools' venv; None says why not.
    fn library() -> Option<String> {
        if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
            return Some(p).filter(|p| std::path::Path::new(p).is_file());
        }
        let venv = repo().join(".venv/lib");
        for py in std::fs::read_dir(&venv).ok()?.flatten() {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            for f in std::fs::read_dir(&capi).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if name.starts_with("libonnxruntime.so") {
                    return Some(f.path().display().to_string());
                }
            }
        }
        None
    }

    fn options(providers: Vec<Provider>, fallback: Fallback) -> Option<OrtOptions> {
        let Some(library) = library() else {
            eprintln!(
                "SKIPPED: no libonnxruntime.so (set ORT_DYLIB_PATH, or pip install onnxruntime in .venv)"
            );
            return None;
        };
        Some(OrtOptions {
            library,
            providers,
            fallback,
            cache_dir: std::env::temp_dir()
                .join(format!("veriface-trt-cache-{}", std::process::id()))
                .display()
                .to_string(),
            ..OrtOptions::default()
        })
    }

    fn tol(golden: &serde_json::Value, key: &str) -> f32 {
        golden["tolerance"][key].as_f64().unwrap() as f32
    }

    /// Every golden model through ONNX Runtime: against the Python onnxruntime reference and
    /// against tract, with golden.json's tolerances (cosine for int8, where ORT runs integer
    /// kernels and tract dequantizes to float).
    #[test]
    fn every_model_matches_the_reference_and_tract() {
        let all = vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu];
        let Some(opts) = options(all, Fallback::Fail) else {
            return;
        };
        let backend = open_backend(&BackendChoice::Onnxruntime(opts), 1).unwrap();
        assert_eq!(backend.name(), "onnxruntime");
        let m = manifest();
        let golden = golden_json();
        let (abs, rel) = (tol(&golden, "model_abs"), tol(&golden, "model_rel"));
        let min_cos = tol(&golden, "int8_cosine");
        let cases = golden["models"].as_object().unwrap();
        assert!(cases.len() >= 7);
        for (key, case) in cases {
            let ort_model = backend
                .load(&m, key)
                .unwrap_or_else(|e| panic!("{key}: {e:#}"));
            // The CPU wheel has neither TensorRT nor CUDA: the provider that ran must say CPU.
            eprintln!("{key}: runs on {}", ort_model.provider());
            assert!(!ort_model.provider().is_empty() && ort_model.provider() != "tract");
            let tract_model = TractBackend::new(1).load(&m, key).unwrap();
            let inputs = golden_inputs(case);
            let ours = ort_model.run(&inputs).unwrap();
            let tract = tract_model.run(&inputs).unwrap();
            let spec = m.model(key).unwrap();
            assert_eq!(ours.len(), spec.outputs.len(), "{key}: output count");
            for (i, name) in spec.outputs.iter().enumerate() {
                let (_, reference) =
                    read_npy(&golden_dir().join(case["outputs"][name].as_str().unwrap()));
                assert_eq!(ours[i].shape, tract[i].shape, "{key}/{name}: shape");
                assert_eq!(ours[i].data.len(), reference.len(), "{key}/{name}: size");
                if key.contains("int8") {
                    let to_ref = cosine(&ours[i].data, &reference);
                    let to_tract = cosine(&ours[i].data, &tract[i].data);
                    eprintln!(
                        "{key}/{name}: cosine to reference {to_ref:.5}, to tract {to_tract:.5}"
                    );
                    assert!(
                        to_ref >= min_cos,
                        "{key}/{name}: cosine {to_ref} to reference"
                    );
                    assert!(
                        to_tract >= min_cos,
                        "{key}/{name}: cosine {to_tract} to tract"
                    );
                } else {
                    let to_ref = max_excess(&ours[i].data, &reference, rel);
                    let to_tract = max_excess(&ours[i].data, &tract[i].data, rel);
                    eprintln!("{key}/{name}: excess over rel to reference {to_ref:.2e}, to tract {to_tract:.2e}");
                    assert!(
                        to_ref <= abs,
                        "{key}/{name}: {to_ref} beyond tolerance to reference"
                    );
                    assert!(
                        to_tract <= abs,
                        "{key}/{name}: {to_tract} beyond tolerance to tract"
                    );
                }
            }
        }
    }

    #[test]
    fn cpu_library_runs_the_next_provider_and_reports_it() {
        let all = vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu];
        let Some(opts) = options(all, Fallback::Fail) else {
            return;
        };
        let backend = open_backend(&BackendChoice::Onnxruntime(opts), 1).unwrap();
        let model = backend.load(&manifest(), "emotion").unwrap();
        // The PyPI CPU wheel has no GPU providers; a GPU build would come up earlier.
        let expected = if gpu_library() {
            model.provider().to_string()
        } else {
            "CPUExecutionProvider".to_string()
        };
        assert_eq!(model.provider(), expected);
    }

    #[test]
    fn tensorrt_only_follows_the_fallback_policy() {
        if gpu_library() {
            eprintln!("SKIPPED: this libonnxruntime.so has TensorRT; the policy needs it absent");
            return;
        }
        let Some(fail) = options(vec![Provider::Tensorrt], Fallback::Fail) else {
            return;
        };
        let backend = open_backend(&BackendChoice::Onnxruntime(fail), 1).unwrap();
        let msg = format!("{:#}", backend.load(&manifest(), "emotion").err().unwrap());
        assert!(msg.contains("TensorrtExecutionProvider"), "{msg}");
        assert!(msg.contains("emotion_mini_xception.onnx"), "{msg}");

        let tract = options(vec![Provider::Tensorrt], Fallback::Tract).unwrap();
        let backend = open_backend(&BackendChoice::Onnxruntime(tract), 1).unwrap();
        let model = backend.load(&manifest(), "emotion").unwrap();
        assert_eq!(model.provider(), "tract");
    }

    /// Whether the library at hand has a GPU provider (a Jetson or CUDA build).
    fn gpu_library() -> bool {
        let Some(opts) = options(vec![Provider::Cpu], Fallback::Fail) else {
            return false;
        };
        let backend = veriface::infer::ort::OrtBackend::open(&opts, 1).unwrap();
        backend.compiled_in().iter().any(|p| *p != Provider::Cpu)
    }
}
