//! Reading ELF64 executables: the one reader of the ELF header for the whole project.
//!
//! Owns: what ignite needs to know about an executable or a kernel image without running it —
//! whether a program is a static x86-64 executable (the guest shim's busybox, the guest
//! agent: the initramfs has no C library) and the contents of named sections of a kernel
//! image (`vmlinux`: which boot parameters it handles). Only what is asked is read (the
//! header, the program or section headers, the sections named), never a whole file: a kernel
//! image is ~20 MiB. Malformed input is "not an ELF image" or "no such section", never a panic.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// Program header type of the interpreter (a dynamically linked program has one).
const PT_INTERP: u32 = 3;
/// Headers read at most (a real executable has a few dozen).
const MAX_HEADERS: usize = 4096;
/// A section read at most.
const MAX_SECTION: u64 = 64 << 20;

/// An open 64-bit little-endian ELF file and its header.
#[derive(Debug)]
pub struct Elf {
    file: File,
    header: [u8; 64],
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).map_or(0, |x| u16::from_le_bytes([x[0], x[1]]))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).and_then(|x| x.try_into().ok()).map_or(0, u32::from_le_bytes)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).and_then(|x| x.try_into().ok()).map_or(0, u64::from_le_bytes)
}

impl Elf {
    /// Opens `path`: `Ok(None)` when it is not a 64-bit little-endian ELF file.
    pub fn open(path: &Path) -> std::io::Result<Option<Elf>> {
        let file = File::open(path)?;
        let mut header = [0u8; 64];
        if file.read_exact_at(&mut header, 0).is_err() || header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1
        {
            return Ok(None);
        }
        Ok(Some(Elf { file, header }))
    }

    /// `e_machine` (e.g. [`EM_X86_64`]).
    pub fn machine(&self) -> u16 {
        u16_at(&self.header, 0x12)
    }

    /// The table of `num` entries of `size` bytes at `offset` (at least `min_size` each).
    fn table(&self, offset: u64, size: u16, num: u16, min_size: u16) -> Option<(Vec<u8>, usize)> {
        if size < min_size || usize::from(num) > MAX_HEADERS {
            return None;
        }
        let mut b = vec![0u8; usize::from(size) * usize::from(num)];
        self.file.read_exact_at(&mut b, offset).ok()?;
        Some((b, usize::from(size)))
    }

    /// Whether it has no interpreter (statically linked); `None` if its program headers
    /// cannot be read.
    pub fn is_static(&self) -> Option<bool> {
        let h = &self.header;
        let (table, size) = self.table(u64_at(h, 0x20), u16_at(h, 0x36), u16_at(h, 0x38), 4)?;
        Some(!table.chunks(size).any(|p| u32_at(p, 0) == PT_INTERP))
    }

    /// The contents of the sections named in `names`, concatenated in file order; `None` if
    /// the section headers cannot be read or a named section is out of the file.
    pub fn sections(&self, names: &[&str]) -> Option<Vec<u8>> {
        let h = &self.header;
        let (shnum, shstrndx) = (u16_at(h, 0x3c), u16_at(h, 0x3e));
        if shstrndx >= shnum {
            return None;
        }
        let (table, size) = self.table(u64_at(h, 0x28), u16_at(h, 0x3a), shnum, 64)?;
        // (name offset, file offset, size) of section i.
        let section = |i: usize| {
            let s = &table[i * size..];
            (u32_at(s, 0) as usize, u64_at(s, 24), u64_at(s, 32))
        };
        let read = |offset: u64, len: u64| -> Option<Vec<u8>> {
            if len > MAX_SECTION {
                return None;
            }
            let mut b = vec![0u8; usize::try_from(len).ok()?];
            self.file.read_exact_at(&mut b, offset).ok()?;
            Some(b)
        };
        let (_, stroff, strsize) = section(usize::from(shstrndx));
        let strings = read(stroff, strsize)?;
        let mut out = Vec::new();
        for i in 0..usize::from(shnum) {
            let (name, offset, len) = section(i);
            let name = strings.get(name..).and_then(|n| n.split(|b| *b == 0).next()).unwrap_or_default();
            if names.iter().any(|n| n.as_bytes() == name) {
                out.extend(read(offset, len)?);
            }
        }
        Some(out)
    }
}

