//! The operator's manual must not drift from the code: every condition type and reason, every
//! event reason and every metric capow emits is documented, each in a code span (backticks),
//! in `docs/conditions-and-events.md` (conditions and events) and `docs/metrics.md` (metrics).
//!
//! The names are read from the source text, so a new one fails this test until the manual
//! names it:
//! - condition types and reasons: every `pub const NAME: &str = "Value";` with a PascalCase
//!   value in `src/api/conditions.rs`, and in any `pub mod ...reasons` or
//!   `pub mod condition_types` block under `src/`;
//! - event reasons: those consts (conditions' reasons are also event reasons), every
//!   `const ...REASON...: &str = "Value"`, and every PascalCase string literal in the argument
//!   after an `EventType::Warning,` / `EventType::Normal,` line (the reason argument of
//!   `Context::event` and `Context::event_about`);
//! - metrics: the first string literal after every `registry.register(` (the name without its
//!   prefix, which the manual must show as the tail of a `capow_...` name) and every
//!   `"node_group_..."` literal (the scrape-time node-group gauges).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `.rs` file under `src/` with its text, without its `#[cfg(test)]` tail (test
/// fixtures name reasons and metrics that capow does not emit).
fn source_texts() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    sources(&root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let text = match text.find("\n#[cfg(test)]") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            (p, text)
        })
        .collect()
}

/// The string literals of `line`.
fn literals(line: &str) -> Vec<&str> {
    line.split('"').skip(1).step_by(2).collect()
}

/// The value of `pub const NAME: &str = "Value";` (or without `pub`).
fn const_value(line: &str) -> Option<(&str, &str)> {
    let t = line.trim();
    let t = t.strip_prefix("pub ").unwrap_or(t);
    let t = t.strip_prefix("const ")?;
    let (name, rest) = t.split_once(':')?;
    if !rest.trim_start().starts_with("&str") {
        return None;
    }
    Some((name.trim(), *literals(rest).first()?))
}

fn pascal(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Condition types and reasons, and event reasons.
fn reasons() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut conditions = BTreeSet::new();
    let mut events = BTreeSet::new();
    for (path, text) in source_texts() {
        let lines: Vec<&str> = text.lines().collect();
        let all_consts = path.ends_with("src/api/conditions.rs");
        let mut in_block: Option<usize> = None;
        for (i, line) in lines.iter().enumerate() {
            let indent = line.len() - line.trim_start().len();
            let t = line.trim();
            if let Some(name) = t
                .strip_prefix("pub mod ")
                .and_then(|r| r.strip_suffix(" {"))
                && (name.ends_with("reasons") || name == "condition_types")
            {
                in_block = Some(indent);
                continue;
            }
            if let Some(block) = in_block
                && t == "}"
                && indent == block
            {
                in_block = None;
                continue;
            }
            if let Some((name, value)) = const_value(line)
                && pascal(value)
            {
                if in_block.is_some() || (all_consts && t.starts_with("pub const ")) {
                    conditions.insert(value.to_owned());
                    events.insert(value.to_owned());
                } else if name.contains("REASON") {
                    events.insert(value.to_owned());
                }
            }
            if t == "EventType::Warning," || t == "EventType::Normal," {
                for next in &lines[i + 1..] {
                    events.extend(
                        literals(next)
                            .into_iter()
                            .filter(|l| pascal(l))
                            .map(str::to_owned),
                    );
                    let n_indent = next.len() - next.trim_start().len();
                    if n_indent == indent && next.trim_end().ends_with(',') {
                        break;
                    }
                }
            }
        }
    }
    (conditions, events)
}

/// Metric names without their prefix.
fn metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (_, text) in source_texts() {
        let mut rest = text.as_str();
        while let Some(i) = rest.find("registry.register(") {
            rest = &rest[i + "registry.register(".len()..];
            let name = rest.split('"').nth(1).unwrap();
            names.insert(name.to_owned());
        }
        for line in text.lines() {
            names.extend(
                literals(line)
                    .into_iter()
                    .filter(|l| {
                        l.starts_with("node_group_")
                            && l.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
                    .map(str::to_owned),
            );
        }
    }
    names
}

/// The code spans of a Markdown file (text between single backticks).
fn code_spans(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_condition_and_event_reason_is_in_the_manual() {
    let (conditions, events) = reasons();
    // The extraction itself works (a few known names).
    for known in ["InstanceCreateFailed", "AutoscalerAvailable", "Ready"] {
        assert!(conditions.contains(known), "{known} not found in the code");
    }
    for known in [
        "ServerCreated",
        "DuplicateServerDeleted",
        "OrphanFound",
        "OrphanDeleted",
    ] {
        assert!(events.contains(known), "{known} not found in the code");
    }
    let spans: BTreeSet<String> = code_spans("docs/conditions-and-events.md")
        .into_iter()
        .collect();
    let missing: Vec<_> = conditions
        .union(&events)
        .filter(|r| !spans.contains(*r))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/conditions-and-events.md does not name (in backticks) {missing:?}"
    );
}

#[test]
fn every_metric_is_in_the_manual() {
    let names = metrics();
    for known in ["requests", "reachable", "orphans", "node_group_instances"] {
        assert!(names.contains(known), "{known} not found in the code");
    }
    // Full names in the manual, without labels and the suffixes Prometheus adds.
    let documented: Vec<String> = code_spans("docs/metrics.md")
        .into_iter()
        .filter_map(|s| {
            let s = s.split('{').next()?.trim().to_owned();
            s.starts_with("capow_").then_some(s)
        })
        .collect();
    let missing: Vec<_> = names
        .iter()
        .filter(|n| {
            !documented.iter().any(|d| {
                ["", "_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| {
                        d.strip_suffix(suffix)
                            .is_some_and(|d| d.ends_with(&format!("_{n}")))
                    })
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md does not name (as `capow_..._<name>`) {missing:?}"
    );
}
