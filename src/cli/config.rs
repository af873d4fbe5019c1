//! `malai config download|upload|edit|show|validate`: change a cluster's
//! config from any editor's device, with a hash check so two editors never
//! overwrite each other silently.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::{Deserialize, Serialize};

use super::route::Route;
use crate::cluster::EditError;
use crate::exit::{CONFIG, DENIED, FAILURE, Failure, OK};
use crate::home::Home;
use crate::sync::proto::Downloaded;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Fetch cluster.toml from the cluster manager into FILE, with the hash
    /// it is based on beside it (FILE.base).
    Download {
        cluster: String,
        /// Where to write it (default: CLUSTER.toml).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Send FILE to the cluster manager; refused if cluster.toml changed
    /// since FILE was downloaded (unless --force) or if FILE is invalid.
    Upload {
        file: PathBuf,
        /// Overwrite even a newer cluster.toml (never an invalid file).
        #[arg(long)]
        force: bool,
        /// Upload nothing: validate FILE and list who would gain and lose
        /// what against the config the cluster manager has.
        #[arg(long)]
        plan: bool,
        /// With --plan: one JSON object on stdout.
        #[arg(long, requires = "plan")]
        json: bool,
    },
    /// Download, open $EDITOR, validate, upload (merging with changes made
    /// meanwhile by others when that merges cleanly).
    Edit { cluster: String },
    /// Print cluster.toml as the cluster manager has it.
    Show { cluster: String },
    /// Validate a cluster.toml locally.
    Validate { file: PathBuf },
}

/// `FILE.base`: what a downloaded file was based on.
#[derive(Debug, Serialize, Deserialize)]
struct Base {
    cluster: String,
    hash: String,
    version: u64,
}

fn base_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".base");
    PathBuf::from(name)
}

pub fn run(cmd: ConfigCommand) -> anyhow::Result<u8> {
    let home = Home::resolve()?;
    match cmd {
        ConfigCommand::Download { cluster, output } => {
            let Downloaded {
                text,
                hash,
                version,
            } = download(&mut Route::find(&home)?, &cluster)?;
            let file = output.unwrap_or_else(|| PathBuf::from(format!("{cluster}.toml")));
            write_with_base(
                &file,
                &text,
                &Base {
                    cluster: cluster.clone(),
                    hash,
                    version,
                },
            )?;
            eprintln!(
                "{}: cluster.toml of {cluster:?} at version {version}",
                file.display()
            );
            Ok(OK)
        }
        ConfigCommand::Show { cluster } => {
            print!("{}", download(&mut Route::find(&home)?, &cluster)?.text);
            Ok(OK)
        }
        ConfigCommand::Validate { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            crate::policy::parse(&file, &text, crate::config::FileKind::Cluster)?;
            eprintln!("{}: valid", file.display());
            Ok(OK)
        }
        ConfigCommand::Upload {
            file,
            force,
            plan,
            json,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let base_file = base_path(&file);
            let base: Base =
                serde_json::from_str(&std::fs::read_to_string(&base_file).with_context(|| {
                    format!(
                        "reading {} (written by `malai config download`)",
                        base_file.display()
                    )
                })?)
                .with_context(|| format!("{} is not a malai base file", base_file.display()))?;
            if plan {
                return upload_plan(&home, &base.cluster, &file, &text, json);
            }
            let done = Route::find(&home)?
                .upload(&base.cluster, text.clone(), &base.hash, force)?
                .map_err(refused)?;
            let version = done.version;
            write_with_base(
                &file,
                &text,
                &Base {
                    cluster: base.cluster.clone(),
                    hash: done.hash,
                    version,
                },
            )?;
            eprintln!(
                "uploaded: cluster {:?} is at version {version}",
                base.cluster
            );
            Ok(OK)
        }
        ConfigCommand::Edit { cluster } => edit(&mut Route::find(&home)?, &cluster),
    }
}

