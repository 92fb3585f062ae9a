//! `deploy/kubernetes`: every overlay, alone and with every component, rendered by the real
//! `kubectl kustomize` and validated against the Kubernetes 1.32 schemas by
//! `kubernetes-validate --strict` (PyPI; scripts/setup installs both) in a network namespace
//! of its own, so offline. Then what a schema cannot see: the ConfigMap's daemon and pipeline files, laid out as the pod's volume lays them, pass
//! the real `visiond check` with the Secret's passwords; the probes and Services reach the
//! ports the daemon file configures; the pods are as locked down as the systemd unit; SIGTERM's
//! drain fits in the termination grace period; the GPU DaemonSet asks for a GPU.

mod deploy_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde::Deserialize as _;
use serde_yaml::Value;

const KUBERNETES_VERSION: &str = "1.32.0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `kubectl`, or the test fails saying how to get it.
fn kubectl() -> Command {
    let probe = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    match probe {
        Ok(output) if output.status.success() => Command::new("kubectl"),
        other => panic!(
            "kubectl is missing or broken ({other:?}): run scripts/setup, or install kubectl 1.27 \
             or newer; this test renders deploy/kubernetes with `kubectl kustomize`"
        ),
    }
}

/// The `kubernetes-validate` of the venv scripts/setup makes (its version read from there).
fn kubernetes_validate() -> PathBuf {
    let setup = read(&repo().join("scripts/setup"));
    let version = setup
        .lines()
        .find_map(|l| l.strip_prefix("kubernetes_validate_version="))
        .expect("scripts/setup names kubernetes_validate_version=");
    let venv = std::env::var_os("VISIOND_KUBERNETES_VALIDATE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join(format!("visiond/kubernetes-validate-{version}"))
        });
    let program = venv.join("bin/kubernetes-validate");
    assert!(
        venv.join(".visiond-complete").is_file() && program.is_file(),
        "{} is missing: run scripts/setup (it installs kubernetes-validate=={version} there)",
        program.display()
    );
    program
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The shipped tree in a temporary directory, with the Secret's file written as an operator
/// would from its example (random passwords), and one extra kustomization per overlay that adds
/// every component. Returns the directories to render, by name.
fn prepared_tree(root: &Path) -> Vec<(String, PathBuf)> {
    let shipped = repo().join("deploy/kubernetes");
    copy_tree(&shipped, root);
    let example = read(&root.join("base/secrets/passwords.env.example"));
    let passwords: String = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let name = l.split('=').next().unwrap().trim();
            format!("{name}=test-{name}-{:016x}\n", fastrand::u64(..))
        })
        .collect();
    assert!(
        !passwords.is_empty(),
        "passwords.env.example names no variable"
    );
    std::fs::write(root.join("base/secrets/passwords.env"), passwords).unwrap();

    let mut components: Vec<String> = std::fs::read_dir(root.join("components"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    components.sort();
    assert_eq!(components, ["disruption-budget", "monitoring"]);
    let mut overlays: Vec<String> = std::fs::read_dir(root.join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    overlays.sort();
    assert_eq!(overlays, ["cpu", "gpu"]);
    let mut dirs = Vec::new();
    for overlay in &overlays {
        dirs.push((overlay.clone(), root.join("overlays").join(overlay)));
        let with = root.join(format!("with-components/{overlay}"));
        std::fs::create_dir_all(&with).unwrap();
        let listed: String = components
            .iter()
            .map(|c| format!("  - ../../components/{c}\n"))
            .collect();
        std::fs::write(
            with.join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                 resources:\n  - ../../overlays/{overlay}\ncomponents:\n{listed}"
            ),
        )
        .unwrap();
        dirs.push((format!("{overlay}+components"), with));
    }
    dirs
}

/// `kubectl kustomize DIR`: the rendered text and its objects.
fn render(dir: &Path) -> (String, Vec<Value>) {
    let output = kubectl().arg("kustomize").arg(dir).output().unwrap();
    assert!(
        output.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let objects = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    (text, objects)
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn kind(object: &Value) -> &str {
    str_at(object, &["kind"]).unwrap_or("?")
}

fn name(object: &Value) -> &str {
    str_at(object, &["metadata", "name"]).unwrap_or("?")
}

fn labels(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn subset(selector: &BTreeMap<String, String>, of: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| of.get(k) == Some(v))
}

/// kubernetes-validate --strict on the rendering: every object passes its schema. The
/// ServiceMonitor is a CRD, which it has no schema for: that, and only that, may be unchecked
/// (its fields are asserted in `components_select_what_they_should`).
fn validate(label: &str, text: &str, objects: &[Value], dir: &Path) {
    let file = dir.join(format!("{}.yaml", label.replace('+', "-")));
    std::fs::write(&file, text).unwrap();
    // Offline: its schemas are the ones it bundles.
    let output = deploy_support::run(
        deploy_support::offline(&kubernetes_validate())
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
            .arg(&file),
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{label}: kubernetes-validate:\n{said}"
    );
    let version = KUBERNETES_VERSION.trim_end_matches(".0");
    for object in objects {
        let (kind, name) = (kind(object), name(object));
        if kind == "ServiceMonitor" {
            assert!(
                said.contains("Couldn't find schema for kind ServiceMonitor"),
                "{label}: {said}"
            );
            continue;
        }
        let passed = format!(
            "passed for resource {}/{name} against version {version}",
            kind.to_lowercase()
        );
        assert!(said.contains(&passed), "{label}: no `{passed}` in:\n{said}");
    }
    for line in said.lines() {
        assert!(
            line.starts_with("INFO ") || line.contains("kind ServiceMonitor"),
            "{label}: kubernetes-validate said: {line}"
        );
    }
}

fn only<'a>(objects: &'a [Value], wanted: &str, label: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| kind(o) == wanted).collect();
    assert_eq!(found.len(), 1, "{label}: one {wanted} expected");
    found[0]
}

fn by_name<'a>(objects: &'a [Value], wanted_kind: &str, prefix: &str, label: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| kind(o) == wanted_kind && name(o).starts_with(prefix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{label}: one {wanted_kind} {prefix}* expected"
    );
    found[0]
}

