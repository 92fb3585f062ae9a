//! The fused conversions never touch memory outside their planes: their per-pixel code, built
//! with AddressSanitizer and UBSan by the system's C++ compiler (the one that builds the shim),
//! runs over every small size, both chroma modes and every siting (tests/native/kernels_bounds.cpp).

use std::path::Path;
use std::process::Command;

#[test]
fn the_fused_conversions_stay_inside_their_planes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let binary = out.path().join("kernels_bounds");
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    let built = Command::new(&compiler)
        .args(["-std=c++17", "-O1", "-g", "-fno-omit-frame-pointer"])
        .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=all"])
        .arg("-I")
        .arg(root.join("src/runtime/native"))
        .arg(root.join("tests/native/kernels_bounds.cpp"))
        .arg("-o")
        .arg(&binary)
        .output()
        .unwrap_or_else(|e| panic!("{compiler}: {e}"));
    assert!(
        built.status.success(),
        "{compiler} failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let run = Command::new(&binary).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && stdout.starts_with("ok "),
        "the sanitizers stopped the run:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