/// `config upload FILE --plan`: FILE validated and compared with
/// cluster.toml as the cluster manager has it now; then its tests.
fn upload_plan(
    home: &Home,
    cluster: &str,
    file: &Path,
    text: &str,
    json: bool,
) -> anyhow::Result<u8> {
    let current = download(&mut Route::find(home)?, cluster)?;
    let path = PathBuf::from(format!(
        "cluster.toml of {cluster:?} (version {})",
        current.version
    ));
    let old =
        crate::config::cluster::parse(&path, &current.text, crate::config::FileKind::Cluster)?;
    crate::plan::show(Some(&old), file, text, json)?;
    Ok(OK)
}

/// Mode of a downloaded file and its base file: the owner's only, since
/// cluster.toml names every machine, address and rule of the cluster (the
/// same reason `edit` opens it in a 0700 directory).
const DOWNLOAD_MODE: u32 = 0o600;

/// Writes FILE and FILE.base (often in the working directory, which others
/// may be able to write to: `write_atomic` follows no symlink there).
fn write_with_base(file: &Path, text: &str, base: &Base) -> anyhow::Result<()> {
    crate::fsutil::write_atomic(file, text.as_bytes(), DOWNLOAD_MODE)
        .with_context(|| format!("writing {}", file.display()))?;
    let json = serde_json::to_vec_pretty(base)?;
    let base_file = base_path(file);
    crate::fsutil::write_atomic(&base_file, &json, DOWNLOAD_MODE)
        .with_context(|| format!("writing {}", base_file.display()))?;
    Ok(())
}

/// A refusal of the cluster manager as the error to end with, with its
/// exit code: denied 77, invalid 78, stale or failed 1.
fn refused(e: EditError) -> anyhow::Error {
    match e {
        EditError::Denied(reason) => Failure::new(DENIED, format!("denied: {reason}")).into(),
        EditError::Invalid(errors) => {
            Failure::new(CONFIG, format!("refused, the file does not validate:\n{errors}")).into()
        }
        EditError::Stale { current_hash, version } => Failure::new(
            FAILURE,
            format!(
                "refused: cluster.toml changed since your download; it is now version {version} (hash {current_hash}). \
                 Download it again and redo your change, use `malai config edit` to merge, or --force to overwrite"
            ),
        )
        .into(),
        EditError::Failed(reason) => Failure::new(FAILURE, format!("refused: {reason}")).into(),
    }
}

fn download(route: &mut Route, cluster: &str) -> anyhow::Result<Downloaded> {
    route.download(cluster)?.map_err(refused)
}

/// Lines malai puts at the top of a file it reopens, to show the errors.
const ERROR_MARK: &str = "# malai: ";

