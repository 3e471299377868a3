//! Malformed inputs: a table of broken files of every format, each of which must give an error
//! naming the file and the problem (or be skipped and counted under `skip`), never a panic.

use super::*;

/// CRC-32 (PNG's), to build PNG files with consistent but absurd headers.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A real PNG whose IHDR claims `w × h` pixels (checksum fixed, so only the size is wrong).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut p = png(1);
    // Signature (8) + length (4) + "IHDR" (4), then width and height.
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

/// A one-member shard whose header claims `size` bytes (base-256 when octal cannot hold it).
fn tar_claiming(size: u64) -> Vec<u8> {
    let mut t = write_tar(&[("k.png", b"abc")]);
    let field = &mut t[124..136];
    field.fill(0);
    field[0] = 0x80;
    field[4..12].copy_from_slice(&size.to_be_bytes());
    set_checksum(&mut t[..512]);
    t
}

/// A captions folder with one good image and a CSV with `rows` after the header.
fn csv_case(d: &Path, rows: &[u8]) -> PathBuf {
    write(d, "ok.png", &png(2));
    let mut text = b"image,caption\nok.png,fine\n".to_vec();
    text.extend_from_slice(rows);
    write(d, "captions.csv", &text)
}

/// A captions folder whose second image, `bad.png` (or the given name), has `bytes`.
fn image_case(d: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    write(d, name, bytes);
    csv_case(d, format!("{name},the bad one\n").as_bytes())
}

fn jsonl_case(d: &Path, line: &[u8]) -> PathBuf {
    write(d, "ok.png", &png(2));
    let mut text = b"{\"image\": \"ok.png\", \"caption\": \"fine\"}\n".to_vec();
    text.extend_from_slice(line);
    write(d, "captions.jsonl", &text)
}

fn coco_case(d: &Path, json: &str) -> PathBuf {
    write(d, "ok.png", &png(2));
    write(d, "captions.json", json.as_bytes())
}

/// A shard with one good pair followed by `members`.
fn tar_case(d: &Path, members: &[(&str, &[u8])]) -> PathBuf {
    let ok = png(3);
    let mut all: Vec<(&str, &[u8])> = vec![("ok.png", &ok), ("ok.txt", b"fine")];
    all.extend_from_slice(members);
    write(d, "shard.tar", &write_tar(&all))
}

/// One malformed input: how to build it, the format, what the error must mention, and whether
/// the whole file is unusable (an error even under `Skip`).
struct Case {
    name: &'static str,
    format: DatasetFormat,
    build: fn(&Path) -> PathBuf,
    /// Substrings of the message: the offending file (and line or entry) and the problem.
    expect: &'static [&'static str],
    fatal: bool,
}

