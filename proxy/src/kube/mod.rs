//! attache in Kubernetes: `attache inject` adds the sidecar to manifests (`inject.rs`, with the
//! container it adds in `sidecar.rs`), writing YAML back in the order it was read
//! (`emit.rs`); `attache webhook` makes the same mutation as an admission webhook
//! (`webhook.rs`); `attache install` prints the cluster side (`install.rs`);
//! `attache init-iptables` programs a pod's transparent capture (`iptables.rs`).

pub mod emit;
pub mod inject;
pub mod install;
pub mod iptables;
pub mod sidecar;
pub mod webhook;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `attache inject`: each file (a directory's `.yaml`, `.yml` and `.json` files, in name
/// order; `-` or nothing for standard input) injected and printed, documents separated by
/// `---`; notes about what was left alone on stderr. Nothing is printed when any input fails.
pub fn inject_command(inputs: &[PathBuf], options: &inject::Options) -> ExitCode {
    match inject_inputs(inputs, options) {
        Ok((out, notes)) => {
            for n in notes {
                eprintln!("note: {n}");
            }
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(out.as_bytes()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inject_inputs(
    inputs: &[PathBuf],
    options: &inject::Options,
) -> Result<(String, Vec<String>), String> {
    let mut texts = Vec::new();
    if inputs.is_empty() || inputs.iter().any(|p| p.as_os_str() == "-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("<stdin>: {e}"))?;
        texts.push(("<stdin>".to_owned(), text));
    }
    for input in inputs.iter().filter(|p| p.as_os_str() != "-") {
        for file in files(input)? {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            texts.push((file.display().to_string(), text));
        }
    }
    let mut out = String::new();
    let mut notes = Vec::new();
    for (source, text) in texts {
        let (yaml, mut n) = inject::inject(&text, &source, options)?;
        if yaml.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(&yaml);
        notes.append(&mut n);
    }
    Ok((out, notes))
}

/// A file, or a directory's manifests in name order.
fn files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        })
        .collect();
    found.sort();
    Ok(found)
}

/// `attache install`: the manifests on stdout.
pub fn install_command(settings: &install::Settings) -> ExitCode {
    match install::manifests(settings) {
        Ok(docs) => {
            let nodes: Vec<_> = docs.iter().map(|d| emit::merge(d, None)).collect();
            print!("{}", emit::stream(&nodes));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
