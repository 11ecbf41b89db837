//! Checkpoint manifests as read from disk or a checkpoint store: any bytes are refused with a
//! reason or read into a manifest whose every file path stays inside the checkpoint (a plain
//! file name in the database, a relative path of plain names in the store), and a manifest
//! read writes back to one that reads the same.
#![no_main]

use std::path::{Component, Path};

use eddy_host::checkpoint::{Error, Manifest};
use libfuzzer_sys::fuzz_target;

fn plain(path: &str, most: usize) -> bool {
    let parts: Vec<Component> = Path::new(path).components().collect();
    !parts.is_empty()
        && parts.len() <= most
        && parts.iter().all(|c| matches!(c, Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    match Manifest::parse(7, data, "fuzzed manifest") {
        Ok(m) => {
            for f in &m.files {
                assert!(plain(&f.name, 1), "name {:?} accepted", f.name);
                assert!(
                    plain(&f.stored, usize::MAX),
                    "stored {:?} accepted",
                    f.stored
                );
            }
            let again = serde_json::to_vec(&m).expect("a manifest serializes");
            let back = Manifest::parse(7, &again, "written back").expect("reads back");
            assert_eq!(back.files, m.files);
            assert_eq!(back.cut, m.cut);
            assert_eq!((back.id, back.format), (m.id, m.format));
        }
        Err(Error::Corrupt { id, reason }) => {
            assert_eq!(id, 7);
            assert!(!reason.is_empty());
        }
        Err(Error::Format { id, format }) => assert!(id == 7 && format > 1),
        Err(e) => panic!("a manifest's bytes gave {e}"),
    }
});
