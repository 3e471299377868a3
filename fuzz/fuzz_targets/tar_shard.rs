//! Fuzzes the tar reader and the WebDataset pairing under both bad-sample policies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use workbench::data::BadSample;
use workbench::data::webdataset::parse_shard;

fuzz_target!(|data: &[u8]| {
    for policy in [BadSample::Fail, BadSample::Skip] {
        if let Ok((pairs, _)) = parse_shard(data, Path::new("fuzz.tar"), policy) {
            assert!(pairs.iter().all(|p| !p.caption.is_empty()));
        }
    }
});
