//! `<linux/videodev2.h>` as bindgen 0.65.1 renders it for each supported target (the output of
//! the original crate's build script, kept in src/bindings/). Struct layouts differ between
//! 64-bit and 32-bit ARM, so each target has its own file; bindgen's layout tests in each file
//! check it against the compiler's view of the target.
#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
include!("bindings/x86_64.rs");
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
include!("bindings/aarch64.rs");
#[cfg(all(target_os = "linux", target_arch = "arm"))]
include!("bindings/arm.rs");
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")
)))]
compile_error!(
    "no committed V4L2 bindings for this target: run cross/regen-v4l2-bindings.sh with it added"
);
