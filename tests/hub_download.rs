//! The download path of hub ids, against a stand-in hub on 127.0.0.1 that speaks the two
//! endpoints hf-hub uses: `GET /api/models/{repo}/revision/{rev}` (file list and commit) and
//! `GET /{repo}/resolve/{rev}/{file}` (ranged file bytes with etag/commit headers).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use visiond::config::{DType, DeviceSpec, ModelSource};
use visiond::models::checkpoint::hub::{self, Fetch, HubSettings};
use visiond::models::checkpoint::{self, LoadOptions};

const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn model_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// Serves `repos` (hub id → local folder) on a loopback port; returns the endpoint URL.
/// The thread handles a bounded number of requests and dies with the test process.
fn serve(repos: HashMap<&'static str, PathBuf>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(stream) = stream else { continue };
            // A broken request only fails the test that sent it.
            let _ = respond(stream, &repos);
        }
    });
    endpoint
}

fn respond(mut stream: TcpStream, repos: &HashMap<&'static str, PathBuf>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            // "bytes=N-" or "bytes=0-0"
            let spec = value.trim().trim_start_matches("bytes=");
            let (start, end) = spec.split_once('-').unwrap_or((spec, ""));
            range = Some((
                start.parse::<usize>().unwrap_or(0),
                end.parse::<usize>().ok(),
            ));
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let not_found = |stream: &mut TcpStream| {
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo, _revision)) = rest.split_once("/revision/") else {
            return not_found(&mut stream);
        };
        let Some(dir) = repos.get(repo) else {
            return not_found(&mut stream);
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let body = serde_json::json!({
            "sha": COMMIT,
            "siblings": names.iter().map(|n| serde_json::json!({"rfilename": n})).collect::<Vec<_>>(),
        })
        .to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        return stream.write_all(body.as_bytes());
    }
    let found = repos.iter().find_map(|(repo, dir)| {
        let rest = path.strip_prefix('/')?.strip_prefix(repo)?;
        let (_, file) = rest.strip_prefix("/resolve/")?.split_once('/')?;
        Some(dir.join(file))
    });
    let Some(file) = found.filter(|f| f.is_file()) else {
        return not_found(&mut stream);
    };
    let bytes = std::fs::read(&file)?;
    let (start, end) = range.unwrap_or((0, None));
    let end = end
        .unwrap_or(bytes.len().saturating_sub(1))
        .min(bytes.len().saturating_sub(1));
    let body = bytes.get(start..=end).unwrap_or(&[]);
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{}\r\n\
         ETag: \"{:x}-{}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        body.len(),
        bytes.len(),
        bytes.len(),
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

fn online(cache: &Path, endpoint: String) -> HubSettings {
    HubSettings {
        cache_dir: cache.to_path_buf(),
        offline: false,
        endpoint: Some(endpoint),
        token: None,
    }
}

#[test]
fn downloads_a_checkpoint_into_the_cache_and_loads_it() {
    let endpoint = serve(HashMap::from([
        ("visiond/dpt-vit", model_dir("dpt-vit")),
        ("visiond/dpt-vit-sharded", model_dir("dpt-vit-sharded")),
    ]));
    let cache = tempfile::tempdir().expect("tempdir");
    let settings = online(cache.path(), endpoint);

    for repo in ["visiond/dpt-vit", "visiond/dpt-vit-sharded"] {
        let snapshot = hub::resolve(&settings, repo, "main", Fetch::Download).expect("download");
        let repo_dir = hub::repo_cache_dir(cache.path(), repo);
        assert_eq!(snapshot, repo_dir.join("snapshots").join(COMMIT));
        assert_eq!(
            std::fs::read_to_string(repo_dir.join("refs/main")).expect("ref"),
            COMMIT
        );
        // Found again without the network.
        let offline = HubSettings {
            offline: true,
            ..settings.clone()
        };
        assert_eq!(
            hub::resolve(&offline, repo, "main", Fetch::CacheOnly).expect("cached"),
            snapshot
        );
        let source = ModelSource::Hub {
            repo: repo.to_owned(),
            revision: "main".to_owned(),
        };
        let files = checkpoint::inspect(&snapshot).expect("inspect");
        let options = LoadOptions {
            device: DeviceSpec::Cpu,
            dtype: DType::F32,
            ..LoadOptions::default()
        };
        let loaded = checkpoint::load(&source, &files, &options).expect("load");
        assert_eq!(loaded.info.name, repo);
        assert_eq!(loaded.info.architecture, "DPTForDepthEstimation");
    }
    // Only what a checkpoint needs was fetched.
    let mut fetched: Vec<String> = std::fs::read_dir(
        hub::repo_cache_dir(cache.path(), "visiond/dpt-vit-sharded")
            .join("snapshots")
            .join(COMMIT),
    )
    .expect("snapshot")
    .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
    .collect();
    fetched.sort();
    assert_eq!(
        fetched,
        [
            "config.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "model.safetensors.index.json",
            "preprocessor_config.json",
        ]
    );
}

#[test]
fn bin_only_repository_is_not_downloaded() {
    let endpoint = serve(HashMap::from([(
        "visiond/dpt-vit-bin-only",
        model_dir("dpt-vit-bin-only"),
    )]));
    let cache = tempfile::tempdir().expect("tempdir");
    let settings = online(cache.path(), endpoint);
    let error = hub::resolve(
        &settings,
        "visiond/dpt-vit-bin-only",
        "main",
        Fetch::Download,
    )
    .expect_err("bin only")
    .to_string();
    assert_eq!(
        error,
        "visiond/dpt-vit-bin-only@main: only PyTorch pickle weights (pytorch_model.bin) found, and visiond loads safetensors only\n  \
         - many hub checkpoints carry safetensors on a pull-request revision: find the refs/pr/N that adds model.safetensors on https://huggingface.co/visiond/dpt-vit-bin-only/discussions and pass it as the revision (--revision refs/pr/N, or `revision:` in the config)\n  \
         - or download it (hf download visiond/dpt-vit-bin-only --revision main --local-dir DIR) and convert it once, in python3 with torch and safetensors installed, then use DIR as the model path:\n      \
         import torch; from safetensors.torch import save_file\n      \
         save_file({k: v.clone().contiguous() for k, v in torch.load(\"DIR/pytorch_model.bin\", map_location=\"cpu\").items()}, \"DIR/model.safetensors\", metadata={\"format\": \"pt\"})"
    );
    assert!(
        !hub::repo_cache_dir(cache.path(), "visiond/dpt-vit-bin-only")
            .join("blobs")
            .exists(),
        "nothing should have been downloaded"
    );
}

#[test]
fn unreachable_hub_is_a_miss_naming_the_command() {
    let endpoint = serve(HashMap::new());
    let cache = tempfile::tempdir().expect("tempdir");
    let settings = online(cache.path(), endpoint.clone());
    let error = hub::resolve(&settings, "Intel/dpt-large", "main", Fetch::Download)
        .expect_err("404")
        .to_string();
    assert!(
        error.starts_with(&format!(
            "Intel/dpt-large (revision main) is not available: not in the cache ({} does not exist); downloading failed: ",
            hub::repo_cache_dir(cache.path(), "Intel/dpt-large").display()
        )),
        "{error}"
    );
    assert!(
        error.contains(
            "status code 404 (check the repository id and revision; a gated or private repository needs a token: HF_TOKEN or `hf auth login`)\n"
        ),
        "{error}"
    );
    assert!(
        error.ends_with(
            "\n  fetch it with: hf download Intel/dpt-large --revision main --include '*.json' '*.safetensors'"
        ),
        "{error}"
    );
}
