//! `charts/fanout/README.md` is generated from the chart's `values.yaml` (every key, its
//! default, and the comment above it) and `Chart.yaml`; this test fails when the committed
//! file is out of date. Regenerate with
//!
//! ```text
//! FANOUT_WRITE_CHART_README=1 cargo test --test chart_readme
//! ```
//!
//! The comments are read the helm-docs way: the comment lines right above a key (a leading
//! `-- ` is dropped) describe it; commented-out YAML (a `#` followed by two or more spaces)
//! is an example, not a description.

use serde_json::Value;
use std::path::PathBuf;

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/fanout")
}

/// One key of values.yaml: its dotted path and the comment above it.
#[derive(Debug, PartialEq)]
struct Key {
    path: String,
    description: String,
}

/// The keys of a values file in document order, with their descriptions.
fn keys(text: &str) -> Vec<Key> {
    let mut keys = Vec::new();
    // (indent, key) of the enclosing maps.
    let mut parents: Vec<(usize, String)> = Vec::new();
    let mut comment: Vec<String> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if trimmed.is_empty() {
            comment.clear();
            continue;
        }
        if let Some(text) = trimmed.strip_prefix('#') {
            if text.starts_with("  ") {
                // Commented-out YAML: an example, and the end of any description before it.
                comment.clear();
            } else {
                let text = text.trim();
                comment.push(text.strip_prefix("-- ").unwrap_or(text).to_string());
            }
            continue;
        }
        let is_key = !trimmed.starts_with('-')
            && trimmed
                .split_once(':')
                .is_some_and(|(key, rest)| !key.contains(' ') && (rest.is_empty() || rest.starts_with(' ')));
        if !is_key {
            comment.clear();
            continue;
        }
        let key = trimmed.split_once(':').map(|(key, _)| key).unwrap_or(trimmed);
        while parents.last().is_some_and(|(at, _)| *at >= indent) {
            parents.pop();
        }
        let mut path: Vec<&str> = parents.iter().map(|(_, key)| key.as_str()).collect();
        path.push(key);
        keys.push(Key {
            path: path.join("."),
            description: comment.join(" "),
        });
        comment.clear();
        parents.push((indent, key.to_string()));
    }
    keys
}

fn lookup<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(values, |value, key| value.get(key))
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The README for `values.yaml` and `Chart.yaml`.
fn render(values_text: &str, chart: &Value) -> String {
    let values: Value = serde_norway::from_str(values_text).expect("values.yaml parses");
    let field = |name: &str| chart[name].as_str().unwrap_or_default().to_string();
    let mut out = String::new();
    out.push_str(&format!("# {} chart\n\n", field("name")));
    out.push_str(
        "<!-- Generated from values.yaml and Chart.yaml by tests/chart_readme.rs; do not edit.\n     \
         Regenerate: FANOUT_WRITE_CHART_README=1 cargo test --test chart_readme -->\n\n",
    );
    out.push_str(&format!("{}\n\n", field("description").trim()));
    out.push_str(&format!(
        "Version {}, app version {}, Kubernetes {}. Home: {}\n\n",
        field("version"),
        field("appVersion"),
        field("kubeVersion"),
        field("home")
    ));
    out.push_str(
        "Install, upgrade and uninstall: `docs/install.md` in the repository. `helm test` checks \
         that the controller answers on its metrics Service.\n\n",
    );
    out.push_str("## Values\n\n| key | default | description |\n|---|---|---|\n");
    for key in keys(values_text) {
        let Some(value) = lookup(&values, &key.path) else {
            continue;
        };
        let section = value.as_object().is_some_and(|map| !map.is_empty());
        if section && key.description.is_empty() {
            continue;
        }
        let default = if section {
            String::new()
        } else {
            format!("`{}`", cell(&serde_json::to_string(value).unwrap_or_default()))
        };
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            key.path,
            default,
            cell(&key.description)
        ));
    }
    out
}

#[test]
fn keys_are_read_with_their_comments_and_examples_are_not_descriptions() {
    let text = "# -- The image.\nimage:\n  # Where it is.\n  repository: x\n  tag: \"\"\n\nlist: []\n#  - example: 1\n# The next one.\nnext: 1\n";
    let found: Vec<(String, String)> = keys(text).into_iter().map(|k| (k.path, k.description)).collect();
    let pairs = |items: &[(&str, &str)]| -> Vec<(String, String)> {
        items
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        found,
        pairs(&[
            ("image", "The image."),
            ("image.repository", "Where it is."),
            ("image.tag", ""),
            ("list", ""),
            ("next", "The next one."),
        ])
    );
}

#[test]
fn the_chart_readme_is_generated_from_the_values() {
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("read values.yaml");
    let chart: Value = serde_norway::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("read Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    let generated = render(&values, &chart);
    let path = chart_dir().join("README.md");
    if std::env::var_os("FANOUT_WRITE_CHART_README").is_some() {
        std::fs::write(&path, &generated).expect("write the chart README");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "charts/fanout/README.md is out of date: FANOUT_WRITE_CHART_README=1 cargo test --test chart_readme"
    );
    for key in [
        "image.repository",
        "replicas",
        "networkPolicy.publishFrom",
        "metrics.service.port",
    ] {
        assert!(generated.contains(&format!("| `{key}` |")), "{key} missing");
    }
}
