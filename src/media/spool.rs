//! Uploads arrive in a spool file, not in memory: many slow uploads at once hold disk, not RAM,
//! and only the image work (a bounded pool) reads one whole. A spool file is removed when dropped,
//! so an interrupted upload leaves nothing; one left by a killed process is removed at the next
//! start (`clear`).

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

/// An upload being received.
pub struct Spooled {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    len: u64,
}

impl Spooled {
    pub async fn create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(format!("{:016x}.part", rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(&path).await?;
        Ok(Self { path, file: Some(file), len: 0 })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if let Some(file) = &mut self.file {
            file.write_all(chunk).await?;
            self.len += chunk.len() as u64;
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Everything received (the file is closed first).
    pub async fn finish(&mut self) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.flush().await?;
        }
        Ok(())
    }

    /// The whole upload (on an image worker's thread: this blocks).
    pub fn read_blocking(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes the spool directory, removing what an earlier process left in it.
pub fn clear(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "part") {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}
