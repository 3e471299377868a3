//! `workbench train --devices cpu,cpu`: the same run, one rank per device
//! ([`workbench::parallel::DataParallel`]). Rank 0 writes the run directory exactly as a
//! single-process run does, so `--resume`, `eval`, `inspect` and `export` read it alike.

use super::train::{NewRun, Seen, SwapSchedule, interrupt_flag, on_event, progress_bar, summary};
use super::{TrainArgs, apply_overrides};
use anyhow::{Context as _, Result, bail};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::Ordering;
use workbench::config::parse_device;
use workbench::events::JsonlWriter;
use workbench::parallel::DataParallel;
use workbench::train::{FitOutcome, Trainer};

pub(super) fn train(a: &TrainArgs) -> Result<()> {
    let ddp = DataParallel::new(&a.devices).context("--devices")?;
    let (run_dir, fresh) = match &a.resume {
        Some(dir) if dir.join("state.json").is_file() => (
            dir.parent().map_or_else(|| dir.clone(), Path::to_path_buf),
            None,
        ),
        Some(dir) => (dir.clone(), None),
        None => {
            let run = NewRun::create(a, Some(&a.devices[0]))?;
            (run.dir.clone(), Some(run))
        }
    };
    let build = |rank: usize, device: &str| -> workbench::Result<Trainer> {
        let mut trainer = match (&a.resume, &fresh) {
            (Some(dir), _) => {
                Trainer::resume_with(dir, Some(parse_device(device)?), |c| apply_overrides(c, a))?
            }
            (None, Some(run)) => run.trainer(device, rank == 0)?,
            (None, None) => {
                return Err(workbench::Error::Data(
                    "a new run without a configuration".into(),
                ));
            }
        };
        if rank == 0 {
            trainer.set_run_dir(&run_dir);
        }
        Ok(trainer)
    };
    let mut log = JsonlWriter::append(&run_dir.join("metrics.jsonl"))?;
    let steps = match &fresh {
        Some(run) => run.cfg.train.steps,
        None => a.steps.unwrap_or(0),
    };
    let bar = progress_bar(steps as u64, 0, a.quiet);
    let mut seen = Seen::default();
    let mut write_err = None;
    let interrupted = interrupt_flag();
    let (commands, received) = std::sync::mpsc::channel();
    let mut swaps = SwapSchedule::new(&a.swap, commands);
    let run = ddp.fit_live(build, &received, |event| {
        if let Err(e) = log.write(event) {
            write_err = Some(e);
            return ControlFlow::Break(());
        }
        if let workbench::events::Event::RunStarted { config, step, .. } = event {
            bar.set_length(config.train.steps as u64);
            bar.set_position(*step as u64);
            // Swaps due at the starting step go before its first step, as in one process.
            if let Err(e) = swaps.due(*step) {
                bar.println(format!("cannot swap: {e:#}"));
            }
        }
        swaps.on_event(event, &bar);
        on_event(event, &bar, a.quiet, &mut seen);
        if interrupted.load(Ordering::SeqCst) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let run = run?;
    let Some(rank0) = run.trainers.first() else {
        bail!("data-parallel run returned no trainer");
    };
    eprintln!("{} ranks on {}", ddp.world_size(), ddp.devices().join(", "));
    summary(
        &run_dir,
        rank0.completed_steps(),
        &seen,
        rank0.dataset().bad_samples().as_ref(),
    );
    outcome(run.outcome, rank0.completed_steps(), &run_dir)
}

/// The command's result: `Ok` when the schedule finished, the pause reason otherwise.
fn outcome(outcome: FitOutcome, step: usize, run_dir: &Path) -> Result<()> {
    match outcome {
        FitOutcome::Finished => Ok(()),
        FitOutcome::Paused(reason) => bail!(
            "training paused at step {step}: {reason}\n  last good state: {}",
            run_dir.join("checkpoint").display()
        ),
    }
}
