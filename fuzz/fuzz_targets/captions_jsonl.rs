//! Fuzzes the JSON Lines captions parser under both bad-sample policies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use workbench::data::captions::parse_captions_jsonl;
use workbench::data::{BadSample, BadSampleReport};

fuzz_target!(|data: &[u8]| {
    for policy in [BadSample::Fail, BadSample::Skip] {
        let mut report = BadSampleReport::default();
        if let Ok(rows) = parse_captions_jsonl(data, Path::new("fuzz.jsonl"), policy, &mut report) {
            for r in &rows {
                assert!(!r.caption.is_empty() && r.line >= 1);
            }
        }
    }
});
