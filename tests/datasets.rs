//! Datasets from files: every loader on small valid fixtures, transforms, streaming, a short
//! training run on files, and a table of malformed inputs, each of which must give an error
//! naming the file and the problem (or be skipped and counted), never a panic. The malformed
//! inputs are in `datasets/malformed.rs`.

mod malformed;

use crate::util::tmpdir;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use workbench::data::captions::CsvColumns;
use workbench::data::decode::{DecodeLimits, decode_image, encode_png};
use workbench::data::files::{CheckSummary, prefetch};
use workbench::data::webdataset::{PairStream, open_shards, set_checksum, write_tar};
use workbench::data::{
    BadSample, DatasetFormat, DatasetSpec, FileDataset, PairDataset, RgbImage, Split, Tokenizer,
};

/// A `w × h` image with a colour gradient, distinct per `seed`.
pub(crate) fn picture(w: usize, h: usize, seed: u8) -> RgbImage {
    let mut im = RgbImage::new(w, h);
    for y in 0..h {
        for x in 0..w {
            im.set_pixel(x, y, [(x * 7) as u8 ^ seed, (y * 5) as u8, seed]);
        }
    }
    im
}

pub(crate) fn png(seed: u8) -> Vec<u8> {
    encode_png(&picture(40, 30, seed)).unwrap()
}

fn jpeg(seed: u8) -> Vec<u8> {
    let im = picture(24, 24, seed);
    let buf = image::RgbImage::from_raw(24, 24, im.data).unwrap();
    let mut out = Vec::new();
    buf.write_to(
        &mut std::io::Cursor::new(&mut out),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    out
}

pub(crate) fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A spec that keeps every image in the training split.
fn spec(format: DatasetFormat, path: &Path, policy: BadSample) -> DatasetSpec {
    let mut s = DatasetSpec::new(format, path);
    s.val_fraction = 0.0;
    s.test_fraction = 0.0;
    s.image_size = 16;
    s.policy = policy;
    s
}

fn open_and_check(s: &DatasetSpec) -> workbench::Result<(FileDataset, CheckSummary)> {
    let ds = FileDataset::open(s)?;
    let summary = ds.check(true)?;
    Ok((ds, summary))
}

#[test]
fn csv_tsv_and_jsonl_folders_load_with_groups() {
    let d = tmpdir("ds-csv");
    write(&d, "img/a.png", &png(1));
    write(&d, "img/b.jpg", &jpeg(2));
    let csv = write(
        &d,
        "captions.csv",
        b"id,image,caption\r\n1,img/a.png,\"a red, square\"\r\n2,img/b.jpg,a dog\r\n3,img/a.png,\"the \"\"same\"\" image\"\r\n",
    );
    let tsv = write(
        &d,
        "captions.tsv",
        b"file\ttext\nimg/a.png\tone\nimg/b.jpg\ttwo\n",
    );
    let jsonl = write(
        &d,
        "captions.jsonl",
        b"{\"image\":\"img/a.png\",\"caption\":[\"x\",\"y\"]}\n\n{\"image\":\"img/b.jpg\",\"caption\":\"z\"}\n",
    );
    let (ds, sum) = open_and_check(&spec(DatasetFormat::Csv, &csv, BadSample::Fail)).unwrap();
    assert_eq!(sum.images, [2, 0, 0]);
    assert_eq!((sum.captions, sum.decoded), (3, 2));
    let a = ds.sample(Split::Train, 0).unwrap();
    assert_eq!((a.image.width, a.image.height), (16, 16));
    let texts: Vec<&str> = a.captions.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["a red, square", "the \"same\" image"]);
    assert_eq!(a.group, Some(0));
    assert_eq!(ds.sample(Split::Train, 1).unwrap().group, Some(1));
    assert!(ds.corpus().contains(&"a dog".to_string()));

    let mut t = spec(DatasetFormat::Tsv, &tsv, BadSample::Fail);
    t.columns = CsvColumns {
        image: "file".into(),
        caption: "text".into(),
    };
    assert_eq!(open_and_check(&t).unwrap().1.captions, 2);
    assert_eq!(DatasetFormat::detect(&jsonl).unwrap(), DatasetFormat::Jsonl);
    let (ds, sum) = open_and_check(&spec(DatasetFormat::Jsonl, &jsonl, BadSample::Fail)).unwrap();
    assert_eq!((sum.images, sum.captions), ([2, 0, 0], 3));
    assert_eq!(ds.sample(Split::Train, 0).unwrap().captions.len(), 2);

    // Splits by name hash: deterministic and complete.
    let mut s = spec(DatasetFormat::Csv, &csv, BadSample::Fail);
    s.val_fraction = 0.5;
    s.test_fraction = 0.5;
    let ds = FileDataset::open(&s).unwrap();
    assert_eq!(ds.len(Split::Train), 0);
    assert_eq!(ds.len(Split::Val) + ds.len(Split::Test), 2);
}