fn edit(route: &mut Route, cluster: &str) -> anyhow::Result<u8> {
    let Downloaded {
        text: base_text,
        hash: base_hash,
        version: base_version,
    } = download(route, cluster)?;
    // A private directory (0700, a fresh name): the file may name every
    // machine and rule of the cluster. Removed when `dir` drops. No one else
    // can add a name in it, so plain `fs::write` is safe there.
    let dir = tempfile::Builder::new()
        .prefix("malai-edit-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .context("creating a directory for the file to edit")?;
    let file = dir.path().join(format!("{cluster}.toml"));
    std::fs::write(&file, &base_text)?;
    let mine = loop {
        run_editor(&file)?;
        let edited = std::fs::read_to_string(&file)?;
        let text: String = edited
            .lines()
            .filter(|l| !l.starts_with(ERROR_MARK))
            .map(|l| format!("{l}\n"))
            .collect();
        if text == base_text {
            eprintln!("no changes");
            return Ok(OK);
        }
        match crate::policy::parse(
            Path::new("cluster.toml"),
            &text,
            crate::config::FileKind::Cluster,
        ) {
            Ok(_) => break text,
            Err(diags) => {
                let shown: String = diags
                    .to_string()
                    .lines()
                    .map(|l| format!("{ERROR_MARK}{l}\n"))
                    .collect();
                if edited.starts_with(ERROR_MARK) && edited == format!("{shown}{text}") {
                    // Reopened with the errors and saved without a change:
                    // the user gives up on it, but the edit is kept.
                    keep(cluster, &text, &base_hash, base_version)?;
                    return Err(diags.into());
                }
                std::fs::write(&file, format!("{shown}{text}"))?;
                eprintln!(
                    "the file does not validate; reopening the editor with the errors at the top"
                );
            }
        }
    };
    match route.upload(cluster, mine.clone(), &base_hash, false) {
        Ok(Ok(done)) => {
            let version = done.version;
            eprintln!("uploaded: cluster {cluster:?} is at version {version}");
            Ok(OK)
        }
        Ok(Err(EditError::Stale { .. })) => merge_and_upload(route, cluster, &base_text, &mine),
        Ok(Err(refusal)) => {
            keep(cluster, &mine, &base_hash, base_version)?;
            Err(refused(refusal))
        }
        Err(e) => {
            keep(cluster, &mine, &base_hash, base_version)?;
            Err(e)
        }
    }
}

/// Someone uploaded meanwhile: a three-way merge of base, mine and theirs.
fn merge_and_upload(
    route: &mut Route,
    cluster: &str,
    base: &str,
    mine: &str,
) -> anyhow::Result<u8> {
    let Downloaded {
        text: theirs,
        hash: their_hash,
        version,
    } = download(route, cluster)?;
    match diffy::merge(base, mine, &theirs) {
        Ok(merged) => {
            eprintln!(
                "cluster.toml changed meanwhile (now version {version}); your edit merges cleanly:"
            );
            eprint!("{}", diffy::create_patch(&theirs, &merged));
            match route
                .upload(cluster, merged.clone(), &their_hash, false)
                .and_then(|r| r.map_err(refused))
            {
                Ok(done) => {
                    let version = done.version;
                    eprintln!("uploaded the merge: cluster {cluster:?} is at version {version}");
                    Ok(OK)
                }
                Err(e) => {
                    keep(cluster, &merged, &their_hash, version)?;
                    Err(e)
                }
            }
        }
        Err(conflicted) => {
            let file = keep(cluster, &conflicted, &their_hash, version)?;
            Err(Failure::new(
                FAILURE,
                format!(
                    "cluster.toml changed meanwhile and your edit conflicts with it; nothing was uploaded. \
                     {} holds the merge with conflict markers: resolve them, then `malai config upload {}`",
                    file.display(),
                    file.display()
                ),
            )
            .into())
        }
    }
}

/// Saves an edit that was not uploaded in the current directory, with the
/// base it is on, ready for `malai config upload` once fixed: as
/// `CLUSTER.toml`, or `CLUSTER.edit-N.toml` when that exists already (a
/// file of the user's is never overwritten). Says where on stderr.
fn keep(cluster: &str, text: &str, hash: &str, version: u64) -> anyhow::Result<PathBuf> {
    let mut file = PathBuf::from(format!("{cluster}.toml"));
    let mut n = 1;
    while taken(&file) || taken(&base_path(&file)) {
        file = PathBuf::from(format!("{cluster}.edit-{n}.toml"));
        n += 1;
    }
    let base = Base {
        cluster: cluster.to_owned(),
        hash: hash.to_owned(),
        version,
    };
    write_with_base(&file, text, &base)?;
    eprintln!(
        "nothing was uploaded; your edit is kept in {} (based on version {version}): \
         fix it, then `malai config upload {}`",
        file.display(),
        file.display()
    );
    Ok(file)
}

/// Whether a name is in use, by anything: a symlink counts, dangling or not
/// (`Path::exists` follows it, and would let `keep` replace it).
fn taken(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

fn run_editor(file: &Path) -> anyhow::Result<()> {
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".to_owned());
    let mut words = shell_words::split(&editor).context("parsing $EDITOR")?;
    if words.is_empty() {
        words.push("vi".into());
    }
    let status = std::process::Command::new(&words[0])
        .args(&words[1..])
        .arg(file)
        .status()
        .with_context(|| format!("running the editor {editor:?}"))?;
    anyhow::ensure!(
        status.success(),
        "the editor {editor:?} failed ({status}); nothing was uploaded"
    );
    Ok(())
}
