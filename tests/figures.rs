//! Figures: every kind renders at its size to matching PNG and SVG, deterministically; cell
//! colours and overlay blending are exact; bad input is an error; saving and notebook output.

use std::collections::HashSet;

use viz::figure::{
    BarChart, BarSeries, Colormap, Figure, FigureError, Heatmap, HistSeries, Histograms, LineChart,
    Mark, NAN_GREY, OVERLAY_ALPHA, Overlay, OverlayGrid, PointGroup, RgbImage, Role, Scatter,
    Series,
};

use crate::util::tmpdir;

fn heatmap() -> Heatmap {
    let (rows, cols) = (6, 9);
    Heatmap {
        title: "Similarity matrix".into(),
        values: (0..rows * cols)
            .map(|i| ((i * 7) % 11) as f32 / 10.0 - 0.3)
            .collect(),
        rows,
        cols,
        row_labels: (0..rows).map(|r| format!("image {r}")).collect(),
        col_labels: (0..cols).map(|c| format!("caption number {c}")).collect(),
        x_label: "caption".into(),
        y_label: "image".into(),
        annotate: true,
        width: 640,
        height: 480,
        ..Heatmap::default()
    }
}

fn checker_image(size: u32) -> RgbImage {
    let pixels = (0..size * size)
        .flat_map(|i| {
            let (x, y) = (i % size, i / size);
            let v = if (x / 4 + y / 4) % 2 == 0 { 230 } else { 40 };
            [v, (x * 255 / size) as u8, (y * 255 / size) as u8]
        })
        .collect();
    RgbImage {
        width: size,
        height: size,
        pixels,
    }
}

fn overlay_grid() -> OverlayGrid {
    let panels = (0..6)
        .map(|p| Overlay {
            title: format!("layer {} head {}", p / 3, p % 3),
            image: (p % 2 == 0).then(|| checker_image(32)),
            map: (0..16).map(|i| ((i + p) % 16) as f32 / 15.0).collect(),
            grid: (4, 4),
            range: None,
        })
        .collect();
    OverlayGrid {
        title: "CLS attention".into(),
        panels,
        columns: 3,
        colormap: Colormap::Viridis,
        shared_range: true,
        colorbar_label: "attention".into(),
        panel_size: 96,
    }
}

fn line_chart() -> LineChart {
    LineChart {
        title: "Training loss".into(),
        x_label: "step".into(),
        y_label: "loss".into(),
        series: vec![
            Series {
                name: "clip".into(),
                points: (0..50)
                    .map(|i| (f64::from(i), 4.0 / (1.0 + f64::from(i) * 0.2)))
                    .collect(),
            },
            Series {
                name: "siglip".into(),
                points: (0..50)
                    .map(|i| {
                        let y = if i == 20 {
                            f64::NAN
                        } else {
                            3.0 - f64::from(i) * 0.04
                        };
                        (f64::from(i), y)
                    })
                    .collect(),
            },
        ],
        markers: true,
        ..LineChart::default()
    }
}

fn histograms() -> Histograms {
    Histograms {
        title: "Cosine similarity".into(),
        x_label: "cosine".into(),
        y_label: "density".into(),
        series: vec![
            HistSeries {
                name: "matched".into(),
                lo: -1.0,
                hi: 1.0,
                counts: vec![0, 0, 1, 2, 4, 9, 20, 30, 18, 6],
                normalise: true,
            },
            HistSeries {
                name: "unmatched".into(),
                lo: -1.0,
                hi: 1.0,
                counts: vec![5, 40, 120, 300, 400, 250, 90, 20, 3, 0],
                normalise: true,
            },
        ],
        ..Histograms::default()
    }
}

fn bar_chart(log_y: bool) -> BarChart {
    BarChart {
        title: "Attention mass per head".into(),
        y_label: "mass".into(),
        categories: (0..12)
            .map(|h| format!("L{} head {}", h / 4, h % 4))
            .collect(),
        series: vec![
            BarSeries {
                name: "CLS".into(),
                values: (0..12).map(|i| 0.05 + f64::from(i) * 0.03).collect(),
            },
            BarSeries {
                name: "background".into(),
                values: (0..12).map(|i| 0.5 - f64::from(i) * 0.02).collect(),
            },
        ],
        log_y,
        ..BarChart::default()
    }
}

