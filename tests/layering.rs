//! The layering of docs/architecture.md, checked on the source: which module of `src/` may
//! name which other module through a `crate::` path. A change that crosses a layer fails here
//! with the file, the line and the rule.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::path::{Path, PathBuf};

/// The controller folders under `src/controllers/`; none may name another.
const CONTROLLERS: &[&str] = &["cluster", "lifecycle", "machine", "machine_template"];

/// Top-level modules each layer may name (`crate::<module>`), besides itself.
fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        // Pure types and logic: no I/O layer, no controller.
        "api" => &["capi"],
        "capi" | "kubeapi" | "openstack" => &[],
        "manifests" => &["api", "autoscaler", "runtime"],
        "tls" => &["api", "capi", "kubeapi"],
        "caches" => &["api", "capi", "kubeapi"],
        "autoscaler" => &["api", "caches", "capi", "kubeapi", "tls"],
        "controllers" => &["api", "caches", "capi", "kubeapi", "openstack", "tls"],
        // Process wiring names everything.
        _ => &[
            "api",
            "autoscaler",
            "caches",
            "capi",
            "controllers",
            "kubeapi",
            "manifests",
            "openstack",
            "tls",
        ],
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::a::b` paths named on a line outside comments: `(a, b)`.
fn crate_paths(line: &str) -> Vec<(String, String)> {
    let code = line.split("//").next().unwrap_or_default();
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let mut parts = rest.split("::").map(|p| {
            p.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        });
        let first = parts.next().unwrap_or_default();
        let second = parts.next().unwrap_or_default();
        found.push((first, second));
    }
    found
}

#[test]
fn no_module_crosses_the_layers_of_docs_architecture_md() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let mut components = rel.iter().map(|c| c.to_string_lossy().into_owned());
        let first = components.next().unwrap_or_default();
        let layer = first.trim_end_matches(".rs").to_owned();
        // The controller folder a file belongs to, if any.
        let own_controller = (layer == "controllers")
            .then(|| components.next())
            .flatten()
            .map(|c| c.trim_end_matches(".rs").to_owned());
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (module, sub) in crate_paths(line) {
                let place = format!("src/{}:{}", rel.display(), n + 1);
                if module != layer && !allowed(&layer).contains(&module.as_str()) {
                    violations.push(format!("{place}: {layer} may not name crate::{module}"));
                }
                if module == "controllers"
                    && CONTROLLERS.contains(&sub.as_str())
                    && own_controller.as_deref() != Some(sub.as_str())
                    && layer != "runtime"
                {
                    violations.push(format!(
                        "{place}: only the {sub} controller itself (and runtime wiring) may name crate::controllers::{sub}"
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering rules of docs/architecture.md broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_path_scanner_finds_crate_paths_outside_comments_only() {
    assert_eq!(
        crate_paths("use crate::controllers::machine::plan; // crate::runtime"),
        vec![("controllers".to_owned(), "machine".to_owned())]
    );
    assert_eq!(
        crate_paths("let x = crate::api::ownership::provider_id(a, b);"),
        vec![("api".to_owned(), "ownership".to_owned())]
    );
    assert!(crate_paths("// crate::runtime::cli").is_empty());
}
