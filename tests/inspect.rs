//! Inspection: attention maps, alignment, relevance, head diagnostics, probes and batch
//! similarity, each checked against a direct recomputation.

use crate::util::tiny_config;
use workbench::data::Split;
use workbench::model::Capture;
use workbench::train::Trainer;

fn trained(steps: usize) -> Trainer {
    let mut t = Trainer::new(tiny_config()).unwrap();
    for _ in 0..steps {
        t.step().unwrap();
    }
    t
}

fn host(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn attention_maps_equal_softmax_of_queries_and_keys() {
    let t = trained(5);
    let s = t.sample(Split::Val, 3).unwrap();
    let caption = s.captions[0].text.clone();
    let view = t.attention(&s.image, &caption).unwrap();
    assert_eq!(view.vision.len, 1 + view.grid * view.grid);
    assert_eq!(view.text_attention.len, view.tokens.len());
    assert_eq!(view.tokens.first().unwrap(), "<bos>");
    assert_eq!(view.tokens.last().unwrap(), "<eos>");

    // Recompute every map from Q and K in plain loops.
    let dev = t.device();
    let m = t.model();
    let x = workbench::data::batch::images_tensor(&[&s.image], dev).unwrap();
    let (ids, eos, _) =
        workbench::data::batch::text_tensors(&[caption.as_str()], t.tokenizer(), dev).unwrap();
    let img = m.encode_image(&x, Capture::ATTENTION).unwrap();
    let txt = m.encode_text(&ids, &eos, Capture::ATTENTION).unwrap();
    for (enc, blocks, stack, causal) in [
        (&img, m.vision().encoder().blocks(), &view.vision, false),
        (
            &txt,
            m.text().encoder().blocks(),
            &view.text_attention,
            true,
        ),
    ] {
        let inputs = enc.tower.encoder.inputs.as_ref().unwrap();
        for (layer, block) in blocks.iter().enumerate() {
            let (ln, attn) = block.attention();
            let (q, k) = attn
                .queries_keys(&ln.forward(&inputs[layer]).unwrap())
                .unwrap();
            let (_, h, l, dh) = q.dims4().unwrap();
            let (q, k) = (host(&q), host(&k));
            let len = stack.len;
            for head in 0..h {
                for i in 0..len {
                    let visible = if causal { i + 1 } else { len };
                    let logits: Vec<f64> = (0..visible)
                        .map(|j| {
                            (0..dh)
                                .map(|c| {
                                    f64::from(q[(head * l + i) * dh + c])
                                        * f64::from(k[(head * l + j) * dh + c])
                                })
                                .sum::<f64>()
                                / (dh as f64).sqrt()
                        })
                        .collect();
                    let mx = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = logits.iter().map(|v| (v - mx).exp()).sum();
                    let row = stack.row(layer, head, i);
                    for j in 0..len {
                        let want = if j < visible {
                            (logits[j] - mx).exp() / z
                        } else {
                            0.0
                        };
                        assert!(
                            (f64::from(row[j]) - want).abs() < 1e-5,
                            "layer {layer} head {head} ({i}, {j}): {} vs {want}",
                            row[j]
                        );
                    }
                }
            }
        }
    }
    // Rollout rows are distributions; activation statistics cover every layer.
    let l = view.vision.len;
    for q in 0..l {
        let s: f32 = view.vision_rollout[q * l..(q + 1) * l].iter().sum();
        assert!((s - 1.0).abs() < 1e-4);
    }
    assert_eq!(view.vision_activations.len(), 2);
    assert!(view.text_activations.iter().all(|a| a.kurtosis > 1.0));
}

#[test]
fn alignment_equals_a_brute_force_dot_product_loop() {
    let t = trained(5);
    let s = t.sample(Split::Val, 1).unwrap();
    let text = "a large red circle and something unheard-of";
    let a = t.align(&s.image, text).unwrap();
    let dev = t.device();
    let m = t.model();
    let x = workbench::data::batch::images_tensor(&[&s.image], dev).unwrap();
    let (ids, eos, _) = workbench::data::batch::text_tensors(&[text], t.tokenizer(), dev).unwrap();
    let img = m.encode_image(&x, Capture::TOKENS).unwrap();
    let txt = m.encode_text(&ids, &eos, Capture::TOKENS).unwrap();
    let patches = host(img.tokens.as_ref().unwrap());
    let words = host(txt.tokens.as_ref().unwrap());
    let (pooled_img, pooled_txt) = (host(&img.embedding), host(&txt.embedding));
    let e = pooled_img.len();
    let n = patches.len() / e;
    assert_eq!(n, a.patches());
    let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(a, b)| a * b).sum::<f32>();
    for ti in 0..a.tokens.len() {
        for p in 0..n {
            let want = dot(&words[ti * e..(ti + 1) * e], &patches[p * e..(p + 1) * e]);
            assert!((a.token_map(ti)[p] - want).abs() < 1e-5);
        }
        let want = dot(&words[ti * e..(ti + 1) * e], &pooled_img);
        assert!((a.image_token[ti] - want).abs() < 1e-5);
    }
    for p in 0..n {
        let want = dot(&pooled_txt, &patches[p * e..(p + 1) * e]);
        assert!((a.caption_patch[p] - want).abs() < 1e-5);
    }
    assert!((a.score - dot(&pooled_img, &pooled_txt)).abs() < 1e-5);
    // Choosing a word picks its (last) token; unknown words still have a token (UNK).
    let (tok, map) = a.word_map("circle").unwrap();
    assert_eq!(a.tokens[tok], "circle");
    assert_eq!(map.len(), n);
    assert!(a.word_map("square").is_none());
    assert!(t.align(&s.image, "   ").is_err());
}

