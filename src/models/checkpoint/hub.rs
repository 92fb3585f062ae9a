//! Hugging Face hub ids (`Intel/dpt-large`, revision `main`) through the standard local cache,
//! the layout `huggingface_hub` (Python) and `hf-hub` (Rust) share:
//!
//! ```text
//! $HF_HUB_CACHE (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
//!   models--Intel--dpt-large/
//!     refs/main                 the commit hash `main` points at
//!     snapshots/<hash>/…        the files of that commit (links into blobs/)
//! ```
//!
//! A model downloaded once with `hf download` is found here without network. On a miss the
//! files are downloaded (config.json, preprocessor_config.json, the safetensors) unless
//! `HF_HUB_OFFLINE` is set; every miss error names the cache path and the command to fetch it.
//!
//! A cached revision is used as it is, without asking the hub whether a branch moved: a box
//! must start the same model after a reboot with or without network. `hf download` updates it.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::files::{
    self, BinOnly, CONFIG_FILE, PYTORCH_BIN_FILE, PYTORCH_BIN_INDEX_FILE, SAFETENSORS_FILE,
    SAFETENSORS_INDEX_FILE, TORCHSCRIPT_FILE,
};
use crate::config::is_valid_revision;
use crate::models::ModelError;

/// Files fetched besides the weights: the image processor settings preprocessing reads.
const PREPROCESSOR_FILE: &str = "preprocessor_config.json";

/// How far resolving a hub id may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Only the local cache (`visiond check`: validate without touching the network).
    CacheOnly,
    /// The cache, then a download on a miss, unless the settings say offline.
    Download,
}

/// Where the cache is and whether the network may be used; [`HubSettings::from_env`] reads
/// the variables `huggingface_hub` uses, tests build one by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    pub cache_dir: PathBuf,
    pub offline: bool,
    /// `HF_ENDPOINT`: a mirror instead of https://huggingface.co.
    pub endpoint: Option<String>,
    /// `HF_TOKEN`, for gated or private repositories (else the token file next to the cache).
    pub token: Option<String>,
}

impl HubSettings {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|home| Path::new(&home).join("hub")))
            .or_else(|| {
                var("XDG_CACHE_HOME").map(|cache| Path::new(&cache).join("huggingface/hub"))
            })
            .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache/huggingface/hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        // huggingface_hub's truthy spellings.
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            cache_dir,
            offline,
            endpoint: var("HF_ENDPOINT"),
            token: var("HF_TOKEN"),
        }
    }
}

/// A full 40-hex commit hash, which needs no `refs/` lookup.
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// `models--Intel--dpt-large` under the cache.
pub fn repo_cache_dir(cache_dir: &Path, repo: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", repo.replace('/', "--")))
}

/// The command a person runs to put the checkpoint into the cache (same cache variables).
pub fn fetch_command(repo: &str, revision: &str) -> String {
    format!("hf download {repo} --revision {revision} --include '*.json' '*.safetensors'")
}

