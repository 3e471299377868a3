//! Frame time of the desktop app while it trains: drives the real app headless (no window,
//! no renderer) through every panel with training running, and prints the median and 95th
//! percentile of the UI pass (`WorkbenchApp::show` inside `egui::Context::run_ui`, which is
//! what must stay under 16 ms for 60 frames per second) and of tessellation, per panel.
//!
//! Training first runs to `WARMUP_STEPS` (so the curves hold a realistic history); each panel
//! is then shown until its first answer arrived, and measured over `FRAMES_PER_PANEL` frames.
//!
//! ```text
//! cargo run --release -p viz --example frame_time [-- FRAMES_PER_PANEL [WARMUP_STEPS]]
//! ```

use std::time::{Duration, Instant};

use viz::app::{Tab, WorkbenchApp};
use workbench::config::RunConfig;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(std::env::args()
            .nth(i)
            .map(|a| a.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (frames, warmup) = (arg(1, 150)?, arg(2, 500)?);
    let cfg = RunConfig::preset("tiny")?;
    let mut app = WorkbenchApp::with_config(cfg)?;
    let ctx = egui::Context::default();
    let input = || egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 820.0),
        )),
        ..egui::RawInput::default()
    };
    let frame = |app: &mut WorkbenchApp| -> (f64, f64) {
        let t = Instant::now();
        let out = ctx.run_ui(input(), |ui| app.show(ui));
        let ui_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let _ = ctx.tessellate(out.shapes, out.pixels_per_point);
        (ui_ms, t.elapsed().as_secs_f64() * 1e3)
    };
    // Let the session start, then train.
    frame(&mut app);
    if let Some(s) = app.session() {
        s.send(viz::session::Request::Play);
    }
    let start = Instant::now();
    while app.session().map_or(0, viz::session::Session::step) < warmup {
        frame(&mut app);
        std::thread::sleep(Duration::from_millis(50));
        anyhow::ensure!(
            start.elapsed() < Duration::from_mins(30),
            "training did not reach step {warmup} in 30 minutes"
        );
    }
    println!(
        "trained to step {warmup} in {:.0} s; now {frames} frames per panel at ~60 frames/s, \
         tiny preset training in the background",
        start.elapsed().as_secs_f64()
    );
    println!(
        "{:<14} {:>10} {:>10} {:>12} {:>12}",
        "panel", "ui median", "ui p95", "tess median", "tess p95"
    );
    let mut all = Vec::new();
    for tab in Tab::ALL {
        app.state_mut().tab = tab;
        let shown = Instant::now();
        frame(&mut app);
        while app.awaiting() && shown.elapsed() < Duration::from_mins(1) {
            std::thread::sleep(Duration::from_millis(16));
            frame(&mut app);
        }
        let (mut ui_ms, mut tess_ms) = (Vec::new(), Vec::new());
        for _ in 0..frames {
            let start = Instant::now();
            let (u, t) = frame(&mut app);
            ui_ms.push(u);
            tess_ms.push(t);
            if let Some(rest) = Duration::from_millis(16).checked_sub(start.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        all.extend_from_slice(&ui_ms);
        ui_ms.sort_by(f64::total_cmp);
        tess_ms.sort_by(f64::total_cmp);
        println!(
            "{:<14} {:>7.2} ms {:>7.2} ms {:>9.2} ms {:>9.2} ms",
            tab.label(),
            percentile(&ui_ms, 0.5),
            percentile(&ui_ms, 0.95),
            percentile(&tess_ms, 0.5),
            percentile(&tess_ms, 0.95)
        );
    }
    all.sort_by(f64::total_cmp);
    let step = app.session().map_or(0, viz::session::Session::step);
    println!(
        "all panels     {:>7.2} ms {:>7.2} ms   (max {:.2} ms; training reached step {step})",
        percentile(&all, 0.5),
        percentile(&all, 0.95),
        all.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(s) = app.session() {
        s.send(viz::session::Request::Pause);
    }
    Ok(())
}