fn scatter() -> Scatter {
    let images: Vec<(f64, f64)> = (0..20)
        .map(|i| (f64::from(i).cos() - 1.0, f64::from(i).sin()))
        .collect();
    let texts: Vec<(f64, f64)> = images.iter().map(|&(x, y)| (x + 2.0, y * 0.8)).collect();
    Scatter {
        title: "Modality gap".into(),
        x_label: "PC 1".into(),
        y_label: "PC 2".into(),
        segments: images.iter().zip(&texts).map(|(&a, &b)| [a, b]).collect(),
        groups: vec![
            PointGroup {
                name: "images".into(),
                points: images,
                colour: Role::Image,
            },
            PointGroup {
                name: "texts".into(),
                points: texts,
                colour: Role::Text,
            },
        ],
        marks: vec![
            Mark {
                label: "image centroid".into(),
                at: (-1.0, 0.0),
                colour: Role::Image,
            },
            Mark {
                label: "text centroid".into(),
                at: (1.0, 0.0),
                colour: Role::Text,
            },
        ],
        ..Scatter::default()
    }
}

fn every_kind() -> Vec<(&'static str, Figure)> {
    vec![
        ("heatmap", heatmap().render().unwrap()),
        ("overlay", overlay_grid().render().unwrap()),
        ("lines", line_chart().render().unwrap()),
        ("histograms", histograms().render().unwrap()),
        ("bars", bar_chart(false).render().unwrap()),
        ("bars-log", bar_chart(true).render().unwrap()),
        ("scatter", scatter().render().unwrap()),
    ]
}

fn distinct_colours(f: &Figure) -> usize {
    f.rgb().chunks(3).collect::<HashSet<_>>().len()
}

fn close(a: (u8, u8, u8), b: (u8, u8, u8), tol: i16) -> bool {
    let d = |x: u8, y: u8| (i16::from(x) - i16::from(y)).abs() <= tol;
    d(a.0, b.0) && d(a.1, b.1) && d(a.2, b.2)
}

#[test]
fn every_kind_renders_at_its_size_to_matching_png_and_svg() {
    for (name, f) in every_kind() {
        let (w, h) = f.size();
        assert_eq!(f.rgb().len(), (w * h * 3) as usize, "{name}");
        let png = image::load_from_memory(&f.png().unwrap())
            .unwrap()
            .to_rgb8();
        assert_eq!(png.dimensions(), (w, h), "{name}");
        assert_eq!(png.as_raw().as_slice(), f.rgb(), "{name}: PNG pixels");
        assert!(
            distinct_colours(&f) > 20,
            "{name}: {} colours",
            distinct_colours(&f)
        );
        assert!(f.svg().starts_with("<svg"), "{name}");
        assert!(
            f.svg().contains(f.title()),
            "{name}: title missing from SVG"
        );
        assert!(f.plot_area().is_some(), "{name}");
        if let Ok(dir) = std::env::var("FIGURES_DIR") {
            f.save(std::path::Path::new(&dir), name).unwrap();
        }
    }
    let requested = [
        ("heatmap", (640, 480)),
        ("lines", (640, 400)),
        ("histograms", (640, 400)),
        ("bars", (640, 400)),
        ("scatter", (560, 480)),
    ];
    let figures = every_kind();
    for (name, size) in requested {
        let f = &figures.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(f.size(), size, "{name}");
    }
    let overlay = &figures[1].1;
    assert_eq!(overlay.plot_areas().len(), 6);
    assert!(
        overlay
            .plot_areas()
            .iter()
            .all(|r| r.width == 96 && r.height == 96)
    );
}

#[test]
fn rendering_is_deterministic() {
    for ((name, a), (_, b)) in every_kind().into_iter().zip(every_kind()) {
        assert_eq!(a.svg(), b.svg(), "{name}: SVG differs");
        assert!(a.rgb() == b.rgb(), "{name}: pixels differ");
    }
}

