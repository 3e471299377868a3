//! Unit tests of the app: the no-display path, fonts, saved state.
use super::*;
use std::ffi::OsString;

#[test]
fn no_display_is_an_error_that_points_to_the_command_line() {
    let message = launch(|_| None);
    if cfg!(all(
        unix,
        not(target_os = "macos"),
        not(target_os = "android")
    )) {
        let message = message.expect_err("no display must be an error");
        assert!(message.contains("workbench train"), "{message}");
        assert!(message.contains("DISPLAY"), "{message}");
    }
}

#[test]
fn a_display_variable_is_enough_to_try() {
    let x11 = |k: &str| (k == "DISPLAY").then(|| OsString::from(":0"));
    let wayland = |k: &str| (k == "WAYLAND_DISPLAY").then(|| OsString::from("wayland-0"));
    assert!(missing_display(x11).is_none());
    assert!(missing_display(wayland).is_none());
    let empty = |k: &str| (k == "DISPLAY").then(OsString::new);
    assert_eq!(
        missing_display(empty).is_some(),
        cfg!(all(
            unix,
            not(target_os = "macos"),
            not(target_os = "android")
        ))
    );
}

#[test]
fn every_symbol_the_app_writes_has_a_glyph() {
    let mut fonts =
        egui::epaint::text::Fonts::new(egui::epaint::text::TextOptions::default(), fonts());
    let symbols = "·×Δδτ–—‖…→−▶◀≤≥±";
    for family in [egui::FontFamily::Proportional, egui::FontFamily::Monospace] {
        let id = egui::FontId::new(14.0, family);
        for c in symbols.chars() {
            assert!(
                fonts.has_glyph(&id, c),
                "no glyph for {c:?} in {:?}",
                id.family
            );
        }
    }
}

#[test]
fn ui_state_survives_a_round_trip_and_old_fields_default() {
    let s = UiState {
        tab: Tab::Gap,
        word: Some("circle".into()),
        log_scale: true,
        ..UiState::default()
    };
    let text = serde_json::to_string(&s).unwrap_or_default();
    let back: UiState = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(back, s);
    let partial: UiState = serde_json::from_str(r#"{"tab":"Batch"}"#).unwrap_or_default();
    assert_eq!(partial.tab, Tab::Batch);
    assert!(partial.delta.abs() < f32::EPSILON);
}

#[test]
fn ranks_become_one_device_each() {
    assert_eq!(
        new_run::rank_devices("cpu", 3).unwrap_or_default(),
        ["cpu", "cpu", "cpu"]
    );
    assert_eq!(new_run::rank_devices("cpu", 0).unwrap_or_default(), ["cpu"]);
    // A GPU gets at most the GPUs from it on (none here, or no NCCL: one rank).
    let gpus = new_run::rank_devices("cuda:1", 2).unwrap_or_default();
    assert_eq!(gpus.first().map(String::as_str), Some("cuda:1"));
    assert!(gpus.len() <= 2);
    assert_eq!(
        new_run::rank_devices("cuda", 1).unwrap_or_default(),
        ["cuda:0"]
    );
    for bad in ["tpu", "cudax", "cuda:x"] {
        let e = new_run::rank_devices(bad, 1).map_err(|e| e.to_string());
        assert!(
            e.is_err_and(|e| e.contains("expected cpu or cuda:N")),
            "{bad}"
        );
    }
}
