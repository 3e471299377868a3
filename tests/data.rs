//! The synthetic dataset, the tokenizer and the loader.

use candle_core::Device;
use std::sync::Arc;
use workbench::data::loader::AugmentConfig;
use workbench::data::{Loader, PairDataset, Shapes, ShapesConfig, Split, Tokenizer};

fn shapes() -> Shapes {
    Shapes::new(ShapesConfig::default()).unwrap()
}

#[test]
fn dataset_is_deterministic_and_seeded() {
    let (a, b) = (shapes(), shapes());
    for split in [Split::Train, Split::Val, Split::Test] {
        for i in [0, 1, 17, 999] {
            assert_eq!(a.sample(split, i).unwrap(), b.sample(split, i).unwrap());
        }
    }
    assert_eq!(
        a.zero_shot_sample(5).unwrap(),
        b.zero_shot_sample(5).unwrap()
    );
    let other = Shapes::new(ShapesConfig {
        seed: 1,
        ..ShapesConfig::default()
    })
    .unwrap();
    assert_ne!(
        a.sample(Split::Train, 0).unwrap().image,
        other.sample(Split::Train, 0).unwrap().image
    );
    assert_ne!(
        a.sample(Split::Train, 0).unwrap().image,
        a.sample(Split::Val, 0).unwrap().image
    );
    assert!(a.sample(Split::Val, 1000).is_err());
}

#[test]
fn ground_truth_matches_pixels_and_captions() {
    let ds = shapes();
    let size = ds.image_size();
    let mut counts = [0usize; 4];
    for i in 0..300 {
        let s = ds.sample(Split::Train, i).unwrap();
        let truth = s.truth.as_ref().unwrap();
        counts[truth.objects.len()] += 1;
        assert_eq!(s.captions.len(), 3);
        let texts: std::collections::HashSet<_> = s.captions.iter().map(|c| &c.text).collect();
        assert_eq!(texts.len(), 3, "paraphrases must differ: {:?}", s.captions);
        let mut covered = vec![false; size * size];
        for o in &truth.objects {
            let [x0, y0, x1, y1] = o.bbox;
            assert!(
                x1 - x0 >= 9 && y1 - y0 >= 9,
                "objects must be at least 9 px wide: {o:?}"
            );
            let mut n = 0;
            for (p, &m) in o.mask.iter().enumerate() {
                if m {
                    let (x, y) = (p % size, p / size);
                    assert!(
                        (x0..x1).contains(&x) && (y0..y1).contains(&y),
                        "mask outside its box"
                    );
                    assert!(!covered[p], "masks overlap");
                    covered[p] = true;
                    n += 1;
                }
            }
            assert!(n >= 20, "mask too small ({n} px) for {}", o.description());
        }
        for c in &s.captions {
            assert_eq!(c.mentions.len(), truth.objects.len(), "{}", c.text);
            for m in &c.mentions {
                assert_eq!(
                    &c.text[m.start..m.end],
                    truth.objects[m.object].description()
                );
            }
        }
        if truth.objects.len() == 1 {
            let o = &truth.objects[0];
            let classes = ds.classes().unwrap();
            assert_eq!(
                classes.names[s.label.unwrap()],
                format!("{} {}", o.colour, o.shape)
            );
        } else {
            assert!(s.label.is_none());
        }
    }
    assert!(
        counts[1] > 50 && counts[2] > 50 && counts[3] > 50,
        "object counts {counts:?}"
    );
}

#[test]
fn object_pixels_carry_the_named_colour() {
    let ds = shapes();
    let s = ds.zero_shot_sample(0).unwrap(); // class 0: red circle
    let o = &s.truth.as_ref().unwrap().objects[0];
    assert_eq!((o.colour.as_str(), o.shape.as_str()), ("red", "circle"));
    let size = ds.image_size();
    let (mut r, mut g, mut n) = (0f64, 0f64, 0f64);
    for (p, &m) in o.mask.iter().enumerate() {
        if m {
            let px = s.image.pixel(p % size, p / size);
            r += f64::from(px[0]);
            g += f64::from(px[1]);
            n += 1.0;
        }
    }
    assert!(
        r / n > 180.0 && g / n < 90.0,
        "mean red {} green {}",
        r / n,
        g / n
    );
}

