//! Arbitrary bytes as an image layer: the applier must never panic and never write outside
//! its target directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = tempfile::tempdir().unwrap();
    let outside = base.path().join("outside");
    let target = base.path().join("root");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(&target).unwrap();
    let opts = ignite_oci::ApplyOptions { max_total_bytes: 1 << 20, max_entries: 1000 };
    let _ = ignite_oci::apply_layer_reader(data, &target, &opts, &mut Default::default());
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 2, "wrote beside the target");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "wrote outside the target");
});
