//! What to do with a bad sample: stop with its error, or skip it and count it.
//!
//! Loaders call [`BadSample::handle`] with each problem they find in one sample (a missing or
//! corrupt image, a captions row with the wrong number of fields, an empty caption, a tar member
//! without its other half). [`BadSample::Fail`] returns the error — the default for evaluation,
//! where a silently smaller test set would change the numbers. [`BadSample::Skip`] records it in
//! a [`BadSampleReport`] — the default for training — which keeps the count and the first few
//! messages (each naming the file and what was wrong) for the run summary.
//!
//! Problems that make a whole file unreadable (no header, a quote that never closes, a tar
//! header that is not a tar header) are errors in both modes.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt::Write as _;

/// Policy for samples that cannot be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadSample {
    /// Stop at the first bad sample with its error (default; use it for evaluation).
    #[default]
    Fail,
    /// Skip bad samples, counting them and keeping the first few messages (use it for training).
    Skip,
}

impl BadSample {
    /// The default policy for training data: [`BadSample::Skip`].
    pub fn for_training() -> Self {
        Self::Skip
    }

    /// The default policy for evaluation data: [`BadSample::Fail`].
    pub fn for_eval() -> Self {
        Self::Fail
    }

    /// Parses `fail` or `skip`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fail" => Ok(Self::Fail),
            "skip" => Ok(Self::Skip),
            other => Err(Error::config(
                "data.bad_samples",
                format!("unknown policy {other:?}; expected \"fail\" or \"skip\""),
            )),
        }
    }

    /// Under `Fail`, returns `err`; under `Skip`, records it in `report` and returns `Ok`.
    pub fn handle(self, report: &mut BadSampleReport, err: Error) -> Result<()> {
        match self {
            Self::Fail => Err(err),
            Self::Skip => {
                report.record(&err);
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for BadSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fail => "fail",
            Self::Skip => "skip",
        })
    }
}

/// How many bad samples were skipped, with the first few messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadSampleReport {
    /// Number of distinct bad samples skipped.
    pub count: usize,
    /// The first [`BadSampleReport::keep`] messages, each naming the file and the problem.
    pub examples: Vec<String>,
    /// How many messages to keep.
    pub keep: usize,
    /// Messages already counted, so that a bad image met again in a later epoch counts once.
    #[serde(skip)]
    seen: HashSet<String>,
}

impl Default for BadSampleReport {
    fn default() -> Self {
        Self::new(10)
    }
}

/// Messages remembered for de-duplication, at most; past this every report counts.
const SEEN_LIMIT: usize = 1 << 16;

impl BadSampleReport {
    /// An empty report keeping the first `keep` messages.
    pub fn new(keep: usize) -> Self {
        Self {
            count: 0,
            examples: Vec::new(),
            keep,
            seen: HashSet::new(),
        }
    }

    /// Counts `err` (once per distinct message) and keeps its message if there is room.
    pub fn record(&mut self, err: &Error) {
        let msg = err.to_string();
        if self.seen.len() < SEEN_LIMIT && !self.seen.insert(msg.clone()) {
            return;
        }
        self.count += 1;
        if self.examples.len() < self.keep {
            self.examples.push(msg);
        }
    }

    /// Adds the counts and messages of `other`.
    pub fn merge(&mut self, other: &Self) {
        self.count += other.count;
        for m in &other.examples {
            if self.examples.len() < self.keep {
                self.examples.push(m.clone());
            }
        }
        self.seen.extend(other.seen.iter().cloned());
    }

    /// Whether nothing was skipped.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A few lines for a run summary: the count, then the kept messages indented.
    pub fn summary(&self) -> String {
        if self.count == 0 {
            return "no bad samples".into();
        }
        let mut s = format!(
            "{} bad sample{} skipped",
            self.count,
            if self.count == 1 { "" } else { "s" }
        );
        if self.count > self.examples.len() {
            let _ = write!(s, " (first {} shown)", self.examples.len());
        }
        for m in &self.examples {
            s.push_str("\n  ");
            s.push_str(m);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_returns_skip_counts_once_and_keeps_the_first_few() {
        let mut r = BadSampleReport::new(2);
        let e = || Error::input("a.png", None, "zero-byte file");
        assert!(BadSample::Fail.handle(&mut r, e()).is_err());
        assert!(r.is_empty());
        BadSample::Skip.handle(&mut r, e()).unwrap();
        BadSample::Skip.handle(&mut r, e()).unwrap();
        assert_eq!(r.count, 1);
        for i in 0..3 {
            let err = Error::input("c.csv", Some(i + 2), "empty caption");
            BadSample::Skip.handle(&mut r, err).unwrap();
        }
        assert_eq!(r.count, 4);
        assert_eq!(
            r.examples,
            ["a.png: zero-byte file", "c.csv:2: empty caption"]
        );
        assert!(
            r.summary()
                .starts_with("4 bad samples skipped (first 2 shown)")
        );
        assert_eq!(BadSample::parse("skip").unwrap(), BadSample::Skip);
        assert!(BadSample::parse("ignore").is_err());
    }
}
