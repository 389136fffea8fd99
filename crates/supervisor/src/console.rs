//! The serial console of a running VM, as the supervisor owns it: a bounded, rotated log file
//! (`console.log`, then `console.log.1`), fan-out to attached clients, and recognition of the
//! guest's last words (power-off, reboot, panic, init errors) to record why a VM ended.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Size at which the console log is rotated.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 4 << 20;

/// A size-bounded log: when the current file reaches `max` bytes it becomes `<name>.1`
/// (replacing the previous one) and a new file starts. At most 2 × max bytes on disk.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    file: File,
    written: u64,
    max: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, max: u64) -> std::io::Result<RotatingLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingLog { path: path.to_path_buf(), file, written, max })
    }

    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.written >= self.max {
                let mut old = self.path.clone().into_os_string();
                old.push(".1");
                std::fs::rename(&self.path, &old)?;
                self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
                self.written = 0;
            }
            let room = (self.max - self.written).min(data.len() as u64) as usize;
            self.file.write_all(&data[..room])?;
            self.written += room as u64;
            data = &data[room..];
        }
        Ok(())
    }
}

/// What the guest's console says about how it is ending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestEvent {
    /// "reboot: Power down" / "System halted": the guest is done; the VMM must be stopped.
    PowerOff,
    /// "reboot: Restarting system": the VMM exits by itself (-no-reboot).
    Reboot,
    /// "Kernel panic - not syncing: ...".
    Panic(String),
    /// "ignite-init: error: ..." from the init shim.
    InitError(String),
}

/// Scans console output line by line (lines are capped at 4 KiB).
#[derive(Debug, Default)]
pub struct LineScanner {
    line: Vec<u8>,
}

impl LineScanner {
    pub fn feed(&mut self, data: &[u8], mut on_event: impl FnMut(GuestEvent)) {
        for &b in data {
            if b == b'\n' {
                let l = String::from_utf8_lossy(&self.line).trim_end_matches('\r').to_string();
                if let Some(e) = classify(&l) {
                    on_event(e);
                }
                self.line.clear();
            } else if self.line.len() < 4096 {
                self.line.push(b);
            }
        }
    }
}

fn classify(line: &str) -> Option<GuestEvent> {
    // Kernel lines may carry a "[    1.234567] " timestamp prefix.
    let text = match line.find("] ") {
        Some(i) if line.starts_with('[') => &line[i + 2..],
        _ => line,
    };
    if text.starts_with("reboot: Power down") || text.starts_with("reboot: System halted") {
        return Some(GuestEvent::PowerOff);
    }
    if text.starts_with("reboot: Restarting system") {
        return Some(GuestEvent::Reboot);
    }
    if let Some(r) = text.strip_prefix("Kernel panic - not syncing: ") {
        return Some(GuestEvent::Panic(r.trim().to_string()));
    }
    if let Some(r) = text.strip_prefix("ignite-init: error: ") {
        return Some(GuestEvent::InitError(r.trim().to_string()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_bounds_disk_use() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        let mut log = RotatingLog::open(&p, 1000).unwrap();
        for _ in 0..50 {
            log.write(&[b'x'; 333]).unwrap();
        }
        let cur = std::fs::metadata(&p).unwrap().len();
        let old = std::fs::metadata(d.path().join("console.log.1")).unwrap().len();
        assert!(cur <= 1000 && old == 1000, "{cur} {old}");
    }

    #[test]
    fn events() {
        let mut s = LineScanner::default();
        let mut ev = Vec::new();
        s.feed(b"hello\r\n[    1.000] reboot: Power down\r\nKernel panic - not syncing: Attempted to kill init!\nignite-init: error: /sbin/init not found\n", |e| ev.push(e));
        assert_eq!(
            ev,
            vec![
                GuestEvent::PowerOff,
                GuestEvent::Panic("Attempted to kill init!".into()),
                GuestEvent::InitError("/sbin/init not found".into())
            ]
        );
    }
}
