//! Fuzzes the CSV / TSV captions parser under both bad-sample policies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use workbench::data::captions::{CsvColumns, group_rows, parse_captions_csv};
use workbench::data::{BadSample, BadSampleReport};

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.csv");
    let cols = CsvColumns::default();
    for (delim, policy) in [(b',', BadSample::Fail), (b'\t', BadSample::Skip)] {
        let mut report = BadSampleReport::default();
        if let Ok(rows) = parse_captions_csv(data, path, delim, &cols, policy, &mut report) {
            for r in &rows {
                assert!(!r.caption.trim().is_empty() && !r.image.is_empty());
            }
            let _ = group_rows(rows);
        }
    }
});