#[test]
fn heatmap_cells_have_their_colormap_colour() {
    for colormap in [Colormap::Viridis, Colormap::Diverging] {
        let spec = Heatmap {
            title: "2 x 2".into(),
            values: vec![0.0, 1.0, 0.25, f32::NAN],
            rows: 2,
            cols: 2,
            colormap,
            range: None,
            width: 300,
            height: 240,
            ..Heatmap::default()
        };
        let f = spec.render().unwrap();
        let plot = f.plot_area().unwrap();
        let range = colormap.range(&spec.values, None);
        match colormap {
            Colormap::Viridis => assert_eq!(range, (0.0, 1.0)),
            Colormap::Diverging => assert_eq!(range, (-1.0, 1.0)),
        }
        for (i, &v) in spec.values.iter().enumerate() {
            let (x, y) = plot.cell(i / 2, i % 2, 2, 2).centre();
            let got = f.pixel(x, y).unwrap();
            let want = if v.is_nan() {
                NAN_GREY
            } else {
                colormap.map(v, range)
            };
            assert!(
                close(got, want, 2),
                "{colormap:?} cell {i}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn overlay_without_image_shows_the_map_opaque() {
    let map = vec![0.0, 0.5, 1.0, 0.25, 0.75, 0.1, 0.9, 0.3, 0.6];
    let grid = OverlayGrid {
        title: "3 x 3 map".into(),
        panels: vec![Overlay {
            title: "map".into(),
            image: None,
            map: map.clone(),
            grid: (3, 3),
            range: Some((0.0, 1.0)),
        }],
        columns: 1,
        panel_size: 60,
        ..OverlayGrid::default()
    };
    let f = grid.render().unwrap();
    let panel = f.plot_area().unwrap();
    assert_eq!((panel.width, panel.height), (60, 60));
    for (i, &v) in map.iter().enumerate() {
        let cell = panel.cell(i / 3, i % 3, 3, 3);
        let want = Colormap::Viridis.map(v, (0.0, 1.0));
        // Every pixel of the cell, not just its centre: cells are crisp rectangles.
        for y in cell.y..cell.y + cell.height {
            for x in cell.x..cell.x + cell.width {
                assert_eq!(f.pixel(x, y).unwrap(), want, "cell {i} at ({x}, {y})");
            }
        }
    }
}

#[test]
fn overlay_blends_the_map_over_the_image() {
    let black = RgbImage {
        width: 8,
        height: 8,
        pixels: vec![0; 8 * 8 * 3],
    };
    let panel = |image| Overlay {
        title: "blend".into(),
        image: Some(image),
        map: vec![1.0; 4],
        grid: (2, 2),
        range: Some((0.0, 1.0)),
    };
    let f = OverlayGrid {
        title: "Blend".into(),
        panels: vec![panel(black)],
        columns: 1,
        panel_size: 64,
        ..OverlayGrid::default()
    }
    .render()
    .unwrap();
    let top = Colormap::Viridis.rgb(1.0);
    let scale = |c: u8| (OVERLAY_ALPHA * f32::from(c)).round() as u8;
    let want = (scale(top.0), scale(top.1), scale(top.2));
    let r = f.plot_area().unwrap();
    for (x, y) in [
        (r.x, r.y),
        r.centre(),
        (r.x + r.width - 1, r.y + r.height - 1),
    ] {
        assert!(close(f.pixel(x, y).unwrap(), want, 1), "({x}, {y})");
    }

    // Nearest-neighbour upscaling: a 2×2 image with four colours gives four flat quadrants.
    let quad = RgbImage {
        width: 2,
        height: 2,
        pixels: vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255],
    };
    let f = OverlayGrid {
        title: "Quadrants".into(),
        panels: vec![Overlay {
            map: vec![0.0],
            grid: (1, 1),
            range: Some((0.0, 1.0)),
            ..panel(quad.clone())
        }],
        columns: 1,
        panel_size: 64,
        ..OverlayGrid::default()
    }
    .render()
    .unwrap();
    let r = f.plot_area().unwrap();
    let low = Colormap::Viridis.rgb(0.0);
    for (qy, qx) in [(0u32, 0u32), (0, 1), (1, 0), (1, 1)] {
        let i = ((qy * 2 + qx) * 3) as usize;
        let mix = |m: u8, p: u8| {
            (OVERLAY_ALPHA * f32::from(m) + (1.0 - OVERLAY_ALPHA) * f32::from(p)).round() as u8
        };
        let want = (
            mix(low.0, quad.pixels[i]),
            mix(low.1, quad.pixels[i + 1]),
            mix(low.2, quad.pixels[i + 2]),
        );
        for (dx, dy) in [(0, 0), (31, 31), (0, 31), (31, 0)] {
            let (x, y) = (r.x + qx * 32 + dx, r.y + qy * 32 + dy);
            assert_eq!(f.pixel(x, y).unwrap(), want, "quadrant ({qy}, {qx})");
        }
    }
}

fn field_of(e: FigureError) -> String {
    match e {
        FigureError::Input { field, .. } => field,
        other => panic!("expected an input error, got {other}"),
    }
}

#[test]
fn bad_input_is_an_error_naming_the_field() {
    let mut h = heatmap();
    h.values.pop();
    let e = h.render().unwrap_err();
    assert!(e.to_string().contains("Heatmap.values"), "{e}");
    assert!(e.to_string().contains("53"), "{e}");
    let mut h = heatmap();
    h.cols = 0;
    assert_eq!(field_of(h.render().unwrap_err()), "Heatmap.cols");
    let mut h = heatmap();
    h.row_labels.push("extra".into());
    assert_eq!(field_of(h.render().unwrap_err()), "Heatmap.row_labels");
    let mut h = heatmap();
    h.range = Some((1.0, 1.0));
    assert_eq!(field_of(h.render().unwrap_err()), "Heatmap.range");
    let mut h = heatmap();
    h.width = 10;
    assert_eq!(field_of(h.render().unwrap_err()), "Heatmap.width");
    let h = Heatmap {
        values: vec![0.0; 200 * 2],
        rows: 200,
        cols: 2,
        height: 100,
        ..Heatmap::default()
    };
    assert_eq!(field_of(h.render().unwrap_err()), "Heatmap.height");

    let mut g = overlay_grid();
    g.columns = 0;
    assert_eq!(field_of(g.render().unwrap_err()), "OverlayGrid.columns");
    let mut g = overlay_grid();
    g.panels.clear();
    assert_eq!(field_of(g.render().unwrap_err()), "OverlayGrid.panels");
    let mut g = overlay_grid();
    g.panels[2].map.push(0.0);
    assert_eq!(
        field_of(g.render().unwrap_err()),
        "OverlayGrid.panels[2].map"
    );
    let mut g = overlay_grid();
    g.panels[0].image.as_mut().unwrap().pixels.pop();
    assert_eq!(
        field_of(g.render().unwrap_err()),
        "OverlayGrid.panels[0].image.pixels"
    );

    let mut l = line_chart();
    l.series.clear();
    assert_eq!(field_of(l.render().unwrap_err()), "LineChart.series");
    let l = LineChart {
        series: vec![Series {
            name: "empty".into(),
            points: vec![(f64::NAN, 1.0)],
        }],
        ..LineChart::default()
    };
    assert_eq!(field_of(l.render().unwrap_err()), "LineChart.series");
    let mut hs = histograms();
    hs.series[1].counts.clear();
    assert_eq!(
        field_of(hs.render().unwrap_err()),
        "Histograms.series[1].counts"
    );
    let mut hs = histograms();
    hs.series.clear();
    assert_eq!(field_of(hs.render().unwrap_err()), "Histograms.series");
    let mut b = bar_chart(false);
    b.series[1].values.pop();
    assert_eq!(
        field_of(b.render().unwrap_err()),
        "BarChart.series[1].values"
    );
    let mut b = bar_chart(false);
    b.categories.clear();
    assert_eq!(field_of(b.render().unwrap_err()), "BarChart.categories");
    let mut s = scatter();
    s.groups.clear();
    s.marks.clear();
    s.segments.clear();
    assert_eq!(field_of(s.render().unwrap_err()), "Scatter.groups");
}

#[test]
fn save_writes_png_and_svg_and_leaves_no_temporary() {
    let dir = tmpdir("figures-save").join("nested");
    let f = heatmap().render().unwrap();
    let [png, svg] = f.save(&dir, "similarity").unwrap();
    assert_eq!(png, dir.join("similarity.png"));
    assert_eq!(svg, dir.join("similarity.svg"));
    let decoded = image::open(&png).unwrap().to_rgb8();
    assert_eq!(decoded.as_raw().as_slice(), f.rgb());
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), f.svg());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["similarity.png", "similarity.svg"]);
    assert!(f.save(&dir, "a/b").is_err());
}

