//! What malai makes of an ssh-style command line, so that tools which run
//! "an ssh" (git's GIT_SSH_COMMAND, `rsync -e`, `scp -S`, `sftp -S`) can
//! run malai: `-o` options judged one by one (harmless ones ignored,
//! anything that asks for what malai does not do refused by name), a
//! `user@` in front of the target, and a remote command given as one
//! shell-quoted word split into argv by POSIX word rules. No shell runs
//! anywhere: a word that would need one (`;`, `|`, `$`, a glob...) is
//! refused with a hint to write `sh -c '...'`.

/// What an accepted `-o` option means to malai.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshOption {
    /// Nothing: the option tunes something malai does not have (ssh's
    /// authentication, its own forwarding off, its control master...).
    Ignored,
    /// `User=NAME`: as `-l NAME`.
    User(String),
}

/// Options and the values that change nothing malai does (`None`: any
/// value), keys as ssh writes them (matched without regard to case).
const HARMLESS: &[(&str, Option<&[&str]>)] = &[
    ("BatchMode", None),
    ("ClearAllForwardings", Some(&["yes"])),
    ("Compression", None),
    ("ConnectTimeout", None),
    ("ConnectionAttempts", None),
    ("ControlMaster", Some(&["no"])),
    ("ControlPath", Some(&["none"])),
    ("ForwardAgent", Some(&["no"])),
    ("ForwardX11", Some(&["no"])),
    ("ForwardX11Trusted", Some(&["no"])),
    ("GSSAPIAuthentication", None),
    ("HashKnownHosts", None),
    ("IdentitiesOnly", None),
    ("KbdInteractiveAuthentication", None),
    ("LogLevel", None),
    ("PasswordAuthentication", None),
    ("PermitLocalCommand", Some(&["no"])),
    ("PreferredAuthentications", None),
    ("PubkeyAuthentication", None),
    ("RemoteCommand", Some(&["none"])),
    ("RequestTTY", Some(&["no"])),
    ("SendEnv", None),
    ("ServerAliveCountMax", None),
    ("ServerAliveInterval", None),
    ("StrictHostKeyChecking", None),
    ("TCPKeepAlive", None),
    ("Tunnel", Some(&["no"])),
    ("UpdateHostKeys", None),
    ("UserKnownHostsFile", None),
];

/// Judges one `-o` option, written `Key=Value`, `Key Value` or `Key
/// "Value"` as ssh takes it.
pub fn option(text: &str) -> Result<SshOption, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c == '=' || c.is_whitespace())
        .ok_or_else(|| format!("-o {text:?}: expected Key=Value"))?;
    let (key, rest) = text.split_at(split);
    let value = rest
        .trim_start_matches(|c: char| c.is_whitespace())
        .strip_prefix('=')
        .unwrap_or(rest.trim_start())
        .trim()
        .trim_matches('"');
    if key.eq_ignore_ascii_case("User") {
        return Ok(SshOption::User(value.to_owned()));
    }
    let known = HARMLESS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(key));
    match known {
        Some((_, None)) => Ok(SshOption::Ignored),
        Some((_, Some(values))) if values.iter().any(|v| v.eq_ignore_ascii_case(value)) => {
            Ok(SshOption::Ignored)
        }
        Some((name, Some(values))) => Err(format!(
            "ssh option {name}={value} is not supported by malai (only {name}={} means what malai does)",
            values.join("|")
        )),
        None => Err(format!(
            "ssh option {key} is not supported by malai: it has no meaning here, or asks for what malai does not do (forwarding, proxies, ports, keys: a machine is reached by its id52)"
        )),
    }
}

/// `user@machine.cluster`: the user and the target. A leading `@` is a
/// selector (`@all.company`), not a user.
pub fn user_and_target(word: &str) -> (Option<&str>, &str) {
    match word.split_once('@') {
        Some((user, target)) if !user.is_empty() => (Some(user), target),
        _ => (None, word),
    }
}

/// The remote command as argv. Several words are the argv as given; one
/// word with blanks or quotes in it is what ssh would hand a shell (git
/// passes `git-upload-pack '/srv/repo.git'`), split by POSIX word rules.
pub fn command_argv(words: Vec<String>) -> Result<Vec<String>, String> {
    match words.as_slice() {
        [one]
            if one.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == '\\') =>
        {
            split(one)
        }
        _ => Ok(words),
    }
}

/// Characters a shell would act on when not quoted.
const SHELL_SYNTAX: &[char] = &[
    ';', '|', '&', '<', '>', '$', '`', '*', '?', '[', '(', ')', '{', '}', '#', '~', '!',
];