/// The snapshot folder of `repo` at `revision` if the cache has one, else why not.
pub fn cached_snapshot(cache_dir: &Path, repo: &str, revision: &str) -> Result<PathBuf, String> {
    let repo_dir = repo_cache_dir(cache_dir, repo);
    if !repo_dir.is_dir() {
        return Err(format!(
            "not in the cache ({} does not exist)",
            repo_dir.display()
        ));
    }
    let commit = if is_commit_hash(revision) {
        revision.to_owned()
    } else {
        let ref_file = repo_dir.join("refs").join(revision);
        let text = std::fs::read_to_string(&ref_file).map_err(|_| {
            format!(
                "revision {revision} is not in the cache ({} does not exist)",
                ref_file.display()
            )
        })?;
        let commit = text.trim().to_owned();
        if !is_valid_revision(&commit) || commit.contains('/') {
            return Err(format!(
                "{} does not hold a commit hash",
                ref_file.display()
            ));
        }
        commit
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if snapshot.is_dir() {
        Ok(snapshot)
    } else {
        Err(format!(
            "revision {revision} (commit {commit}) is not in the cache ({} does not exist)",
            snapshot.display()
        ))
    }
}

/// The local snapshot folder for `repo@revision`: from the cache when it holds a complete
/// checkpoint, else downloaded (with [`Fetch::Download`] and not offline).
pub fn resolve(
    settings: &HubSettings,
    repo: &str,
    revision: &str,
    fetch: Fetch,
) -> Result<PathBuf, ModelError> {
    let miss = |reason: String| ModelError::HubMiss {
        repo: repo.to_owned(),
        revision: revision.to_owned(),
        cache: settings.cache_dir.clone(),
        reason,
        command: fetch_command(repo, revision),
    };
    let why_not_cached = match cached_snapshot(&settings.cache_dir, repo, revision) {
        // A snapshot with its files is final: if it cannot be used (a `.bin` only, an
        // unsupported architecture), downloading again would not change that, and the
        // inspection error says what is wrong.
        Ok(snapshot) if has_checkpoint_files(&snapshot) => {
            files::inspect(&snapshot)?;
            return Ok(snapshot);
        }
        Ok(snapshot) => format!(
            "the cached snapshot {} has no {CONFIG_FILE} with weights (an interrupted download?)",
            snapshot.display()
        ),
        Err(why) => why,
    };
    if settings.offline {
        return Err(miss(format!(
            "{why_not_cached}, and HF_HUB_OFFLINE is set, so it was not downloaded"
        )));
    }
    if fetch == Fetch::CacheOnly {
        return Err(miss(why_not_cached));
    }
    download(settings, repo, revision)
        .map_err(|error| match error {
            DownloadError::Network(reason) => {
                // The hub answers 401/404 alike for a wrong id and for a repository the
                // (missing) token may not see.
                let hint = if ["401", "403", "404"]
                    .iter()
                    .any(|code| reason.ends_with(&format!("status code {code}")))
                {
                    " (check the repository id and revision; a gated or private repository \
                     needs a token: HF_TOKEN or `hf auth login`)"
                } else {
                    ""
                };
                miss(format!(
                    "{why_not_cached}; downloading failed: {reason}{hint}"
                ))
            }
            DownloadError::Unusable(error) => error,
        })
        .and_then(|snapshot| {
            files::inspect(&snapshot)?;
            Ok(snapshot)
        })
}

/// The snapshot folder holding `repo@revision`'s config.json and (when the repository has one)
/// preprocessor_config.json, for a model served elsewhere: only those two files are fetched on
/// a miss, never the weights.
pub fn resolve_processor(
    settings: &HubSettings,
    repo: &str,
    revision: &str,
    fetch: Fetch,
) -> Result<PathBuf, ModelError> {
    let miss = |reason: String| ModelError::HubMiss {
        repo: repo.to_owned(),
        revision: revision.to_owned(),
        cache: settings.cache_dir.clone(),
        reason,
        command: format!(
            "hf download {repo} --revision {revision} {CONFIG_FILE} {PREPROCESSOR_FILE}"
        ),
    };
    let why_not_cached = match cached_snapshot(&settings.cache_dir, repo, revision) {
        Ok(snapshot) if snapshot.join(CONFIG_FILE).is_file() => return Ok(snapshot),
        Ok(snapshot) => format!(
            "the cached snapshot {} has no {CONFIG_FILE}",
            snapshot.display()
        ),
        Err(why) => why,
    };
    if settings.offline {
        return Err(miss(format!(
            "{why_not_cached}, and HF_HUB_OFFLINE is set, so it was not downloaded"
        )));
    }
    if fetch == Fetch::CacheOnly {
        return Err(miss(why_not_cached));
    }
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};
    let mut builder =
        ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone())).with_progress(false);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if settings.token.is_some() {
        builder = builder.with_token(settings.token.clone());
    }
    let failed =
        |e: &dyn std::fmt::Display| miss(format!("{why_not_cached}; downloading failed: {e}"));
    let api = builder.build().map_err(|e| failed(&e))?;
    let remote = api.repo(Repo::with_revision(
        repo.to_owned(),
        RepoType::Model,
        revision.to_owned(),
    ));
    let config = remote.get(CONFIG_FILE).map_err(|e| failed(&e))?;
    // Optional: without it the architecture's published settings apply.
    if let Err(error) = remote.get(PREPROCESSOR_FILE) {
        tracing::info!(repo, %error, "no {PREPROCESSOR_FILE} downloaded");
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| miss("nothing was downloaded".to_owned()))
}