fn port_of(address: &str) -> u64 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// A probe's or Service's port: a number, or the name of one of the container's ports.
fn resolve_port(port: &Value, ports: &BTreeMap<String, u64>) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => *ports
            .get(name)
            .unwrap_or_else(|| panic!("no container port named {name}: {ports:?}")),
        other => panic!("port {other:?}"),
    }
}

/// Every value under a `password_env` key.
fn password_envs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Mapping(map) => {
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    (Some("password_env"), Some(name)) => found.push(name.to_owned()),
                    _ => password_envs(value, found),
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| password_envs(v, found)),
        _ => {}
    }
}

fn assert_locked_down(label: &str, container: &Value) {
    let who = format!(
        "{label}: container {}: securityContext",
        str_at(container, &["name"]).unwrap_or("?")
    );
    let context = container.get("securityContext").expect(&who);
    assert_eq!(
        context.get("allowPrivilegeEscalation"),
        Some(&Value::Bool(false)),
        "{who}.allowPrivilegeEscalation"
    );
    assert_eq!(
        context.get("readOnlyRootFilesystem"),
        Some(&Value::Bool(true)),
        "{who}.readOnlyRootFilesystem"
    );
    assert_ne!(
        context.get("privileged"),
        Some(&Value::Bool(true)),
        "{who}.privileged"
    );
    let drop: Vec<&str> = at(context, &["capabilities", "drop"])
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(drop, ["ALL"], "{who}.capabilities.drop");
    assert!(
        at(context, &["capabilities", "add"]).is_none(),
        "{who}.capabilities.add"
    );
}

