//! Logs: `tracing` to stderr, human-readable by default or one JSON object per line with
//! `--log-format json`. The level comes from `ATTACHE_LOG`, else `RUST_LOG`, else `info`:
//! a level (`debug`), or comma-separated `target=level` directives
//! (`info,attache=debug,hyper=warn`).
//!
//! The filter is `tracing_subscriber`'s `Targets`, not `EnvFilter`: the directives attache
//! documents are the same, and `EnvFilter`'s span and field filters would link a regex engine
//! (0.43 MB of code, resident in every pod) that no documented use needs.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let directives = std::env::var("ATTACHE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let filter = parse(&directives).unwrap_or_else(|e| {
        eprintln!("attache: ignoring invalid log filter {directives:?}: {e}");
        Targets::new().with_default(tracing::Level::INFO)
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colors(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
}

/// Colours only for a person at a terminal: a container runtime, `kubectl logs`, systemd or a
/// redirect to a file gets plain text, and `NO_COLOR` (any non-empty value, no-color.org)
/// turns them off everywhere.
fn colors(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The filter of a directives string.
fn parse(directives: &str) -> Result<Targets, String> {
    directives
        .trim()
        .parse::<Targets>()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::filter::LevelFilter;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colors(true, None));
        assert!(colors(true, Some("".into())), "an empty NO_COLOR is unset");
        assert!(!colors(true, Some("1".into())));
        assert!(!colors(false, None), "a pipe or file gets plain text");
    }

    #[test]
    fn levels_and_target_directives_parse_as_documented() {
        let f = parse("debug").expect("a level");
        assert!(f.would_enable("hyper::proto", &Level::DEBUG));
        assert!(!f.would_enable("hyper::proto", &Level::TRACE));

        let f = parse("info,attache=debug,hyper=warn").expect("directives");
        assert!(f.would_enable("attache::pool", &Level::DEBUG));
        assert!(f.would_enable("tower", &Level::INFO));
        assert!(!f.would_enable("tower", &Level::DEBUG));
        assert!(!f.would_enable("hyper::client", &Level::INFO));
        assert_eq!(f.default_level(), Some(LevelFilter::INFO));

        assert!(
            parse("attache=loud").is_err(),
            "an unknown level is refused"
        );
    }
}
