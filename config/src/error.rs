//! Errors of the config crate: [`ConfigError`] for a whole config (file, key path, line,
//! message) and [`ParamError`] for one parameter of one object.

use std::fmt;
use std::path::PathBuf;

/// A parameter that failed semantic validation: which field and what is wrong with it.
///
/// The config loader prefixes `field` with the table path (`bdev[2].block_size`); the
/// daemon turns it into a JSON-RPC `-32602 Invalid params` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParamError {
    /// Field name, as spelled in the config file and in the RPC params.
    pub field: String,
    /// What is wrong, e.g. `must be 512 or 4096, got 1000`.
    pub message: String,
}

impl ParamError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Where in a TOML text an error is: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, starting at 1.
    pub line: usize,
    /// Column in characters, starting at 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` of `text` (clamped to the text).
    pub fn of_offset(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..offset].chars().count() + 1;
        Location { line, column }
    }
}

/// Why a config could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (missing, permissions, not UTF-8...).
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML, or a field is unknown, has the wrong type, is missing,
    /// or has a bad value. `key` is the key path (`bdev[2].block_size`), empty for errors
    /// that belong to no key (TOML syntax errors, unknown top-level sections).
    #[error("{origin}{}: {}{message}", fmt_location(location), fmt_key(key))]
    Invalid {
        /// The file name (or another origin name given to [`crate::Config::from_str`]).
        origin: String,
        /// The key path of the bad field.
        key: String,
        /// Where in the text, when known.
        location: Option<Location>,
        /// What is wrong.
        message: String,
    },
    /// The config could not be written as TOML.
    #[error("cannot write config as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
}

impl ConfigError {
    /// The key path of an [`ConfigError::Invalid`] error (empty for other errors).
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Invalid { key, .. } => key,
            _ => "",
        }
    }

    /// The location of an [`ConfigError::Invalid`] error, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            ConfigError::Invalid { location, .. } => *location,
            _ => None,
        }
    }
}

fn fmt_location(location: &Option<Location>) -> String {
    match location {
        Some(l) => format!(":{}:{}", l.line, l.column),
        None => String::new(),
    }
}

fn fmt_key(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

/// A path of keys and array indexes into a config, displayed as `bdev[2].block_size`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A table key.
    Key(String),
    /// An index into an array (of tables).
    Index(usize),
}

impl KeyPath {
    /// The empty path (the document root).
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path followed by `key`.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        KeyPath(segments)
    }

    /// This path followed by `[index]`.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        KeyPath(segments)
    }

    /// The segments, root first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub(crate) fn push(&mut self, segment: Segment) {
        self.0.push(segment);
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_display() {
        let p = KeyPath::root().key("bdev").index(2).key("block_size");
        assert_eq!(p.to_string(), "bdev[2].block_size");
        assert_eq!(KeyPath::root().to_string(), "");
    }

    #[test]
    fn location_of_offset() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(
            Location::of_offset(text, 0),
            Location { line: 1, column: 1 }
        );
        let off = text.find('=').unwrap();
        assert_eq!(Location::of_offset(text, off).column, 3);
        let off = text.rfind('2').unwrap();
        assert_eq!(
            Location::of_offset(text, off),
            Location { line: 2, column: 6 }
        );
        assert_eq!(Location::of_offset(text, 10_000).line, 3);
    }
}