/// The pod's checks, and its configuration through the real `visiond check`.
fn check_workload(label: &str, objects: &[Value], scratch: &Path) {
    let gpu = label.starts_with("gpu");
    let workload = only(objects, if gpu { "DaemonSet" } else { "Deployment" }, label);
    let template = workload.get("spec").unwrap().get("template").unwrap();
    let pod = template.get("spec").unwrap();
    let pod_labels = labels(at(template, &["metadata", "labels"]));
    assert!(
        subset(
            &labels(at(workload, &["spec", "selector", "matchLabels"])),
            &pod_labels
        ),
        "{label}: the selector does not select the pod template"
    );

    // As strict as the systemd unit: nobody, no privileges, no capabilities, a read-only root,
    // the runtime's seccomp filter, no Kubernetes API token.
    let context = pod.get("securityContext").expect("pod securityContext");
    assert_eq!(
        context.get("runAsNonRoot"),
        Some(&Value::Bool(true)),
        "{label}: runAsNonRoot"
    );
    assert!(
        at(context, &["runAsUser"])
            .and_then(Value::as_u64)
            .is_some_and(|u| u != 0),
        "{label}: runAsUser"
    );
    assert_eq!(
        str_at(context, &["seccompProfile", "type"]),
        Some("RuntimeDefault"),
        "{label}: seccompProfile"
    );
    assert_eq!(
        pod.get("automountServiceAccountToken"),
        Some(&Value::Bool(false)),
        "{label}: automountServiceAccountToken"
    );
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod.get(field), Some(&Value::Bool(true)), "{label}: {field}");
    }
    let containers = pod.get("containers").unwrap().as_sequence().unwrap();
    let inits = pod.get("initContainers").unwrap().as_sequence().unwrap();
    assert_eq!(containers.len(), 1, "{label}: one container");
    assert_eq!(inits.len(), 1, "{label}: one init container");
    for container in containers.iter().chain(inits) {
        assert_locked_down(label, container);
        assert_eq!(
            str_at(container, &["image"]),
            Some("visiond:latest"),
            "{label}: image"
        );
    }
    let (daemon, check) = (&containers[0], &inits[0]);

    // The daemon file, as the pod reads it: `run -c FILE`, and the same `check -c FILE` first.
    let args = |c: &Value| -> Vec<String> {
        c.get("args")
            .and_then(Value::as_sequence)
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let run_args = args(daemon);
    assert_eq!(run_args[..2], ["run", "-c"], "{label}: args");
    let config_path = run_args[2].clone();
    assert_eq!(
        args(check),
        ["check", "-c", config_path.as_str()],
        "{label}: init container"
    );
    let config_dir = Path::new(&config_path).parent().unwrap().to_str().unwrap();

    // Lay out every volume mounted under the daemon file's directory from its ConfigMaps, as
    // the kubelet would: keys at the root, or at their items' paths.
    let etc = scratch.join(label).join(config_dir.trim_start_matches('/'));
    let mounts = daemon.get("volumeMounts").unwrap().as_sequence().unwrap();
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| str_at(m, &["name"]) == Some(volume))
            .and_then(|m| str_at(m, &["mountPath"]))
    };
    let volumes = pod.get("volumes").unwrap().as_sequence().unwrap();
    let config_volume = volumes
        .iter()
        .find(|v| mount_of(str_at(v, &["name"]).unwrap()) == Some(config_dir))
        .unwrap_or_else(|| panic!("{label}: no volume mounted at {config_dir}"));
    let sources = at(config_volume, &["projected", "sources"])
        .and_then(Value::as_sequence)
        .expect("the config volume is a projected volume");
    let mut laid = Vec::new();
    for source in sources {
        let map_name = str_at(source, &["configMap", "name"]).expect("configMap sources only");
        let map = by_name(objects, "ConfigMap", map_name, label);
        let data = map.get("data").unwrap().as_mapping().unwrap();
        let items = at(source, &["configMap", "items"]).and_then(Value::as_sequence);
        let mut projected: Vec<(String, String)> = match items {
            None => data
                .keys()
                .map(|k| {
                    (
                        k.as_str().unwrap().to_owned(),
                        k.as_str().unwrap().to_owned(),
                    )
                })
                .collect(),
            Some(items) => items
                .iter()
                .map(|i| {
                    (
                        str_at(i, &["key"]).unwrap().to_owned(),
                        str_at(i, &["path"]).unwrap().to_owned(),
                    )
                })
                .collect(),
        };
        projected.sort();
        let keys: Vec<&str> = data.keys().map(|k| k.as_str().unwrap()).collect();
        let mut mounted: Vec<&str> = projected.iter().map(|(k, _)| k.as_str()).collect();
        mounted.sort();
        assert_eq!(
            mounted, keys,
            "{label}: every key of ConfigMap {map_name} must be mounted (a pipeline added to the kustomization needs its item in the volume too)"
        );
        for (key, path) in projected {
            let file = etc.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, data.get(key.as_str()).unwrap().as_str().unwrap()).unwrap();
            laid.push(path);
        }
    }
    let config_name = Path::new(&config_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        laid.iter().any(|p| p == config_name),
        "{label}: {config_path} is in no ConfigMap"
    );
    let local_config = etc.join(config_name);
    let config: Value = serde_yaml::from_str(&read(&local_config)).unwrap();
    let pipelines_dir = str_at(&config, &["pipelines_dir"]).unwrap();
    assert!(
        laid.iter()
            .any(|p| p.starts_with(&format!("{pipelines_dir}/"))),
        "{label}: no pipeline is mounted in {pipelines_dir}: {laid:?}"
    );

    // The probes and the Services reach the ports the daemon file configures.
    let ports: BTreeMap<String, u64> = daemon
        .get("ports")
        .unwrap()
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                str_at(p, &["name"]).unwrap().to_owned(),
                at(p, &["containerPort"]).unwrap().as_u64().unwrap(),
            )
        })
        .collect();
    let http_port = port_of(str_at(&config, &["http", "listen"]).unwrap());
    let rtsp_port = at(&config, &["rtsp", "port"])
        .and_then(Value::as_u64)
        .unwrap_or(8554);
    assert!(
        str_at(&config, &["http", "listen"])
            .unwrap()
            .starts_with("0.0.0.0:"),
        "{label}: http.listen must take connections from outside the pod (probes, Service)"
    );
    assert_eq!(
        ports.get("http"),
        Some(&http_port),
        "{label}: containerPort http vs http.listen"
    );
    assert_eq!(
        ports.get("rtsp"),
        Some(&rtsp_port),
        "{label}: containerPort rtsp vs rtsp.port"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(daemon, &[probe, "httpGet"]).unwrap_or_else(|| panic!("{label}: {probe}"));
        assert_eq!(
            str_at(get, &["path"]),
            Some(path),
            "{label}: {probe}.httpGet.path"
        );
        assert_eq!(
            resolve_port(get.get("port").unwrap(), &ports),
            http_port,
            "{label}: {probe} must ask the control plane's port (http.listen)"
        );
    }
    for (service, port) in [("visiond-http", http_port), ("visiond-rtsp", rtsp_port)] {
        let object = by_name(objects, "Service", service, label);
        assert!(
            subset(&labels(at(object, &["spec", "selector"])), &pod_labels),
            "{label}: Service {service} does not select the pod"
        );
        let target = at(object, &["spec", "ports"])
            .and_then(Value::as_sequence)
            .unwrap()[0]
            .get("targetPort")
            .unwrap();
        assert_eq!(
            resolve_port(target, &ports),
            port,
            "{label}: Service {service}"
        );
    }

    // SIGTERM drains for at most shutdown.grace_ms, and the process exits at the latest 5 s
    // later: the kubelet must not SIGKILL before that.
    let grace_ms = at(&config, &["shutdown", "grace_ms"])
        .and_then(Value::as_u64)
        .unwrap_or(5000);
    let termination_s = pod
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(30);
    assert!(
        termination_s * 1000 > grace_ms + 5000,
        "{label}: terminationGracePeriodSeconds {termination_s} s must exceed shutdown.grace_ms {grace_ms} ms + 5 s"
    );
    if !gpu {
        assert_eq!(
            str_at(workload, &["spec", "strategy", "type"]),
            Some("Recreate"),
            "{label}: the old pod must let go of the ReadWriteOnce volume before the new one starts"
        );
    }

    // The GPU DaemonSet lands on GPU nodes and asks for one; the CPU Deployment asks for none.
    let gpus = at(daemon, &["resources", "limits", "nvidia.com/gpu"]);
    if gpu {
        assert!(
            pod.get("nodeSelector")
                .and_then(Value::as_mapping)
                .is_some_and(|m| !m.is_empty()),
            "{label}: nodeSelector"
        );
        assert!(
            gpus.and_then(Value::as_u64).is_some_and(|n| n >= 1),
            "{label}: resources.limits nvidia.com/gpu"
        );
    } else {
        assert!(gpus.is_none(), "{label}: the CPU Deployment asks for a GPU");
    }

    // The environment the pod gives both containers: its env and the Secret's keys.
    let environment = |container: &Value| -> Vec<(String, String)> {
        let mut env = Vec::new();
        for from in container
            .get("envFrom")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let secret = by_name(
                objects,
                "Secret",
                str_at(from, &["secretRef", "name"]).unwrap(),
                label,
            );
            for (k, v) in secret.get("data").unwrap().as_mapping().unwrap() {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
                env.push((
                    k.as_str().unwrap().to_owned(),
                    String::from_utf8(value).unwrap(),
                ));
            }
        }
        for pair in container
            .get("env")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            env.push((
                str_at(pair, &["name"]).unwrap().to_owned(),
                str_at(pair, &["value"]).unwrap().to_owned(),
            ));
        }
        env.sort();
        env
    };
    let env = environment(daemon);
    assert_eq!(
        env,
        environment(check),
        "{label}: the check sees another environment than run"
    );
    let mut needed = Vec::new();
    for path in &laid {
        let value: Value = serde_yaml::from_str(&read(&etc.join(path))).unwrap();
        password_envs(&value, &mut needed);
    }
    for name in &needed {
        assert!(
            env.iter().any(|(k, _)| k == name),
            "{label}: password_env {name} is not in the pod's environment (Secret visiond-passwords)"
        );
    }

    // What the pipelines write lies on the state volume, which the pod mounts writable.
    let state = "/var/lib/visiond";
    assert!(
        mounts
            .iter()
            .any(|m| str_at(m, &["mountPath"]) == Some(state)
                && m.get("readOnly") != Some(&Value::Bool(true))),
        "{label}: {state} is not mounted writable"
    );

    // The real `visiond check`, on the files as laid out, with the pod's environment and the
    // state volume at /var/lib/visiond (a private mount namespace backs it with a temp dir).
    let var_lib = scratch.join(format!("{label}/var-lib"));
    std::fs::create_dir_all(var_lib.join("visiond")).unwrap();
    let mut command = deploy_support::namespaced(
        &[(&var_lib, "/var/lib")],
        Path::new(env!("CARGO_BIN_EXE_visiond")),
        &["check", "-c", &local_config.display().to_string()],
    );
    for name in ["HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT"] {
        command.env_remove(name);
    }
    for (k, v) in &env {
        command.env(k, v);
    }
    let output = deploy_support::run(&mut command);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{label}: visiond check on the ConfigMaps:\n{said}"
    );
    assert!(said.contains(": OK: "), "{label}: {said}");
}

