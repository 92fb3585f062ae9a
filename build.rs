//! Link-time glue for libtorch; see docs/setup.md ("Setup and building").
//!
//! - An rpath to libtorch's real directory, so binaries and tests run without LD_LIBRARY_PATH.
//! - `libtorch_cuda.so` kept as a DT_NEEDED entry: nothing references its symbols directly, so
//!   `--as-needed` would drop it and CUDA would silently be unavailable on a GPU box.
//! - The C++ shim (`src/runtime/native/shim.cpp`) for what tch does not expose: CUDA graphs,
//!   channels-last tensors, the TF32 switches, the profiler. It always builds against
//!   libtorch's headers; its CUDA part (graphs, events, side streams, the fused kernels) only
//!   where libtorch has CUDA and the CUDA runtime headers are found (the torch venv's
//!   `nvidia/cu13/include`, completed with `crt/` by the `nvidia-cuda-crt` package that
//!   scripts/setup installs), unless `VISIOND_CUDA_GRAPHS=off`. Elsewhere those functions
//!   report that the shim has no CUDA: models run eagerly, the frame path stays on the default
//!   stream and converts with tensor ops.
//! - `VISIOND_TORCH=cpu`: a CPU-only build from the same libtorch (no CUDA library linked), for
//!   the smaller install `make dist VARIANT=cpu` makes.
//! - `VISIOND_COMMIT`, the git commit this is built from (`visiond --version`, the
//!   `visiond_build_info` metric): `git rev-parse` of this checkout, an exported
//!   `VISIOND_COMMIT` (a build from a tarball or a container context without `.git`), else
//!   `unknown`.

use std::path::{Path, PathBuf};

const SHIM: &str = "src/runtime/native/shim.cpp";
/// Included by the shim (and handed to NVRTC at run time).
const KERNELS: &str = "src/runtime/native/kernels.cuh";

fn main() {
    generate_kserve_client();
    git_commit();
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=VISIOND_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=VISIOND_CUDA_GRAPHS");
    println!("cargo:rerun-if-env-changed=VISIOND_TORCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-changed={KERNELS}");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        // torch-sys itself reports the missing libtorch with instructions.
        return;
    };
    // Resolve the repo-local symlink so the rpath survives the checkout being moved or deleted.
    let libtorch = libtorch.canonicalize().unwrap_or(libtorch);
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // VISIOND_TORCH=cpu builds for a box without a GPU from the same CUDA libtorch: nothing
    // links libtorch_cuda or c10_cuda, so an install carries libtorch_cpu and c10 (and the
    // small CUDA runtime libtorch_cpu itself names) instead of gigabytes of CUDA libraries.
    let cpu_only = std::env::var("VISIOND_TORCH").is_ok_and(|v| v == "cpu");
    let has_cuda = !cpu_only && lib.join("libtorch_cuda.so").exists();
    if has_cuda {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    compile_shim(&libtorch, has_cuda);
}

/// `cargo:rustc-env=VISIOND_COMMIT=<12 hex digits>`: the commit of this checkout's HEAD.
/// Reruns when HEAD moves (a commit, a checkout): `HEAD` itself, the branch's ref and
/// `packed-refs`, each only where it exists (cargo reruns on every build for a missing one).
/// A worktree's `HEAD` lives in its own git directory, its refs in the common one.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=VISIOND_COMMIT");
    let exported = std::env::var("VISIOND_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = exported.unwrap_or_else(|| {
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
        let git = |args: &[&str]| -> Option<String> {
            let output = std::process::Command::new("git")
                .arg("-C")
                .arg(&manifest)
                .args(args)
                .output()
                .ok()?;
            let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
            (output.status.success() && !text.is_empty()).then_some(text)
        };
        // Only this checkout's own repository: a tarball unpacked inside some other repository
        // (a home directory kept in git) is not that repository's commit.
        let top = git(&["rev-parse", "--show-toplevel"]).map(PathBuf::from);
        let ours = top.is_some_and(|top| top.canonicalize().ok() == manifest.canonicalize().ok());
        if !ours {
            return "unknown".to_owned();
        }
        let mut watched = Vec::new();
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
            watched.push(dir.join("HEAD"));
        }
        if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
            let common = manifest.join(common);
            if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watched.push(common.join(reference));
            }
            watched.push(common.join("packed-refs"));
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
    });
    println!("cargo:rustc-env=VISIOND_COMMIT={}", commit.trim());
}

