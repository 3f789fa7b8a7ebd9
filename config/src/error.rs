//! Configuration errors. Every error names the field path it is about and, when the file
//! gives one, the line and column, so `attache validate` reads like a compiler.

use std::fmt;

/// One problem with a configuration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted field path, e.g. `spec.outbound[0].upstream`; empty for the document itself.
    pub path: String,
    pub message: String,
    /// 1-based line and column of the offending value (or key), when known.
    pub location: Option<(usize, usize)>,
}

impl ConfigError {
    /// An error about `path`. The message is redacted here ([`crate::redact_text`]): it may
    /// quote a value read from the file or interpolated from the environment, a URL with a
    /// password or a token in its query, and it goes to logs, `attache validate` and `/config`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: crate::redact_text(&message.into()),
            location: None,
        }
    }

    pub fn at(mut self, location: Option<(usize, usize)>) -> Self {
        if self.location.is_none() {
            self.location = location;
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some((line, column)) = self.location {
            write!(f, " at line {line}, column {column}")?;
        }
        Ok(())
    }
}

/// All the problems found in one document. Loading reports every error it can find, not just
/// the first, so a user fixes a file in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// Where the document came from (a file path, or `<inline>`).
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{}: {n} configuration error{}",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