fn components_select_what_they_should(label: &str, objects: &[Value]) {
    let monitor = only(objects, "ServiceMonitor", label);
    assert_eq!(
        str_at(monitor, &["apiVersion"]),
        Some("monitoring.coreos.com/v1")
    );
    let service = by_name(objects, "Service", "visiond-http", label);
    assert!(
        subset(
            &labels(at(monitor, &["spec", "selector", "matchLabels"])),
            &labels(at(service, &["metadata", "labels"]))
        ),
        "{label}: the ServiceMonitor's spec.selector does not select Service visiond-http"
    );
    assert!(
        !subset(
            &labels(at(monitor, &["spec", "selector", "matchLabels"])),
            &labels(at(
                by_name(objects, "Service", "visiond-rtsp", label),
                &["metadata", "labels"]
            ))
        ),
        "{label}: the ServiceMonitor selects the RTSP Service too"
    );
    let names: Vec<&str> = at(service, &["spec", "ports"])
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .filter_map(|p| str_at(p, &["name"]))
        .collect();
    let endpoints = at(monitor, &["spec", "endpoints"])
        .and_then(Value::as_sequence)
        .unwrap();
    assert!(!endpoints.is_empty(), "{label}: spec.endpoints");
    for endpoint in endpoints {
        let port = str_at(endpoint, &["port"]).unwrap();
        assert!(
            names.contains(&port),
            "{label}: endpoint port {port} is not in {names:?}"
        );
        assert_eq!(
            str_at(endpoint, &["path"]),
            Some("/metrics"),
            "{label}: endpoint path"
        );
    }

    let budget = only(objects, "PodDisruptionBudget", label);
    let workload = objects
        .iter()
        .find(|o| matches!(kind(o), "Deployment" | "DaemonSet"))
        .unwrap();
    assert!(
        subset(
            &labels(at(budget, &["spec", "selector", "matchLabels"])),
            &labels(at(workload, &["spec", "template", "metadata", "labels"]))
        ),
        "{label}: the PodDisruptionBudget does not select the pods"
    );
}

