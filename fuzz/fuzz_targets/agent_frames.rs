//! Arbitrary bytes from a guest agent, fed to the host's frame decoder in arbitrary pieces:
//! it must never panic, never hold more than one frame, and always make progress
//! (resynchronising after every error), whatever the guest sends.
#![no_main]

use ignite_agent::proto::{Decoder, HEADER_LEN, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the piece size, the rest is the stream.
    let Some((&step, stream)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let mut d = Decoder::new();
    let mut rest = stream;
    let mut stalls = 0;
    while !rest.is_empty() {
        let n = d.push(&rest[..step.min(rest.len())]);
        rest = &rest[n..];
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= MAX_PAYLOAD);
                    let _ = f.credit();
                    let _ = f.size();
                    let _ = f.parse::<ignite_agent::proto::Request>();
                    let _ = f.parse::<ignite_agent::proto::Exit>();
                }
                Ok(None) => break,
                Err(_) => {
                    d.resync();
                }
            }
        }
        assert!(d.room() <= HEADER_LEN + MAX_PAYLOAD);
        stalls = if n == 0 { stalls + 1 } else { 0 };
        assert!(stalls < 2, "the decoder stopped taking input");
    }
});
