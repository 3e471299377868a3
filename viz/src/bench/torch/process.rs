//! The PyTorch half of `bench torch`: `viz/bench/torch_clip.py` in a child process, answering
//! one JSON command per line, and the optional virtual environment it runs in.

use super::{ParamCounts, Timed};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// PyTorch's peak memory over one `train` command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TorchPeak {
    /// CUDA: `torch.cuda.max_memory_allocated` (reset before the steps); CPU: the script's peak
    /// resident set (reset through `/proc/self/clear_refs`; `None` where that is refused). Bytes.
    pub allocated: Option<u64>,
    /// CUDA only: `torch.cuda.max_memory_reserved`, the caching allocator's peak footprint.
    pub reserved: Option<u64>,
}

/// The PyTorch side: the script running in a child process, answering one command per line.
pub struct Torch {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    python: PathBuf,
    /// Its parameter counts.
    pub counts: ParamCounts,
    /// `torch.__version__`.
    pub version: String,
    /// `torch.get_num_threads()`.
    pub threads: usize,
}

impl Torch {
    /// Starts `script` under `python` with the specification file `spec`; waits until the model
    /// is built. Errors say whether the interpreter is missing or torch cannot be imported.
    pub fn start(python: &Path, script: &Path, spec: &Path) -> Result<Self> {
        let mut child = Command::new(python)
            .arg(script)
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run the Python interpreter `{}`: {e}; pass --python PATH to one that has torch, or --install-torch DIR to create one",
                    python.display()
                )
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the pipes to `{}` were not opened", python.display());
        };
        let mut torch = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            python: python.to_path_buf(),
            counts: ParamCounts {
                total: 0,
                decayed: 0,
            },
            version: String::new(),
            threads: 0,
        };
        let ready = torch.read().map_err(|e| {
            if e.to_string().contains("torch is not importable") {
                e.context(format!(
                    "`{}` has no torch; pass --python PATH to an interpreter that has it, or --install-torch DIR",
                    python.display()
                ))
            } else {
                e
            }
        })?;
        let field = |k: &str| {
            ready
                .get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| {
                    anyhow::anyhow!("the PyTorch script's first answer lacks `{k}`: {ready}")
                })
        };
        torch.counts = ParamCounts {
            total: field("params")?,
            decayed: field("decayed")?,
        };
        torch.threads = field("threads")?;
        torch.version = ready
            .get("torch")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        Ok(torch)
    }

    /// Reads one JSON answer; `{"error": …}`, a closed pipe or other text are errors.
    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line)?;
        if n == 0 {
            let status = self.child.wait()?;
            bail!(
                "`{}` exited ({status}) without answering the PyTorch script",
                self.python.display()
            );
        }
        let v: Value = serde_json::from_str(line.trim()).with_context(|| {
            format!(
                "`{}` answered {:?}, not a JSON line of the PyTorch script",
                self.python.display(),
                line.trim()
            )
        })?;
        if let Some(msg) = v.get("error").and_then(Value::as_str) {
            bail!(
                "the PyTorch script under `{}`: {msg}",
                self.python.display()
            );
        }
        Ok(v)
    }

    fn call(&mut self, cmd: &Value) -> Result<Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.read()
    }

    fn seconds(v: &Value) -> Result<f64> {
        v.get("seconds")
            .and_then(Value::as_f64)
            .ok_or_else(|| anyhow::anyhow!("the PyTorch script's answer lacks `seconds`: {v}"))
    }

    /// `steps` training steps, timed inside the script.
    pub fn train(&mut self, steps: usize) -> Result<Timed> {
        Ok(self.train_measured(steps)?.0)
    }

    /// `steps` training steps, timed inside the script, with the script's peak memory over
    /// them.
    pub fn train_measured(&mut self, steps: usize) -> Result<(Timed, TorchPeak)> {
        let v = self.call(&json!({"op": "train", "steps": steps}))?;
        let bytes = |k: &str| v.get(k).and_then(Value::as_u64);
        Ok((
            Timed {
                seconds: Self::seconds(&v)?,
                loss: v.get("loss").and_then(Value::as_f64).unwrap_or(f64::NAN) as f32,
            },
            TorchPeak {
                allocated: bytes("peak_bytes"),
                reserved: bytes("reserved_bytes"),
            },
        ))
    }

    /// `chunks` forward passes of both towers under `torch.inference_mode()`; seconds.
    pub fn embed(&mut self, chunks: usize) -> Result<f64> {
        let v = self.call(&json!({"op": "embed", "chunks": chunks}))?;
        Self::seconds(&v)
    }
}

impl Drop for Torch {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"op": "quit"}));
        let _ = self.stdin.flush();
        if !matches!(self.child.wait(), Ok(s) if s.success()) {
            let _ = self.child.kill();
        }
    }
}

/// Creates a virtual environment in `dir` with `base` (e.g. `python3`) and installs torch from
/// PyPI into it, unless it already imports torch. Returns the environment's interpreter.
pub fn install_torch(dir: &Path, base: &Path) -> Result<PathBuf> {
    let python = dir.join("bin").join("python");
    let has_torch = |p: &Path| {
        Command::new(p)
            .args(["-c", "import torch"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has_torch(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> Result<()> {
        let status = cmd
            .status()
            .with_context(|| format!("cannot run {what} ({cmd:?})"))?;
        if !status.success() {
            bail!("{what} failed ({status}): {cmd:?}");
        }
        Ok(())
    };
    if !python.exists() {
        run(
            Command::new(base).args(["-m", "venv"]).arg(dir),
            "creating the virtual environment",
        )?;
    }
    run(
        Command::new(&python).args(["-m", "pip", "install", "torch"]),
        "installing torch from PyPI",
    )?;
    if !has_torch(&python) {
        bail!(
            "torch was installed into {} but does not import",
            dir.display()
        );
    }
    Ok(python)
}