#[test]
fn tokenizer_round_trips_and_saves() {
    let ds = shapes();
    let tok = Tokenizer::fit_word_level(&ds.corpus(), 32).unwrap();
    assert!(
        tok.vocab_size() > 30 && tok.vocab_size() < 60,
        "vocab {}",
        tok.vocab_size()
    );
    let dir = crate::util::tmpdir("tokenizer");
    let path = dir.join("tokenizer.json");
    tok.save(&path).unwrap();
    let loaded = Tokenizer::from_file(&path, 32).unwrap();
    for i in 0..200 {
        for c in ds.sample(Split::Val, i).unwrap().captions {
            let e = tok.encode(&c.text).unwrap();
            assert!(!e.truncated);
            assert_eq!(e, loaded.encode(&c.text).unwrap());
            let text = tok.decode(&e.ids).unwrap();
            assert_eq!(tok.encode(&text).unwrap().ids, e.ids, "{text:?}");
            if !c.text.contains([',', ':']) {
                assert_eq!(text, c.text);
            }
            assert!(!e.ids[1..e.eos].contains(&tok.token_to_id("[UNK]").unwrap()));
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn mentions_map_to_the_tokens_that_name_each_object() {
    let ds = shapes();
    let tok = Tokenizer::fit_word_level(&ds.corpus(), 32).unwrap();
    let s = ds.sample(Split::Val, 7).unwrap();
    for c in &s.captions {
        let e = tok.encode(&c.text).unwrap();
        let spans: Vec<(usize, usize)> = c.mentions.iter().map(|m| (m.start, m.end)).collect();
        let owner = e.token_spans(&spans);
        for (k, m) in c.mentions.iter().enumerate() {
            let ids: Vec<u32> = (0..e.ids.len())
                .filter(|&t| owner[t] == Some(k))
                .map(|t| e.ids[t])
                .collect();
            assert_eq!(
                ids.len(),
                3,
                "size, colour and shape words of {:?}",
                &c.text[m.start..m.end]
            );
            assert_eq!(tok.decode(&ids).unwrap(), c.text[m.start..m.end]);
        }
    }
}

#[test]
fn a_clip_bpe_tokenizer_json_loads() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/clip_bpe_tokenizer.json");
    let tok = Tokenizer::from_file(&path, 16).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id()), (0, 1));
    assert_eq!(
        tok.pad_id(),
        tok.eos_id(),
        "CLIP has no pad token: pad with EOS"
    );
    let e = tok.encode("A red circle, left of a cat!").unwrap();
    // Ids printed by tests/fixtures/make_clip_bpe_tokenizer.py (Python `tokenizers` 0.23.3).
    assert_eq!(
        &e.ids[..14],
        &[
            0, 263, 280, 259, 286, 83, 288, 77, 291, 260, 279, 263, 289, 1
        ]
    );
    assert_eq!(e.eos, 13);
    assert!(e.ids[14..].iter().all(|&i| i == 1));
    let long = tok.encode(&"a cat ".repeat(20)).unwrap();
    assert!(long.truncated);
    assert_eq!((long.eos, long.ids[15]), (15, 1));
    let bad = crate::util::tmpdir("badtok").join("tokenizer.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let err = Tokenizer::from_file(&bad, 16).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("not a valid"),
        "{err}"
    );
}

#[test]
fn loader_is_seeded_resumable_and_trims_padding() {
    let ds: Arc<dyn PairDataset> = Arc::new(shapes());
    let tok = Arc::new(Tokenizer::fit_word_level(&ds.corpus(), 32).unwrap());
    let make = || {
        Loader::new(
            ds.clone(),
            tok.clone(),
            8,
            3,
            AugmentConfig::default(),
            Device::Cpu,
        )
        .unwrap()
    };
    let (mut a, mut b) = (make(), make());
    let first = a.next_batch().unwrap();
    assert_eq!(first.indices, b.next_batch().unwrap().indices);
    assert_eq!(first.images.dims(), &[8, 3, 32, 32]);
    let (n, t) = first.tokens.dims2().unwrap();
    let eos: Vec<u32> = first.eos.to_vec1().unwrap();
    assert_eq!(n, 8);
    assert_eq!(
        t,
        *eos.iter().max().unwrap() as usize + 1,
        "tokens are trimmed to the longest caption"
    );
    let state = a.state();
    let next = a.next_batch().unwrap();
    let mut c = make();
    c.set_state(state);
    let resumed = c.next_batch().unwrap();
    assert_eq!(next.indices, resumed.indices);
    assert_eq!(next.captions, resumed.captions);
    assert_eq!(
        next.images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        resumed
            .images
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let mut other = Loader::new(
        ds.clone(),
        tok.clone(),
        8,
        4,
        AugmentConfig::default(),
        Device::Cpu,
    )
    .unwrap();
    assert_ne!(other.next_batch().unwrap().indices, first.indices);
}
