//! Where ssh is a transport: Debian's git, scp, sftp and rsync run malai as
//! their ssh against web01 (real daemons on loopback, and, as root, each in
//! its own network namespace). git clones and
//! pushes; a `match` rule lets a peer clone one repository and nothing
//! else, and git shows malai's reason; scp both ways (sftp and legacy
//! mode), an sftp batch, rsync of a tree twice (only the changed file goes
//! again); a command that needs a shell is refused and nothing runs; `-l`
//! only names the user the ACL runs as; Ansible, through the connection
//! plugin malai ships, pings, copies and templates on two machines, and
//! `become` is malai -l.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::net::{Company, Host};

/// `program ARGS` on `host` with malai as its ssh: the tool finds the
/// binary by its path and the host's MALAI_HOME in the environment.
fn tool(host: &Host, program: &str, args: &[&str]) -> Output {
    tool_command(host, program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} ({})", package_of(program)))
}

/// The Debian package that brings `program` (.ci/run installs them all).
fn package_of(program: &str) -> &'static str {
    match program {
        "git" => "apt-get install git",
        "rsync" => "apt-get install rsync",
        "scp" | "sftp" => "apt-get install openssh-client openssh-sftp-server",
        "ansible" | "ansible-playbook" => "apt-get install ansible-core",
        _ => "see .ci/run",
    }
}

fn tool_command(host: &Host, program: &str) -> Command {
    let mut c = host.command(program);
    c.env("MALAI_HOME", host.home.path())
        .env("MALAI_DBUS_ADDRESS", "disabled")
        .env("GIT_SSH_COMMAND", common::malai_bin())
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("MALAI_LOG");
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn git(host: &Host, dir: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "-C",
        dir.to_str().unwrap(),
        "-c",
        "user.name=Test",
        "-c",
        "user.email=test@example.invalid",
        "-c",
        "init.defaultBranch=main",
    ];
    all.extend_from_slice(args);
    tool(host, "git", &all)
}

#[test]
fn git_clones_and_pushes_and_a_match_rule_allows_one_repository() {
    git_over_malai(&Company::loopback());
}

