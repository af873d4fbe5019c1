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

    /// Parses the text as TOML into `T`, or one diagnostic. The help line
    /// is chosen by where the parse failed, never by the wording of the
    /// toml crate's message. A good text is parsed once (a machine.toml
    /// of 300 machines is 32 KB, parsed at every push); a failure is
    /// parsed again as plain TOML: a document that is not TOML (syntax, a
    /// key written twice) fails that too; one that is TOML but not the
    /// expected shape fails only the first, at a key (unknown), at a table
    /// (a key missing) or at a value (wrong type or value).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, Diagnostic> {
        toml::from_str(self.text).map_err(|e| {
            if let Err(syntax) = self.text.parse::<toml::Table>() {
                return self.toml_error(
                    &syntax,
                    "correct the TOML syntax here; each key and each [table] appears once",
                );
            }
            let help = match self.spanned_part(e.span()) {
                Part::Key => "remove or rename the key; the message lists the expected ones",
                Part::Table => "add the missing key to this table",
                Part::Value => "correct the value at this position",
            };
            self.toml_error(&e, help)
        })
    }

    fn toml_error(&self, err: &toml::de::Error, help: &str) -> Diagnostic {
        let span = err.span().unwrap_or(0..0);
        self.diag(span, err.message().trim_end().to_owned(), help)
    }

    /// What a schema error's span covers in the source: a table header or
    /// inline table (or the whole document), a key (what follows it is `=`
    /// or a dotted key's `.`), or else a value.
    fn spanned_part(&self, span: Option<Range<usize>>) -> Part {
        let Some(span) = span.filter(|s| !s.is_empty()) else {
            return Part::Table;
        };
        let Some(covered) = self.text.get(span.clone()) else {
            return Part::Value;
        };
        if covered.starts_with('[') || covered.starts_with('{') {
            return Part::Table;
        }
        let after = self
            .text
            .get(span.end..)
            .unwrap_or("")
            .trim_start_matches([' ', '\t']);
        if after.starts_with('=') || after.starts_with('.') {
            Part::Key
        } else {
            Part::Value
        }
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

enum Part {
    Key,
    Table,
    Value,
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Shape {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    fn help_for(text: &str) -> (String, (usize, usize)) {
        let err = Source::new(Path::new("x.toml"), text)
            .parse::<Shape>()
            .unwrap_err();
        (err.help.unwrap(), err.position.unwrap())
    }

    #[test]
    fn the_help_line_follows_where_the_parse_failed() {
        let (help, at) = help_for("name = \"a\"\nnmae = \"b\"\n");
        assert!(help.starts_with("remove or rename the key"), "{help}");
        assert_eq!(at, (2, 1));
        let (help, at) = help_for("name = \"a\"\n[inner]\nprot = 1\n");
        assert!(help.starts_with("remove or rename the key"), "{help}");
        assert_eq!(at, (3, 1));
        let (help, _) = help_for("name = \"a\"\n[inner]\n");
        assert_eq!(help, "add the missing key to this table");
        let (help, _) = help_for("[inner]\nport = 1\n");
        assert_eq!(help, "add the missing key to this table");
        let (help, at) = help_for("name = \"a\"\n[inner]\nport = \"x\"\n");
        assert_eq!(help, "correct the value at this position");
        assert_eq!(at, (3, 8));
        let (help, at) = help_for("name = \"a\"\nname = \"b\"\n");
        assert!(help.starts_with("correct the TOML syntax"), "{help}");
        assert_eq!(at.0, 2);
        let (help, _) = help_for("name = \n");
        assert!(help.starts_with("correct the TOML syntax"), "{help}");
    }
}
