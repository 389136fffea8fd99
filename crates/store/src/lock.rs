//! The store-wide advisory lock (flock on `<root>/.lock`), shared by every ignite process.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::StoreError;

/// Held while mutating store metadata; released on drop (and by the kernel if the process dies).
#[derive(Debug)]
pub struct StoreLock {
    file: File,
}

impl StoreLock {
    pub(crate) fn acquire(path: &Path) -> Result<StoreLock, StoreError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| StoreError::Io { op: "cannot open lock", path: path.into(), source })?;
        file.lock().map_err(|source| StoreError::Io { op: "cannot lock", path: path.into(), source })?;
        Ok(StoreLock { file })
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}
