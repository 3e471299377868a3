//! The desktop workbench: train a model and watch it learn, in a window.
//!
//! `cargo run --release` (the `workbench` binary without arguments) opens it and starts the
//! tiny preset on the built-in `shapes` set. A left panel controls the run (play, pause, step,
//! the objective, the temperature, a new run, a fork); the central area shows one of six
//! panels: live curves, the batch similarity matrix, attention maps, word-to-patch alignment,
//! the modality gap and the list of runs.
//!
//! Training runs on a background thread owned by a [`Session`]. The UI thread never touches
//! a tensor and never waits: every frame it drains each session's messages
//! ([`Session::poll`]), draws from the plain-data [`RunHistory`](crate::session::RunHistory),
//! and asks for inspections with [`Request`]s whose answers arrive in later frames. The
//! training thread wakes the UI when it has news.
//!
//! What the user chose (panel, sample, word, log scale, the new-run settings, …) is a
//! [`UiState`], saved between launches.

mod alignment;
mod attention;
mod batch;
mod control;
mod curves;
mod gap;
mod new_run;
mod paint;
mod run;
mod runs;
mod window;

use serde::{Deserialize, Serialize};
use workbench::analysis::Direction;
use workbench::config::RunConfig;
use workbench::data::ShapesConfig;
use workbench::model::Precision;

use crate::session::{Request, Session};
use run::Run;
pub use window::{fonts, launch, missing_display, run_native};

const NO_RUN: &str = "No run. Choose the settings on the left and press Reset.";

/// The window title and the key under which eframe stores the app's settings.
pub const APP_NAME: &str = "Contrastive Workbench";

/// The central area's panels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tab {
    /// Loss, terms, learning rate, gradient norm, temperature, probe and evaluation curves.
    #[default]
    Curves,
    /// A batch's similarity matrix, per-pair loss and likely false negatives.
    Batch,
    /// Attention maps of both towers.
    Attention,
    /// Where each word of a caption lands on the image; the pointing game.
    Alignment,
    /// The modality gap: joint PCA and the gap shift.
    Gap,
    /// The runs (forks and resets), which one the panels show.
    Runs,
}

impl Tab {
    /// Every panel, in the order of the tab bar.
    pub const ALL: [Tab; 6] = [
        Tab::Curves,
        Tab::Batch,
        Tab::Attention,
        Tab::Alignment,
        Tab::Gap,
        Tab::Runs,
    ];

    /// The tab's label.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Curves => "Curves",
            Tab::Batch => "Batch",
            Tab::Attention => "Attention",
            Tab::Alignment => "Alignment",
            Tab::Gap => "Modality gap",
            Tab::Runs => "Runs",
        }
    }
}

/// Everything the user chose that outlives a launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "each is one independent checkbox of the app"
)]
pub struct UiState {
    /// The panel shown in the central area.
    pub tab: Tab,
    /// Validation sample inspected by the attention and alignment panels.
    pub sample: usize,
    /// The word whose map the alignment panel shows (`None`: the whole caption).
    pub word: Option<String>,
    /// Text typed into the alignment panel (empty: the sample's caption).
    pub align_text: String,
    /// Curves on a log10 scale.
    pub log_scale: bool,
    /// Overlay the loss of the other runs in the curves panel.
    pub overlay_runs: bool,
    /// Attention panel: the text tower instead of the image tower.
    pub text_tower: bool,
    /// Attention panel: the layer (`None`: rollout over all layers).
    pub layer: Option<usize>,
    /// Attention panel: the head (`None`: mean over heads).
    pub head: Option<usize>,
    /// Modality-gap panel: the gap shift δ.
    pub delta: f32,
    /// Re-request inspections every this many steps while training (0: only on demand).
    pub refresh_every: usize,
    /// New run: preset name.
    pub preset: String,
    /// New run: pairs per batch.
    pub batch_size: usize,
    /// New run: micro-batches each step's batch passes through the model in
    /// (`train.micro_batches`; 1: the whole batch at once).
    pub micro_batches: usize,
    /// The micro-batches to set on the active run.
    pub live_micro_batches: usize,
    /// New run: peak learning rate.
    pub lr: f64,
    /// New run: seed.
    pub seed: u64,
    /// New run: optimizer steps.
    pub steps: usize,
    /// New run: the device (`cpu`, `cuda:N`).
    pub device: String,
    /// New run: data-parallel ranks — `cpu` that many times, or that many GPUs from the
    /// chosen one on (1: no data parallelism).
    pub ranks: usize,
    /// New run, several ranks: each computes the loss of its own rows (`train.local_loss`).
    pub local_loss: bool,
    /// New run: f32, or bf16 matrix products with f32 master weights.
    pub precision: Precision,
    /// New run: the synthetic dataset.
    pub data: ShapesConfig,
    /// New run: the held-out pairs as typed (parsed into `data.holdout`).
    pub holdout_text: String,
    /// Temperature to set.
    pub tau: f64,
    /// Temperature clamp range `[min, max]`.
    pub tau_range: [f64; 2],
    /// Logit bias to set.
    pub bias: f64,
    /// Logit bias clamp range `[min, max]`.
    pub bias_range: [f64; 2],
    /// The objective the temperature and bias controls act on (in a sum).
    pub param_target: String,
    /// Term weights being edited, by part (a sum objective).
    pub weights: std::collections::BTreeMap<String, f64>,
    /// The objective to add as a term.
    pub term: String,
    /// Its weight.
    pub term_weight: f64,
    /// Batch panel: the retrieval query (an image row or a caption column).
    pub batch_query: usize,
    /// Batch panel: which way to retrieve.
    pub batch_direction: Direction,
}