/// Whether `path` is a static x86-64 executable: `Ok(None)` when it is not an x86-64 ELF
/// executable at all, `Ok(Some(false))` when it is dynamically linked.
pub fn static_x86_64(path: &Path) -> std::io::Result<Option<bool>> {
    Ok(Elf::open(path)?.filter(|e| e.machine() == EM_X86_64).and_then(|e| e.is_static()))
}

/// Building ELF images for tests (of this crate and of crates that read kernels).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::EM_X86_64;

    /// An ELF64 image: program headers of `types`, and sections (name, contents) after a
    /// NULL section, with the section name table last.
    pub fn image(types: &[u32], sections: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(p);
        }
        // The section name table: every name, then its own.
        let mut names = vec![0u8];
        let mut name_at = Vec::new();
        for n in sections.iter().map(|(n, _)| *n).chain([".shstrtab"]) {
            name_at.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let mut headers = vec![vec![0u8; 64]];
        for (i, data) in sections.iter().map(|(_, d)| *d).chain([names.as_slice()]).enumerate() {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name_at[i].to_le_bytes());
            h[24..32].copy_from_slice(&(b.len() as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
            b.extend_from_slice(data);
            headers.push(h);
        }
        let last = headers.len() - 1;
        let shoff = b.len() as u64;
        b[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&(headers.len() as u16).to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&(last as u16).to_le_bytes());
        for h in headers {
            b.extend(h);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::testing::image;
    use super::*;

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("prog");
        std::fs::write(&p, image(&[1, 1], &[])).unwrap();
        assert_eq!(static_x86_64(&p).unwrap(), Some(true));
        std::fs::write(&p, image(&[6, PT_INTERP, 1], &[])).unwrap();
        assert_eq!(static_x86_64(&p).unwrap(), Some(false));
        let mut other = image(&[1], &[]);
        other[0x12] = 183; // aarch64
        std::fs::write(&p, other).unwrap();
        assert_eq!(static_x86_64(&p).unwrap(), None);
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert_eq!(static_x86_64(&p).unwrap(), None);
        // Program headers past the end of the file.
        let mut cut = image(&[1, 1], &[]);
        cut[0x20..0x28].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&p, cut).unwrap();
        assert_eq!(static_x86_64(&p).unwrap(), None);
        assert!(static_x86_64(&d.path().join("missing")).is_err());
    }

    #[test]
    fn named_sections_are_read_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vmlinux");
        let img = image(&[], &[(".text", b"TEXT"), (".init.data", b"one\0"), (".init.rodata", b"two\0")]);
        std::fs::write(&p, &img).unwrap();
        let e = Elf::open(&p).unwrap().unwrap();
        assert_eq!(e.sections(&[".init.data", ".init.rodata"]).unwrap(), b"one\0two\0");
        assert_eq!(e.sections(&[".nosuch"]).unwrap(), b"");
        // A section header pointing past the end of the file.
        let mut bad = img.clone();
        let shoff = u64_at(&bad, 0x28) as usize;
        bad[shoff + 2 * 64 + 24..shoff + 2 * 64 + 32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&p, bad).unwrap();
        assert_eq!(Elf::open(&p).unwrap().unwrap().sections(&[".init.data"]), None);
        // A name table index out of range.
        let mut bad = img;
        bad[0x3e..0x40].copy_from_slice(&999u16.to_le_bytes());
        std::fs::write(&p, bad).unwrap();
        assert_eq!(Elf::open(&p).unwrap().unwrap().sections(&[".init.data"]), None);
    }
}