#[test]
fn relevance_explains_the_fused_models_score() {
    let t = trained(5);
    let s = t.sample(Split::Val, 2).unwrap();
    let caption = s.captions[0].text.clone();
    let r = t.relevance(&s.image, &caption).unwrap();
    let a = t.align(&s.image, &caption).unwrap();
    // The reference-kernel model shares the parameters: same score to rounding.
    assert!(
        (r.score - a.score).abs() < 1e-4,
        "{} vs {}",
        r.score,
        a.score
    );
    let n = r.grid * r.grid;
    assert_eq!(r.image_grad_cam.len(), n);
    assert_eq!(r.image_relevance.len(), n);
    assert_eq!(r.image_rollout.len(), n);
    assert_eq!(r.text_relevance.len(), r.tokens.len());
    let all = r
        .image_grad_cam
        .iter()
        .chain(&r.image_relevance)
        .chain(&r.text_grad_cam)
        .chain(&r.text_relevance);
    assert!(all.clone().all(|v| v.is_finite() && *v >= 0.0));
    // R = I + (non-negative terms): the EOS token is at least fully relevant to itself, and the
    // gradients are not all zero.
    assert!(*r.text_relevance.last().unwrap() >= 1.0);
    assert!(r.image_relevance.iter().any(|v| *v > 0.0), "{r:?}");
    assert!(r.image_grad_cam.iter().any(|v| *v > 0.0));
    // Images of the wrong size are refused with the expected size.
    let small = workbench::data::RgbImage::new(8, 8);
    let err = t.relevance(&small, &caption).unwrap_err().to_string();
    assert!(err.contains("32×32"), "{err}");
}

