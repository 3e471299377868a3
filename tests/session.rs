//! The interactive session: a trainer on a background thread driven by requests, with a
//! UI-free history (what the desktop app shows).

use crate::util::tiny_config;
use std::time::{Duration, Instant};
use viz::session::{Reply, Request, Session};
use workbench::control::Command;
use workbench::data::Split;
use workbench::loss::LossConfig;

/// Polls until `done` holds, collecting replies; fails after 60 s.
pub(crate) fn wait_for(
    s: &mut Session,
    what: &str,
    mut done: impl FnMut(&Session, &[Reply]) -> bool,
) -> Vec<Reply> {
    let start = Instant::now();
    let mut replies = Vec::new();
    loop {
        replies.extend(s.poll());
        if done(s, &replies) {
            return replies;
        }
        assert!(
            start.elapsed() < Duration::from_mins(1),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn play_pause_step_swap_inspect_and_fork() {
    let mut cfg = tiny_config();
    cfg.train.steps = 400;
    cfg.train.probe_every = 10;
    let mut s = Session::start(cfg, "main").unwrap();
    assert_eq!(s.step(), 0);
    assert_eq!(s.history().total_steps, 400);

    // Step once while paused.
    s.send(Request::Step);
    wait_for(&mut s, "one step", |s, _| s.step() == 1);

    s.send(Request::Play);
    wait_for(&mut s, "steps while playing", |s, _| {
        s.step() >= 5 && s.playing()
    });

    // A swap while running: a marker, the objective, a probe right after.
    s.send(Request::Control(Command::Swap {
        loss: LossConfig::by_name("siglip").unwrap(),
    }));
    wait_for(&mut s, "the swap", |s, _| {
        s.history()
            .markers
            .iter()
            .any(|m| m.label.contains("siglip"))
            && s.history().objective == "siglip"
    });

    // Inspection is answered between steps while training goes on.
    s.send(Request::Align {
        split: Split::Val,
        index: 2,
        text: Some("a red circle".into()),
    });
    s.send(Request::Attention {
        split: Split::Val,
        index: 2,
    });
    s.send(Request::Batch { n: 8 });
    let replies = wait_for(&mut s, "inspection replies", |_, r| r.len() >= 3);
    assert!(
        replies
            .iter()
            .any(|r| matches!(r, Reply::Alignment(a) if a.alignment.text == "a red circle"))
    );
    assert!(
        replies
            .iter()
            .any(|r| matches!(r, Reply::Attention(a) if a.view.vision.layers == 2))
    );
    assert!(
        replies
            .iter()
            .any(|r| matches!(r, Reply::Batch(b) if b.similarity.n == 8 && b.images.len() == 8))
    );

    // Pause: the step count stops.
    s.send(Request::Pause);
    wait_for(&mut s, "the pause", |s, _| !s.playing());
    std::thread::sleep(Duration::from_millis(200));
    s.poll();
    let paused_at = s.step();
    std::thread::sleep(Duration::from_millis(300));
    s.poll();
    assert_eq!(s.step(), paused_at, "steps advanced while paused");

    // A bad request is an error reply, never a panic; the session goes on.
    s.send(Request::Attention {
        split: Split::Val,
        index: 100_000,
    });
    let r = wait_for(&mut s, "the error", |_, r| !r.is_empty());
    assert!(
        matches!(&r[0], Reply::Error(e) if e.contains("out of range")),
        "{r:?}"
    );

    // Fork: the copy resumes at the same step and continues exactly like the original.
    s.send(Request::Fork);
    let r = wait_for(&mut s, "the fork", |_, r| !r.is_empty());
    let Reply::Forked(dir) = &r[0] else {
        panic!("{r:?}")
    };
    let mut fork = Session::resume(dir, "fork").unwrap();
    assert_eq!(fork.step(), paused_at);
    s.send(Request::Step);
    fork.send(Request::Step);
    wait_for(&mut s, "a step of the original", |s, _| {
        s.step() == paused_at + 1
    });
    wait_for(&mut fork, "a step of the fork", |f, _| {
        f.step() == paused_at + 1
    });
    let a = s.history().steps.last().unwrap();
    let b = fork.history().steps.last().unwrap();
    assert_eq!((a.loss, &a.objective), (b.loss, &b.objective));

    // Curves: every advertised series has points.
    let h = s.history();
    for name in h.series_names() {
        assert!(!h.series(&name).is_empty(), "{name}");
    }
    assert!(h.series_names().iter().any(|n| n == "probe:i2t_r1"));
    assert_eq!(h.series("loss").len(), h.steps.len());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_session_plays_to_the_end_and_stops() {
    let mut cfg = tiny_config();
    cfg.train.steps = 6;
    let mut s = Session::start(cfg, "short").unwrap();
    s.send(Request::Play);
    wait_for(&mut s, "the end", |s, _| s.history().finished);
    assert_eq!(s.step(), 6);
    assert_eq!(s.history().evals.len(), 1);
    // Playing a finished run does nothing.
    s.send(Request::Play);
    std::thread::sleep(Duration::from_millis(100));
    s.poll();
    assert_eq!(s.step(), 6);
    assert!(!s.playing());
}

/// The losses of a session's steps so far.
pub(crate) fn losses(s: &Session) -> Vec<f32> {
    s.history().steps.iter().map(|x| x.loss).collect()
}

/// Sends `requests` one after another, each answered before the next (paused, `Step` and
/// `Control` are handled in order), and waits for `steps` steps.
pub(crate) fn drive(s: &mut Session, requests: &[Request], steps: usize) -> Vec<Reply> {
    for r in requests {
        s.send(r.clone());
    }
    wait_for(s, "the scripted steps", |s, _| s.step() >= steps)
}

#[test]
fn a_session_on_two_ranks_trains_like_one_device_and_forks_onto_both() {
    let mut cfg = tiny_config();
    cfg.train.steps = 50;
    cfg.train.probe_every = 0;
    let swap = Request::Control(Command::Swap {
        loss: LossConfig::by_name("siglip").unwrap(),
    });
    let script = [
        Request::Step,
        Request::Step,
        swap,
        Request::Attention {
            split: Split::Val,
            index: 3,
        },
        Request::Step,
        Request::Step,
    ];
    let mut one = Session::start(cfg.clone(), "one").unwrap();
    drive(&mut one, &script, 4);
    let mut two = Session::start_on(cfg.clone(), &["cpu", "cpu"], "two").unwrap();
    assert_eq!(two.devices(), ["cpu", "cpu"]);
    assert_eq!(two.history().device, "2 ranks: cpu, cpu");
    assert!(two.history().log[0].ends_with("on 2 ranks: cpu, cpu"));
    let replies = drive(&mut two, &script, 4);
    assert!(
        replies
            .iter()
            .any(|r| matches!(r, Reply::Attention(a) if a.sample == (Split::Val, 3))),
        "rank 0 answers inspections: {replies:?}"
    );
    assert_eq!(two.history().objective, "siglip");
    let (a, b) = (losses(&two), losses(&one));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * y.abs(), "{a:?} vs {b:?}");
    }

    // A fork of a two-rank run continues on two ranks, exactly like its parent.
    two.send(Request::Fork);
    let r = wait_for(&mut two, "the fork", |_, r| !r.is_empty());
    let Reply::Forked(dir) = &r[0] else {
        panic!("{r:?}")
    };
    let mut fork = Session::resume_on(dir, two.devices(), "fork").unwrap();
    assert_eq!((fork.step(), fork.devices()), (4, two.devices()));
    drive(&mut two, &[Request::Step], 5);
    drive(&mut fork, &[Request::Step], 5);
    assert_eq!(losses(&fork)[0], losses(&two)[4]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_session_refuses_ranks_that_do_not_split_the_batch() {
    let cfg = tiny_config(); // batch 16
    let e = Session::start_on(cfg, &["cpu", "cpu", "cpu"], "three")
        .err()
        .unwrap();
    let e = format!("{e:#}");
    assert!(
        e.contains("train.batch_size") && e.contains("3 ranks"),
        "{e}"
    );
}
