//! The agent's wire protocol: frames over one byte stream (a virtio-serial port in the guest,
//! unix sockets on the host), multiplexing any number of channels (one per exec or copy).
//!
//! Owns: the frame format, its incremental decoder (bounded, fuzzed: `fuzz/fuzz_targets/
//! agent_frames.rs`), the message payloads and the flow-control rule.
//!
//! ```text
//! offset 0  "IG"        magic
//!        2  kind   u8
//!        3  0      u8   reserved, must be zero
//!        4  chan   u32 LE   0 = the connection itself (hello, ping, pong)
//!        8  len    u32 LE   payload length, at most MAX_PAYLOAD
//!       12  payload
//! ```
//!
//! Flow control: each side may have at most [`WINDOW`] bytes of `Stdout`/`Stderr` (guest) or
//! `Stdin` (host) data outstanding per channel; the receiver returns credit with `Window`
//! frames as it hands the data on. A peer that exceeds the window fails that channel, so
//! neither side ever buffers more than a window per channel, whatever the other side sends.

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 2] = *b"IG";
pub const HEADER_LEN: usize = 12;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Per-channel, per-direction credit of stream data.
pub const WINDOW: u32 = 1024 * 1024;
/// Bumped on incompatible changes; sent in [`Hello`].
pub const PROTOCOL_VERSION: u32 = 1;
/// The virtio-serial port name the agent listens on.
pub const PORT_NAME: &str = "org.ignite.agent.0";

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// guest → host, chan 0: JSON [`Hello`]; sent when the agent (re)starts.
    Hello = 1,
    /// host → guest, chan 0: up to 8 opaque bytes, echoed in `Pong`.
    Ping = 2,
    /// guest → host, chan 0.
    Pong = 3,
    /// host → guest: JSON [`Request`], opens the channel.
    Open = 4,
    /// host → guest: input bytes; an empty payload is end of input.
    Stdin = 5,
    /// guest → host: output bytes (for `Get`, the tar stream).
    Stdout = 6,
    /// guest → host.
    Stderr = 7,
    /// both ways: u32 LE credit returned for stream data.
    Window = 8,
    /// host → guest: i32 LE signal number for the channel's process group.
    Signal = 9,
    /// host → guest: u16 LE rows, u16 LE columns.
    Resize = 10,
    /// guest → host: JSON [`Exit`]; the channel's last frame.
    Exit = 11,
    /// host → guest: the host side went away; kill what runs and forget the channel.
    Close = 12,
}

impl Kind {
    const ALL: [Kind; 12] = [
        Kind::Hello,
        Kind::Ping,
        Kind::Pong,
        Kind::Open,
        Kind::Stdin,
        Kind::Stdout,
        Kind::Stderr,
        Kind::Window,
        Kind::Signal,
        Kind::Resize,
        Kind::Exit,
        Kind::Close,
    ];

    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub chan: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: Kind, chan: u32, payload: impl Into<Vec<u8>>) -> Frame {
        Frame { kind, chan, payload: payload.into() }
    }

    pub fn json<T: Serialize>(kind: Kind, chan: u32, v: &T) -> Frame {
        Frame::new(kind, chan, serde_json::to_vec(v).unwrap_or_default())
    }

    pub fn window(chan: u32, n: u32) -> Frame {
        Frame::new(Kind::Window, chan, n.to_le_bytes().to_vec())
    }

    pub fn exit(chan: u32, e: &Exit) -> Frame {
        Frame::json(Kind::Exit, chan, e)
    }

    /// The wire form. Payloads over [`MAX_PAYLOAD`] are a caller bug: split them first.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.payload.len() <= MAX_PAYLOAD);
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&MAGIC);
        out.push(self.kind as u8);
        out.push(0);
        out.extend_from_slice(&self.chan.to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a JSON payload.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| FrameError::Payload { kind: self.kind, message: e.to_string() })
    }

    /// The u32 of a `Window` frame.
    pub fn credit(&self) -> Result<u32, FrameError> {
        let b: [u8; 4] = self.payload.as_slice().try_into().map_err(|_| FrameError::Payload {
            kind: self.kind,
            message: format!("{} bytes where a u32 was expected", self.payload.len()),
        })?;
        Ok(u32::from_le_bytes(b))
    }

    /// The i32 of a `Signal` frame.
    pub fn signal(&self) -> Result<i32, FrameError> {
        Ok(self.credit()? as i32)
    }

    /// (rows, columns) of a `Resize` frame.
    pub fn size(&self) -> Result<(u16, u16), FrameError> {
        match self.payload.as_slice() {
            [a, b, c, d] => Ok((u16::from_le_bytes([*a, *b]), u16::from_le_bytes([*c, *d]))),
            p => Err(FrameError::Payload {
                kind: self.kind,
                message: format!("{} bytes where 4 were expected", p.len()),
            }),
        }
    }
}