impl Default for UiState {
    fn default() -> Self {
        let cfg = RunConfig::default();
        Self::for_config(&cfg)
    }
}

impl UiState {
    /// Defaults whose new-run settings are those of `cfg`.
    pub fn for_config(cfg: &RunConfig) -> Self {
        Self {
            tab: Tab::Curves,
            sample: 0,
            word: None,
            align_text: String::new(),
            log_scale: false,
            overlay_runs: true,
            text_tower: false,
            layer: None,
            head: None,
            delta: 0.0,
            refresh_every: 250,
            preset: cfg.preset.clone(),
            batch_size: cfg.train.batch_size,
            micro_batches: cfg.train.micro_batches,
            live_micro_batches: 2,
            lr: cfg.train.lr,
            seed: cfg.train.seed,
            steps: cfg.train.steps,
            device: cfg.train.device.clone(),
            ranks: 1,
            local_loss: cfg.train.local_loss,
            precision: cfg.train.precision,
            data: cfg.data.clone(),
            holdout_text: cfg.data.holdout.join(", "),
            tau: 0.07,
            tau_range: [0.01, 1.0],
            bias: -10.0,
            bias_range: [-20.0, 5.0],
            param_target: String::new(),
            weights: std::collections::BTreeMap::new(),
            term: String::new(),
            term_weight: 0.5,
            batch_query: 0,
            batch_direction: Direction::ImageToText,
        }
    }
}

/// The desktop app: the runs, the active one, and the user's choices.
pub struct WorkbenchApp {
    state: UiState,
    /// The configuration a reset starts from when the chosen preset is its preset.
    base: RunConfig,
    runs: Vec<Run>,
    active: usize,
    /// Messages that belong to no run (a session that failed to start, a fork that failed).
    messages: Vec<String>,
    ctx: Option<egui::Context>,
    /// Whether [`fonts`] were installed.
    fonts_set: bool,
    /// Marker labels the curves panel drew in the last frame.
    drawn_markers: Vec<String>,
    /// The curves panel's charts, rebuilt when a history grows.
    curves: curves::Cache,
    /// Sessions being built on helper threads (building one takes a moment).
    starting: Vec<Starting>,
    /// Run counter, for names.
    started: usize,
}

/// A session being built off the UI thread.
struct Starting {
    name: String,
    /// The run it replaces (a reset), or `None` to add it (a fork).
    replaces: Option<usize>,
    result: std::sync::mpsc::Receiver<anyhow::Result<Session>>,
    /// Play as soon as it is ready.
    play: bool,
}

