//! `workbench train`: the run directory, the progress bar, scheduled swaps, Ctrl-C.

use super::{TrainArgs, apply_overrides, eval_line, report_table, train_config};
use anyhow::{Context as _, Result, bail};
use candle_core::Device;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use workbench::config::{RunConfig, parse_device};
use workbench::control::Command;
use workbench::data::{BadSampleReport, open_dataset};
use workbench::devices::DeviceMemory;
use workbench::events::{EvalReport, Event, JsonlWriter};
use workbench::loss::LossConfig;
use workbench::pretrained::Pretrained;
use workbench::train::{FitOutcome, Trainer};

use crate::session::DataWait;

/// `runs/<base>`, or `runs/<base>-2`, `-3`, … — never an existing directory.
pub(super) fn fresh_run_dir(base: &str) -> PathBuf {
    let root = Path::new("runs");
    let mut dir = root.join(base);
    let mut n = 2;
    while dir.exists() {
        dir = root.join(format!("{base}-{n}"));
        n += 1;
    }
    dir
}

/// The run directory of `--resume DIR`, which names a run directory or its `checkpoint/`.
pub(super) fn run_dir_of(dir: &Path) -> PathBuf {
    if dir.join("state.json").is_file() {
        dir.parent()
            .map_or_else(|| dir.to_path_buf(), Path::to_path_buf)
    } else {
        dir.to_path_buf()
    }
}

/// A fresh run before its trainer exists: the configuration (from a preset or configuration
/// file, or from `--pretrained`), the loaded pretrained model, and the (created) run directory.
pub(super) struct NewRun {
    pub cfg: RunConfig,
    pre: Option<Pretrained>,
    pub dir: PathBuf,
}

impl NewRun {
    /// Loads `--pretrained` if given, makes the configuration (its `train.device` set to
    /// `device` when given) and creates the run directory, empty until a trainer is built.
    pub fn create(a: &TrainArgs, device: Option<&str>) -> Result<Self> {
        let pre = match &a.pretrained {
            Some(dir) => Some(super::pretrained::load(dir, &Device::Cpu)?),
            None => None,
        };
        let mut cfg = match &pre {
            Some(pre) => pretrained_run_config(pre, a)?,
            None => train_config(a)?,
        };
        if let Some(device) = device {
            cfg.train.device = device.to_string();
        }
        let base = match &a.pretrained {
            Some(dir) => dir
                .file_name()
                .map_or_else(|| "pretrained".into(), |n| n.to_string_lossy().into_owned()),
            None => cfg.preset.clone(),
        };
        let dir = a.out.clone().unwrap_or_else(|| fresh_run_dir(&base));
        if dir.exists() && dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
            bail!(
                "{}: directory exists and is not empty; pass --resume {0} to continue it, or another --out",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create run directory {}", dir.display()))?;
        Ok(Self { cfg, pre, dir })
    }

    /// A trainer of this run on `device`; the first one made (`first`) writes `config.toml` and
    /// `tokenizer.json` into the run directory once it is built, so a run that cannot start
    /// leaves the directory empty (and `--out` can name it again).
    pub fn trainer(&self, device: &str, first: bool) -> workbench::Result<Trainer> {
        let mut cfg = self.cfg.clone();
        cfg.train.device = device.to_string();
        let trainer = match &self.pre {
            Some(pre) => {
                let device = parse_device(device)?;
                let data = open_dataset(&cfg.data)?;
                Trainer::from_pretrained(pre, cfg, data, device)?
            }
            None => Trainer::new(cfg)?,
        };
        if first {
            self.cfg.save(&self.dir.join("config.toml"))?;
            trainer.tokenizer().save(self.dir.join("tokenizer.json"))?;
        }
        Ok(trainer)
    }
}

/// `--swap STEP:NAME`: each swap is sent as a live command once the run has completed `STEP`
/// steps (at once for a step already passed).
pub(super) struct SwapSchedule {
    pending: Vec<(usize, String)>,
    commands: Sender<Command>,
}

impl SwapSchedule {
    pub fn new(swaps: &[(usize, String)], commands: Sender<Command>) -> Self {
        let mut pending = swaps.to_vec();
        pending.sort_by_key(|s| s.0);
        Self { pending, commands }
    }