#[test]
fn head_diagnostics_probes_and_batch_similarity() {
    let mut t = trained(10);
    let d = t.head_diagnostics(Split::Val, 8).unwrap();
    assert_eq!(d.pairs, 8);
    assert_eq!(d.vision.len(), 2 * 4);
    assert_eq!(d.text.len(), 2 * 4);
    for m in d.vision.iter().chain(&d.text) {
        assert!((0.0..=1.0).contains(&m.sink), "{m:?}");
        assert!((0.0..=1.0 + 1e-6).contains(&m.entropy), "{m:?}");
        let b = m.background.unwrap();
        assert!((0.0..=1.0 + 1e-6).contains(&b), "{m:?}");
    }
    assert_eq!(d.vision_activations.len(), 2);
    assert!(d.vision_activations.iter().all(|a| a.max_abs > 0.0));

    let p = t.probes().unwrap().unwrap();
    // 72 images, 2 per class: every 2nd image of each class is held out.
    assert_eq!((p.train, p.test, p.classes), (36, 36, 36));
    assert_eq!(p.pre_projection.dim, 32);
    // One training image per class, barely trained features: still well above chance (1/36).
    for s in [p.pre_projection, p.post_projection] {
        assert!(s.knn > 0.08 && s.linear > 0.08, "{p:?}");
        assert!(s.knn <= 1.0 && s.linear <= 1.0);
    }

    let b = t.batch_similarity(Split::Val, 16).unwrap();
    assert_eq!(b.n, 16);
    assert_eq!(b.similarity.len(), 256);
    assert!(b.loss.iter().all(|l| l.is_finite() && *l > 0.0));
    assert_eq!(b.false_negatives.len(), 16);
    assert!(
        b.false_negatives
            .windows(2)
            .all(|w| w[0].margin >= w[1].margin)
    );
    for f in &b.false_negatives {
        let s = b.similarity[f.image * 16 + f.caption];
        assert_eq!(s, f.similarity);
        assert_eq!(b.captions[f.image] == b.captions[f.caption], f.same_text);
    }
    assert!(t.sample(Split::Val, 10_000).is_err());
}

