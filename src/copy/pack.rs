//! The sending side of a copy: paths into a tar stream.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes each of `paths` into a tar stream on `out`, under its base name:
/// a file as it is, a directory with everything under it when
/// `recursive`; symlinks as links (never followed), modes and mtimes kept.
pub fn pack(paths: &[impl AsRef<Path>], recursive: bool, out: impl Write) -> anyhow::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    for path in paths {
        let path = path.as_ref();
        let name = path.file_name().with_context(|| {
            format!(
                "{}: name a file or directory, not a path ending in .. or /",
                path.display()
            )
        })?;
        let meta =
            std::fs::symlink_metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            anyhow::ensure!(
                recursive,
                "{} is a directory (copy it with -r)",
                path.display()
            );
            tar.append_dir_all(name, path)
                .with_context(|| format!("reading {}", path.display()))?;
        } else {
            tar.append_path_with_name(path, name)
                .with_context(|| format!("reading {}", path.display()))?;
        }
    }
    tar.into_inner()?.flush()?;
    Ok(())
}