/// Standard base64 decoding (RFC 4648), written independently of the encoder.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => u32::from(c - b'A'),
        b'a'..=b'z' => u32::from(c - b'a') + 26,
        b'0'..=b'9' => u32::from(c - b'0') + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    assert_eq!(text.len() % 4, 0);
    let mut out = Vec::new();
    for quad in text.as_bytes().chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        let n = quad[..4 - pad]
            .iter()
            .fold(0u32, |n, &c| (n << 6) | value(c))
            << (6 * pad);
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

#[test]
fn evcxr_blocks_carry_the_png() {
    assert_eq!(base64_decode("Zm9vYmE="), b"fooba");
    assert_eq!(viz::figure::base64_encode(b"foobar"), "Zm9vYmFy");
    let f = line_chart().render().unwrap();
    let out = f.evcxr_blocks().unwrap();
    let body = out
        .strip_prefix("EVCXR_BEGIN_CONTENT image/png\n")
        .expect("starts with the PNG block");
    let (b64, rest) = body.split_once("\nEVCXR_END_CONTENT\n").unwrap();
    assert_eq!(base64_decode(b64), f.png().unwrap());
    assert!(rest.starts_with("EVCXR_BEGIN_CONTENT text/plain\n"));
    assert!(rest.contains("Training loss"));
    assert!(rest.contains("640×400"));
    assert!(out.ends_with("EVCXR_END_CONTENT\n"));
}

