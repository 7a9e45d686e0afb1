//! Runs helm (and, against a live cluster, kubectl) on `charts/fanout` for the chart tests.
//!
//! Shared by `tests/chart.rs` and, through `#[path = "chart/support.rs"] mod chart_support;`,
//! by cluster tests that want [`server_dry_run`]. helm is found the way CI finds it:
//! `$HELM` if set, else `hack/tools.sh path helm` (which builds and caches it). A missing helm
//! is a test failure, never a skip.
#![allow(dead_code)] // each including test crate uses a different subset

use serde::Deserialize;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/fanout")
}

/// The helm binary: `$HELM`, else what `hack/tools.sh path helm` prints. Panics with the reason
/// when neither gives an executable.
pub fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(find_helm)
}

fn find_helm() -> PathBuf {
    if let Some(path) = std::env::var_os("HELM").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "HELM={} is not a file", path.display());
        return path;
    }
    hack_tool("helm")
}

/// A tool the cluster harness builds and caches: what `hack/tools.sh path NAME` prints
/// (building it first if the cache lacks it). Panics with the reason when that fails.
pub fn hack_tool(name: &str) -> PathBuf {
    let script = repo_root().join("hack/tools.sh");
    assert!(
        script.is_file(),
        "{name} not found: {} does not exist",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .args(["path", name])
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .expect("run hack/tools.sh");
    assert!(
        out.status.success(),
        "hack/tools.sh path {name} failed: {}",
        out.status
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        path.is_file(),
        "hack/tools.sh path {name} printed {path:?}, not a file"
    );
    path
}

/// `helm ARGS...`, output captured.
pub fn run_helm(args: &[&str]) -> Output {
    Command::new(helm())
        .args(args)
        // No user config, cache or repositories leak into the test.
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("fanout-chart-test/config"),
        )
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("fanout-chart-test/cache"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("fanout-chart-test/data"),
        )
        .output()
        .expect("run helm")
}

/// `helm template` of the chart as release `fanout` in `namespace`, with extra arguments
/// (`--set ...`, `-f ...`). Returns helm's output: success or not is the caller's to judge.
pub fn template_raw(namespace: &str, extra: &[&str]) -> Output {
    let chart = chart_dir();
    let chart = chart.to_str().expect("chart path is UTF-8");
    let mut args = vec!["template", "fanout", chart, "--namespace", namespace];
    args.extend_from_slice(extra);
    run_helm(&args)
}

/// The rendered manifests as YAML text; panics with helm's stderr if rendering fails.
pub fn template_yaml(namespace: &str, extra: &[&str]) -> String {
    let out = template_raw(namespace, extra);
    assert!(
        out.status.success(),
        "helm template {extra:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm output is UTF-8")
}

/// The rendered manifests, one JSON value per object (empty documents dropped).
pub fn template(namespace: &str, extra: &[&str]) -> Vec<Value> {
    parse_documents(&template_yaml(namespace, extra))
}

pub fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Renders the chart with `extra` values and submits everything, CRD first, to the API server
/// of `kubeconfig` with `kubectl apply --server-side --dry-run=server`: the server runs
/// validation, defaulting and admission but stores nothing. Only namespaces are created for
/// real (server dry-run refuses objects in a namespace that does not exist). Returns kubectl's
/// combined output, or an error that carries it.
pub fn server_dry_run(
    kubectl: &Path,
    kubeconfig: &Path,
    namespace: &str,
    extra: &[&str],
) -> Result<String, String> {
    let kubectl_cmd = |args: &[&str]| {
        let mut cmd = Command::new(kubectl);
        cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
        cmd
    };
    let mut log = String::new();
    let mut run = |mut cmd: Command, stdin: Option<&str>| -> Result<(), String> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
        // The pipe is closed when this statement ends, so kubectl sees the end of its input.
        if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| format!("write to kubectl: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("wait for kubectl: {e}"))?;
        log.push_str(&String::from_utf8_lossy(&out.stdout));
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?} failed ({}):\n{log}", out.status))
        }
    };

    let crd = chart_dir().join("crds/fanoutgroup.yaml");
    let crd = crd.to_str().ok_or("chart path is not UTF-8")?;
    run(
        kubectl_cmd(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            crd,
        ]),
        None,
    )?;

    let rendered = template_yaml(namespace, extra);
    let mut namespaces: Vec<String> = parse_documents(&rendered)
        .iter()
        .filter_map(|o| o.pointer("/metadata/namespace").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    namespaces.push(namespace.to_owned());
    namespaces.sort();
    namespaces.dedup();
    for ns in &namespaces {
        let manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
        run(
            kubectl_cmd(&["apply", "--server-side", "-f", "-"]),
            Some(&manifest),
        )?;
    }

    run(
        kubectl_cmd(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "--field-manager=helm",
            // A live release of the same chart (the e2e tests install one) owns these fields;
            // a dry run is about validation and admission, not ownership.
            "--force-conflicts",
            // No --namespace: every namespaced object names its own, and they differ in
            // namespace-scoped mode.
            "-f",
            "-",
        ]),
        Some(&rendered),
    )?;
    Ok(log)
}
