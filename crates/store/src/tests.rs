use super::*;
use ignite_api::{ObjectMeta, VmSpec};

fn vm(name: &str) -> Vm {
    let mut spec =
        VmSpec { image: ignite_api::OciSpec { oci: Some("busybox".parse().unwrap()) }, ..Default::default() };
    spec.set_defaults();
    Vm::new(ObjectMeta { name: name.into(), ..Default::default() }, spec)
}

#[test]
fn create_get_list_remove() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let l = s.lock().unwrap();
    let a = s.create(&l, vm("alpha")).unwrap();
    let uid = a.uid();
    assert_eq!(uid.len(), 16);
    assert!(a.metadata.created.is_some());
    assert_eq!(s.get::<Vm>(&uid).unwrap(), a);
    assert!(matches!(s.create(&l, vm("alpha")), Err(StoreError::NameTaken { .. })));
    s.create(&l, vm("beta")).unwrap();
    assert_eq!(s.list::<Vm>().unwrap().len(), 2);
    s.remove::<Vm>(&l, &uid).unwrap();
    assert!(matches!(s.get::<Vm>(&uid), Err(StoreError::NotFound { .. })));
    assert_eq!(s.list::<Vm>().unwrap().len(), 1);
    assert!(matches!(s.remove::<Vm>(&l, &uid), Err(StoreError::NotFound { .. })));
}

#[test]
fn resolve_rules() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let l = s.lock().unwrap();
    let mut a = vm("web-1");
    a.metadata.uid = Some("aaaa000000000001".parse().unwrap());
    let mut b = vm("web-2");
    b.metadata.uid = Some("aaaa000000000002".parse().unwrap());
    let mut c = vm("db");
    c.metadata.uid = Some("bbbb000000000003".parse().unwrap());
    for o in [a, b, c] {
        s.create(&l, o).unwrap();
    }
    assert_eq!(s.resolve::<Vm>("web-1").unwrap().name(), "web-1");
    assert_eq!(s.resolve::<Vm>("aaaa000000000002").unwrap().name(), "web-2");
    assert_eq!(s.resolve::<Vm>("bb").unwrap().name(), "db");
    assert_eq!(s.resolve::<Vm>("d").unwrap().name(), "db");
    match s.resolve::<Vm>("web") {
        Err(e @ StoreError::Ambiguous { .. }) => {
            let m = e.to_string();
            assert!(m.contains("web-1") && m.contains("web-2") && m.contains("aaaa000000000001"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.resolve::<Vm>("aaaa"), Err(StoreError::Ambiguous { .. })));
    assert!(matches!(s.resolve::<Vm>("zzz"), Err(StoreError::NotFound { .. })));
    assert!(matches!(s.resolve::<Vm>(""), Err(StoreError::NotFound { .. })));
}

#[test]
fn crash_leftovers_are_swept_and_ignored() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let half = d.path().join("vm/.tmp-0123456789abcdef");
    fs::create_dir_all(&half).unwrap();
    fs::write(half.join(METADATA_FILE), b"{ torn").unwrap();
    assert!(s.list::<Vm>().unwrap().is_empty());
    drop(s.lock().unwrap());
    assert!(!half.exists());
}

#[test]
fn a_removal_killed_half_way_is_finished_without_the_lock() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let l = s.lock().unwrap();
    let gone = s.create(&l, vm("gone")).unwrap().uid();
    let kept = s.create(&l, vm("kept")).unwrap().uid();
    // What a removal killed between its rename and its deletion leaves.
    let half = d.path().join(format!("vm/.rm-{gone}"));
    fs::rename(s.dir::<Vm>(&gone), &half).unwrap();
    fs::write(half.join("disk.qcow2"), b"data").unwrap();
    // Another process holds the lock: the collector still finishes the removal.
    assert_eq!(s.finish_removals(), 1);
    assert!(!half.exists());
    assert_eq!(s.list::<Vm>().unwrap().len(), 1);
    assert!(s.dir::<Vm>(&kept).is_dir());
    drop(l);
}

#[test]
fn corrupt_metadata_is_named() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let dir = d.path().join("vm/0123456789abcdef");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(METADATA_FILE), b"{ torn").unwrap();
    let e = s.list::<Vm>().unwrap_err().to_string();
    assert!(e.contains("0123456789abcdef/metadata.json"), "{e}");
}

#[test]
fn concurrent_threads_same_name_one_wins() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().to_path_buf();
    let handles: Vec<_> = (0..16)
        .map(|_| {
            let root = root.clone();
            std::thread::spawn(move || {
                let s = Store::open(&root).unwrap();
                let l = s.lock().unwrap();
                s.create(&l, vm("same")).is_ok()
            })
        })
        .collect();
    let wins = handles.into_iter().map(|h| h.join().unwrap()).filter(|w| *w).count();
    assert_eq!(wins, 1);
    assert_eq!(Store::open(&root).unwrap().list::<Vm>().unwrap().len(), 1);
}

#[test]
fn modify_is_read_modify_write() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path()).unwrap();
    let uid = {
        let l = s.lock().unwrap();
        s.create(&l, vm("m")).unwrap().uid()
    };
    let (v, ()) = s.modify::<Vm, _>(&uid, |v| v.status.running = true).unwrap();
    assert!(v.status.running);
    assert!(s.get::<Vm>(&uid).unwrap().status.running);
}

#[test]
fn atomic_writes_replace_whole_files_and_leave_no_temporary() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("boot.json");
    for (i, write) in [write_atomic as fn(&Path, &[u8]) -> _, write_atomic_unsynced].into_iter().enumerate() {
        write(&p, format!("first {i}").as_bytes()).unwrap();
        write(&p, format!("second {i}").as_bytes()).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), format!("second {i}"));
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("boot.json")]);
    }
    // A directory that does not exist: an error, nothing made.
    let missing = d.path().join("no/such/boot.json");
    assert!(write_atomic_unsynced(&missing, b"x").is_err());
    assert!(!d.path().join("no").exists());
}

#[test]
fn threads_replacing_one_file_at_once_each_write_it_whole() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("jail.json");
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    // A temporary per call: with one per process, a thread renamed another's
                    // half-written file into place, or found its own gone.
                    let body = format!("{t}:{i}:").repeat(64);
                    write_atomic_unsynced(&p, body.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let body = fs::read_to_string(&p).unwrap();
    let first = body.split_inclusive(':').take(2).collect::<String>();
    assert_eq!(body, first.repeat(64), "a whole write of one thread");
    let names: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("jail.json")]);
}