/// Distinct colours in a figure's bitmap.
fn colours(f: &viz::figure::Figure) -> usize {
    f.rgb()
        .chunks(3)
        .map(|p| (p[0], p[1], p[2]))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

#[test]
fn every_analysis_figure_renders_with_content() {
    use viz::report;
    let mut t = trained(10);
    let s = t.sample(Split::Val, 0).unwrap();
    let caption = s.captions[0].text.clone();
    let pool = t.model().config().vision.pool;
    let view = t.attention(&s.image, &caption).unwrap();
    let al = t.align(&s.image, &caption).unwrap();
    let rel = t.relevance(&s.image, &caption).unwrap();
    let heads = t.head_diagnostics(Split::Val, 4).unwrap();
    let batch = t.batch_similarity(Split::Val, 12).unwrap();
    let gap = t.analyse_gap(Split::Val, &[0.0, 0.5, 1.0]).unwrap();
    let (max_abs, kurtosis) = report::activation_bars(&heads).unwrap();
    let figures = vec![
        report::attention_grid(&view, &s.image, pool).unwrap(),
        report::text_attention_grid(&view).unwrap(),
        report::text_attention(&view, Some(1)).unwrap(),
        report::text_attention(&view, None).unwrap(),
        report::head_mass_bars(&heads, true).unwrap(),
        report::head_mass_bars(&heads, false).unwrap(),
        max_abs,
        kurtosis,
        report::alignment_matrix(&al).unwrap(),
        report::word_maps(&al, &s.image).unwrap(),
        report::relevance_maps(&rel, &s.image).unwrap(),
        report::text_relevance_bars(&rel).unwrap(),
        report::batch_similarity_heatmap(&batch).unwrap(),
        report::batch_loss_bars(&batch).unwrap(),
        report::cosine_histograms(&gap.report).unwrap(),
        report::spectra(&gap.report).unwrap(),
        report::gap_sweep(&gap).unwrap(),
        report::joint_pca(&gap.pca, 50).unwrap(),
        report::pointing_bars(&t.pointing_game(Split::Val, 16).unwrap()).unwrap(),
    ];
    for f in &figures {
        let (w, h) = f.size();
        assert!(w >= 200 && h >= 150, "{}: {w}×{h}", f.title());
        assert_eq!(f.rgb().len(), (w * h * 3) as usize);
        assert!(colours(f) > 8, "{} is nearly blank", f.title());
        assert!(f.svg().starts_with("<svg"));
    }
    // Deterministic for a given input.
    let again = report::attention_grid(&view, &s.image, pool).unwrap();
    assert_eq!(again.rgb(), figures[0].rgb());
    assert_eq!(again.svg(), figures[0].svg());
    // A layer the tower does not have is an error, not a panic.
    assert!(report::text_attention(&view, Some(7)).is_err());
}

#[test]
fn inspect_gap_and_eval_write_their_figures() {
    let dir = crate::util::tmpdir("cli-inspect");
    let run = dir.join("run");
    let mut cfg = tiny_config();
    cfg.train.steps = 4;
    let mut t = Trainer::new(cfg).unwrap();
    t.set_run_dir(&run);
    t.fit(|_| std::ops::ControlFlow::Continue(())).unwrap();
    let run_s = run.to_str().unwrap();
    let ok = |args: &[&str]| {
        let mut argv = vec!["workbench"];
        argv.extend_from_slice(args);
        assert_eq!(
            viz::cli::main_with_args(argv.clone()),
            std::process::ExitCode::SUCCESS,
            "{argv:?}"
        );
    };
    let out = dir.join("inspect");
    ok(&[
        "inspect",
        "--run",
        run_s,
        "--sample",
        "2",
        "--heads-over",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    for stem in [
        "attention_image",
        "attention_text_heads",
        "attention_text_layer1",
        "attention_text_rollout",
        "heads_image",
        "heads_text",
        "activations_max",
        "activations_kurtosis",
        "alignment_matrix",
        "alignment_words",
        "relevance_image",
        "relevance_text",
    ] {
        for ext in ["png", "svg"] {
            let p = out.join(format!("{stem}.{ext}"));
            assert!(p.metadata().unwrap().len() > 500, "{}", p.display());
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("inspect.json")).unwrap()).unwrap();
    assert!(json["alignment"]["score"].is_number());

    // An image file and free text.
    let png = dir.join("picture.png");
    let s = t.sample(Split::Val, 5).unwrap();
    image_file(&s.image, &png);
    let out2 = dir.join("inspect-file");
    ok(&[
        "inspect",
        "--run",
        run_s,
        "--image",
        png.to_str().unwrap(),
        "--text",
        "a small blue square",
        "--heads-over",
        "2",
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(out2.join("alignment_words.png").exists());
    // An image without text, a missing image and a sample out of range are errors.
    let fails = |args: &[&str]| {
        let mut argv = vec!["workbench"];
        argv.extend_from_slice(args);
        assert_ne!(
            viz::cli::main_with_args(argv.clone()),
            std::process::ExitCode::SUCCESS,
            "{argv:?}"
        );
    };
    let o = out2.to_str().unwrap();
    fails(&[
        "inspect",
        "--run",
        run_s,
        "--image",
        png.to_str().unwrap(),
        "--out",
        o,
    ]);
    fails(&[
        "inspect",
        "--run",
        run_s,
        "--image",
        "/nonexistent.png",
        "--text",
        "x",
        "--out",
        o,
    ]);
    fails(&["inspect", "--run", run_s, "--sample", "100000", "--out", o]);

    let gap_dir = dir.join("gap");
    ok(&[
        "gap",
        "--run",
        run_s,
        "--deltas=0,1",
        "--out",
        gap_dir.to_str().unwrap(),
    ]);
    for stem in ["gap_cosines", "gap_spectra", "gap_sweep", "gap_pca"] {
        assert!(gap_dir.join(format!("{stem}.png")).exists(), "{stem}");
    }
    let g: workbench::analysis::GapAnalysis =
        serde_json::from_str(&std::fs::read_to_string(gap_dir.join("gap.json")).unwrap()).unwrap();
    assert_eq!(g.pca.image.len(), 64);

    let point_dir = dir.join("point");
    ok(&[
        "point",
        "--run",
        run_s,
        "--images",
        "16",
        "--out",
        point_dir.to_str().unwrap(),
    ]);
    assert!(point_dir.join("pointing.png").exists());
    assert!(point_dir.join("pointing.json").exists());

    let eval_dir = dir.join("eval");
    ok(&[
        "eval",
        "--run",
        run_s,
        "--batch",
        "8",
        "--out",
        eval_dir.to_str().unwrap(),
    ]);
    assert!(eval_dir.join("batch_similarity.png").exists());
    assert!(eval_dir.join("eval.json").exists());
    fails(&["eval", "--run", run_s, "--batch", "1"]);
    let _ = std::fs::remove_dir_all(dir);
}

fn image_file(img: &workbench::data::RgbImage, path: &std::path::Path) {
    // Written at twice the size so loading has to resize it.
    let mut big = Vec::with_capacity(img.data.len() * 4);
    for y in 0..img.height * 2 {
        for x in 0..img.width * 2 {
            big.extend_from_slice(&img.pixel(x / 2, y / 2));
        }
    }
    let w = u32::try_from(img.width * 2).unwrap();
    let h = u32::try_from(img.height * 2).unwrap();
    image::save_buffer(path, &big, w, h, image::ExtendedColorType::Rgb8).unwrap();
}

#[test]
fn probe_gradients_match_finite_differences() {
    // The relevance maps read the score's gradient with respect to attention weights and
    // block inputs through zero-valued probe variables: check those gradients numerically.
    use workbench::model::layers::Probes;
    let t = trained(5);
    let m = t.model();
    let dev = t.device();
    let s = t.sample(Split::Val, 4).unwrap();
    let caption = s.captions[0].text.clone();
    let x = workbench::data::batch::images_tensor(&[&s.image], dev).unwrap();
    let (ids, eos, _) =
        workbench::data::batch::text_tensors(&[caption.as_str()], t.tokenizer(), dev).unwrap();
    let vc = &m.config().vision;
    let len = 1 + (32 / vc.patch_size).pow(2);
    let probes = Probes::zeros(vc.layers, (1, len, vc.width), vc.heads, dev).unwrap();
    let txt = m.encode_text(&ids, &eos, Capture::NONE).unwrap().embedding;
    let score = |p: &Probes| {
        let img = m
            .encode_image_with(&x, Capture::ATTENTION, Some(p))
            .unwrap();
        (&img.embedding * &txt).unwrap().sum_all().unwrap()
    };
    let s0 = score(&probes);
    // Zero probes change nothing: the score equals the plain (fused) model's.
    let plain = m.encode_image(&x, Capture::NONE).unwrap().embedding;
    let fused = (&plain * &txt)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((s0.to_scalar::<f32>().unwrap() - fused).abs() < 1e-5);
    let grads = s0.backward().unwrap();
    let eps = 1e-2f32;
    let mut largest = 0f32;
    let checks = [
        // (head h, query q, key k) sits at (h·len + q)·len + k: head 1 / 2, class-token query.
        (probes.attention[0].clone(), len * len + 3),
        (probes.attention[1].clone(), 2 * len * len + 7),
        (probes.inputs[1].clone(), 5 * vc.width + 11), // position 5, feature 11
        (probes.inputs[0].clone(), 11),
    ];
    for (var, at) in checks {
        let g = grads.get(var.as_tensor()).unwrap();
        let g = host(g)[at];
        let bump = |delta: f32| {
            let mut v = vec![0f32; var.elem_count()];
            v[at] = delta;
            var.set(&candle_core::Tensor::from_vec(v, var.shape(), dev).unwrap())
                .unwrap();
            let s = score(&probes).to_scalar::<f32>().unwrap();
            var.set(&var.zeros_like().unwrap()).unwrap();
            s
        };
        let fd = (bump(eps) - bump(-eps)) / (2.0 * eps);
        largest = largest.max(g.abs());
        assert!(
            (fd - g).abs() < 2e-3 + 0.05 * g.abs(),
            "probe gradient {g} vs finite difference {fd}"
        );
    }
    assert!(largest > 1e-3, "every checked gradient is ~0: {largest}");
}
