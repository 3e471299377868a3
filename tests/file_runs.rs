//! Training on files from a run configuration: `[data.files]` selects the dataset, errors name
//! the TOML field, bad samples reach the run summary, the training split is augmented on the
//! seeded RNG (val and test are not), WebDataset shards are indexed rather than buffered, and
//! WebP images decode.

use crate::datasets::{picture, png, write};
use crate::util::tmpdir;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use workbench::config::RunConfig;
use workbench::data::decode::DecodeLimits;
use workbench::data::loader::AugmentConfig;
use workbench::data::transform::{hflip, resize_and_center_crop};
use workbench::data::webdataset::{PairStream, open_shards, read_member, write_tar};
use workbench::data::{
    BadSample, DatasetFormat, DatasetSpec, FileAugment, FileDataset, FilesConfig, ImageSource,
    Loader, PairDataset, Split, Tokenizer,
};
use workbench::rng::Rng;

/// A captions folder of `n` PNGs (40 × 30, distinct) with a missing image and an empty caption
/// at the end; returns the captions file.
pub(crate) fn captions_folder(d: &Path, n: u8) -> PathBuf {
    let mut csv = String::from("image,caption\n");
    for i in 0..n {
        write(d, &format!("img/{i}.png"), &png(i.wrapping_mul(7)));
        writeln!(csv, "img/{i}.png,picture number {i}").unwrap();
    }
    csv.push_str("img/missing.png,gone\nimg/0.png,\n");
    write(d, "captions.csv", csv.as_bytes())
}

/// A small run configuration on `captions` (TOML), with `extra` appended.
pub(crate) fn files_toml(captions: &Path, extra: &str) -> String {
    format!(
        "preset = \"tiny\"\n[data]\nimage_size = 32\n[data.files]\npath = '{}'\n\
         val_fraction = 0.3\ntest_fraction = 0.0\n{extra}\n[model]\nembed_dim = 32\n\
         [model.vision]\nwidth = 32\n[model.text]\nwidth = 32\n[train]\nsteps = 3\n\
         batch_size = 8\nwarmup_steps = 1\neval_every = 0\neval_batch_size = 64\nprobe_every = 0\n",
        captions.display()
    )
}

