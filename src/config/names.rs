//! The small grammars of config values: names of clusters, machines, groups
//! and commands; Unix user names; principal lists such as `"admins,web01"`.

use std::fmt;

use crate::identity::Id52;

/// A principal in `allow_from`, `allow_shell`, `members` or `config_editors`,
/// resolved to what it names during validation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    /// `*`: every machine listed in the config.
    Everyone,
    Id52(Id52),
    Machine(String),
    Group(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Everyone => f.write_str("*"),
            Principal::Id52(id) => write!(f, "{id}"),
            Principal::Machine(name) | Principal::Group(name) => f.write_str(name),
        }
    }
}

/// Why a name is not a valid cluster, machine, group or command name, if it
/// is not. Names are what the CLI addresses (`web01.company`), so they avoid
/// dots and anything a shell or a URL would mangle.
pub fn name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("a name cannot be empty");
    }
    if name.len() > 63 {
        return Some("a name is at most 63 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("a name starts with a letter or a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Some(
            "a name holds only letters, digits, '-' and '_' (no dots: they separate machine and cluster)",
        );
    }
    None
}

/// A Unix user name as Debian's `adduser` accepts it by default.
pub fn username_ok(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    !body.is_empty()
        && name.len() <= 32
        && body.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && body
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Splits a principal list on commas, with each item's byte offset in the
/// text, skipping surrounding spaces. Empty items are returned as "" so that
/// `"a,,b"` can be reported.
pub fn split_list(text: &str) -> Vec<(usize, &str)> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut offset = 0;
    for part in text.split(',') {
        let lead = part.len() - part.trim_start().len();
        out.push((offset + lead, part.trim()));
        offset += part.len() + 1;
    }
    out
}

/// Whether `text` looks like an attempt at an id52 rather than a name: 40
/// or more letters and digits. Every id52 (52 characters of the z-base-32
/// alphabet) does, so a machine alias or group name for which this holds is
/// refused: it could shadow a device's id52 in a principal list.
pub fn looks_like_id52(text: &str) -> bool {
    text.len() >= 40 && text.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_error("web01"), None);
        assert_eq!(name_error("on-call_2"), None);
        assert!(name_error("web.01").is_some());
        assert!(name_error("-x").is_some());
        assert!(name_error("").is_some());
    }

    #[test]
    fn usernames() {
        assert!(username_ok("www-data"));
        assert!(username_ok("root"));
        assert!(username_ok("_apt"));
        assert!(!username_ok("Root"));
        assert!(!username_ok("1abc"));
        assert!(!username_ok("a b"));
        assert!(!username_ok(""));
    }

    #[test]
    fn every_id52_looks_like_one_and_names_do_not() {
        for _ in 0..32 {
            let id = crate::identity::Identity::generate().id52().to_string();
            assert_eq!(name_error(&id), None, "an id52 is a well-formed name");
            assert!(looks_like_id52(&id), "{id}");
        }
        assert!(!looks_like_id52("web01"));
        assert!(!looks_like_id52(&"a-".repeat(30)));
    }

    #[test]
    fn lists_keep_offsets() {
        assert_eq!(split_list("a, b,c"), vec![(0, "a"), (3, "b"), (5, "c")]);
        assert_eq!(split_list("a,,b"), vec![(0, "a"), (2, ""), (3, "b")]);
        assert!(split_list("  ").is_empty());
    }
}
