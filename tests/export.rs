//! Export: the `.npy` writer byte for byte against NumPy, embeddings of a model given as model,
//! tokenizer and batches, and `workbench export` of a run (weights readable as safetensors).
//! `tests/fixtures/check_export.py` checks the same files from Python (run by `.ci/run`).

use crate::util::{tiny_config, tmpdir};
use std::path::Path;
use workbench::data::Split;
use workbench::export::{
    ExportBatch, ExportIndex, dataset_batches, export_embeddings, npy_f32, save_weights,
};
use workbench::train::Trainer;

/// `numpy.save` of `np.array([[1, -2, 0.5], [0, 3.25, -0.125]], dtype='<f4')` (NumPy 2.x):
/// magic, version 1.0, header length 118 (0x76), the dict padded with spaces to 128 bytes,
/// then 6 little-endian f32.
///
/// ```python
/// b = io.BytesIO(); np.save(b, np.array([[1.0, -2.0, 0.5], [0.0, 3.25, -0.125]], dtype='<f4'))
/// b.getvalue()[128:].hex()  # '0000803f000000c00000003f0000000000005040000000be'
/// ```
#[test]
fn npy_bytes_are_numpys() {
    let bytes = npy_f32(&[2, 3], &[1.0, -2.0, 0.5, 0.0, 3.25, -0.125]).unwrap();
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    let mut expected = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
    expected.extend_from_slice(dict.as_bytes());
    expected.resize(127, b' ');
    expected.push(b'\n');
    let data = "0000803f000000c00000003f0000000000005040000000be";
    for i in (0..data.len()).step_by(2) {
        expected.push(u8::from_str_radix(&data[i..i + 2], 16).unwrap());
    }
    assert_eq!(bytes, expected);
    assert_eq!(bytes.len(), 152);

    // Other shapes, as numpy.save writes their headers (data starts at byte 128).
    for (shape, dict) in [
        (
            vec![0usize, 4],
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }",
        ),
        (
            vec![123_456, 7],
            "{'descr': '<f4', 'fortran_order': False, 'shape': (123456, 7), }",
        ),
        (
            vec![3],
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
        ),
    ] {
        let n: usize = shape.iter().product();
        let b = npy_f32(&shape, &vec![0.0; n]).unwrap();
        assert_eq!(&b[..10], b"\x93NUMPY\x01\x00\x76\x00", "{shape:?}");
        assert_eq!(&b[10..10 + dict.len()], dict.as_bytes(), "{shape:?}");
        assert!(b[10 + dict.len()..127].iter().all(|&c| c == b' '));
        assert_eq!(b[127], b'\n');
        assert_eq!(b.len(), 128 + 4 * n);
    }
    // A header that must grow past 128 bytes keeps the 64-byte alignment.
    let long = npy_f32(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], &[2.0]).unwrap();
    let hlen = u16::from_le_bytes([long[8], long[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0);
    assert_eq!(long[10 + hlen - 1], b'\n');
    assert!(npy_f32(&[2, 2], &[1.0]).is_err());
}

/// The rows of a `(N, D)` float32 `.npy` file written by [`npy_f32`].
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    let dims = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = dims
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

#[test]
fn embeddings_of_a_model_given_as_parts() {
    let trainer = Trainer::new(tiny_config()).unwrap();
    let out = tmpdir("export-parts");
    let batches = dataset_batches(trainer.dataset().as_ref(), Split::Val, Some(10), 4);
    let index = export_embeddings(
        trainer.model(),
        trainer.tokenizer(),
        trainer.device(),
        batches,
        &out,
    )
    .unwrap();
    let d = trainer.config().model.embed_dim;
    assert_eq!(index.dim, d);
    let (ishape, idata) = read_npy(&out.join("image_embeddings.npy"));
    let (tshape, tdata) = read_npy(&out.join("text_embeddings.npy"));
    assert_eq!(ishape, [10, d]);
    assert_eq!(tshape, [index.texts.len(), d]);
    assert_eq!(index.texts.len(), 30, "three captions per shapes image");
    for row in idata.chunks(d).chain(tdata.chunks(d)) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    // Rows match what evaluation embeds, and captions.json says which row is which.
    let s = trainer.dataset().sample(Split::Val, 7).unwrap();
    let dev = trainer.device();
    let e = workbench::eval::embed_images(trainer.model(), &[s.image], 1, dev).unwrap();
    let e = e.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let row = &idata[7 * d..8 * d];
    assert!(e.iter().zip(row).all(|(a, b)| (a - b).abs() < 1e-5));
    let json: ExportIndex =
        serde_json::from_slice(&std::fs::read(out.join("captions.json")).unwrap()).unwrap();
    assert_eq!(json, index);
    assert_eq!(json.images[7].id, "val/7");
    let t = json.texts.iter().find(|t| t.image_row == 7).unwrap();
    assert_eq!(t.caption, s.captions[0].text);
    let te = workbench::eval::embed_texts(
        trainer.model(),
        trainer.tokenizer(),
        std::slice::from_ref(&t.caption),
        1,
        dev,
    )
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1::<f32>()
    .unwrap();
    let trow = &tdata[t.row * d..(t.row + 1) * d];
    assert!(te.iter().zip(trow).all(|(a, b)| (a - b).abs() < 1e-5));

    // Hand-made batches: any images and captions, mismatched lengths refused.
    let bad = ExportBatch {
        ids: vec!["a".into()],
        images: Vec::new(),
        captions: Vec::new(),
    };
    let e = export_embeddings(
        trainer.model(),
        trainer.tokenizer(),
        dev,
        [Ok(bad)],
        &tmpdir("export-bad"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("must match"), "{e}");
}

#[test]
fn export_command_writes_weights_and_embeddings_of_a_run() {
    use clap::Parser as _;
    let run = tmpdir("export-run");
    let mut trainer = Trainer::new(tiny_config()).unwrap();
    trainer.step().unwrap();
    trainer.save_checkpoint(&run.join("checkpoint")).unwrap();
    let out = run.join("export");
    let argv = [
        "workbench",
        "export",
        "--run",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--split",
        "test",
        "--limit",
        "12",
        "--batch",
        "5",
    ];
    viz::cli::run(viz::cli::Cli::try_parse_from(argv).unwrap()).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let params = trainer.params().tensors();
    assert_eq!(st.len(), params.len());
    for (name, t) in &params {
        let view = st.tensor(name).unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        assert_eq!(view.shape(), t.dims(), "{name}");
        let want = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(got, want, "{name}");
    }
    let (shape, _) = read_npy(&out.join("image_embeddings.npy"));
    assert_eq!(shape, [12, trainer.config().model.embed_dim]);
    let index: ExportIndex =
        serde_json::from_slice(&std::fs::read(out.join("captions.json")).unwrap()).unwrap();
    assert_eq!(index.images[11].id, "test/11");
    // An existing, non-empty output folder is refused; so is a run that is not there.
    let e = viz::cli::run(viz::cli::Cli::try_parse_from(argv).unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("not empty"), "{e:#}");
    let elsewhere = run.join("elsewhere");
    let mut missing = argv;
    missing[3] = "no-such-run";
    missing[5] = elsewhere.to_str().unwrap();
    let e = viz::cli::run(viz::cli::Cli::try_parse_from(missing).unwrap()).unwrap_err();
    assert!(format!("{e:#}").contains("no-such-run"), "{e:#}");

    // Weights alone, from any named tensors: f16 is written as f32.
    let t = candle_core::Tensor::new(&[1.5f32, -2.0], &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(candle_core::DType::F16)
        .unwrap();
    let path = run.join("w.safetensors");
    save_weights(&[("x".to_string(), t)].into_iter().collect(), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("x").unwrap().dtype(), safetensors::Dtype::F32);
}
