#![allow(clippy::unwrap_used)]
//! Times the parts of a training step (data, forward, loss, backward, optimizer).
use std::time::Instant;
use workbench::config::RunConfig;
use workbench::loss::LossInputs;
use workbench::model::Capture;
use workbench::train::Trainer;

fn main() -> workbench::Result<()> {
    let mut cfg = RunConfig::preset(&std::env::args().nth(1).unwrap_or("tiny".into()))?;
    if let Some(b) = std::env::args().nth(2) {
        cfg.train.batch_size = b.parse().unwrap();
    }
    let mut tr = Trainer::new(cfg)?;
    for _ in 0..3 {
        tr.step()?;
    }
    let n = 10;
    let (mut td, mut tf, mut tb, mut ts) = (0.0, 0.0, 0.0, 0.0);
    for _ in 0..n {
        let t = Instant::now();
        let batch = tr.next_batch()?;
        td += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let emb = tr.model().forward(&batch, Capture::NONE)?;
        let out = tr
            .objective()
            .forward(&LossInputs::new(&emb.image.embedding, &emb.text.embedding))?;
        let _ = out.loss.to_scalar::<f32>()?;
        tf += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let g = out.loss.backward()?;
        tb += t.elapsed().as_secs_f64();
        drop(g);
        let t = Instant::now();
        tr.step_on(&batch)?;
        ts += t.elapsed().as_secs_f64();
    }
    let b = tr.config().train.batch_size as f64;
    println!(
        "per step: data {:.1} ms, forward {:.1} ms, backward {:.1} ms, full step {:.1} ms -> {:.0} pairs/s",
        td / n as f64 * 1e3,
        tf / n as f64 * 1e3,
        tb / n as f64 * 1e3,
        ts / n as f64 * 1e3,
        b / (ts / n as f64)
    );
    Ok(())
}
