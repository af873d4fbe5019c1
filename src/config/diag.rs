//! Diagnostics: a config error that names the file, line and column, says
//! what is wrong and how to fix it. Validation collects all of them, so the
//! operator sees every mistake in one run.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column; `None` for a problem with the file as a
    /// whole (its mode, its presence).
    pub position: Option<(usize, usize)>,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  fix: {help}")?;
        }
        Ok(())
    }
}

/// Every error found in one or more files. This is the error type of loading
/// and validating config; the CLI maps it to exit code 78.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostic {
    /// A problem with a file or directory as a whole.
    pub fn whole(file: impl Into<PathBuf>, message: impl Into<String>, help: &str) -> Self {
        Diagnostic {
            file: file.into(),
            position: None,
            message: message.into(),
            help: (!help.is_empty()).then(|| help.to_owned()),
        }
    }
}

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The text of one config file, to turn byte spans into line and column.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl<'a> Source<'a> {
    pub fn new(path: &'a Path, text: &'a str) -> Self {
        Source { path, text }
    }

    /// 1-based line and column (in characters) of byte offset `at`.
    pub fn line_col(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let before = &self.text[..floor_char_boundary(self.text, at)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub fn diag(&self, span: Range<usize>, message: impl Into<String>, help: &str) -> Diagnostic {
        Diagnostic {
            file: self.path.to_owned(),
            position: Some(self.line_col(span.start)),
            message: message.into(),
            help: (!help.is_empty()).then(|| help.to_owned()),
        }
    }

    /// A diagnostic for a `toml` parse or deserialization error.
    pub fn from_toml(&self, err: &toml::de::Error) -> Diagnostic {
        let span = err.span().unwrap_or(0..0);
        let message = err.message().trim_end().to_owned();
        let help = if message.contains("unknown field") {
            "remove or rename the key; see the list of expected keys above"
        } else if message.contains("duplicate key") {
            "each key and each [table] appears once: rename or merge the second one"
        } else if message.contains("missing field") {
            "add the missing key to this table"
        } else {
            "correct the TOML syntax at this position"
        };
        self.diag(span, message, help)
    }

    /// Span of `part`, a substring at byte `offset` of the string value whose
    /// span (quotes included) is `value`. Falls back to the whole value when
    /// the value is written with escapes or is not a basic string.
    pub fn sub_span(&self, value: &Range<usize>, offset: usize, len: usize) -> Range<usize> {
        let start = value.start + 1 + offset;
        match self.text.get(value.start..value.end) {
            Some(raw)
                if !raw.contains('\\')
                    && (raw.starts_with('"') || raw.starts_with('\''))
                    && !raw.starts_with("\"\"\"")
                    && !raw.starts_with("'''") =>
            {
                start..start + len
            }
            _ => value.clone(),
        }
    }
}

fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = Source::new(Path::new("x.toml"), "a = 1\nbé = 2\n");
        assert_eq!(src.line_col(0), (1, 1));
        assert_eq!(src.line_col(6), (2, 1));
        assert_eq!(src.line_col(9), (2, 3));
    }
}
