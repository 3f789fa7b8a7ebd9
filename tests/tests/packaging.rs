//! What ships besides the code: the toolchain attache says it needs, the container image that
//! builds it, and what that build sends to Docker. Each of these broke once without a test
//! noticing: the image pinned a Rust older than the dependencies accept, so `docker build`
//! failed, and the build context carried the whole `target/` directory.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// "1.91" or "1.88.0" as a comparable (major, minor, patch).
fn version(v: &str) -> (u32, u32, u32) {
    let mut parts = v.trim().split('.').map(|p| {
        p.parse::<u32>()
            .unwrap_or_else(|e| panic!("version {v:?}: {e}"))
    });
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0);
    (major, minor, patch)
}

fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_owned()
}

/// The workspace's `rust-version` and the highest one among the locked dependencies built on
/// this platform, with the package that asks for it.
fn rust_versions() -> (String, (String, String)) {
    let out = Command::new(env!("CARGO"))
        .current_dir(root())
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", &host_triple()])
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let mut ours = None;
    let mut highest = ("0".to_owned(), String::new());
    for p in meta["packages"].as_array().expect("packages") {
        let Some(rv) = p["rust_version"].as_str() else {
            continue;
        };
        let id = p["id"].as_str().unwrap_or_default();
        let name = p["name"].as_str().unwrap_or_default();
        if members.contains(&id) {
            if name == "attache" {
                ours = Some(rv.to_owned());
            }
        } else if version(rv) > version(&highest.0) {
            highest = (
                rv.to_owned(),
                format!("{name} {}", p["version"].as_str().unwrap_or("?")),
            );
        }
    }
    (
        ours.expect("the attache package has a rust-version"),
        highest,
    )
}

#[test]
fn the_declared_toolchain_builds_every_dependency_and_the_image_and_readme_agree() {
    let (declared, (needed, by)) = rust_versions();
    assert!(
        version(&declared) >= version(&needed),
        "Cargo.toml says rust-version {declared}, but {by} needs {needed}"
    );

    // deploy/Dockerfile builds with an official Rust image at least that new.
    let dockerfile = read("deploy/Dockerfile");
    let image = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("FROM rust:"))
        .expect("the Dockerfile builds FROM rust:<version>");
    let tag = image.split(['-', ' ']).next().unwrap_or_default();
    assert!(
        version(tag) >= version(&declared),
        "deploy/Dockerfile builds with rust:{tag}, older than rust-version {declared}"
    );

    // The README tells a newcomer the same minimum.
    let readme = read("README.md");
    assert!(
        readme.contains(&format!("Rust toolchain ({declared} or newer")),
        "README.md does not state the minimum Rust {declared}"
    );
}

#[test]
fn the_image_build_context_leaves_out_build_output() {
    // `docker build -f deploy/Dockerfile .` sends the repository root to the engine; without
    // these exclusions that is every local build under target/ (gigabytes).
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target", ".git", "bench/out"] {
        assert!(
            rules.iter().any(|r| r.trim_matches('/') == needed),
            ".dockerignore does not leave out {needed}: {rules:?}"
        );
    }
    // And nothing the image build needs is left out.
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "config",
        "filters",
        "proxy",
        "tests",
    ] {
        assert!(
            !rules.iter().any(|r| r.trim_matches('/') == kept),
            ".dockerignore leaves out {kept}, which `cargo build --locked` reads"
        );
    }
}
