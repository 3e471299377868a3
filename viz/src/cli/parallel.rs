//! `workbench train --devices cpu,cpu`: the same run, one rank per device
//! ([`workbench::parallel::DataParallel`]). Rank 0 writes the run directory exactly as a
//! single-process run does, so `--resume`, `eval`, `inspect` and `export` read it alike.

use super::train::{Console, NewRun, run_dir_of};
use super::{TrainArgs, apply_overrides};
use anyhow::{Context as _, Result, bail};
use workbench::config::parse_device;
use workbench::parallel::DataParallel;
use workbench::train::Trainer;

pub(super) fn train(a: &TrainArgs) -> Result<()> {
    let ddp = DataParallel::new(&a.devices).context("--devices")?;
    let (run_dir, fresh) = if let Some(dir) = &a.resume {
        (run_dir_of(dir), None)
    } else {
        let run = NewRun::create(a, Some(&a.devices[0]))?;
        (run.dir.clone(), Some(run))
    };
    let build = |rank: usize, device: &str| -> workbench::Result<Trainer> {
        let mut trainer = match &fresh {
            Some(run) => run.trainer(device, rank == 0)?,
            None => Trainer::resume_with(&run_dir, Some(parse_device(device)?), |c| {
                apply_overrides(c, a);
            })?,
        };
        if rank == 0 {
            trainer.set_run_dir(&run_dir);
        }
        Ok(trainer)
    };
    let (mut console, commands) = Console::new(a, &run_dir)?;
    let run = ddp.fit_live(build, &commands, |event| console.event(event));
    let run = run.inspect_err(|_| console.abandon())?;
    let Some(rank0) = run.trainers.first() else {
        bail!("data-parallel run returned no trainer");
    };
    eprintln!("{} ranks on {}", ddp.world_size(), ddp.devices().join(", "));
    console.finish(&run_dir, rank0, run.outcome)
}