const fn case(
    name: &'static str,
    format: DatasetFormat,
    build: fn(&Path) -> PathBuf,
    expect: &'static [&'static str],
    fatal: bool,
) -> Case {
    Case {
        name,
        format,
        build,
        expect,
        fatal,
    }
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    use DatasetFormat::{ClassFolder, Coco, Csv, Jsonl, Tsv, WebDataset};
    vec![
        // Captions files, CSV / TSV.
        case(
            "csv wrong columns",
            Csv,
            |d| write(d, "captions.csv", b"file,text\na.png,x\n"),
            &["captions.csv:1", "no `image` column", "`file`, `text`"],
            true,
        ),
        case(
            "csv zero-byte",
            Csv,
            |d| write(d, "captions.csv", b""),
            &["captions.csv", "empty captions file"],
            true,
        ),
        case(
            "csv header only blank lines",
            Csv,
            |d| write(d, "captions.csv", b"\n\r\n  \n"),
            &["captions.csv", "empty captions file"],
            true,
        ),
        case(
            "csv quote never closes",
            Csv,
            |d| csv_case(d, b"a.png,\"open\nmore\n"),
            &["captions.csv", "quote opened on line 3 never closes"],
            true,
        ),
        case(
            "csv text after closing quote",
            Csv,
            |d| csv_case(d, b"ok.png,\"x\"y\n"),
            &["captions.csv:3", "bad quoting"],
            false,
        ),
        case(
            "csv too many fields",
            Csv,
            |d| csv_case(d, b"ok.png,a,b\n"),
            &["captions.csv:3", "expected 2 fields", "found 3"],
            false,
        ),
        case(
            "csv too few fields",
            Csv,
            |d| csv_case(d, b"ok.png\n"),
            &["captions.csv:3", "found 1"],
            false,
        ),
        case(
            "csv invalid UTF-8 caption",
            Csv,
            |d| csv_case(d, b"ok.png,caf\xe9\n"),
            &["captions.csv:3", "invalid UTF-8 in `caption`"],
            false,
        ),
        case(
            "csv invalid UTF-8 header",
            Csv,
            |d| write(d, "captions.csv", b"ima\xffge,caption\n"),
            &["captions.csv:1", "header: invalid UTF-8"],
            true,
        ),
        case(
            "csv empty caption",
            Csv,
            |d| csv_case(d, b"ok.png,\n"),
            &["captions.csv:3", "empty caption"],
            false,
        ),
        case(
            "csv whitespace caption",
            Csv,
            |d| csv_case(d, b"ok.png,\"  \t \"\n"),
            &["captions.csv:3", "empty caption"],
            false,
        ),
        case(
            "csv empty image path",
            Csv,
            |d| csv_case(d, b",a caption\n"),
            &["captions.csv:3", "empty image path"],
            false,
        ),
        case(
            "csv path escapes the folder",
            Csv,
            |d| csv_case(d, b"../etc/x.png,a caption\n"),
            &["captions.csv:3", "must be relative"],
            false,
        ),
        case(
            "csv absurd caption length",
            Csv,
            |d| csv_case(d, format!("ok.png,{}\n", "w".repeat(70_000)).as_bytes()),
            &["captions.csv:3", "caption of 70000 bytes"],
            false,
        ),
        case(
            "tsv file that is really CSV",
            Tsv,
            |d| write(d, "captions.tsv", b"image,caption\na.png,x\n"),
            &["captions.tsv:1", "no `image` column"],
            true,
        ),
        case(
            "captions file missing",
            Csv,
            |d| d.join("nowhere.csv"),
            &["nowhere.csv"],
            true,
        ),
        // Images named by a captions file.
        case(
            "missing image",
            Csv,
            |d| csv_case(d, b"gone.png,a caption\n"),
            &[
                "gone.png",
                "missing image (named on line 3 of",
                "captions.csv",
            ],
            false,
        ),
        case(
            "zero-byte image",
            Csv,
            |d| image_case(d, "bad.png", b""),
            &["bad.png", "zero-byte file"],
            false,
        ),
        case(
            "truncated PNG",
            Csv,
            |d| image_case(d, "bad.png", &png(4)[..120]),
            &["bad.png", "corrupt or truncated PNG"],
            false,
        ),
        case(
            "PNG cut inside its signature",
            Csv,
            |d| image_case(d, "bad.png", &png(4)[..6]),
            &["bad.png", "not a PNG, JPEG or WebP image"],
            false,
        ),
        case(
            "PNG with a corrupted data chunk",
            Csv,
            |d| {
                let mut p = png(4);
                let n = p.len();
                for b in &mut p[n - 40..n - 16] {
                    *b ^= 0x5a;
                }
                image_case(d, "bad.png", &p)
            },
            &["bad.png", "corrupt or truncated PNG"],
            false,
        ),
        case(
            "PNG claiming 100000 x 100000 pixels",
            Csv,
            |d| image_case(d, "bad.png", &png_claiming(100_000, 100_000)),
            &["bad.png", "100000 × 100000 pixels"],
            false,
        ),
        case(
            "PNG claiming zero width",
            Csv,
            |d| image_case(d, "bad.png", &png_claiming(0, 30)),
            &["bad.png", "PNG"],
            false,
        ),
        case(
            "JPEG with garbage after its header",
            Csv,
            |d| {
                let mut j = jpeg(5);
                j.truncate(200);
                j.extend(std::iter::repeat_n(0xA5, 300));
                image_case(d, "bad.jpg", &j)
            },
            &["bad.jpg", "JPEG"],
            false,
        ),
        case(
            "JPEG cut in half",
            Csv,
            |d| {
                let j = jpeg(5);
                image_case(d, "bad.jpg", &j[..j.len() / 2])
            },
            &["bad.jpg", "corrupt or truncated JPEG"],
            false,
        ),
        case(
            "JPEG markers only",
            Csv,
            |d| image_case(d, "bad.jpg", b"\xff\xd8\xff\xd9"),
            &["bad.jpg", "JPEG"],
            false,
        ),
        case(
            "text file named .png",
            Csv,
            |d| image_case(d, "bad.png", b"hello, I am not an image"),
            &["bad.png", "not a PNG, JPEG or WebP image"],
            false,
        ),
        case(
            "GIF image",
            Csv,
            |d| image_case(d, "bad.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
            &["bad.gif", "only PNG, JPEG and WebP are supported"],
            false,
        ),
        case(
            "WebP header only",
            Csv,
            |d| image_case(d, "bad.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 "),
            &["bad.webp", "WebP"],
            false,
        ),
        case(
            "image path is a folder",
            Csv,
            |d| {
                std::fs::create_dir_all(d.join("dir.png")).unwrap();
                csv_case(d, b"dir.png,a caption\n")
            },
            &["dir.png", "not a regular file"],
            false,
        ),
        // JSON Lines.
        case(
            "jsonl not JSON",
            Jsonl,
            |d| jsonl_case(d, b"{\"image\": \"ok.png\", caption}\n"),
            &["captions.jsonl:2", "not valid JSON"],
            false,
        ),
        case(
            "jsonl missing caption",
            Jsonl,
            |d| jsonl_case(d, b"{\"image\": \"ok.png\"}\n"),
            &["captions.jsonl:2", "missing key `caption`"],
            false,
        ),
        case(
            "jsonl missing image",
            Jsonl,
            |d| jsonl_case(d, b"{\"caption\": \"x\"}\n"),
            &["captions.jsonl:2", "missing key `image`"],
            false,
        ),
        case(
            "jsonl caption is a number",
            Jsonl,
            |d| jsonl_case(d, b"{\"image\": \"ok.png\", \"caption\": 7}\n"),
            &[
                "captions.jsonl:2",
                "`caption` must be a string or an array of strings, found a number",
            ],
            false,
        ),
        case(
            "jsonl empty caption array",
            Jsonl,
            |d| jsonl_case(d, b"{\"image\": \"ok.png\", \"caption\": []}\n"),
            &["captions.jsonl:2", "empty array"],
            false,
        ),
        case(
            "jsonl empty caption in array",
            Jsonl,
            |d| jsonl_case(d, b"{\"image\": \"ok.png\", \"caption\": [\"a\", \"\"]}\n"),
            &["captions.jsonl:2", "`caption[1]`: empty caption"],
            false,
        ),
        case(
            "jsonl line is an array",
            Jsonl,
            |d| jsonl_case(d, b"[\"ok.png\", \"x\"]\n"),
            &["captions.jsonl:2", "expected a JSON object, found an array"],
            false,
        ),
        case(
            "jsonl invalid UTF-8",
            Jsonl,
            |d| jsonl_case(d, b"{\"image\": \"ok.png\", \"caption\": \"caf\xe9\"}\n"),
            &["captions.jsonl:2", "not valid JSON"],
            false,
        ),
        case(
            "jsonl zero-byte",
            Jsonl,
            |d| write(d, "captions.jsonl", b""),
            &["captions.jsonl", "empty captions file"],
            true,
        ),
        // COCO.
        case(
            "coco not JSON",
            Coco,
            |d| coco_case(d, "{\"images\": [\n{\"id\": 1,,}]}"),
            &["captions.json:2", "not a valid COCO JSON file"],
            true,
        ),
        case(
            "coco top level is an array",
            Coco,
            |d| coco_case(d, "[]"),
            &["captions.json", "expected a JSON object"],
            true,
        ),
        case(
            "coco missing images",
            Coco,
            |d| coco_case(d, r#"{"annotations": []}"#),
            &["captions.json", "missing key `images`"],
            true,
        ),
        case(
            "coco missing annotations",
            Coco,
            |d| coco_case(d, r#"{"images": []}"#),
            &["captions.json", "missing key `annotations`"],
            true,
        ),
        case(
            "coco images not an array",
            Coco,
            |d| coco_case(d, r#"{"images": {}, "annotations": []}"#),
            &[
                "captions.json",
                "`images` must be an array, found an object",
            ],
            true,
        ),
        case(
            "coco image without file_name",
            Coco,
            |d| {
                coco_case(
                    d,
                    r#"{"images": [{"id": 1, "file_name": "ok.png"}, {"id": 2}], "annotations": [{"image_id": 1, "caption": "x"}]}"#,
                )
            },
            &["captions.json", "images[1]: missing key `file_name`"],
            false,
        ),
        case(
            "coco image with string id",
            Coco,
            |d| {
                coco_case(
                    d,
                    r#"{"images": [{"id": 1, "file_name": "ok.png"}, {"id": "2", "file_name": "b.png"}], "annotations": [{"image_id": 1, "caption": "x"}]}"#,
                )
            },
            &[
                "captions.json",
                "images[1]: `id` must be a non-negative integer, found a string",
            ],
            false,
        ),
        case(
            "coco annotation without caption",
            Coco,
            |d| {
                coco_case(
                    d,
                    r#"{"images": [{"id": 1, "file_name": "ok.png"}], "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1}]}"#,
                )
            },
            &["captions.json", "annotations[1]: missing key `caption`"],
            false,
        ),
        case(
            "coco unknown image id",
            Coco,
            |d| {
                coco_case(
                    d,
                    r#"{"images": [{"id": 1, "file_name": "ok.png"}], "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 99, "caption": "y"}]}"#,
                )
            },
            &[
                "captions.json",
                "annotations[1]: image_id 99 is not in `images`",
            ],
            false,
        ),
        case(
            "coco duplicate image id",
            Coco,
            |d| {
                coco_case(
                    d,
                    r#"{"images": [{"id": 1, "file_name": "ok.png"}, {"id": 1, "file_name": "b.png"}], "annotations": [{"image_id": 1, "caption": "x"}]}"#,
                )
            },
            &["captions.json", "images[1]: duplicate image id 1"],
            false,
        ),
        case(
            "coco image without captions",
            Coco,
            |d| {
                coco_case(
                    d,
                    r#"{"images": [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": "b.png"}], "annotations": [{"image_id": 1, "caption": "x"}]}"#,
                )
            },
            &["captions.json", "image id 2 (\"b.png\") has no caption"],
            false,
        ),
        case(
            "coco empty caption",
            Coco,
            |d| {
                coco_case(
                    d,
                    r#"{"images": [{"id": 1, "file_name": "ok.png"}], "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1, "caption": " "}]}"#,
                )
            },
            &["captions.json", "annotations[1]: empty caption"],
            false,
        ),
        // WebDataset shards.
        case(
            "tar image without caption",
            WebDataset,
            |d| tar_case(d, &[("k.png", b"x")]),
            &["shard.tar/k", "image without a `.txt` caption"],
            false,
        ),
        case(
            "tar caption without image",
            WebDataset,
            |d| tar_case(d, &[("k.txt", b"x")]),
            &["shard.tar/k", "caption without an image"],
            false,
        ),
        case(
            "tar caption not UTF-8",
            WebDataset,
            |d| tar_case(d, &[("k.png", b"x"), ("k.txt", b"caf\xe9")]),
            &["shard.tar/k.txt", "caption is not UTF-8"],
            false,
        ),
        case(
            "tar empty caption",
            WebDataset,
            |d| tar_case(d, &[("k.png", b"x"), ("k.txt", b"\n")]),
            &["shard.tar/k.txt", "empty caption"],
            false,
        ),
        case(
            "tar corrupt image member",
            WebDataset,
            |d| {
                let p = png(6);
                tar_case(d, &[("k.png", &p[..100]), ("k.txt", b"a caption")])
            },
            &["shard.tar/k.png", "corrupt or truncated PNG"],
            false,
        ),
        case(
            "tar member claims 10^15 bytes",
            WebDataset,
            |d| write(d, "shard.tar", &tar_claiming(1_000_000_000_000_000)),
            &["shard.tar", "`k.png`", "claims 1000000000000000 bytes"],
            false,
        ),
        case(
            "tar member cut short",
            WebDataset,
            |d| {
                let big = png(7);
                let t = write_tar(&[("k.png", &big)]);
                write(d, "shard.tar", &t[..700])
            },
            &["shard.tar", "truncated: member `k.png`"],
            false,
        ),
        case(
            "tar cut inside a header",
            WebDataset,
            |d| {
                let t = write_tar(&[("a.txt", b"x"), ("a.png", b"y")]);
                write(d, "shard.tar", &t[..1024 + 100])
            },
            &["shard.tar", "ends inside the header at byte 1024"],
            false,
        ),
        case(
            "tar bad checksum",
            WebDataset,
            |d| {
                let mut t = write_tar(&[("k.png", b"x"), ("k.txt", b"y")]);
                t[0] = b'j';
                write(d, "shard.tar", &t)
            },
            &["shard.tar", "checksum mismatch"],
            false,
        ),
        case(
            "tar size not a number",
            WebDataset,
            |d| {
                let mut t = write_tar(&[("k.png", b"x")]);
                t[124..136].copy_from_slice(b"12x45678901\0");
                set_checksum(&mut t[..512]);
                write(d, "shard.tar", &t)
            },
            &["shard.tar", "size field", "is not a number"],
            false,
        ),
        case(
            "text file named .tar",
            WebDataset,
            |d| {
                write(
                    d,
                    "shard.tar",
                    "not a tar archive at all\n".repeat(40).as_bytes(),
                )
            },
            &["shard.tar", "not a tar header"],
            false,
        ),
        case(
            "zero-byte shard",
            WebDataset,
            |d| write(d, "shard.tar", b""),
            &["shard.tar", "zero-byte file"],
            false,
        ),
        case(
            "folder without shards",
            WebDataset,
            |d| {
                std::fs::create_dir_all(d.join("empty")).unwrap();
                d.join("empty")
            },
            &["empty", "no .tar shards"],
            true,
        ),
        // Class folders.
        case(
            "class tree without classes",
            ClassFolder,
            |d| {
                write(d, "root/loose.png", &png(1));
                d.join("root")
            },
            &["root", "no class folders"],
            true,
        ),
        case(
            "class folder without images",
            ClassFolder,
            |d| {
                write(d, "root/cat/1.png", &png(1));
                write(d, "root/dog/readme.txt", b"x");
                d.join("root")
            },
            &["root/dog", "holds no .png"],
            false,
        ),
        case(
            "class image zero-byte",
            ClassFolder,
            |d| {
                write(d, "root/cat/1.png", &png(1));
                write(d, "root/cat/2.png", b"");
                d.join("root")
            },
            &["root/cat/2.png", "zero-byte file"],
            false,
        ),
        case(
            "class image corrupt",
            ClassFolder,
            |d| {
                write(d, "root/cat/1.png", &png(1));
                write(d, "root/cat/2.jpg", &jpeg(1)[..50]);
                d.join("root")
            },
            &["root/cat/2.jpg", "JPEG"],
            false,
        ),
    ]
}

#[test]
fn every_malformed_input_names_the_file_and_the_problem() {
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let d = tmpdir(&format!("ds-bad-{i}"));
        let path = (c.build)(&d);
        let check = |policy| {
            let s = spec(c.format, &path, policy);
            std::panic::catch_unwind(|| open_and_check(&s).map(|(_, sum)| sum))
        };
        let mentions_all = |msg: &str| c.expect.iter().all(|e| msg.contains(e));
        // Fail: an error that names the file and the problem.
        match check(BadSample::Fail) {
            Err(_) => failures.push(format!("{}: panicked under Fail", c.name)),
            Ok(Ok(_)) => failures.push(format!("{}: no error under Fail", c.name)),
            Ok(Err(e)) if !mentions_all(&e.to_string()) => {
                failures.push(format!(
                    "{}: message {:?} lacks {:?}",
                    c.name,
                    e.to_string(),
                    c.expect
                ));
            }
            Ok(Err(_)) => {}
        }
        // Skip: counted with the same message, unless the whole file is unusable.
        match (check(BadSample::Skip), c.fatal) {
            (Err(_), _) => failures.push(format!("{}: panicked under Skip", c.name)),
            (Ok(Err(e)), true) if mentions_all(&e.to_string()) => {}
            (Ok(Err(e)), _) => failures.push(format!("{}: error under Skip: {e}", c.name)),
            (Ok(Ok(sum)), false) => {
                if sum.bad.count == 0 || !sum.bad.examples.iter().any(|m| mentions_all(m)) {
                    failures.push(format!("{}: Skip reported {:?}", c.name, sum.bad));
                }
            }
            (Ok(Ok(_)), true) => failures.push(format!("{}: no error under Skip", c.name)),
        }
        let _ = std::fs::remove_dir_all(&d);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn skipped_images_are_replaced_by_the_next_readable_one() {
    let d = tmpdir("ds-skip-decode");
    write(&d, "a.png", &png(1));
    write(&d, "b.png", &png(2)[..90]);
    write(&d, "c.png", &png(3));
    let path = write(&d, "c.csv", b"image,caption\na.png,x\nb.png,y\nc.png,z\n");
    let ds = FileDataset::open(&spec(DatasetFormat::Csv, &path, BadSample::Skip)).unwrap();
    // Index 1 is broken: the sample of index 2 stands in, and the problem is counted once.
    assert_eq!(ds.sample(Split::Train, 1).unwrap().captions[0].text, "z");
    assert_eq!(ds.sample(Split::Train, 1).unwrap().captions[0].text, "z");
    let r = ds.report();
    assert_eq!(r.count, 1);
    assert!(
        r.summary().contains("b.png: corrupt or truncated PNG"),
        "{}",
        r.summary()
    );
    let strict = FileDataset::open(&spec(DatasetFormat::Csv, &path, BadSample::Fail)).unwrap();
    assert!(strict.sample(Split::Train, 1).is_err());
    assert!(strict.sample(Split::Train, 3).is_err());
}

#[test]
fn check_data_command_counts_pairs_and_reports_bad_samples() {
    use clap::Parser as _;
    let d = tmpdir("ds-cli");
    write(&d, "a.png", &png(1));
    write(&d, "b.png", &png(2)[..80]);
    let path = write(
        &d,
        "c.csv",
        b"image,caption\na.png,x\nb.png,y\ngone.png,z\n",
    );
    let run = |policy: &str| {
        let argv = [
            "workbench",
            "check-data",
            path.to_str().unwrap(),
            "--policy",
            policy,
        ];
        viz::cli::run(viz::cli::Cli::try_parse_from(argv).unwrap())
    };
    let e = format!("{:#}", run("fail").unwrap_err());
    assert!(e.contains("gone.png") && e.contains("missing image"), "{e}");
    run("skip").unwrap();
    let argv = ["workbench", "check-data", "x.unknown"];
    let e = format!(
        "{:#}",
        viz::cli::run(viz::cli::Cli::try_parse_from(argv).unwrap()).unwrap_err()
    );
    assert!(e.contains("x.unknown"), "{e}");
}