#[test]
#[ignore = "needs root: network namespaces (each host in its own)"]
fn git_between_namespaces() {
    git_over_malai(&Company::new("sshgit"));
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario: push, then only the matched clone"
)]
fn git_over_malai(c: &Company) {
    let (_cm, mut web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    let there = tempfile::tempdir().unwrap();
    let here = tempfile::tempdir().unwrap();
    let repo = there.path().join("repo.git");
    let other = there.path().join("other.git");
    for bare in [&repo, &other] {
        ok(
            git(
                &c.web01,
                there.path(),
                &["init", "-q", "--bare", bare.to_str().unwrap()],
            ),
            "git init --bare",
        );
    }
    let url = format!("web01.company:{}", repo.display());

    // Clone (empty), commit, push, clone again: the commit went there.
    ok(
        git(&c.laptop, here.path(), &["clone", "-q", &url, "work"]),
        "git clone",
    );
    let work = here.path().join("work");
    std::fs::write(work.join("README"), "pushed over malai\n").unwrap();
    ok(git(&c.laptop, &work, &["add", "README"]), "git add");
    ok(
        git(&c.laptop, &work, &["commit", "-q", "-m", "first"]),
        "git commit",
    );
    ok(
        git(&c.laptop, &work, &["push", "-q", "origin", "main"]),
        "git push",
    );
    let log = ok(
        git(&c.web01, &repo, &["log", "--format=%s", "main"]),
        "git log",
    );
    assert_eq!(log, "first\n");
    ok(
        git(&c.laptop, here.path(), &["clone", "-q", &url, "again"]),
        "git clone",
    );
    assert_eq!(
        std::fs::read_to_string(here.path().join("again/README")).unwrap(),
        "pushed over malai\n"
    );
    let logged = web.log_text();
    assert!(
        logged.contains("malai_argv=git-receive-pack ") && logged.contains("/repo.git"),
        "git's one quoted word arrived as an argv: {logged}"
    );

    // Now the laptop may only fetch repo.git: one exact argv.
    c.write_cluster_toml(
        &format!(
            "[machine.web01.command.repo-read]\nmatch = \"git-upload-pack '{}'\"\nallow_from = \"laptop\"",
            repo.display()
        ),
        "",
        "",
    );
    c.cm.ok(&["rescan"]);
    web.wait_status("company: machine v3");
    ok(
        git(&c.laptop, here.path(), &["clone", "-q", &url, "third"]),
        "clone by the match rule",
    );
    assert!(here.path().join("third/README").exists());
    assert!(
        web.log_text()
            .contains("match rule machine.web01.command.repo-read allows laptop")
    );

    std::fs::write(work.join("README"), "second\n").unwrap();
    ok(
        git(&c.laptop, &work, &["commit", "-q", "-am", "second"]),
        "git commit",
    );
    let out = git(&c.laptop, &work, &["push", "-q", "origin", "main"]);
    assert!(!out.status.success(), "a push is not the matched argv");
    let said = common::stderr(&out);
    assert!(
        said.contains("peer is not in machine.web01.allow_from"),
        "git shows malai's reason: {said}"
    );
    let other_url = format!("web01.company:{}", other.display());
    let out = git(&c.laptop, here.path(), &["clone", "-q", &other_url, "nope"]);
    assert!(
        !out.status.success(),
        "another repository is not the matched argv"
    );
    assert!(
        common::stderr(&out).contains("allow_from"),
        "{}",
        common::stderr(&out)
    );
    let out = c
        .laptop
        .run(&["web01.company", "git-upload-pack", "--help"]);
    assert_eq!(out.status.code(), Some(255), "{}", common::stderr(&out));
    // The rule's name is a label, not a command the peer can ask for.
    let out = c.laptop.run(&["web01.company", "repo-read"]);
    assert_eq!(out.status.code(), Some(255), "{}", common::stderr(&out));
    let log = ok(
        git(&c.web01, &repo, &["log", "--format=%s", "main"]),
        "git log",
    );
    assert_eq!(log, "first\n", "the refused push changed nothing");
}

#[test]
fn scp_sftp_and_rsync_run_over_malai() {
    transfers_over_malai(&Company::loopback());
}

#[test]
#[ignore = "needs root: network namespaces (each host in its own)"]
fn scp_sftp_and_rsync_between_namespaces() {
    transfers_over_malai(&Company::new("sshcp"));
}

#[expect(clippy::too_many_lines, reason = "one fleet, tool by tool")]
fn transfers_over_malai(c: &Company) {
    let (_cm, web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    let malai = common::malai_bin();
    let there = tempfile::tempdir().unwrap();
    let here = tempfile::tempdir().unwrap();
    let (there_s, here_s) = (there.path().display(), here.path().display());

    // scp in its default (sftp) mode and in legacy mode, both ways.
    let src = here.path().join("notes.txt");
    std::fs::write(&src, "scp over malai\n").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dst = format!("web01.company:{there_s}/notes.txt");
    ok(
        tool(
            &c.laptop,
            "scp",
            &["-p", "-S", malai, src.to_str().unwrap(), &dst],
        ),
        "scp to",
    );
    assert_eq!(
        std::fs::read_to_string(there.path().join("notes.txt")).unwrap(),
        "scp over malai\n"
    );
    let mode = std::fs::metadata(there.path().join("notes.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "scp -p kept the mode");
    let back = format!("{here_s}/back.txt");
    ok(
        tool(&c.laptop, "scp", &["-S", malai, &dst, &back]),
        "scp from",
    );
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "scp over malai\n");
    let legacy = format!("web01.company:{there_s}/legacy.txt");
    ok(
        tool(
            &c.laptop,
            "scp",
            &["-O", "-S", malai, src.to_str().unwrap(), &legacy],
        ),
        "scp -O",
    );
    assert!(there.path().join("legacy.txt").exists());
    let logged = web.log_text();
    assert!(
        logged.contains("malai_argv=/usr/lib/openssh/sftp-server "),
        "{logged}"
    );
    assert!(logged.contains("malai_argv=scp -t "), "{logged}");

    // An sftp batch: put, rename, list, get.
    let batch = here.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {src} {there_s}/put.txt\nrename {there_s}/put.txt {there_s}/moved.txt\nls {there_s}\nget {there_s}/moved.txt {here_s}/got.txt\n",
            src = src.display()
        ),
    )
    .unwrap();
    let listed = ok(
        tool(
            &c.laptop,
            "sftp",
            &["-S", malai, "-b", batch.to_str().unwrap(), "web01.company"],
        ),
        "sftp -b",
    );
    assert!(listed.contains("moved.txt"), "{listed}");
    assert_eq!(
        std::fs::read_to_string(here.path().join("got.txt")).unwrap(),
        "scp over malai\n"
    );

    // rsync -a of a tree with a symlink and modes; then one file changes
    // and only it goes again.
    let tree = here.path().join("tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::write(tree.join("bin/run"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(tree.join("bin/run"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(tree.join("a.txt"), "a\n").unwrap();
    std::fs::write(tree.join("b.txt"), "b\n").unwrap();
    std::os::unix::fs::symlink("bin/run", tree.join("run")).unwrap();
    let rsync = |what| {
        let src = format!("{}/", tree.display());
        let dst = format!("web01.company:{there_s}/mirror/");
        ok(
            tool(&c.laptop, "rsync", &["-ai", "-e", malai, &src, &dst]),
            what,
        )
    };
    let first = rsync("rsync");
    for name in ["a.txt", "b.txt", "bin/run", "run -> bin/run"] {
        assert!(first.contains(name), "{name} in {first}");
    }
    let mirror = there.path().join("mirror");
    assert_eq!(
        std::fs::read_link(mirror.join("run")).unwrap(),
        Path::new("bin/run")
    );
    let mode = std::fs::metadata(mirror.join("bin/run"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    std::fs::write(tree.join("b.txt"), "b, changed\n").unwrap();
    let second = rsync("rsync again");
    let sent: Vec<&str> = second.lines().filter(|l| l.starts_with("<f")).collect();
    assert_eq!(sent.len(), 1, "only the changed file: {second}");
    assert!(sent[0].ends_with(" b.txt"), "{second}");
    assert_eq!(
        std::fs::read_to_string(mirror.join("b.txt")).unwrap(),
        "b, changed\n"
    );
}

#[test]
fn a_command_that_needs_a_shell_is_refused_and_l_names_only_the_acls_user() {
    let c = Company::loopback();
    let (_cm, web, _lap) = c.start_synced("allow_from = \"laptop\"", "", "");
    let there = tempfile::tempdir().unwrap();
    let victim = there.path().join("x");
    std::fs::create_dir(&victim).unwrap();

    let line = format!("rm -rf {}; echo done", victim.display());
    let out = c.laptop.run(&["web01.company", &line]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
    let said = common::stderr(&out);
    assert!(
        said.contains("needs a shell") && said.contains("sh -c"),
        "{said}"
    );
    assert!(out.stdout.is_empty());
    assert!(victim.exists(), "nothing ran");
    assert!(
        !web.log_text().contains("malai_argv=rm"),
        "nothing was even asked"
    );

    // One quoted word is split like ssh's remote shell would, and still
    // decided and run as an argv.
    let out = c.laptop.ok(&["web01.company", "printf '%s|' 'a b' c"]);
    assert_eq!(out, "a b|c|");

    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let out = c.laptop.ok(&["-l", &me, "web01.company", "id", "-un"]);
    assert_eq!(out.trim(), me);
    let at = format!("{me}@web01.company");
    assert_eq!(c.laptop.ok(&[&at, "id", "-un"]).trim(), me);
    let other = if me == "root" { "nobody" } else { "root" };
    let out = c.laptop.run(&["-l", other, "web01.company", "id", "-un"]);
    assert_eq!(out.status.code(), Some(255), "{}", common::stderr(&out));
    let said = common::stderr(&out);
    assert!(
        said.contains(&format!("asked to run as {other}")) && said.contains(&me),
        "{said}"
    );
    assert!(out.stdout.is_empty());

    // ssh options: the harmless accepted, anything else refused by name.
    let out = c.laptop.ok(&[
        "-x",
        "-a",
        "-q",
        "-T",
        "-oBatchMode=yes",
        "-o",
        "ForwardAgent=no",
        "-oForwardX11 no",
        "web01.company",
        "echo",
        "ok",
    ]);
    assert_eq!(out, "ok\n");
    let out = c
        .laptop
        .run(&["-o", "ProxyCommand=nc %h %p", "web01.company", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("ProxyCommand"),
        "{}",
        common::stderr(&out)
    );
    let out = c.laptop.run(&["-G", "web01.company"]);
    assert!(
        !out.status.success(),
        "-G fails, so git takes malai for a simple ssh"
    );
    let out = c.laptop.run(&["-s", "web01.company", "telnet"]);
    assert_eq!(out.status.code(), Some(255), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains("unknown subsystem"),
        "{}",
        common::stderr(&out)
    );
}

/// `ansible ARGS` (or `ansible-playbook`) on the laptop, through the
/// connection plugin in packaging/ansible, its temporary files in `tmp`.
fn ansible(c: &Company, tmp: &Path, program: &str, args: &[&str]) -> Output {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/ansible");
    let home = tmp.join("home");
    std::fs::create_dir_all(&home).unwrap();
    // No configuration but this test's (not /etc/ansible's, not ~'s).
    std::fs::write(tmp.join("ansible.cfg"), "[defaults]\n").unwrap();
    tool_command(&c.laptop, program)
        .args(args)
        .env("ANSIBLE_CONNECTION_PLUGINS", plugins)
        .env("ANSIBLE_HOME", &home)
        .env("ANSIBLE_LOCAL_TEMP", tmp.join("local"))
        .env("ANSIBLE_REMOTE_TEMP", tmp.join("remote"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_CONFIG", tmp.join("ansible.cfg"))
        .env("HOME", &home)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e} ({})", package_of(program)))
}

/// The PLAY RECAP line of `host`.
fn recap<'a>(out: &'a str, host: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(host) && l.contains("ok="))
        .unwrap_or_else(|| panic!("no recap for {host}:\n{out}"))
}

#[test]
fn ansible_pings_copies_and_templates_two_machines() {
    ansible_over_malai(&Company::loopback());
}

#[test]
#[ignore = "needs root: network namespaces (each host in its own)"]
fn ansible_between_namespaces() {
    ansible_over_malai(&Company::new("sshans"));
}

#[expect(
    clippy::too_many_lines,
    reason = "one inventory: ad-hoc, playbook twice, become"
)]
fn ansible_over_malai(c: &Company) {
    let extra = format!(
        "[machine.cm]\nid52 = \"{}\"\naddrs = [\"{}\"]\nallow_from = \"laptop\"\n",
        c.cm_id,
        c.cm.socket_addr()
    );
    let (_cm, web, _lap) = c.start_synced("allow_from = \"laptop\"", "", &extra);
    let work = tempfile::tempdir().unwrap();
    let there = tempfile::tempdir().unwrap();
    let w = work.path();
    let inventory = w.join("hosts");
    std::fs::write(
        &inventory,
        format!(
            "web01.company\ncm.company\n\n[all:vars]\nansible_connection=malai\nansible_malai_executable={}\nansible_python_interpreter=/usr/bin/python3\n",
            common::malai_bin()
        ),
    )
    .unwrap();
    let inv = inventory.to_str().unwrap();

    let out = ansible(c, w, "ansible", &["all", "-i", inv, "-m", "ping"]);
    let said = ok(out, "ansible -m ping");
    for host in ["web01.company", "cm.company"] {
        assert!(said.contains(&format!("{host} | SUCCESS")), "{said}");
    }
    let src = w.join("payload.txt");
    std::fs::write(&src, "copied by ansible through malai\n").unwrap();
    let dest = format!(
        "dest={}/{{{{ inventory_hostname }}}}.txt mode=0640",
        there.path().display()
    );
    let copy = format!("src={} {dest}", src.display());
    let said = ok(
        ansible(
            c,
            w,
            "ansible",
            &["all", "-i", inv, "-m", "copy", "-a", &copy],
        ),
        "ansible -m copy",
    );
    assert_eq!(said.matches("| CHANGED").count(), 2, "{said}");
    for host in ["web01.company", "cm.company"] {
        let file = there.path().join(format!("{host}.txt"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "copied by ansible through malai\n"
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    // A playbook with a template, a command as the ACL's user through
    // become (malai -l), and a ping: changed once, then nothing.
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    std::fs::write(
        w.join("motd.j2"),
        "Welcome to {{ inventory_hostname }}, run by {{ who }}\n",
    )
    .unwrap();
    std::fs::write(
        w.join("site.yml"),
        format!(
            r#"- hosts: all
  gather_facts: false
  vars:
    who: malai
  tasks:
    - name: motd from a template
      template:
        src: {dir}/motd.j2
        dest: "{there}/{{{{ inventory_hostname }}}}.motd"
    - name: as the ACL's user
      become: true
      become_user: {me}
      command: id -un
      register: id
      changed_when: false
    - assert:
        that: id.stdout == "{me}"
    - ping:
"#,
            dir = w.display(),
            there = there.path().display(),
        ),
    )
    .unwrap();
    let site = w.join("site.yml");
    let site = site.to_str().unwrap();
    let first = ok(
        ansible(c, w, "ansible-playbook", &["-i", inv, site]),
        "ansible-playbook",
    );
    let second = ok(
        ansible(c, w, "ansible-playbook", &["-i", inv, site]),
        "ansible-playbook again",
    );
    for host in ["web01.company", "cm.company"] {
        let line = recap(&first, host);
        assert!(
            line.contains("ok=4") && line.contains("changed=1") && line.contains("failed=0"),
            "{line}"
        );
        let line = recap(&second, host);
        assert!(
            line.contains("ok=4") && line.contains("changed=0") && line.contains("failed=0"),
            "{line}"
        );
        let motd = std::fs::read_to_string(there.path().join(format!("{host}.motd"))).unwrap();
        assert_eq!(motd, format!("Welcome to {host}, run by malai\n"));
    }

    // Modules ran through /bin/sh -c; files (the modules, the payload)
    // went by malai cp.
    let logged = web.log_text();
    assert!(logged.contains("malai_argv=/bin/sh -c "), "{logged}");
    assert!(
        logged.contains("copy allowed by machine.web01.allow_from"),
        "{logged}"
    );

    // become to a user the ACL does not run as: refused, with malai's reason.
    let other = if me == "root" { "nobody" } else { "root" };
    let out = ansible(
        c,
        w,
        "ansible",
        &[
            "web01.company",
            "-i",
            inv,
            "-m",
            "command",
            "-a",
            "id -un",
            "--become",
            "--become-user",
            other,
        ],
    );
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        common::stderr(&out)
    );
    assert!(said.contains(&format!("asked to run as {other}")), "{said}");
}