/// The KServe v2 gRPC client (`src/runtime/remote/proto.rs` includes it) from the `.proto`
/// written from the Open Inference Protocol's specification, compiled by the protoc that
/// `protoc-bin-vendored` ships (a machine needs no protobuf-compiler package).
fn generate_kserve_client() {
    const PROTO: &str = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .expect("protoc-bin-vendored has a protoc for this platform");
    // SAFETY: the build script has one thread at this point, so nothing reads the environment
    // while it changes; prost-build finds protoc through PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[PROTO], &["proto"])
        .expect("proto/grpc_predict_v2.proto compiles");
}

fn compile_shim(libtorch: &Path, has_cuda: bool) {
    let include = libtorch.join("include");
    // VISIOND_CUDA_GRAPHS=off builds the shim without CUDA, as a box without the headers would.
    let wanted = std::env::var("VISIOND_CUDA_GRAPHS").map_or(true, |v| v != "off");
    let cuda_include = if has_cuda && wanted {
        cuda_headers(libtorch)
    } else {
        None
    };
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .std("c++17")
        // The shim's own warnings (-Wall -Wextra) show in the build; libtorch's and CUDA's
        // headers are system headers, whose warnings are not ours to fix.
        .warnings(true)
        .extra_warnings(true)
        .flag("-isystem")
        .flag(include.to_string_lossy().as_ref())
        .flag("-isystem")
        .flag(
            include
                .join("torch/csrc/api/include")
                .to_string_lossy()
                .as_ref(),
        )
        // The same ABI torch-sys builds its own glue with (the PyPI wheels use the new one).
        .define(
            "_GLIBCXX_USE_CXX11_ABI",
            std::env::var("LIBTORCH_CXX11_ABI")
                .unwrap_or_else(|_| "1".to_owned())
                .as_str(),
        )
        .define("GLOG_USE_GLOG_EXPORT", None)
        // libtorch is a release build: some of its headers' classes (RecordFunction) have
        // debug-only members, so the shim must see the same layout.
        .define("NDEBUG", None)
        // The fused conversions' CPU loops (the tests' reference runs) would crawl unoptimised.
        .opt_level(2)
        .file(SHIM);
    match &cuda_include {
        Some(dir) => {
            build
                .define("VISIOND_SHIM_CUDA", None)
                .flag("-isystem")
                .flag(dir.to_string_lossy().as_ref());
            // A directory: cargo rescans it, so headers installed later (crt/) are noticed.
            println!("cargo:rerun-if-changed={}", dir.display());
        }
        None if has_cuda && wanted => println!(
            "cargo:warning=the shim is built without CUDA (no graphs, side streams or fused kernels): libtorch has CUDA but no CUDA runtime headers with crt/ were found (run scripts/setup, or set VISIOND_CUDA_INCLUDE)"
        ),
        None => {}
    }
    build.compile("visiond_shim");
    if cuda_include.is_some() {
        // CUDAStream and the stream pool live in c10_cuda, which torch-sys does not link.
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

/// A CUDA include directory holding the runtime API and the `crt/` headers it includes:
/// `VISIOND_CUDA_INCLUDE`, the torch venv's `nvidia/cu13/include`, or a system toolkit.
fn cuda_headers(libtorch: &Path) -> Option<PathBuf> {
    let complete = |dir: &Path| {
        dir.join("cuda_runtime_api.h").is_file() && dir.join("crt/host_config.h").is_file()
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("VISIOND_CUDA_INCLUDE") {
        candidates.push(dir.into());
    }
    if let Some(site) = libtorch.parent() {
        candidates.push(site.join("nvidia/cu13/include"));
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        candidates.push(PathBuf::from(home).join("include"));
    }
    candidates.push("/usr/local/cuda/include".into());
    candidates.into_iter().find(|dir| complete(dir))
}
