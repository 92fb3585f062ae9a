//! Link-time glue for libtorch; see README "Building against libtorch".
//!
//! - An rpath to libtorch's real directory, so binaries and tests run without LD_LIBRARY_PATH.
//! - `libtorch_cuda.so` kept as a DT_NEEDED entry: nothing references its symbols directly, so
//!   `--as-needed` would drop it and CUDA would silently be unavailable on a GPU box.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        // torch-sys itself reports the missing libtorch with instructions.
        return;
    };
    // Resolve the repo-local symlink so the rpath survives the checkout being moved or deleted.
    let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