/// Whether a snapshot holds a TorchScript module or a config.json with some weights file.
fn has_checkpoint_files(snapshot: &Path) -> bool {
    let has = |name: &str| snapshot.join(name).is_file();
    has(TORCHSCRIPT_FILE)
        || (has(CONFIG_FILE)
            && [
                SAFETENSORS_FILE,
                SAFETENSORS_INDEX_FILE,
                PYTORCH_BIN_FILE,
                PYTORCH_BIN_INDEX_FILE,
            ]
            .into_iter()
            .any(has))
}

enum DownloadError {
    /// The hub could not be reached or refused (a miss: the command may work elsewhere).
    Network(String),
    /// The repository was reached but holds nothing visiond can load.
    Unusable(ModelError),
}

/// Downloads what a checkpoint needs (not the whole repository: many also hold `.bin`,
/// TensorFlow and ONNX copies of the same weights) and returns the snapshot folder.
fn download(settings: &HubSettings, repo: &str, revision: &str) -> Result<PathBuf, DownloadError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Cache, Repo, RepoType};

    let network = |e: &dyn std::fmt::Display| DownloadError::Network(e.to_string());
    let mut builder = ApiBuilder::from_cache(Cache::new(settings.cache_dir.clone()))
        .with_progress(std::io::stderr().is_terminal());
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if settings.token.is_some() {
        builder = builder.with_token(settings.token.clone());
    }
    let api = builder.build().map_err(|e| network(&e))?;
    let remote = api.repo(Repo::with_revision(
        repo.to_owned(),
        RepoType::Model,
        revision.to_owned(),
    ));
    let info = remote.info().map_err(|e| network(&e))?;
    let listed: BTreeSet<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();

    let mut wanted: Vec<String> = [CONFIG_FILE, PREPROCESSOR_FILE]
        .into_iter()
        .filter(|name| listed.contains(*name))
        .map(str::to_owned)
        .collect();
    let sharded = !listed.contains(SAFETENSORS_FILE) && listed.contains(SAFETENSORS_INDEX_FILE);
    if listed.contains(SAFETENSORS_FILE) {
        wanted.push(SAFETENSORS_FILE.to_owned());
    } else if sharded {
        wanted.push(SAFETENSORS_INDEX_FILE.to_owned());
    } else if listed.contains(TORCHSCRIPT_FILE) {
        wanted.push(TORCHSCRIPT_FILE.to_owned());
    } else if listed.contains(PYTORCH_BIN_FILE) || listed.contains(PYTORCH_BIN_INDEX_FILE) {
        return Err(DownloadError::Unusable(ModelError::Checkpoint {
            path: PathBuf::from(format!("{repo}@{revision}")),
            reason: files::bin_only_reason(BinOnly::Hub { repo, revision }),
        }));
    } else {
        return Err(DownloadError::Unusable(ModelError::Checkpoint {
            path: PathBuf::from(format!("{repo}@{revision}")),
            reason: format!(
                "the repository has no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {TORCHSCRIPT_FILE}"
            ),
        }));
    }

    let mut snapshot = None;
    for name in &wanted {
        let local = remote.get(name).map_err(|e| network(&e))?;
        snapshot = snapshot.or_else(|| local.parent().map(Path::to_path_buf));
        if sharded && name == SAFETENSORS_INDEX_FILE {
            let shards = files::shard_names(&local).map_err(DownloadError::Unusable)?;
            for shard in shards {
                remote.get(&shard).map_err(|e| network(&e))?;
            }
        }
    }
    snapshot.ok_or_else(|| DownloadError::Network("nothing was downloaded".to_owned()))
}
