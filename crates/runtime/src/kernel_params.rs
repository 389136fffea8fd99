//! Which boot parameters a guest kernel image (an uncompressed ELF `vmlinux`) handles.
//!
//! Owns: reading a kernel's init data (its `.init.data` / `.init.rodata` sections, a few
//! hundred KiB of a ~20 MiB image: reading all of it costs 20–40 ms here) and finding there
//! the NUL-terminated strings that `__setup` and `early_param` register. `start` asks before it
//! passes parameters only ignite's kernel has (images/kernel/patches): another kernel would
//! hand unknown words on to init.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Sections read at most (a kernel's init data is well under this).
const MAX_SECTION: u64 = 16 << 20;

/// Which of `names` the kernel at `kernel` handles; all false if it is not a 64-bit
/// little-endian ELF image or cannot be read.
pub fn handled(kernel: &Path, names: &[&str]) -> Vec<bool> {
    let data = init_data(kernel).unwrap_or_default();
    names.iter().map(|n| has_param(&data, n)).collect()
}

/// Whether `data` holds the parameter string `name`, NUL-terminated.
fn has_param(data: &[u8], name: &str) -> bool {
    let mut needle = name.as_bytes().to_vec();
    needle.push(0);
    memchr::memmem::find(data, &needle).is_some()
}

/// The contents of the image's init data sections, concatenated.
fn init_data(kernel: &Path) -> Option<Vec<u8>> {
    let f = File::open(kernel).ok()?;
    let mut eh = [0u8; 64];
    f.read_exact_at(&mut eh, 0).ok()?;
    // ELF, 64-bit, little-endian.
    if eh[..4] != *b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(&eh, 0x28), u16_at(&eh, 0x3a), u16_at(&eh, 0x3c), u16_at(&eh, 0x3e));
    if shentsize < 64 || shnum == 0 || shstrndx >= shnum {
        return None;
    }
    let mut sh = vec![0u8; usize::from(shentsize) * usize::from(shnum)];
    f.read_exact_at(&mut sh, shoff).ok()?;
    let section = |i: usize| {
        let h = &sh[i * usize::from(shentsize)..];
        (u32_at(h, 0) as usize, u64_at(h, 24), u64_at(h, 32)) // name, offset, size
    };
    let read = |offset: u64, size: u64| -> Option<Vec<u8>> {
        if size > MAX_SECTION {
            return None;
        }
        let mut b = vec![0u8; usize::try_from(size).ok()?];
        f.read_exact_at(&mut b, offset).ok()?;
        Some(b)
    };
    let (_, stroff, strsize) = section(usize::from(shstrndx));
    let names = read(stroff, strsize)?;
    let mut data = Vec::new();
    for i in 0..usize::from(shnum) {
        let (name, offset, size) = section(i);
        let name = names.get(name..).and_then(|n| n.split(|b| *b == 0).next()).unwrap_or_default();
        if name == b".init.data" || name == b".init.rodata" {
            data.extend(read(offset, size)?);
        }
    }
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 image: a NULL section, `.init.data` holding `init`, and the section
    /// name table.
    fn elf(init: &[u8]) -> Vec<u8> {
        let names = b"\0.init.data\0.shstrtab\0";
        let data_off = 64u64;
        let names_off = data_off + init.len() as u64;
        let shoff = names_off + names.len() as u64;
        let mut b = vec![0u8; 64];
        b[..6].copy_from_slice(b"\x7fELF\x02\x01");
        b[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        b[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(init);
        b.extend_from_slice(names);
        let header = |name: u32, off: u64, size: u64| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&off.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h
        };
        b.extend(header(0, 0, 0));
        b.extend(header(1, data_off, init.len() as u64));
        b.extend(header(12, names_off, names.len() as u64));
        b
    }

    #[test]
    fn a_parameter_is_known_by_its_nul_terminated_string_in_the_init_data() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("vmlinux");
        std::fs::write(&k, elf(b"nokaslr\0keep_initmem\0lapic_timer_khz\0")).unwrap();
        assert_eq!(handled(&k, &["keep_initmem", "lapic_timer_khz", "lapic_timer"]), [true, true, false]);
        // Named in a message only: not a parameter.
        std::fs::write(&k, elf(b"nokaslr\0Keeping memory (keep_initmem)\n\0")).unwrap();
        assert_eq!(handled(&k, &["keep_initmem"]), [false]);
        // Outside the init data: not looked at.
        let mut image = elf(b"nokaslr\0");
        image.extend_from_slice(b"keep_initmem\0");
        std::fs::write(&k, image).unwrap();
        assert_eq!(handled(&k, &["keep_initmem"]), [false]);
        // Not an ELF image, or none at all.
        std::fs::write(&k, b"keep_initmem\0").unwrap();
        assert_eq!(handled(&k, &["keep_initmem"]), [false]);
        assert_eq!(handled(&d.path().join("missing"), &["keep_initmem"]), [false]);
    }
}
