//! The core's one error type: what went wrong, and where in the snapshot.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The snapshot is invalid; `path` names the field.
    Config,
    /// A listener address could not be bound; `path` names the listener's `listen` field.
    Bind,
    /// Anything else: an I/O failure of the core itself, or a bug.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    /// Dotted path into the snapshot (`listeners.0.routes.1.to.0.cluster`), or empty.
    pub path: String,
    pub message: String,
}

impl Error {
    pub fn config(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Config, path: path.into(), message: message.into() }
    }

    pub fn bind(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Bind, path: path.into(), message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Internal, path: String::new(), message: message.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Error {}
