//! Secrets the server signs with: the access-token key and the cluster's node key.
//!
//! Each comes from, in order: its setting (`auth.token_secret`), the file its `*_file` setting
//! names (so that it never has to appear on a command line, where `ps` shows it), or a file kept in
//! the data directory, generated on first start. Whatever the source, a secret shorter than
//! `MIN_SECRET_BYTES` refuses the start: an empty HS256 key makes every token forgeable.
//!
//! A generated secret is written to a temporary file, fsynced, then hard-linked into place. The
//! link fails if the name exists, so two nodes starting together on one data directory agree on
//! whichever came first, and a reader never sees a half-written file (a crash leaves either no
//! file or a whole one).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// 32 bytes: the HS256 key length RFC 7518 asks for at least.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where a secret comes from, most explicit first.
pub struct SecretSource<'a> {
    /// What the operator calls it in messages (`auth.token_secret`).
    pub setting: &'a str,
    pub value: &'a str,
    pub file: &'a Path,
    /// Kept here when generated.
    pub generated: PathBuf,
}

pub fn load(source: SecretSource<'_>) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = configured(source.setting, source.value, source.file)? {
        return Ok(secret);
    }
    let path = source.generated;
    match std::fs::read_to_string(&path) {
        Ok(text) => checked(text.trim().as_bytes().to_vec(), || {
            format!("{} (delete it to generate a new one; tokens signed with it stop working)", path.display())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(&path),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A secret from its setting or the file its `*_file` setting names; `None` when neither is set.
pub fn configured(setting: &str, value: &str, file: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    if !value.is_empty() {
        return checked(value.as_bytes().to_vec(), || setting.to_string()).map(Some);
    }
    if !file.as_os_str().is_empty() {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {setting}_file {}", file.display()))?;
        return checked(text.trim().as_bytes().to_vec(), || format!("{setting}_file {}", file.display())).map(Some);
    }
    Ok(None)
}

fn checked(secret: Vec<u8>, origin: impl FnOnce() -> String) -> anyhow::Result<Vec<u8>> {
    if secret.len() < MIN_SECRET_BYTES {
        bail!(
            "refusing to start: the secret from {} is {} bytes; at least {MIN_SECRET_BYTES} are needed",
            origin(),
            secret.len()
        );
    }
    Ok(secret)
}

fn generate(path: &Path) -> anyhow::Result<Vec<u8>> {
    let dir = path.parent().context("a secret's path has a directory")?;
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let temporary = dir.join(format!(".{}.{:016x}", file_name(path), rand::random::<u64>()));
    write_private_synced(&temporary, secret.as_bytes()).with_context(|| format!("writing {}", temporary.display()))?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
            tracing::info!(path = %path.display(), "generated a new secret");
            Ok(secret.into_bytes())
        }
        // Another node sharing this data directory linked its own first: it is whole, use it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            checked(text.trim().as_bytes().to_vec(), || path.display().to_string())
        }
        Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn write_private_synced(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Creates the data directory readable by its owner only (it holds messages, password hashes,
/// push tokens and secrets), and tightens an existing one.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes these files, where they exist, readable and writable by their owner only.
pub fn private_files<'a>(paths: impl IntoIterator<Item = &'a Path>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for path in paths {
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source<'a>(value: &'a str, file: &'a Path, dir: &Path) -> SecretSource<'a> {
        SecretSource { setting: "auth.token_secret", value, file, generated: dir.join("token-secret") }
    }

    #[test]
    fn short_or_empty_secrets_refuse_the_start_whatever_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let none = Path::new("");
        assert!(load(source("short", none, dir.path())).unwrap_err().to_string().contains("5 bytes"));
        let file = dir.path().join("given");
        std::fs::write(&file, "  \n").unwrap();
        assert!(load(source("", &file, dir.path())).unwrap_err().to_string().contains("0 bytes"));
        std::fs::write(dir.path().join("token-secret"), "").unwrap();
        let e = load(source("", none, dir.path())).unwrap_err().to_string();
        assert!(e.contains("refusing to start") && e.contains("token-secret"), "{e}");
    }

    #[test]
    fn a_secret_file_wins_over_generation_and_a_generated_one_is_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("given");
        std::fs::write(&file, format!("{}\n", "k".repeat(40))).unwrap();
        assert_eq!(load(source("", &file, dir.path())).unwrap(), "k".repeat(40).into_bytes());

        let generated = load(source("", Path::new(""), dir.path())).unwrap();
        assert_eq!(generated.len(), 64);
        assert_eq!(load(source("", Path::new(""), dir.path())).unwrap(), generated, "kept across starts");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("token-secret")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");
    }

    #[test]
    fn nodes_generating_together_agree_on_one_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let secrets: Vec<Vec<u8>> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || load(source("", Path::new(""), &path)).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(secrets.windows(2).all(|w| w[0] == w[1]));
    }
}
