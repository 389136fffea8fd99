//! Arbitrary bytes as a manifest: decoding and validation must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(objs) = ignite_api::decode_objects(data) {
        for o in objs {
            if let ignite_api::Object::Vm(mut vm) = o {
                vm.spec.set_defaults();
                let _ = ignite_api::validate::validate_vm(&vm);
            }
        }
    }
});