#[test]
fn a_run_config_selects_a_file_dataset_and_reports_bad_samples() {
    use clap::Parser as _;
    let d = tmpdir("files-run");
    let captions = captions_folder(&d, 32);
    let text = files_toml(&captions, "");
    let cfg = RunConfig::from_toml(&text, Path::new("run.toml")).unwrap();
    let files = cfg.data.files.as_ref().unwrap();
    assert_eq!(files.bad_samples, BadSample::Skip);
    assert_eq!(files.eval_bad_samples, BadSample::Fail);
    assert_eq!(files.augment, FileAugment::default());
    // Saved and reloaded, the run directory's config.toml still selects the files.
    let back = RunConfig::from_toml(&cfg.to_toml().unwrap(), Path::new("c.toml")).unwrap();
    assert_eq!(back, cfg);
    // Existing configurations are unchanged: no [data.files], the synthetic set.
    let plain =
        RunConfig::from_toml("[data]\nholdout = [\"red circle\"]\n", Path::new("p.toml")).unwrap();
    assert!(plain.data.files.is_none());
    assert!(!plain.to_toml().unwrap().contains("files"));

    let mut trainer = workbench::train::Trainer::new(cfg).unwrap();
    let ds = trainer.dataset().clone();
    assert!(ds.len(Split::Val) > 0 && ds.len(Split::Train) > 16);
    assert_eq!(ds.len(Split::Val) + ds.len(Split::Train), 32);
    assert!(trainer.step().unwrap().loss.is_finite());
    let bad = ds.bad_samples().unwrap();
    assert_eq!(bad.count, 2, "{bad:?}");
    assert!(bad.examples.iter().any(|m| m.contains("missing.png")));
    assert!(bad.examples.iter().any(|m| m.contains("captions.csv:")));

    // Through the command line: the bad samples reach run_finished in metrics.jsonl.
    let cfg_path = write(&d, "run.toml", text.as_bytes());
    let out = d.join("run");
    let argv = [
        "workbench",
        "train",
        "--config",
        cfg_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    viz::cli::run(viz::cli::Cli::try_parse_from(argv).unwrap()).unwrap();
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let finished = log
        .lines()
        .find(|l| l.contains("run_finished"))
        .unwrap_or_else(|| panic!("no run_finished in {log}"));
    let v: serde_json::Value = serde_json::from_str(finished).unwrap();
    let bad = &v["bad_samples"];
    assert_eq!(bad["count"], 2, "{finished}");
    assert!(
        bad["examples"][0]
            .as_str()
            .unwrap()
            .contains("captions.csv")
    );
    // The run resumes (its dataset is rebuilt from the saved configuration).
    let resumed = workbench::train::Trainer::resume(&out, None).unwrap();
    assert_eq!(resumed.completed_steps(), 3);
}

#[test]
fn file_settings_errors_name_the_toml_field() {
    let cases: [(&str, &[&str]); 6] = [
        (
            "[data.files]\nformat = \"csv\"\n",
            &["data.files.path", "missing"],
        ),
        (
            "[data.files]\npath = 'a.csv'\nformat = \"xls\"\n",
            &["data.files.format", "line 3", "xls"],
        ),
        (
            "[data.files]\npath = 'a.csv'\n[data.files.augment]\nscale = [0.5, 2.0]\n",
            &["data.files.augment.scale", "line 4"],
        ),
        (
            "[data.files]\npath = 'a.csv'\n[data.files.augment]\nflip = 1.5\n",
            &["data.files.augment.flip", "line 4"],
        ),
        (
            "[data.files]\npath = 'a.csv'\nval_fraction = 0.9\ntest_fraction = 0.5\n",
            &["data.files.val_fraction"],
        ),
        (
            "[data.files]\npath = 'a.csv'\nbad_samples = \"ignore\"\n",
            &["data.files.bad_samples", "line 3"],
        ),
    ];
    for (text, expect) in cases {
        let e = RunConfig::from_toml(text, Path::new("run.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("run.toml") && expect.iter().all(|x| e.contains(x)),
            "{text:?}: {e}"
        );
    }
    let e = RunConfig::from_toml("[data.files]\npth = 'a.csv'\n", Path::new("run.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("data.files") && e.contains("pth"), "{e}");
    // A path that does not exist is named when the dataset is opened.
    let cfg =
        RunConfig::from_toml("[data.files]\npath = 'nowhere.csv'\n", Path::new("r.toml")).unwrap();
    let e = workbench::train::Trainer::new(cfg)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nowhere.csv"), "{e}");
}

fn open(path: &Path, augment: FileAugment) -> FileDataset {
    FilesConfig {
        path: path.to_path_buf(),
        val_fraction: 0.3,
        test_fraction: 0.0,
        augment,
        ..FilesConfig::default()
    }
    .open(16)
    .unwrap()
}

/// The captions of every sample of `split`, in order.
fn split_captions(ds: &FileDataset, split: Split) -> Vec<String> {
    (0..ds.len(split))
        .map(|i| ds.sample(split, i).unwrap().captions[0].text.clone())
        .collect()
}

#[test]
fn splits_follow_the_image_names_not_where_the_dataset_lives() {
    // The same folder written at two places (one nested deeper) must split identically: the
    // split hashes each image's path relative to the dataset, never the absolute path.
    let a = tmpdir("files-split-a");
    let b = tmpdir("files-split-b").join("moved").join("elsewhere");
    let (ca, cb) = (captions_folder(&a, 40), captions_folder(&b, 40));
    let (da, db) = (
        open(&ca, FileAugment::default()),
        open(&cb, FileAugment::default()),
    );
    for split in [Split::Train, Split::Val] {
        assert_eq!(split_captions(&da, split), split_captions(&db, split));
    }
    let val = da.len(Split::Val);
    assert!(
        (4..=24).contains(&val),
        "{val} of 39 readable images in val at 30 %"
    );
}

#[test]
fn training_crops_and_flips_come_from_the_seed_and_only_in_training() {
    let d = tmpdir("files-augment");
    let captions = captions_folder(&d, 16);
    let crop = FileAugment {
        scale: [0.2, 0.5],
        flip: 0.5,
        ..FileAugment::default()
    };
    let ds = open(&captions, crop);
    let n = ds.len(Split::Train);
    // Same stream, same crop; another stream, another crop; never the evaluation image.
    let mut differs = 0;
    for i in 0..n {
        let a = ds
            .train_sample(i, &mut Rng::derive(3, "t", i as u64))
            .unwrap();
        let b = ds
            .train_sample(i, &mut Rng::derive(3, "t", i as u64))
            .unwrap();
        let c = ds
            .train_sample(i, &mut Rng::derive(4, "t", i as u64))
            .unwrap();
        let eval = ds.sample(Split::Train, i).unwrap();
        assert_eq!(a.image, b.image);
        assert_eq!((a.image.width, a.image.height), (16, 16));
        assert_ne!(a.image, eval.image, "image {i}: no crop applied");
        differs += usize::from(a.image != c.image);
    }
    assert!(differs >= n - 1, "{differs} of {n}");

    // Validation images are resized and centre-cropped whatever the training transform.
    let plain = open(&captions, FileAugment::default());
    for i in 0..ds.len(Split::Val) {
        assert_eq!(
            ds.sample(Split::Val, i).unwrap().image,
            plain.sample(Split::Val, i).unwrap().image
        );
        let ImageSource::File(p) = &ds.records(Split::Val)[i].image else {
            panic!("a captions folder gives files")
        };
        let decoded = workbench::data::decode::read_image(p, &DecodeLimits::default()).unwrap();
        assert_eq!(
            ds.sample(Split::Val, i).unwrap().image,
            resize_and_center_crop(&decoded, 16)
        );
    }

    // A flip alone, always: the evaluation image mirrored.
    let flip = open(
        &captions,
        FileAugment {
            random_crop: false,
            flip: 1.0,
            ..FileAugment::default()
        },
    );
    let a = flip.train_sample(0, &mut Rng::new(1)).unwrap().image;
    assert_eq!(a, hflip(&flip.sample(Split::Train, 0).unwrap().image));
    let off = open(
        &captions,
        FileAugment {
            random_crop: false,
            ..FileAugment::default()
        },
    );
    assert_eq!(
        off.train_sample(0, &mut Rng::new(1)).unwrap().image,
        off.sample(Split::Train, 0).unwrap().image
    );

    // The loader: the same seed gives the same batches, another seed other crops.
    let ds: Arc<dyn PairDataset> = Arc::new(ds);
    let tok = Tokenizer::fit_word_level(&ds.corpus(), 16).unwrap();
    let tok = Arc::new(tok);
    let batch = |seed| {
        let mut l = Loader::new(
            ds.clone(),
            tok.clone(),
            8,
            seed,
            AugmentConfig::default(),
            candle_core::Device::Cpu,
        )
        .unwrap();
        l.next_batch().unwrap()
    };
    let (x, y) = (batch(7), batch(7));
    assert_eq!(x.indices, y.indices);
    let v = |b: &workbench::data::Batch| b.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&x), v(&y));
    assert_ne!(v(&x), v(&batch(8)));
}

/// A PNG of noise (incompressible): `side × side` pixels, about 3 bytes each.
fn noise_png(side: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut im = workbench::data::RgbImage::new(side, side);
    for v in &mut im.data {
        *v = rng.below(256) as u8;
    }
    workbench::data::decode::encode_png(&im).unwrap()
}

#[test]
fn webdataset_shards_are_indexed_not_buffered() {
    let d = tmpdir("files-wds-index");
    let images: Vec<Vec<u8>> = (0..24).map(|i| noise_png(96, i)).collect();
    let captions: Vec<String> = (0..24).map(|i| format!("noise number {i}")).collect();
    let names: Vec<(String, String)> = (0..24)
        .map(|i| (format!("s/{i:04}.png"), format!("s/{i:04}.txt")))
        .collect();
    let mut members: Vec<(&str, &[u8])> = Vec::new();
    for i in 0..24 {
        members.push((&names[i].0, &images[i]));
        members.push((&names[i].1, captions[i].as_bytes()));
    }
    let tar = write_tar(&members);
    let shard = write(&d, "big.tar", &tar);
    let image_bytes: usize = images.iter().map(Vec::len).sum();
    assert!(tar.len() > 600_000, "{} bytes", tar.len());

    let mut spec = DatasetSpec::new(DatasetFormat::WebDataset, &shard);
    spec.val_fraction = 0.0;
    spec.test_fraction = 0.0;
    spec.image_size = 16;
    let ds = FileDataset::open(&spec).unwrap();
    let recs = ds.records(Split::Train);
    assert_eq!(recs.len(), 24);
    // The index holds captions and offsets: no image byte is buffered.
    let buffered: usize = recs.iter().map(|r| r.image.buffered_bytes()).sum();
    let held: usize = buffered + recs.iter().map(|r| r.captions[0].len()).sum::<usize>();
    assert_eq!(buffered, 0);
    assert!(held * 100 < image_bytes, "{held} of {image_bytes}");
    for (i, r) in recs.iter().enumerate() {
        let ImageSource::Member {
            shard: s,
            name,
            offset,
            len,
        } = &r.image
        else {
            panic!("record {i} is not an indexed member: {:?}", r.image.name())
        };
        assert_eq!(*len as usize, images[i].len());
        assert_eq!(read_member(s, *offset, *len, name).unwrap(), images[i]);
        assert!(name.ends_with(&names[i].0));
        assert_eq!(r.captions, [captions[i].clone()]);
    }
    // Images are read on demand, decoded like any other.
    let decoded = workbench::data::decode::decode_image(
        &images[5],
        Path::new("x.png"),
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(
        ds.sample(Split::Train, 5).unwrap().image,
        resize_and_center_crop(&decoded, 16)
    );
    // The indexing stream itself hands out pairs without their bytes.
    let pairs: Vec<_> = PairStream::indexing(open_shards(vec![shard.clone()]), BadSample::Fail)
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(pairs.iter().all(|p| p.image.is_empty() && p.image_len > 0));
    // A shard cut after indexing: the member's read names it.
    std::fs::write(&shard, &tar[..tar.len() / 2]).unwrap();
    let e = ds.sample(Split::Train, 23).unwrap_err().to_string();
    assert!(
        e.contains("big.tar/s/0023.png") && e.contains("changed"),
        "{e}"
    );
}

#[test]
fn a_lossless_webp_file_decodes_exactly() {
    let d = tmpdir("files-webp");
    let im = picture(20, 14, 9);
    let buf = image::RgbImage::from_raw(20, 14, im.data.clone()).unwrap();
    let mut bytes = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
        .encode(buf.as_raw(), 20, 14, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WEBP");
    write(&d, "a.webp", &bytes);
    write(&d, "b.png", &png(1));
    let path = write(
        &d,
        "c.csv",
        b"image,caption\na.webp,a webp picture\nb.png,a png\n",
    );
    let mut spec = DatasetSpec::new(DatasetFormat::Csv, &path);
    spec.val_fraction = 0.0;
    spec.test_fraction = 0.0;
    spec.image_size = 14;
    let ds = FileDataset::open(&spec).unwrap();
    assert_eq!(ds.check(true).unwrap().decoded, 2);
    let decoded =
        workbench::data::decode::read_image(&d.join("a.webp"), &DecodeLimits::default()).unwrap();
    assert_eq!(decoded, im);
    let i = (0..2)
        .find(|&i| ds.sample(Split::Train, i).unwrap().captions[0].text == "a webp picture")
        .unwrap();
    assert_eq!(
        ds.sample(Split::Train, i).unwrap().image,
        resize_and_center_crop(&im, 14)
    );
}

#[test]
fn evaluation_stops_at_bad_images_training_skips_them_and_zero_shot_uses_a_class_tree() {
    let d = tmpdir("files-policies");
    let mut csv = String::from("image,caption\n");
    for i in 0..16u8 {
        write(&d, &format!("good{i}.png"), &png(i));
        write(&d, &format!("bad{i}.png"), &png(i)[..60]);
        writeln!(
            csv,
            "good{i}.png,good picture {i}\nbad{i}.png,bad picture {i}"
        )
        .unwrap();
    }
    let captions = write(&d, "captions.csv", csv.as_bytes());
    write(&d, "classes/red_thing/1.png", &png(1));
    write(&d, "classes/blue_thing/1.png", &png(2));
    write(&d, "classes/blue_thing/2.png", &png(3));
    let cfg = FilesConfig {
        path: captions,
        val_fraction: 0.5,
        test_fraction: 0.0,
        zero_shot: Some(d.join("classes")),
        templates: vec!["a photo of a {}.".into()],
        ..FilesConfig::default()
    };
    let ds = cfg.open(16).unwrap();
    let bad_in = |split| {
        ds.records(split)
            .iter()
            .position(|r| r.image.name().to_string_lossy().contains("bad"))
            .unwrap()
    };
    // Training (skip): a bad image is replaced by the next readable one and counted.
    let i = bad_in(Split::Train);
    assert!(
        ds.sample(Split::Train, i).unwrap().captions[0]
            .text
            .starts_with("good")
    );
    assert!(ds.train_sample(i, &mut Rng::new(0)).is_ok());
    assert!(ds.bad_samples().unwrap().count >= 1);
    // Evaluation (fail): the error names the image.
    let i = bad_in(Split::Val);
    let name = ds.records(Split::Val)[i].image.name().display().to_string();
    let e = ds.sample(Split::Val, i).unwrap_err().to_string();
    assert!(e.contains(&name) && e.contains("PNG"), "{e}");
    // Zero-shot: the class tree's images and prompts.
    let classes = ds.classes().unwrap();
    assert_eq!(classes.names, ["blue thing", "red thing"]);
    assert_eq!(classes.prompts[1][0], ["a photo of a red thing."]);
    assert_eq!(ds.zero_shot_len(), 3);
    assert_eq!(ds.zero_shot_sample(2).unwrap().label, Some(1));
    assert!(ds.corpus().contains(&"a photo of a red thing.".to_string()));
    // A missing class tree is named.
    let e = FilesConfig {
        zero_shot: Some(d.join("no-classes")),
        ..cfg
    }
    .open(16)
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("no-classes"), "{e}");
}