impl WorkbenchApp {
    /// The app as launched from the desktop: settings restored from eframe's storage, a run
    /// of the remembered preset started and playing.
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let state: UiState = cc
            .storage
            .and_then(|s| eframe::get_value(s, eframe::APP_KEY))
            .unwrap_or_default();
        let mut app = Self::empty(RunConfig::default(), state);
        cc.egui_ctx.set_fonts(fonts());
        app.fonts_set = true;
        app.ctx = Some(cc.egui_ctx.clone());
        app.reset(true);
        app
    }

    /// The app with one paused run of `cfg` and default settings, ignoring any stored state
    /// (for tests and benchmarks).
    pub fn with_config(cfg: RunConfig) -> anyhow::Result<Self> {
        let state = UiState::for_config(&cfg);
        let mut app = Self::empty(cfg.clone(), state);
        let session = Session::start(cfg, app.next_name())?;
        app.runs.push(Run::new(session));
        Ok(app)
    }

    fn empty(base: RunConfig, state: UiState) -> Self {
        Self {
            state,
            base,
            runs: Vec::new(),
            active: 0,
            messages: Vec::new(),
            ctx: None,
            fonts_set: false,
            drawn_markers: Vec::new(),
            curves: curves::Cache::default(),
            starting: Vec::new(),
            started: 0,
        }
    }

    fn next_name(&mut self) -> String {
        self.started += 1;
        format!("run {}", self.started)
    }

    /// The user's choices.
    pub fn state(&self) -> &UiState {
        &self.state
    }

    /// The user's choices, to change them as a click would.
    pub fn state_mut(&mut self) -> &mut UiState {
        &mut self.state
    }

    /// Every run, in the order of the runs panel.
    pub fn sessions(&self) -> Vec<&Session> {
        self.runs.iter().map(|r| &r.session).collect()
    }

    /// The run the panels show.
    pub fn session(&self) -> Option<&Session> {
        self.runs.get(self.active).map(|r| &r.session)
    }

    /// Index of the run the panels show.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Whether the active run owes an answer to an inspection request.
    pub fn awaiting(&self) -> bool {
        self.runs.get(self.active).is_some_and(|r| {
            r.batch.pending()
                || r.attention.pending()
                || r.alignment.pending()
                || r.pointing.pending()
                || r.gap.pending()
                || r.fork_pending
        })
    }

    /// Marker labels the curves panel drew in its last frame.
    pub fn drawn_markers(&self) -> &[String] {
        &self.drawn_markers
    }

    /// Messages that belong to no run, and each run's failed requests.
    pub fn messages(&self) -> Vec<String> {
        let mut all = self.messages.clone();
        for r in &self.runs {
            all.extend(r.errors.iter().cloned());
        }
        all
    }

    /// The alignment panel's current picture: the label of the map (a word, or
    /// `"whole caption"`) and its values per patch; `None` before the first answer.
    pub fn alignment_map(&self) -> Option<(String, Vec<f32>)> {
        let a = &self.runs.get(self.active)?.alignment.value()?.alignment;
        Some(alignment::selected_map(a, self.state.word.as_deref()))
    }

    /// The attention panel's current map: over the patches (image tower) or token × token
    /// (text tower), for the chosen layer and head; `None` before the first answer.
    pub fn attention_map(&self) -> Option<Vec<f32>> {
        let r = self.runs.get(self.active)?.attention.value()?;
        let (layer, head) = (self.state.layer, self.state.head);
        Some(if self.state.text_tower {
            attention::text_map(&r.view, layer, head)
        } else {
            attention::image_map(&r.view, r.pool, layer, head)
        })
    }

    /// The batch panel's latest answer.
    pub fn batch(&self) -> Option<&crate::session::BatchReply> {
        self.runs.get(self.active)?.batch.value()
    }

    /// The modality-gap panel's latest answer.
    pub fn gap(&self) -> Option<&workbench::analysis::GapAnalysis> {
        self.runs.get(self.active)?.gap.value()
    }

    /// The words of the alignment panel's caption, as its buttons are labelled.
    pub fn alignment_words(&self) -> Vec<String> {
        self.runs
            .get(self.active)
            .and_then(|r| r.alignment.value())
            .map(|a| alignment::words(&a.alignment))
            .unwrap_or_default()
    }

    /// The configuration a reset would start.
    fn reset_config(&self) -> anyhow::Result<RunConfig> {
        let s = &self.state;
        let mut cfg = if s.preset == self.base.preset {
            self.base.clone()
        } else {
            RunConfig::preset(&s.preset)?
        };
        cfg.train.batch_size = s.batch_size;
        cfg.train.micro_batches = s.micro_batches;
        cfg.train.lr = s.lr;
        cfg.train.seed = s.seed;
        cfg.train.steps = s.steps;
        cfg.train.device.clone_from(&s.device);
        cfg.train.precision = s.precision;
        cfg.train.local_loss = s.local_loss;
        cfg.data = s.data.clone();
        Ok(cfg)
    }

    /// Replaces the active run with a new one of the chosen settings, paused unless `play`.
    /// The session is built on a helper thread and appears in a later frame.
    fn reset(&mut self, play: bool) {
        let name = self.next_name();
        match self.reset_config().and_then(|c| {
            Ok((
                c,
                new_run::rank_devices(&self.state.device, self.state.ranks)?,
            ))
        }) {
            Ok((cfg, devices)) => {
                let replaces = Some(self.active);
                self.spawn(name, replaces, play, move |n| {
                    Session::start_on(cfg, &devices, n)
                });
            }
            Err(e) => self.messages.push(format!("{name}: cannot start: {e:#}")),
        }
    }

    /// Builds a session with `build` on a helper thread.
    fn spawn(
        &mut self,
        name: String,
        replaces: Option<usize>,
        play: bool,
        build: impl FnOnce(String) -> anyhow::Result<Session> + Send + 'static,
    ) {
        let (tx, rx) = std::sync::mpsc::channel();
        let ctx = self.ctx.clone();
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("starting {name}"))
            .spawn(move || {
                let _ = tx.send(build(thread_name));
                if let Some(ctx) = ctx {
                    ctx.request_repaint();
                }
            });
        match spawned {
            Ok(_) => self.starting.push(Starting {
                name,
                replaces,
                result: rx,
                play,
            }),
            Err(e) => self.messages.push(format!("{name}: cannot start: {e}")),
        }
    }

    /// Whether a session is being built.
    pub fn starting(&self) -> bool {
        !self.starting.is_empty()
    }

    /// One frame: drain the sessions, then draw the control panel and the chosen panel.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        if self.ctx.is_none() {
            self.ctx = Some(ui.ctx().clone());
        }
        if !self.fonts_set {
            ui.ctx().set_fonts(fonts());
            self.fonts_set = true;
        }
        self.poll();
        egui::Panel::left("run_control")
            .resizable(true)
            .default_size(260.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| control::show(self, ui));
            });
        egui::CentralPanel::default().show(ui, |ui| {
            ui.horizontal(|ui| {
                for tab in Tab::ALL {
                    ui.selectable_value(&mut self.state.tab, tab, tab.label());
                }
            });
            ui.separator();
            if self.state.tab != Tab::Curves {
                self.drawn_markers.clear();
            }
            match self.state.tab {
                Tab::Runs => runs::show(self, ui),
                Tab::Curves => {
                    if self.runs.is_empty() {
                        ui.label(NO_RUN);
                    } else {
                        curves::show(
                            &self.runs,
                            self.active,
                            &mut self.state,
                            &mut self.curves,
                            &mut self.drawn_markers,
                            ui,
                        );
                    }
                }
                tab => {
                    let Some(run) = self.runs.get_mut(self.active) else {
                        ui.label(NO_RUN);
                        return;
                    };
                    let state = &mut self.state;
                    match tab {
                        Tab::Batch => batch::show(run, state, ui),
                        Tab::Attention => attention::show(run, state, ui),
                        Tab::Alignment => alignment::show(run, state, ui),
                        Tab::Gap => gap::show(run, state, ui),
                        Tab::Curves | Tab::Runs => {}
                    }
                }
            }
        });
    }

    /// Drains every session; starts forks whose checkpoint arrived.
    fn poll(&mut self) {
        let mut forks = Vec::new();
        for (i, run) in self.runs.iter_mut().enumerate() {
            if !run.waker_set
                && let Some(ctx) = &self.ctx
            {
                let ctx = ctx.clone();
                run.session
                    .set_waker(Box::new(move || ctx.request_repaint()));
                run.waker_set = true;
            }
            for event in run.poll() {
                match event {
                    run::Event::Forked(dir) => forks.push((i, dir)),
                }
            }
        }
        for (i, dir) in forks {
            let parent = &self.runs[i].session;
            let name = format!("fork of {} at step {}", parent.name(), parent.step());
            // On the parent's devices (rank 0's device for one, each rank's for several).
            let devices = match parent.devices() {
                [_] => Vec::new(),
                several => several.to_vec(),
            };
            self.spawn(name, None, false, move |n| {
                Session::resume_on(&dir, &devices, n)
            });
        }
        let mut still = Vec::new();
        for s in std::mem::take(&mut self.starting) {
            match s.result.try_recv() {
                Ok(Ok(session)) => {
                    if s.play {
                        session.send(Request::Play);
                    }
                    let run = Run::new(session);
                    match s.replaces {
                        Some(i) if i < self.runs.len() => {
                            let old = std::mem::replace(&mut self.runs[i], run);
                            // Dropping a session waits for its current step: not on this thread.
                            let _ = std::thread::Builder::new()
                                .name("closing a run".into())
                                .spawn(move || drop(old));
                        }
                        _ => {
                            self.runs.push(run);
                            if s.replaces.is_some() {
                                self.active = self.runs.len() - 1;
                            }
                        }
                    }
                }
                Ok(Err(e)) => self.messages.push(format!("{}: {e:#}", s.name)),
                Err(std::sync::mpsc::TryRecvError::Empty) => still.push(s),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self
                    .messages
                    .push(format!("{}: the thread building it failed", s.name)),
            }
        }
        self.starting = still;
    }
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.state);
    }
}

#[cfg(test)]
mod tests;
