//! The notebook helpers: what a cell's last expression prints (evcxr blocks), finished runs,
//! and a live session driven by blocking calls.

use crate::util::tiny_config;
use viz::notebook::{Live, Run, Table, compare, compare_runs, curves};
use viz::session::{Reply, Request};

/// Splits evcxr output into `(mime, payload)` blocks, checking the framing.
fn blocks(out: &str) -> Vec<(String, String)> {
    let mut rest = out;
    let mut found = Vec::new();
    while !rest.is_empty() {
        let body = rest
            .strip_prefix("EVCXR_BEGIN_CONTENT ")
            .unwrap_or_else(|| panic!("not a block: {rest:.80}"));
        let (mime, body) = body.split_once('\n').unwrap();
        let (payload, after) = body.split_once("\nEVCXR_END_CONTENT\n").unwrap();
        found.push((mime.to_string(), payload.to_string()));
        rest = after;
    }
    found
}

/// RFC 4648 base64, decoded independently of the library's encoder.
fn unbase64(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut held = 0;
    let mut out = Vec::new();
    for c in text.bytes().take_while(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        };
        bits = (bits << 6) | u32::from(v);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
    }
    out
}

#[test]
fn a_finished_run_shows_its_curves_and_compares_in_a_table() {
    let mut cfg = tiny_config();
    cfg.train.steps = 6;
    cfg.train.eval_every = 3;
    let run = Run::fit(cfg, "tiny <clip>").unwrap();
    assert_eq!(run.history.step(), 6);
    assert_eq!(run.history.evals.len(), 2, "at step 3 and at the end");
    assert!(run.history.finished);

    let out = run.history.evcxr_blocks();
    let parts = blocks(&out);
    assert_eq!(parts[0].0, "image/png");
    let png = image::load_from_memory(&unbase64(&parts[0].1)).unwrap();
    assert_eq!((png.width(), png.height()), (600, 340));
    assert_eq!(parts[1].0, "text/plain");
    assert!(
        parts[1].1.starts_with("clip: step 6/6, loss "),
        "{}",
        parts[1].1
    );
    assert!(parts[1].1.ends_with("(finished)"));

    let table = Table::evals(&[(run.name.as_str(), run.last_eval()), ("none", None)]);
    let parts = blocks(&table.evcxr_blocks());
    assert_eq!(parts[0].0, "text/html");
    assert!(parts[0].1.contains("<td>tiny &lt;clip&gt;</td><td>6</td>"));
    assert!(
        parts[0]
            .1
            .contains("<td>none</td><td>not evaluated</td><td></td>")
    );
    assert_eq!(parts[1].0, "text/plain");
    assert!(
        parts[1]
            .1
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("tiny <clip>  6 ")
    );

    let f = curves(&run.history, &["loss", "eval:i2t_r1", "no such curve"]).unwrap();
    assert_eq!(f.size(), (600, 340));
    let f = compare(&[("a", &run.history), ("b", &run.history)], "loss", 3).unwrap();
    assert_eq!(f.title(), "loss (mean of 3 points)");

    let runs = [run];
    let table = Table::runs(&runs);
    assert_eq!(table.header.last().unwrap(), "time");
    assert_eq!(table.rows[0].len(), table.header.len());
    assert!(table.rows[0].last().unwrap().ends_with(" s"));
    let f = compare_runs(&runs, "probe:i2t_r1", 1).unwrap();
    assert_eq!(f.size(), (600, 340));
}

#[test]
fn a_live_session_steps_swaps_and_answers_between_cells() {
    let mut cfg = tiny_config();
    cfg.train.steps = 1_000;
    let mut live = Live::start(cfg, "live").unwrap();
    assert_eq!(live.step(2).unwrap(), 2);
    live.swap("siglip").unwrap();
    assert_eq!(live.step(1).unwrap(), 3);
    assert!(live.swap("no such objective").is_err());
    let history = live.snapshot();
    assert_eq!(history.objective, "siglip");
    assert_eq!(history.markers.len(), 1, "{:?}", history.markers);

    live.play();
    assert!(live.wait_for(5).unwrap() >= 5);
    let paused_at = live.pause().unwrap();
    assert!(paused_at >= 5);
    assert!(
        live.wait_for(paused_at + 50).is_err(),
        "paused runs do not advance"
    );

    match live.ask(Request::Batch { n: 8 }).unwrap() {
        Reply::Batch(b) => assert_eq!(b.images.len(), 8),
        other => panic!("{other:?}"),
    }
    let bad = Request::Align {
        split: workbench::data::Split::Val,
        index: 1_000_000,
        text: None,
    };
    assert!(live.ask(bad).is_err());
    let f = live.curves(&["loss", "probe:i2t_r1"]).unwrap();
    assert!(f.title().starts_with("siglip — 2: "), "{}", f.title());
    assert!(format!("{live:?}").starts_with("Live(\"live\", siglip: step "));
}

#[test]
fn a_live_session_on_two_ranks_steps_swaps_and_answers() {
    let mut cfg = tiny_config();
    cfg.train.steps = 100;
    let mut live = Live::start_on(cfg, &["cpu", "cpu"], "two ranks").unwrap();
    assert_eq!(live.session().devices(), ["cpu", "cpu"]);
    assert_eq!(live.step(2).unwrap(), 2);
    live.swap("cloob").unwrap();
    assert_eq!(live.step(1).unwrap(), 3);
    let history = live.snapshot();
    assert_eq!(history.objective, "cloob");
    assert_eq!(history.device, "2 ranks: cpu, cpu");
    match live.ask(Request::Batch { n: 8 }).unwrap() {
        Reply::Batch(b) => assert_eq!(b.images.len(), 8),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_run_on_two_ranks_finishes_like_one_device() {
    let mut cfg = tiny_config();
    cfg.train.steps = 4;
    let one = Run::fit(cfg.clone(), "one").unwrap();
    let two = Run::fit_on(cfg, &["cpu", "cpu"], "two").unwrap();
    assert!(two.history.finished);
    assert_eq!(two.history.device, "2 ranks: cpu, cpu");
    assert_eq!(two.trainer.completed_steps(), 4);
    let (a, b) = (&two.history.steps, &one.history.steps);
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-5 * y.loss.abs(),
            "{x:?} vs {y:?}"
        );
    }
    let (ea, eb) = (two.last_eval().unwrap(), one.last_eval().unwrap());
    let gap = (ea.modality_gap - eb.modality_gap).abs();
    assert!(gap <= 1e-4, "final evaluations differ: gap {gap:e}");
}