    /// Sends the swaps due after `step` completed steps.
    pub fn due(&mut self, step: usize) -> Result<()> {
        while let Some((at, name)) = self.pending.first().cloned() {
            if at > step {
                break;
            }
            self.pending.remove(0);
            let loss = LossConfig::by_name(&name)?;
            // The receiver lives as long as the fit; a send cannot fail while it runs.
            let _ = self.commands.send(Command::Swap { loss });
        }
        Ok(())
    }
}

/// What both `train` paths (one device, `--devices`) do with every event of the fit: append it
/// to `metrics.jsonl`, send the `--swap`s that fall due, move the progress bar, print evaluations
/// and gather the end-of-run summary; and stop the run on Ctrl-C or when the log cannot be
/// written.
pub(super) struct Console {
    log: JsonlWriter,
    swaps: SwapSchedule,
    bar: ProgressBar,
    quiet: bool,
    seen: Seen,
    write_err: Option<workbench::Error>,
    interrupted: &'static AtomicBool,
}

impl Console {
    /// A console for the run in `run_dir`; the fit takes its commands from the receiver.
    pub fn new(a: &TrainArgs, run_dir: &Path) -> Result<(Self, Receiver<Command>)> {
        let (commands, received) = std::sync::mpsc::channel();
        let console = Self {
            log: JsonlWriter::append(&run_dir.join("metrics.jsonl"))?,
            swaps: SwapSchedule::new(&a.swap, commands),
            // Sized by the run's `run_started` event.
            bar: progress_bar(0, 0, a.quiet),
            quiet: a.quiet,
            seen: Seen::default(),
            write_err: None,
            interrupted: interrupt_flag(),
        };
        Ok((console, received))
    }

    /// Handles one event; `Break` stops the run after this step.
    pub fn event(&mut self, event: &Event) -> ControlFlow<()> {
        if let Err(e) = self.log.write(event) {
            self.write_err = Some(e);
            return ControlFlow::Break(());
        }
        let due = match event {
            Event::RunStarted { config, step, .. } => {
                self.bar.set_length(config.train.steps as u64);
                self.bar.set_position(*step as u64);
                // Swaps due at the starting step go before its first step.
                Some(*step)
            }
            Event::Step(s) => Some(s.step),
            _ => None,
        };
        if let Some(step) = due
            && let Err(e) = self.swaps.due(step)
        {
            self.bar.println(format!("cannot swap: {e:#}"));
        }
        on_event(event, &self.bar, self.quiet, &mut self.seen);
        if self.interrupted.load(Ordering::SeqCst) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Ends the run's output: clears the bar, fails if the log could not be written, then
    /// prints the summary of `trainer` (rank 0's in a data-parallel run) and turns the outcome
    /// into the command's result.
    pub fn finish(self, run_dir: &Path, trainer: &Trainer, outcome: FitOutcome) -> Result<()> {
        self.bar.finish_and_clear();
        if let Some(e) = self.write_err {
            return Err(e.into());
        }
        let step = trainer.completed_steps();
        summary(
            run_dir,
            step,
            &self.seen,
            trainer.dataset().bad_samples().as_ref(),
        );
        let checkpoint = run_dir.join("checkpoint");
        match outcome {
            FitOutcome::Finished => Ok(()),
            FitOutcome::Paused(_) if self.interrupted.load(Ordering::SeqCst) => bail!(
                "interrupted at step {step}; checkpoint saved in {}; continue with --resume {}",
                checkpoint.display(),
                run_dir.display()
            ),
            FitOutcome::Paused(reason) => bail!(
                "training paused at step {step}: {reason}\n  last good state: {}",
                checkpoint.display()
            ),
        }
    }

    /// Clears the bar of a run that failed; the error is the command's.
    pub fn abandon(&self) {
        self.bar.finish_and_clear();
    }
}

pub(super) fn train(a: &TrainArgs) -> Result<()> {
    let (mut trainer, run_dir) = if let Some(dir) = &a.resume {
        let device = a.device.as_deref().map(parse_device).transpose()?;
        let trainer = Trainer::resume_with(dir, device, |cfg| apply_overrides(cfg, a))?;
        (trainer, run_dir_of(dir))
    } else {
        let run = NewRun::create(a, None)?;
        let trainer = run.trainer(&run.cfg.train.device, true)?;
        (trainer, run.dir)
    };
    trainer.set_run_dir(&run_dir);
    let (mut console, commands) = Console::new(a, &run_dir)?;
    let outcome = trainer.fit_with(&commands, |event| console.event(event));
    let outcome = outcome.inspect_err(|_| console.abandon())?;
    console.finish(&run_dir, &trainer, outcome)
}

/// [`super::pretrained::pretrained_config`] for `--pretrained` with `--config`, then the command line's
/// overrides.
fn pretrained_run_config(pre: &Pretrained, a: &TrainArgs) -> Result<RunConfig> {
    let mut cfg = super::pretrained::pretrained_config(pre, a.config.as_deref())?;
    apply_overrides(&mut cfg, a);
    if let Some(name) = &a.loss {
        cfg.loss = LossConfig::by_name(name).context("--loss")?;
    }
    cfg.validate().context("invalid command-line value")?;
    Ok(cfg)
}

/// Set by the first Ctrl-C: training stops after the current step and writes a checkpoint.
/// A second Ctrl-C exits at once.
pub(super) fn interrupt_flag() -> &'static AtomicBool {
    static FLAG: AtomicBool = AtomicBool::new(false);
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        // Without a handler (e.g. one was installed elsewhere) Ctrl-C keeps its default effect.
        let _ = ctrlc::set_handler(|| {
            if FLAG.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to quit now)");
        });
    });
    FLAG.store(false, Ordering::SeqCst);
    &FLAG
}