#[test]
fn every_overlay_renders_validates_and_runs_a_configuration_that_passes_check() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("kubernetes");
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    for (label, path) in prepared_tree(&tree) {
        let (text, objects) = render(&path);
        validate(&label, &text, &objects, &scratch);
        check_workload(&label, &objects, &scratch);
        if label.ends_with("+components") {
            components_select_what_they_should(&label, &objects);
        } else {
            for optional in ["ServiceMonitor", "PodDisruptionBudget"] {
                assert!(
                    objects.iter().all(|o| kind(o) != optional),
                    "{label}: {optional} belongs in a component"
                );
            }
        }
        eprintln!(
            "{label}: {} objects rendered, validated and checked",
            objects.len()
        );
    }
}

/// The Secret is made from a file the operator writes: none is shipped, so no deployment runs
/// with a password everybody knows, and rendering without it fails saying which file is missing.
#[test]
fn no_password_is_shipped_and_rendering_without_one_names_the_file() {
    let shipped = repo().join("deploy/kubernetes/base/secrets");
    let tracked = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "ls-files",
            "deploy/kubernetes/base/secrets",
        ])
        .output()
        .unwrap();
    if tracked.status.success() {
        let files = String::from_utf8_lossy(&tracked.stdout);
        assert!(
            !files.lines().any(|f| f.ends_with("/passwords.env")),
            "{files}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo().join("deploy/kubernetes"), dir.path());
    let _ = std::fs::remove_file(dir.path().join("base/secrets/passwords.env"));
    let output = kubectl()
        .arg("kustomize")
        .arg(dir.path().join("overlays/cpu"))
        .output()
        .unwrap();
    assert!(!output.status.success(), "rendered without passwords.env");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("passwords.env"), "{said}");
    assert!(shipped.join("passwords.env.example").is_file());
}