/// A frame stream the decoder cannot follow. After one, the stream is out of step: the
/// reader must [`Decoder::resync`] or drop the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    BadMagic([u8; 2]),
    UnknownKind(u8),
    Reserved(u8),
    TooLarge(u32),
    Payload { kind: Kind, message: String },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadMagic(m) => write!(f, "bad frame magic {:02x}{:02x}", m[0], m[1]),
            FrameError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            FrameError::Reserved(b) => write!(f, "reserved frame byte is {b}, not 0"),
            FrameError::TooLarge(n) => write!(f, "frame payload of {n} bytes exceeds the limit of {MAX_PAYLOAD}"),
            FrameError::Payload { kind, message } => write!(f, "invalid {kind:?} payload: {message}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Incremental decoder: feed bytes as they arrive, take frames out. Holds at most one frame
/// (header plus [`MAX_PAYLOAD`]) beyond what the caller has taken, whatever the input.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// How many bytes the decoder can accept now (0 means: take frames out first).
    pub fn room(&self) -> usize {
        (HEADER_LEN + MAX_PAYLOAD).saturating_sub(self.buf.len() - self.start)
    }

    /// Appends input; at most [`Decoder::room`] bytes are taken, the count is returned.
    pub fn push(&mut self, data: &[u8]) -> usize {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let n = data.len().min(self.room());
        if self.start > 0 && self.buf.len() + n > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The next complete frame, `Ok(None)` if more input is needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let p = self.pending();
        if p.len() < HEADER_LEN {
            // Reject garbage as early as possible.
            if p.len() >= 2 && p[..2] != MAGIC {
                return Err(FrameError::BadMagic([p[0], p[1]]));
            }
            return Ok(None);
        }
        let (kind, len) = check_header(p)?;
        let chan = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        if p.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = p[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.start += HEADER_LEN + len;
        Ok(Some(Frame { kind, chan, payload }))
    }

    /// After an error: drops input up to the next plausible `Hello` or `Pong` header on
    /// channel 0 (what a restarted agent or an answered ping sends). Returns whether one was
    /// found; if not, the tail that could begin one is kept.
    pub fn resync(&mut self) -> bool {
        let p = self.pending();
        let len = p.len();
        let mut found = None;
        let mut i = 1; // the current position is what failed
        while i < len {
            let rest = &p[i..];
            let candidate = rest[0] == MAGIC[0]
                && (rest.len() < 2 || rest[1] == MAGIC[1])
                && (rest.len() < 3 || rest[2] == Kind::Hello as u8 || rest[2] == Kind::Pong as u8)
                && (rest.len() < 4 || rest[3] == 0)
                && (rest.len() < 8 || rest[4..8] == [0, 0, 0, 0])
                && (rest.len() < HEADER_LEN || check_header(rest).map(|(_, l)| l <= 4096).unwrap_or(false));
            if candidate {
                found = Some((i, rest.len() >= HEADER_LEN));
                break;
            }
            i += 1;
        }
        match found {
            Some((i, whole)) => {
                self.start += i;
                whole
            }
            None => {
                self.start += len;
                false
            }
        }
    }
}

fn check_header(p: &[u8]) -> Result<(Kind, usize), FrameError> {
    if p[..2] != MAGIC {
        return Err(FrameError::BadMagic([p[0], p[1]]));
    }
    let kind = Kind::from_u8(p[2]).ok_or(FrameError::UnknownKind(p[2]))?;
    if p[3] != 0 {
        return Err(FrameError::Reserved(p[3]));
    }
    let len = u32::from_le_bytes([p[8], p[9], p[10], p[11]]);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    Ok((kind, len as usize))
}

/// Reads whole frames from a blocking stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    dec: Decoder,
    scratch: Vec<u8>,
}