/// Splits `text` into words as a POSIX shell does (blanks, single and
/// double quotes, backslash), refusing anything a shell would do more
/// with: unquoted syntax, and `$` or a backquote even inside double quotes.
pub fn split(text: &str) -> Result<Vec<String>, String> {
    let refuse = |c: char| {
        Err(format!(
            "the command {text:?} needs a shell ({c:?} is shell syntax), and malai runs no shell: \
             write it as an argv, or ask for one explicitly: malai MACHINE.CLUSTER sh -c '...'"
        ))
    };
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if c == '\n' {
                    return refuse(c);
                }
                words.extend(word.take());
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("the command {text:?} has an unclosed '")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("the command {text:?} has an unclosed \"")),
                        },
                        Some(c @ ('$' | '`')) => return refuse(c),
                        Some(c) => w.push(c),
                        None => return Err(format!("the command {text:?} has an unclosed \"")),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err(format!("the command {text:?} ends in a lone backslash")),
            },
            // `#`, `~` and `!` are syntax only at the start of a word.
            '#' | '~' | '!' if word.is_some() => word.get_or_insert_with(String::new).push(c),
            c if SHELL_SYNTAX.contains(&c) => return refuse(c),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.first().is_some_and(|w| w.contains('=')) {
        // `NAME=value cmd`: a shell would set a variable.
        return refuse('=');
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(text: &str) -> Vec<String> {
        split(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn words_split_as_a_shell_would() {
        assert_eq!(
            argv("git-upload-pack '/srv/repo.git'"),
            ["git-upload-pack", "/srv/repo.git"]
        );
        assert_eq!(argv("scp -t /tmp/x"), ["scp", "-t", "/tmp/x"]);
        assert_eq!(argv(r#"echo "a b" 'c'"d"e\ f"#), ["echo", "a b", "cde f"]);
        assert_eq!(argv(r#"printf "%s\n" x"#), ["printf", "%s\\n", "x"]);
        assert_eq!(
            argv(r#"echo "\$HOME" '$HOME' a#b"#),
            ["echo", "$HOME", "$HOME", "a#b"]
        );
        assert_eq!(argv("echo '' x"), ["echo", "", "x"]);
        assert_eq!(argv("  ls \t -l  "), ["ls", "-l"]);
        assert_eq!(argv("cat 'a;b|c' \"*\""), ["cat", "a;b|c", "*"]);
    }

    #[test]
    fn shell_syntax_is_refused_never_half_run() {
        for text in [
            "rm -rf /tmp/x; echo done",
            "ls | wc",
            "sleep 1 &",
            "cat < /etc/passwd",
            "echo > /tmp/x",
            "echo $HOME",
            "echo \"$HOME\"",
            "echo `id`",
            "echo \"`id`\"",
            "ls *.txt",
            "ls file?",
            "ls [ab]",
            "(cd /; ls)",
            "echo {a,b}",
            "ls # comment",
            "ls ~/x",
            "echo a\nrm x",
            "LANG=C ls",
        ] {
            let err = split(text).expect_err(text);
            assert!(err.contains("sh -c"), "{text:?}: {err}");
        }
        for text in ["echo 'open", "echo \"open", "echo \\"] {
            assert!(split(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn only_one_word_with_blanks_or_quotes_is_split() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_argv(words(&["echo", "a b"])).unwrap(),
            ["echo", "a b"]
        );
        assert_eq!(command_argv(words(&["ls"])).unwrap(), ["ls"]);
        assert_eq!(command_argv(words(&["ls -l"])).unwrap(), ["ls", "-l"]);
        assert_eq!(command_argv(words(&["a;b"])).unwrap(), ["a;b"]);
        assert!(command_argv(words(&["rm x; echo"])).is_err());
    }

    #[test]
    fn options_as_tools_pass_them() {
        for text in [
            "ForwardAgent=no",
            "ForwardX11 no",
            "batchmode yes",
            "SendEnv=GIT_PROTOCOL",
            "RequestTTY=no",
            "ClearAllForwardings=yes",
            "PermitLocalCommand=no",
            "RemoteCommand=none",
            "ConnectTimeout = 10",
        ] {
            assert_eq!(option(text), Ok(SshOption::Ignored), "{text}");
        }
        assert_eq!(option("User=git"), Ok(SshOption::User("git".into())));
        for text in [
            "ForwardAgent=yes",
            "ProxyCommand=nc %h %p",
            "LocalForward 8080 localhost:80",
            "RequestTTY=force",
            "Port=22",
            "novalue",
        ] {
            assert!(option(text).is_err(), "{text}");
        }
        let err = option("ProxyJump=bastion").unwrap_err();
        assert!(err.contains("ProxyJump"), "{err}");
    }

    #[test]
    fn user_at_target() {
        assert_eq!(
            user_and_target("git@web01.company"),
            (Some("git"), "web01.company")
        );
        assert_eq!(user_and_target("web01.company"), (None, "web01.company"));
        assert_eq!(user_and_target("@all.company"), (None, "@all.company"));
    }
}
