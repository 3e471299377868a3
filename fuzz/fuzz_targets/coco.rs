//! Fuzzes the COCO-captions parser under both bad-sample policies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use workbench::data::coco::parse_coco;
use workbench::data::{BadSample, BadSampleReport};

fuzz_target!(|data: &[u8]| {
    for policy in [BadSample::Fail, BadSample::Skip] {
        let mut report = BadSampleReport::default();
        if let Ok(images) = parse_coco(data, Path::new("fuzz.json"), policy, &mut report) {
            assert!(images.iter().all(|i| !i.captions.is_empty()));
        }
    }
});
