//! Flow-control credit for one direction of one channel (see [`crate::proto::WINDOW`]):
//! the sender takes credit before it sends stream data and waits when there is none; the
//! receiver's `Window` frames add it back.

use std::sync::{Arc, Condvar, Mutex};

/// Credit for one direction of one channel.
#[derive(Debug, Default)]
pub struct Credit {
    state: Mutex<(u64, bool)>, // (available bytes, channel closed)
    cv: Condvar,
}

impl Credit {
    pub fn new(n: u32) -> Arc<Credit> {
        Arc::new(Credit { state: Mutex::new((u64::from(n), false)), cv: Condvar::new() })
    }
    pub fn add(&self, n: u32) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 += u64::from(n);
        self.cv.notify_all();
    }
    pub fn close(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.1 = true;
        self.cv.notify_all();
    }
    /// Waits for some credit; takes up to `want`. None: the channel is gone.
    pub fn take(&self, want: usize) -> Option<usize> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if s.1 {
                return None;
            }
            if s.0 > 0 {
                let n = (want as u64).min(s.0);
                s.0 -= n;
                return Some(n as usize);
            }
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}
