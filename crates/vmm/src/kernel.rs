//! What a guest kernel image (an uncompressed ELF `vmlinux`) handles, learned once per kernel.
//!
//! Owns: finding which boot parameters a kernel registers (the NUL-terminated strings of
//! `__setup` and `early_param` in its `.init.data` / `.init.rodata`: a few hundred KiB of a
//! ~20 MiB image, read with [`ignite_proc::elf`]), and caching the answer under the state
//! directory keyed by the kernel's path, size and mtime ([`accel::cache_key`]), like the
//! accelerator verdict: a start does not read the image again. A backend asks before it passes
//! parameters only ignite's kernel has (images/kernel/patches): another kernel would hand
//! unknown words on to init.

use std::path::Path;

use crate::accel;

/// The cache's file in the state directory.
pub const CACHE_FILE: &str = "kernels.json";

/// Which of `names` the kernel at `kernel` handles; all false if it is not a 64-bit
/// little-endian ELF image or cannot be read (not cached then).
pub fn handled(state_dir: &Path, kernel: &Path, names: &[&str]) -> Vec<bool> {
    let key = format!("{}|{}", accel::cache_key(Path::new(""), kernel), names.join(","));
    let cache = state_dir.join(CACHE_FILE);
    accel::cached(&cache, &key, || read_handled(kernel, names).ok_or(())).unwrap_or_else(|()| vec![false; names.len()])
}

/// [`handled`], read from the image.
fn read_handled(kernel: &Path, names: &[&str]) -> Option<Vec<bool>> {
    let data = ignite_proc::elf::Elf::open(kernel).ok()??.sections(&[".init.data", ".init.rodata"])?;
    Some(
        names
            .iter()
            .map(|n| {
                let mut needle = n.as_bytes().to_vec();
                needle.push(0);
                memchr::memmem::find(&data, &needle).is_some()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ignite_proc::elf::testing::image;

    fn kernel(dir: &Path, init: &[u8]) -> std::path::PathBuf {
        let k = dir.join("vmlinux");
        std::fs::write(&k, image(&[], &[(".text", b"lapic_timer_khz\0"), (".init.data", init)])).unwrap();
        k
    }

    #[test]
    fn a_parameter_is_known_by_its_nul_terminated_string_in_the_init_data() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let k = kernel(d.path(), b"nokaslr\0keep_initmem\0Keeping memory (lapic_timer)\n\0");
        // Named in a message only, or outside the init data: not a parameter.
        assert_eq!(handled(&state, &k, &["keep_initmem", "lapic_timer_khz", "lapic_timer"]), [true, false, false]);
        // Not an ELF image, or none at all: nothing handled, nothing cached.
        let other = d.path().join("bzImage");
        std::fs::write(&other, b"keep_initmem\0").unwrap();
        assert_eq!(handled(&state, &other, &["keep_initmem"]), [false]);
        assert_eq!(handled(&state, &d.path().join("missing"), &["keep_initmem"]), [false]);
        let cache = std::fs::read_to_string(state.join(CACHE_FILE)).unwrap();
        assert_eq!(cache.matches("vmlinux").count(), 1, "{cache}");
    }

    #[test]
    fn the_answer_is_cached_per_kernel_and_read_again_when_the_kernel_changes() {
        let d = tempfile::tempdir().unwrap();
        let k = kernel(d.path(), b"keep_initmem\0");
        assert_eq!(handled(d.path(), &k, &["keep_initmem"]), [true]);
        // The cache answers, not the image: an image changed in place with the same size and
        // mtime is not read again.
        let mtime = std::fs::metadata(&k).unwrap().modified().unwrap();
        std::fs::write(&k, image(&[], &[(".text", b"lapic_timer_khz\0"), (".init.data", b"keep_initmen\0")])).unwrap();
        std::fs::File::options().write(true).open(&k).unwrap().set_modified(mtime).unwrap();
        assert_eq!(handled(d.path(), &k, &["keep_initmem"]), [true]);
        // A kernel of another size (a rebuilt one) is read.
        std::fs::write(&k, image(&[], &[(".init.data", b"nokaslr\0")])).unwrap();
        assert_eq!(handled(d.path(), &k, &["keep_initmem"]), [false]);
        // Other names asked: their own entry.
        assert_eq!(handled(d.path(), &k, &["nokaslr", "keep_initmem"]), [true, false]);
        // No temporary file is left beside the cache.
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