/// What [`FrameReader::read_frame`] can fail with.
#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
    /// The stream ended (between frames, or inside one).
    Eof,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::Frame(e) => write!(f, "{e}"),
            ReadError::Eof => write!(f, "connection closed"),
        }
    }
}

impl std::error::Error for ReadError {}

impl<R: std::io::Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner, dec: Decoder::new(), scratch: vec![0; 64 * 1024] }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn decoder(&mut self) -> &mut Decoder {
        &mut self.dec
    }

    /// The next frame; an `Io` error of kind `WouldBlock`/`TimedOut` leaves the reader
    /// usable.
    pub fn read_frame(&mut self) -> Result<Frame, ReadError> {
        loop {
            if let Some(f) = self.dec.next_frame().map_err(ReadError::Frame)? {
                return Ok(f);
            }
            let want = self.dec.room().min(self.scratch.len());
            let n = match self.inner.read(&mut self.scratch[..want]) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadError::Io(e)),
            };
            self.dec.push(&self.scratch[..n]);
        }
    }
}

/// Sent by the agent when it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub pid: u32,
}

/// What a channel is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    Exec(ExecRequest),
    /// Receive a tar stream (as `Stdin`) and unpack it at `path` (see [`crate::archive`]).
    Put {
        path: String,
    },
    /// Send `path` as a tar stream (as `Stdout`).
    Get {
        path: String,
    },
    /// Give a VM restored from a memory snapshot (a clone) its own identity; reads no input,
    /// answers with one `Exit`.
    Identity(Identity),
}

/// What makes a clone distinct from its snapshot's VM, applied in the order of the fields.
/// Anything left out is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceIdentity>,
    /// 32 lowercase hex digits; written to /etc/machine-id when the image has that file
    /// (non-empty or empty), else skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// Random bytes (the host's getrandom) mixed into the guest's pool, and credited as
    /// entropy where the kernel allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entropy: Vec<u8>,
    /// The host's wall clock, ns since the Unix epoch: the guest's CLOCK_REALTIME is set to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_clock_ns: Option<u64>,
}

/// The clone's network interface: its MAC, primary IPv4 address and default route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceIdentity {
    /// e.g. "eth0".
    pub name: String,
    /// e.g. "fe:1a:83:31:20:ff".
    pub mac: String,
    /// IPv4 CIDR, e.g. "10.61.200.5/16"; replaces the interface's primary address.
    pub address: String,
    /// IPv4, e.g. "10.61.0.1": the default route (replacing any other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Added to (and overriding) the agent's default environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
}

