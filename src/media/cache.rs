//! Variants once made, kept on disk up to a size: the least recently used go first. The index is
//! in memory, rebuilt from the directory at start (oldest modification first); a file is written
//! under a temporary name and renamed, so a crash never leaves half a variant under its name.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use bytes::Bytes;

pub struct VariantCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    /// Per key: its size and when it was last used (a counter).
    entries: HashMap<String, (u64, u64)>,
    total: u64,
    clock: u64,
}

impl VariantCache {
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let metadata = entry.metadata()?;
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            } else if metadata.is_file() {
                found.push((metadata.modified().ok(), name, metadata.len()));
            }
        }
        found.sort();
        let cache = Self { dir, max_bytes, index: Mutex::new(Index::default()) };
        {
            let mut index = cache.lock();
            for (_, name, size) in found {
                index.clock += 1;
                let clock = index.clock;
                index.entries.insert(name, (size, clock));
                index.total += size;
            }
        }
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The variant, if kept.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        {
            let mut index = self.lock();
            index.clock += 1;
            let clock = index.clock;
            index.entries.get_mut(key)?.1 = clock;
        }
        match tokio::fs::read(self.path(key)).await {
            Ok(data) => Some(Bytes::from(data)),
            Err(_) => {
                // Removed behind our back: forget it.
                let mut index = self.lock();
                if let Some((size, _)) = index.entries.remove(key) {
                    index.total -= size;
                }
                None
            }
        }
    }

    /// Keeps a variant (failures are logged: the variant is served anyway).
    pub async fn put(&self, key: &str, data: &Bytes) {
        let temporary = self.dir.join(format!("{key}.{:08x}.tmp", rand::random::<u32>()));
        let written = async {
            tokio::fs::write(&temporary, data).await?;
            tokio::fs::rename(&temporary, self.path(key)).await
        };
        if let Err(e) = written.await {
            let _ = tokio::fs::remove_file(&temporary).await;
            return tracing::warn!(error = %e, key, "keeping a variant failed");
        }
        {
            let mut index = self.lock();
            index.clock += 1;
            let clock = index.clock;
            if let Some((old, _)) = index.entries.insert(key.to_owned(), (data.len() as u64, clock)) {
                index.total -= old;
            }
            index.total += data.len() as u64;
        }
        self.evict();
    }

    /// Bytes kept now.
    #[cfg(test)]
    fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    fn evict(&self) {
        let victims = {
            let mut index = self.lock();
            let mut victims = Vec::new();
            if index.total > self.max_bytes {
                let mut by_age: Vec<(u64, String, u64)> =
                    index.entries.iter().map(|(k, (size, used))| (*used, k.clone(), *size)).collect();
                by_age.sort_unstable();
                for (_, key, size) in by_age {
                    if index.total <= self.max_bytes {
                        break;
                    }
                    index.entries.remove(&key);
                    index.total -= size;
                    victims.push(key);
                }
            }
            victims
        };
        for key in victims {
            let _ = std::fs::remove_file(self.path(&key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_least_recently_used_go_first() {
        let dir = tempfile_dir();
        let cache = VariantCache::open(dir.clone(), 250).unwrap();
        let data = Bytes::from(vec![7u8; 100]);
        cache.put("a", &data).await;
        cache.put("b", &data).await;
        assert!(cache.get("a").await.is_some(), "a used again: b is now the oldest");
        cache.put("c", &data).await;
        assert_eq!(cache.total_bytes(), 200);
        assert!(cache.get("b").await.is_none());
        assert!(cache.get("a").await.is_some() && cache.get("c").await.is_some());
        assert!(!dir.join("b").exists());
        // Reopened: what is on disk is known again.
        drop(cache);
        let again = VariantCache::open(dir.clone(), 250).unwrap();
        assert_eq!(again.total_bytes(), 200);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidings-cache-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
