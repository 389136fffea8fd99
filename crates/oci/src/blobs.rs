//! The blob store: `<root>/sha256/<hex>`, written through a temp file, fsynced and renamed
//! into place only after the content's sha256 matched the expected digest.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{io_err, sha256_hex, OciError};

/// Content-addressed blobs.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<BlobStore, OciError> {
        let dir = root.join("sha256");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(BlobStore { root: root.to_path_buf() })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, OciError> {
        Ok(self.root.join("sha256").join(sha256_hex(digest)?))
    }

    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub fn open_blob(&self, digest: &str) -> Result<File, OciError> {
        let p = self.path(digest)?;
        File::open(&p).map_err(io_err(&p))
    }

    pub fn read(&self, digest: &str, limit: u64) -> Result<Vec<u8>, OciError> {
        let mut v = Vec::new();
        self.open_blob(digest)?.take(limit + 1).read_to_end(&mut v).map_err(io_err(self.path(digest)?))?;
        if v.len() as u64 > limit {
            return Err(OciError::TooLarge { what: format!("blob {digest}"), limit });
        }
        Ok(v)
    }

    /// Stores `reader`'s bytes as `digest` (verified; at most `limit` bytes). If `digest` is
    /// `None` the computed digest is used. Returns the digest and size.
    pub fn put(
        &self,
        expected: Option<&str>,
        reader: impl Read,
        limit: u64,
        what: &str,
    ) -> Result<(String, u64), OciError> {
        if let Some(d) = expected {
            if self.has(d) {
                let size = std::fs::metadata(self.path(d)?).map(|m| m.len()).unwrap_or(0);
                return Ok((d.to_string(), size));
            }
        }
        let dir = self.root.join("sha256");
        let tmp = dir.join(format!(".tmp-{}-{:p}", std::process::id(), &reader as *const _));
        let res = (|| {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut h = Sha256::new();
            let mut r = reader.take(limit + 1);
            let mut buf = vec![0u8; 256 * 1024];
            let mut n_total = 0u64;
            loop {
                let n = r
                    .read(&mut buf)
                    .map_err(|e| OciError::Layer { digest: what.into(), message: format!("read failed: {e}") })?;
                if n == 0 {
                    break;
                }
                n_total += n as u64;
                if n_total > limit {
                    return Err(OciError::TooLarge { what: what.into(), limit });
                }
                h.update(&buf[..n]);
                f.write_all(&buf[..n]).map_err(io_err(&tmp))?;
            }
            let actual = format!("sha256:{:x}", h.finalize());
            if let Some(e) = expected {
                if e != actual {
                    return Err(OciError::DigestMismatch { what: what.into(), expected: e.into(), actual });
                }
            }
            f.sync_all().map_err(io_err(&tmp))?;
            let dst = self.path(&actual)?;
            std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
            Ok((actual, n_total))
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_digests() {
        let d = tempfile::tempdir().unwrap();
        let b = BlobStore::open(d.path()).unwrap();
        let (dig, n) = b.put(None, &b"hello"[..], 100, "t").unwrap();
        assert_eq!(n, 5);
        assert_eq!(dig, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert!(b.has(&dig));
        let bad = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(b.put(Some(&bad), &b"hello"[..], 100, "t"), Err(OciError::DigestMismatch { .. })));
        assert!(!b.has(&bad));
        assert!(matches!(b.put(None, &[0u8; 200][..], 100, "t"), Err(OciError::TooLarge { .. })));
        let leftovers = std::fs::read_dir(d.path().join("sha256")).unwrap().count();
        assert_eq!(leftovers, 1, "no temp files left behind");
    }
}