/// How a channel ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The request could not be carried out (command not found, path missing, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Exit {
    pub fn failed(msg: impl Into<String>) -> Exit {
        Exit { error: Some(msg.into()), ..Default::default() }
    }

    /// The exit code a shell would report: the code, 128 + signal, or 126 for an error
    /// starting the request (what Docker's exec reports for a command that cannot run).
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal, &self.error) {
            (Some(c), _, _) => c,
            (None, Some(s), _) => 128 + s,
            _ => 126,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_split_input() {
        let frames = vec![
            Frame::json(Kind::Hello, 0, &Hello { version: 1, pid: 7 }),
            Frame::new(Kind::Stdout, 3, vec![7u8; MAX_PAYLOAD]),
            Frame::window(3, 42),
            Frame::new(Kind::Stdin, 9, Vec::new()),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        for step in [1, 5, 12, 4096, wire.len()] {
            let mut d = Decoder::new();
            let mut out = Vec::new();
            let mut rest = &wire[..];
            while !rest.is_empty() || out.len() < frames.len() {
                let n = d.push(&rest[..step.min(rest.len())]);
                rest = &rest[n..];
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
                if n == 0 && rest.is_empty() {
                    break;
                }
            }
            assert_eq!(out, frames, "step {step}");
        }
        assert_eq!(frames[2].credit().unwrap(), 42);
    }

    #[test]
    fn every_kind_decodes_from_its_byte() {
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(k as u8, i as u8 + 1);
            assert_eq!(Kind::from_u8(k as u8), Some(k));
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(13), None);
    }

    #[test]
    fn malformed_input_is_refused_early() {
        let mut d = Decoder::new();
        d.push(b"GET / HTTP/1.1\r\n");
        assert!(matches!(d.next_frame(), Err(FrameError::BadMagic(_))));
        let mut f = Frame::new(Kind::Stdout, 1, b"x".to_vec()).encode();
        f[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        let mut d = Decoder::new();
        d.push(&f);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(MAX_PAYLOAD as u32 + 1)));
        let mut f = Frame::new(Kind::Stdout, 1, b"x".to_vec()).encode();
        f[2] = 200;
        let mut d = Decoder::new();
        d.push(&f);
        assert_eq!(d.next_frame(), Err(FrameError::UnknownKind(200)));
    }

    #[test]
    fn resync_finds_the_next_pong() {
        let mut wire = b"\x00garbage IG\x05".to_vec();
        wire.extend(Frame::new(Kind::Pong, 0, b"12345678".to_vec()).encode());
        wire.extend(Frame::new(Kind::Stdout, 1, b"after".to_vec()).encode());
        let mut d = Decoder::new();
        d.push(&wire);
        assert!(d.next_frame().is_err());
        assert!(d.resync());
        assert_eq!(d.next_frame().unwrap().unwrap().kind, Kind::Pong);
        assert_eq!(d.next_frame().unwrap().unwrap().payload, b"after");
    }

    #[test]
    fn identity_requests_round_trip_and_refuse_unknown_fields() {
        let full = Request::Identity(Identity {
            hostname: Some("clone-1".into()),
            interface: Some(InterfaceIdentity {
                name: "eth0".into(),
                mac: "fe:1a:83:31:20:ff".into(),
                address: "10.61.200.5/16".into(),
                gateway: Some("10.61.0.1".into()),
            }),
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            entropy: vec![1, 2, 255],
            wall_clock_ns: Some(1_700_000_000_123_456_789),
        });
        let empty = Request::Identity(Identity::default());
        for r in [&full, &empty] {
            let f = Frame::json(Kind::Open, 1, r);
            assert_eq!(&f.parse::<Request>().unwrap(), r);
        }
        assert_eq!(serde_json::to_string(&empty).unwrap(), r#"{"op":"identity"}"#);
        for bad in [
            r#"{"op":"identity","hostnme":"x"}"#,
            r#"{"op":"identity","interface":{"name":"eth0","mac":"fe:1a:83:31:20:ff","address":"10.0.0.2/8","mtu":1500}}"#,
            r#"{"op":"identity","interface":{"name":"eth0"}}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn decoder_never_holds_more_than_one_frame(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..40)) {
            let mut d = Decoder::new();
            for c in chunks {
                let mut rest = &c[..];
                loop {
                    let n = d.push(rest);
                    rest = &rest[n..];
                    prop_assert!(d.buf.len() - d.start <= HEADER_LEN + MAX_PAYLOAD);
                    match d.next_frame() {
                        Ok(Some(f)) => prop_assert!(f.payload.len() <= MAX_PAYLOAD),
                        Ok(None) => if rest.is_empty() { break },
                        Err(_) => { d.resync(); }
                    }
                    if n == 0 && rest.is_empty() { break; }
                }
            }
        }
    }
}