#[test]
fn awkward_shapes_render_readably() {
    let words: Vec<String> =
        "a large red circle left of a small blue square above the green triangle"
            .split(' ')
            .map(String::from)
            .collect();
    let one_row = Heatmap {
        title: "Word to image similarity".into(),
        values: (0..words.len()).map(|i| (i as f32 * 0.37).sin()).collect(),
        rows: 1,
        cols: words.len(),
        col_labels: words.clone(),
        row_labels: vec!["image".into()],
        colormap: Colormap::Diverging,
        annotate: true,
        width: 720,
        height: 220,
        ..Heatmap::default()
    };
    let big = Heatmap {
        title: "Patch similarity".into(),
        values: (0..100 * 100).map(|i| ((i % 97) as f32).sqrt()).collect(),
        rows: 100,
        cols: 100,
        x_label: "text token".into(),
        y_label: "patch".into(),
        annotate: true,
        ..Heatmap::default()
    };
    let per_panel = OverlayGrid {
        title: "Grad-CAM per word".into(),
        panels: words
            .iter()
            .take(7)
            .enumerate()
            .map(|(p, w)| Overlay {
                title: format!("\"{w}\" with a long explanation"),
                image: Some(checker_image(64)),
                map: (0..64)
                    .map(|i| ((i * (p + 1)) % 13) as f32 * 10f32.powi(p as i32 - 3))
                    .collect(),
                grid: (8, 8),
                range: None,
            })
            .collect(),
        columns: 4,
        colormap: Colormap::Viridis,
        shared_range: false,
        colorbar_label: "relevance".into(),
        panel_size: 128,
    };
    let single = OverlayGrid {
        title: "Rollout".into(),
        panels: vec![Overlay {
            title: "rollout".into(),
            image: Some(checker_image(32)),
            map: vec![0.5; 16],
            grid: (4, 4),
            range: None,
        }],
        columns: 4,
        panel_size: 64,
        ..OverlayGrid::default()
    };
    let one_point = LineChart {
        title: "One step".into(),
        series: vec![Series {
            name: "loss".into(),
            points: vec![(3.0, 2.5)],
        }],
        markers: true,
        ..LineChart::default()
    };
    let spectrum = BarChart {
        title: "Covariance spectrum".into(),
        y_label: "eigenvalue".into(),
        categories: (1..=64).map(|i| i.to_string()).collect(),
        series: vec![BarSeries {
            name: String::new(),
            values: (0..64).map(|i| 0.8f64.powi(i)).collect(),
        }],
        log_y: true,
        ..BarChart::default()
    };
    let marks_only = Scatter {
        title: "Centroids".into(),
        marks: vec![Mark {
            label: "image".into(),
            at: (0.0, 0.0),
            colour: Role::Image,
        }],
        ..Scatter::default()
    };
    let figures = [
        ("one-row", one_row.render().unwrap()),
        ("big", big.render().unwrap()),
        ("per-panel", per_panel.render().unwrap()),
        ("single", single.render().unwrap()),
        ("one-point", one_point.render().unwrap()),
        ("spectrum", spectrum.render().unwrap()),
        ("marks-only", marks_only.render().unwrap()),
    ];
    for (name, f) in &figures {
        assert!(distinct_colours(f) > 10, "{name}");
        if let Ok(dir) = std::env::var("FIGURES_DIR") {
            f.save(std::path::Path::new(&dir), name).unwrap();
        }
    }
    assert_eq!(figures[2].1.plot_areas().len(), 7);
}
