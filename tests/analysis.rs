//! Analyses of trained models: the modality gap and the gap-shift sweep.

use crate::util::{tiny_config, tmpdir};
use workbench::data::Split;
use workbench::train::Trainer;

#[test]
fn gap_sweep_at_zero_reproduces_the_evaluation_and_closing_shrinks_the_gap() {
    let mut t = Trainer::new(tiny_config()).unwrap();
    for _ in 0..20 {
        t.step().unwrap();
    }
    let eval = t.evaluate(Split::Val).unwrap();
    let g = t.analyse_gap(Split::Val, &[0.0, 1.0, -1.0]).unwrap();
    assert_eq!(g.report.pairs, 64);
    assert!((g.report.centroid_distance - eval.modality_gap).abs() < 1e-5);
    let at0 = &g.sweep[0];
    assert!((at0.image_to_text_r1 - eval.image_to_text.r1).abs() < 1e-6);
    assert!((at0.text_to_image_r1 - eval.text_to_image.r1).abs() < 1e-6);
    assert!((at0.zero_shot.unwrap() - eval.zero_shot.unwrap().accuracy).abs() < 1e-6);
    assert!((at0.centroid_distance - eval.modality_gap).abs() < 1e-5);
    assert!(
        g.sweep[1].centroid_distance < 0.25 * eval.modality_gap,
        "{:?}",
        g.sweep
    );
    assert!(
        g.sweep[2].centroid_distance > eval.modality_gap,
        "{:?}",
        g.sweep
    );
    assert_eq!(g.report.gap_vector.len(), 32);
    assert_eq!(g.report.image_spectrum.len(), 32);
}

#[test]
fn the_gap_command_prints_and_writes_json() {
    let dir = tmpdir("cli-gap");
    let mut cfg = tiny_config();
    cfg.train.steps = 4;
    let mut t = Trainer::new(cfg).unwrap();
    t.set_run_dir(&dir);
    t.fit(|_| std::ops::ControlFlow::Continue(())).unwrap();
    let json = dir.join("gap.json");
    let argv = [
        "workbench",
        "gap",
        "--checkpoint",
        dir.to_str().unwrap(),
        "--deltas=-0.5,0,1",
        "--json",
        json.to_str().unwrap(),
    ];
    assert_eq!(
        viz::cli::main_with_args(argv),
        std::process::ExitCode::SUCCESS
    );
    let g: workbench::analysis::GapAnalysis =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(g.sweep.len(), 3);
    assert_eq!(g.sweep[0].delta, -0.5);
    let missing = viz::cli::main_with_args(["workbench", "gap", "--checkpoint", "/nonexistent"]);
    assert_eq!(missing, std::process::ExitCode::FAILURE);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_untrained_model_points_no_better_than_a_random_direction() {
    let t = Trainer::new(tiny_config()).unwrap();
    let r = t.pointing_game(Split::Val, 64).unwrap();
    assert_eq!(r.images, 64);
    assert!(r.mentions >= 64, "{r:?}");
    assert!(r.chance > 0.05 && r.chance < 0.6, "{r:?}");
    // Objects are salient: even random directions land on them more often than chance, and
    // an untrained model's words are no better than random directions.
    assert!(r.baseline > r.chance, "{r:?}");
    assert!(
        (r.accuracy - r.baseline).abs() < 0.2,
        "an untrained model's words should point like random directions: {r:?}"
    );
    let cli = viz::cli::main_with_args(["workbench", "point", "--checkpoint", "/nonexistent"]);
    assert_eq!(cli, std::process::ExitCode::FAILURE);
}
