//! The library's error type. Every variant says where (file, field, step) and what was expected.

use std::path::PathBuf;

/// Errors of the workbench library. Tensor code returns [`candle_core::Error`], wrapped here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A configuration value is invalid.
    #[error("config field `{field}`: {msg}")]
    Config {
        /// Dotted path of the field, e.g. `model.vision.patch_size`.
        field: String,
        /// What is wrong and what was expected.
        msg: String,
    },

    /// A configuration file could not be parsed.
    #[error("{path}: {msg}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// Parser message, with line and column.
        msg: String,
    },

    /// A checkpoint is missing, incomplete or does not match the model.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },

    /// A tokenizer could not be built, loaded or applied.
    #[error("tokenizer{}: {msg}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The `tokenizer.json`, when one was involved.
        path: Option<PathBuf>,
        /// What is wrong.
        msg: String,
    },

    /// A dataset could not produce a sample.
    #[error("data: {0}")]
    Data(String),

    /// A data file (captions file, annotations, image, tar shard) is malformed.
    #[error("{}{}: {msg}", .path.display(), .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Input {
        /// The file (for a tar member: `shard.tar/member`).
        path: PathBuf,
        /// 1-based line number, for text formats.
        line: Option<usize>,
        /// What is wrong and what was expected.
        msg: String,
    },

    /// A loss term or gradient was NaN or infinite; the update was not applied.
    #[error(
        "non-finite value at step {step} in {term}: the update was skipped and the run paused with its last good state"
    )]
    NonFinite {
        /// The step whose update was refused.
        step: usize,
        /// Which loss term, or `grad:<parameter>`.
        term: String,
    },

    /// A device ran out of memory; the step (or evaluation) was not applied and the run keeps
    /// its last good state.
    #[error(
        "out of memory on {device} during {during}{memory}: nothing was updated and the run keeps its last good state; {remedy}"
    )]
    OutOfMemory {
        /// The device, as [`crate::devices::describe`] names it.
        device: String,
        /// What ran out: `step 12`, `evaluation at step 12`.
        during: String,
        /// ` (79.1 of 79.6 GiB in use)` when the driver says, else empty.
        memory: String,
        /// What to change: the settings that need less memory.
        remedy: String,
    },
}

/// Result with the workbench [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`Error::Config`] for `field`.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// An [`Error::Input`] for `path`, optionally at 1-based `line`.
    pub fn input(path: impl Into<PathBuf>, line: Option<usize>, msg: impl Into<String>) -> Self {
        Self::Input {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }

    /// `self` as [`Error::OutOfMemory`] when it is a device's allocation failure (CUDA's
    /// `CUDA_ERROR_OUT_OF_MEMORY`, cuBLAS's `CUBLAS_STATUS_ALLOC_FAILED`), naming `device`,
    /// what was running (`during`) and the settings that would need less (`remedy`); any other
    /// error unchanged.
    #[must_use]
    pub fn out_of_memory(
        self,
        device: &candle_core::Device,
        during: impl FnOnce() -> String,
        remedy: &str,
    ) -> Self {
        let Self::Candle(e) = &self else {
            return self;
        };
        let text = e.to_string();
        if !["OUT_OF_MEMORY", "out of memory", "ALLOC_FAILED"]
            .iter()
            .any(|k| text.contains(k))
        {
            return self;
        }
        Self::OutOfMemory {
            device: crate::devices::describe(device),
            during: during(),
            memory: match crate::devices::memory(device) {
                Ok(Some(m)) => format!(" ({m})"),
                _ => String::new(),
            },
            remedy: remedy.to_string(),
        }
    }

    /// A [`Error::Checkpoint`] for `path`.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