#[test]
fn coco_captions_load() {
    let d = tmpdir("ds-coco");
    write(&d, "images/000001.png", &png(3));
    write(&d, "images/000002.png", &png(4));
    let json = write(
        &d,
        "annotations/captions_val.json",
        br#"{"info": {}, "images": [{"id": 1, "file_name": "000001.png", "width": 40},
            {"id": 2, "file_name": "000002.png"}],
            "annotations": [{"id": 10, "image_id": 2, "caption": "A blue thing."},
            {"id": 11, "image_id": 1, "caption": "A red thing."},
            {"id": 12, "image_id": 2, "caption": "Something blue."}]}"#,
    );
    let mut s = spec(DatasetFormat::Coco, &json, BadSample::Fail);
    s.images = Some(d.join("images"));
    let (ds, sum) = open_and_check(&s).unwrap();
    assert_eq!((sum.images, sum.captions, sum.decoded), ([2, 0, 0], 3, 2));
    let second = ds.sample(Split::Train, 1).unwrap();
    assert_eq!(second.captions[1].text, "Something blue.");
}

#[test]
fn webdataset_shards_load_and_stream() {
    let d = tmpdir("ds-wds");
    let (p1, p2, j) = (png(5), png(6), jpeg(7));
    let s0 = write_tar(&[
        ("train/0001.png", &p1),
        ("train/0001.txt", b"first pair"),
        ("train/0001.json", b"{}"),
        ("train/0002.png", &p2),
        ("train/0002.txt", b"second pair"),
    ]);
    let s1 = write_tar(&[("train/0003.txt", b"third pair"), ("train/0003.jpg", &j)]);
    write(&d, "shards/shard-000.tar", &s0);
    write(&d, "shards/shard-001.tar", &s1);
    let folder = d.join("shards");
    assert_eq!(
        DatasetFormat::detect(&folder).unwrap(),
        DatasetFormat::WebDataset
    );
    let (ds, sum) =
        open_and_check(&spec(DatasetFormat::WebDataset, &folder, BadSample::Fail)).unwrap();
    assert_eq!((sum.images, sum.decoded), ([3, 0, 0], 3));
    assert_eq!(
        ds.sample(Split::Train, 2).unwrap().captions[0].text,
        "third pair"
    );

    // Streaming: pairs are read and decoded on a background thread, in shard order.
    let shards = vec![folder.join("shard-000.tar"), folder.join("shard-001.tar")];
    let stream = PairStream::new(open_shards(shards), BadSample::Fail).map(|p| {
        let p = p?;
        let im = decode_image(&p.image, &p.image_name, &DecodeLimits::default())?;
        Ok::<_, workbench::Error>((im.width, p.caption))
    });
    let got: Vec<_> = prefetch(stream, 2).collect::<Result<_, _>>().unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], (40, "first pair".to_string()));
    assert_eq!(got[2].0, 24);
}

#[test]
fn class_folders_give_zero_shot_classes_with_prompts() {
    let d = tmpdir("ds-classes");
    write(&d, "root/golden_retriever/1.png", &png(8));
    write(&d, "root/golden_retriever/2.jpg", &jpeg(9));
    write(&d, "root/tabby_cat/1.png", &png(10));
    write(&d, "root/tabby_cat/notes.txt", b"not an image");
    let root = d.join("root");
    assert_eq!(
        DatasetFormat::detect(&root).unwrap(),
        DatasetFormat::ClassFolder
    );
    let mut s = spec(DatasetFormat::ClassFolder, &root, BadSample::Fail);
    s.templates = vec!["a photo of a {}.".into(), "a {} in the wild.".into()];
    let (ds, sum) = open_and_check(&s).unwrap();
    assert_eq!(sum.zero_shot, (3, 2));
    let classes = ds.classes().unwrap();
    assert_eq!(classes.names, ["golden retriever", "tabby cat"]);
    assert_eq!(
        classes.prompts[1][0],
        ["a photo of a tabby cat.", "a tabby cat in the wild."]
    );
    let z = ds.zero_shot_sample(2).unwrap();
    assert_eq!(z.label, Some(1));
    assert_eq!((z.image.width, z.image.height), (16, 16));
    assert_eq!(ds.len(Split::Val), 3);
    s.templates = vec!["no placeholder".into()];
    let e = FileDataset::open(&s).err().unwrap().to_string();
    assert!(e.contains("data.templates"), "{e}");
}

#[test]
fn a_tiny_model_trains_on_a_captions_folder() {
    let d = tmpdir("ds-train");
    let mut csv = String::from("image,caption\n");
    for i in 0..24u8 {
        write(&d, &format!("img/{i}.png"), &png(i * 10));
        writeln!(csv, "img/{i}.png,picture number {i}").unwrap();
    }
    // A bad row and a missing image: skipped and counted under the training policy.
    csv.push_str("img/missing.png,gone\nimg/0.png,\n");
    let path = write(&d, "captions.csv", csv.as_bytes());
    let mut s = spec(DatasetFormat::Csv, &path, BadSample::for_training());
    s.image_size = 32;
    let ds = FileDataset::open(&s).unwrap();
    assert_eq!(ds.report().count, 2);
    let mut cfg = crate::util::tiny_config();
    cfg.train.steps = 3;
    cfg.train.batch_size = 8;
    let tok = Tokenizer::fit_word_level(&ds.corpus(), cfg.tokenizer.context_length).unwrap();
    let mut trainer =
        workbench::train::Trainer::with_parts(cfg, Arc::new(ds), tok, candle_core::Device::Cpu)
            .unwrap();
    for _ in 0..3 {
        assert!(trainer.step().unwrap().loss.is_finite());
    }
}
