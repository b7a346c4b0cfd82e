//! Helpers shared by the integration tests: the repository paths and a minimal .npy reader.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn golden_dir() -> PathBuf {
    repo().join("models/golden")
}

pub fn golden_json() -> serde_json::Value {
    let text = std::fs::read_to_string(golden_dir().join("golden.json"))
        .expect("models/golden/golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

/// Read a little-endian float32, C-order .npy file (what numpy.save writes for our goldens).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not an npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'"),
        "{}: expected <f4, header {header}",
        path.display()
    );
    assert!(header.contains("'fortran_order': False"));
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}: size mismatch",
        path.display()
    );
    (shape, data)
}

/// Largest |a-b| - rel*|b| over two equal-length slices (<= abs means within tolerance).
pub fn max_excess(a: &[f32], b: &[f32], rel: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() - rel * y.abs())
        .fold(f32::MIN, f32::max)
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(f32::MIN_POSITIVE)
}

/// A golden.json model case's input tensors: one ("input") or several in model order
/// ("inputs", e.g. a GRU's features and hidden state).
pub fn golden_inputs(case: &serde_json::Value) -> Vec<veriface::infer::Tensor> {
    let names: Vec<&str> = match case.get("inputs") {
        Some(list) => list
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect(),
        None => vec![case["input"].as_str().unwrap()],
    };
    names
        .iter()
        .map(|n| {
            let (shape, data) = read_npy(&golden_dir().join(n));
            veriface::infer::Tensor::new(shape, data)
        })
        .collect()
}

/// `../shared` beside the repository (data that may not be committed); CI clones it there.
pub fn shared() -> PathBuf {
    let dir = repo()
        .parent()
        .expect("the repository has a parent folder")
        .join("shared");
    assert!(
        dir.join("README.md").exists(),
        "{}: the shared data folder is missing (it sits beside the repository)",
        dir.display()
    );
    dir
}

/// A fresh, empty folder for one test: `veriface-<test binary>-<name>-<pid>` under the temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let stem = exe.file_stem().and_then(|s| s.to_str()).unwrap_or("test");
    // Cargo names test binaries `<file>-<hash>`.
    let binary = stem.rsplit_once('-').map_or(stem, |(name, _)| name);
    let dir = std::env::temp_dir().join(format!("veriface-{binary}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `done` every 50 ms; panics naming `what` after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A loopback TCP port free a moment ago (for a broker or server the test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