pub(super) fn progress_bar(len: u64, pos: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:28.cyan/blue}] {msg} · ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_position(pos);
    bar
}

/// What the summary at the end of a run reports, gathered from its events.
#[derive(Default)]
pub(super) struct Seen {
    /// The last evaluation.
    last_eval: Option<EvalReport>,
    /// Training seconds and pairs per second, when the run finished.
    finished: Option<(f64, f64)>,
    /// Time the steps waited for data.
    wait: DataWait,
    /// The device's memory after the step that used the most (CUDA only).
    peak_memory: Option<DeviceMemory>,
}

pub(super) fn on_event(event: &Event, bar: &ProgressBar, quiet: bool, seen: &mut Seen) {
    if let Event::Step(s) = event {
        seen.wait.add(s);
        if let Some(m) = s.device_memory
            && seen.peak_memory.is_none_or(|p| m.used_bytes > p.used_bytes)
        {
            seen.peak_memory = Some(m);
        }
    }
    match event {
        Event::RunStarted {
            step,
            model_parameters,
            objective,
            device,
            config,
        } => {
            let msg = format!(
                "training {} ({} parameters) with `{objective}` on {device}, batch {}, from step {step}",
                config.preset, model_parameters, config.train.batch_size
            );
            bar.println(&msg);
            if bar.is_hidden() && !quiet {
                eprintln!("{msg}");
            }
        }
        Event::Step(s) => {
            bar.set_position(s.step as u64);
            let pps = s.batch_size as f64 / s.seconds.max(1e-9);
            bar.set_message(format!(
                "loss {:.4} · lr {:.2e} · {pps:.0} pairs/s",
                s.loss, s.lr
            ));
            if bar.is_hidden() && !quiet && s.step % 100 == 0 {
                eprintln!(
                    "step {:>6}  loss {:.4}  lr {:.2e}  {pps:.0} pairs/s",
                    s.step, s.loss, s.lr
                );
            }
        }
        Event::Eval(r) => {
            let line = eval_line(r);
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            seen.last_eval = Some(r.clone());
        }
        Event::Paused { step, reason } => eprintln!("paused at step {step}: {reason}"),
        Event::RunFinished {
            train_seconds,
            pairs_per_second,
            ..
        } => seen.finished = Some((*train_seconds, *pairs_per_second)),
        Event::ObjectiveSwapped {
            step,
            from,
            to,
            params,
            restored,
            ..
        } => {
            let values: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{k} = {v:.4}"))
                .collect();
            let how = if restored.is_empty() {
                "new"
            } else {
                "restored"
            };
            print_line(
                bar,
                &format!(
                    "step {step}: objective {from} → {to} ({how}: {})",
                    values.join(", ")
                ),
            );
        }
        Event::Edited { step, command, .. } => {
            print_line(bar, &format!("step {step}: applied {command:?}"));
        }
        Event::CommandRejected {
            step,
            command,
            reason,
        } => print_line(bar, &format!("step {step}: rejected {command:?}: {reason}")),
        Event::Checkpoint { .. } | Event::Probe(_) => {}
    }
}

fn print_line(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

pub(super) fn summary(run_dir: &Path, step: usize, seen: &Seen, bad: Option<&BadSampleReport>) {
    let (eval, finished, wait) = (seen.last_eval.as_ref(), seen.finished, &seen.wait);
    eprintln!("\n== run {} · step {step} ==", run_dir.display());
    if let Some(r) = eval {
        eprintln!("{}", report_table(r));
    }
    if let Some((secs, pps)) = finished {
        eprintln!("training time {secs:.1} s · {pps:.0} pairs/s");
    }
    if let Some(line) = wait.line() {
        eprintln!("{line}");
    }
    if let Some(m) = seen.peak_memory {
        eprintln!("device memory at its peak: {m} (driver; every process on the device)");
    }
    // Datasets from files: how many samples were skipped and the first few reasons (also in
    // the `run_finished` line of metrics.jsonl).
    if let Some(bad) = bad {
        eprintln!("data: {}", bad.summary());
    }
    eprintln!(
        "files: {0}/config.toml {0}/tokenizer.json {0}/metrics.jsonl {0}/checkpoint/",
        run_dir.display()
    );
}
