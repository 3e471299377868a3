//! Opening the window: the fonts, the display check, eframe's native runner, and the message
//! for a machine that cannot show a window.

use std::ffi::OsString;

use super::{APP_NAME, WorkbenchApp};

/// The app's fonts: egui's built-in faces, with the monospace face as a fallback for the
/// symbols the text face lacks (arrows, triangles). Installed by [`WorkbenchApp::new`] and at
/// the first frame otherwise; install them at creation to have them from the first frame.
pub fn fonts() -> egui::FontDefinitions {
    let mut f = egui::FontDefinitions::default();
    if let Some(family) = f.families.get_mut(&egui::FontFamily::Proportional) {
        let at = family.len().min(1);
        family.insert(at, "Hack".to_owned());
    }
    f
}

/// What to tell someone whose machine cannot open a window.
fn no_window(why: &str) -> String {
    format!(
        "cannot open the workbench window: {why}.\n\
         Without a display, train from the command line instead: `workbench train` \
         (from the source tree: `cargo run --release -- train`); `workbench --help` lists \
         every command."
    )
}

/// Why no window can open, judging by the environment (`var` looks a variable up): on Linux
/// and the BSDs a window needs `DISPLAY` (X11) or `WAYLAND_DISPLAY`.
pub fn missing_display(var: impl Fn(&str) -> Option<OsString>) -> Option<String> {
    let set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
    let needs_display = cfg!(all(
        unix,
        not(target_os = "macos"),
        not(target_os = "android")
    ));
    (needs_display && !set("DISPLAY") && !set("WAYLAND_DISPLAY"))
        .then(|| no_window("no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"))
}

/// Opens the window and runs the app until it is closed. `var` looks environment variables
/// up (pass `|k| std::env::var_os(k)`). Without a display, or when the window or its OpenGL
/// context cannot be created, returns the message to print, which points to `workbench train`.
pub fn launch(var: impl Fn(&str) -> Option<OsString>) -> Result<(), String> {
    if let Some(message) = missing_display(var) {
        return Err(message);
    }
    run_native()
}

/// Runs eframe (no environment check): errors become the message to print.
pub fn run_native() -> Result<(), String> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title(APP_NAME)
            .with_inner_size([1280.0, 820.0])
            .with_min_inner_size([720.0, 480.0]),
        ..eframe::NativeOptions::default()
    };
    eframe::run_native(
        APP_NAME,
        options,
        Box::new(|cc| Ok(Box::new(WorkbenchApp::new(cc)))),
    )
    .map_err(|e| no_window(&e.to_string()))
}
