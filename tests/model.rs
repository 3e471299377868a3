//! The two towers: attention weights, pooling at EOS, fused kernels vs references.

use crate::util::{assert_close, tiny_config};
use candle_core::{D, Device, IndexOp, Tensor};
use workbench::model::{Capture, ClipModel, Kernels, ModelConfig};
use workbench::params::Params;
use workbench::train::Trainer;

fn model(kernels: Kernels, params: &Params) -> ClipModel {
    let cfg = ModelConfig {
        kernels,
        ..ModelConfig::tiny()
    };
    ClipModel::new(&cfg, 32, 40, 16, &params.scope("model")).unwrap()
}

fn inputs() -> (Tensor, Tensor, Tensor) {
    let mut rng = workbench::rng::Rng::new(5);
    let images = Tensor::from_vec(
        rng.normal_vec(3 * 3 * 32 * 32, 1.0),
        (3, 3, 32, 32),
        &Device::Cpu,
    )
    .unwrap();
    let ids: Vec<u32> = (0..3 * 12).map(|i| (i * 7 % 40) as u32).collect();
    let tokens = Tensor::from_vec(ids, (3, 12), &Device::Cpu).unwrap();
    let eos = Tensor::new(&[11u32, 4, 7], &Device::Cpu).unwrap();
    (images, tokens, eos)
}

#[test]
fn attention_weights_are_row_stochastic_and_reproduce_each_layer() {
    let params = Params::new(0, &Device::Cpu);
    let m = model(Kernels::Fused, &params);
    let (images, tokens, eos) = inputs();
    let img = m.encode_image(&images, Capture::ATTENTION).unwrap();
    let txt = m.encode_text(&tokens, &eos, Capture::ATTENTION).unwrap();
    for (enc, blocks, causal) in [
        (&img, m.vision().encoder().blocks(), false),
        (&txt, m.text().encoder().blocks(), true),
    ] {
        let weights = enc.attentions.as_ref().unwrap();
        let inputs = enc.tower.encoder.inputs.as_ref().unwrap();
        assert_eq!(weights.len(), blocks.len());
        for (layer, (w, block)) in weights.iter().zip(blocks).enumerate() {
            let (b, h, l, l2) = w.dims4().unwrap();
            assert_eq!((b, h, l), (3, 4, l2));
            // Rows sum to one, entries are probabilities, causal rows see no future keys.
            let sums = w.sum(D::Minus1).unwrap();
            assert_close(&sums, &sums.ones_like().unwrap(), 1e-5, "row sums");
            let v: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|&p| (0.0..=1.0 + 1e-6).contains(&p)));
            if causal {
                let upper = w
                    .i((.., .., 0, 1..))
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                assert_eq!(upper.to_scalar::<f32>().unwrap(), 0.0);
            }
            // P·V through the output projection reproduces the attention sub-layer's output.
            let (ln, attn) = block.attention();
            let x = ln.forward(&inputs[layer]).unwrap();
            let (out, _) = attn.forward(&x, causal, false).unwrap();
            let rebuilt = attn
                .project_heads(&w.matmul(&attn.values(&x).unwrap()).unwrap())
                .unwrap();
            assert_close(
                &rebuilt,
                &out,
                1e-5,
                &format!("layer {layer} output from its weights"),
            );
        }
    }
    // Asking for weights does not change the embeddings.
    let plain = m.encode_image(&images, Capture::NONE).unwrap();
    assert_close(
        &plain.embedding,
        &img.embedding,
        0.0,
        "embedding with and without capture",
    );
}

#[test]
fn fused_and_reference_kernels_give_the_same_model() {
    let params = Params::new(0, &Device::Cpu);
    let (fused, reference) = (
        model(Kernels::Fused, &params),
        model(Kernels::Reference, &params),
    );
    let (images, tokens, eos) = inputs();
    let a = fused.encode_image(&images, Capture::ALL).unwrap();
    let b = reference.encode_image(&images, Capture::ALL).unwrap();
    assert_close(&a.embedding, &b.embedding, 1e-5, "image embedding");
    assert_close(
        a.tokens.as_ref().unwrap(),
        b.tokens.as_ref().unwrap(),
        1e-5,
        "patch embeddings",
    );
    let a = fused.encode_text(&tokens, &eos, Capture::ALL).unwrap();
    let b = reference.encode_text(&tokens, &eos, Capture::ALL).unwrap();
    assert_close(&a.embedding, &b.embedding, 1e-5, "text embedding");
    for (x, y) in a
        .attentions
        .unwrap()
        .iter()
        .zip(b.attentions.unwrap().iter())
    {
        assert_close(x, y, 1e-6, "attention weights");
    }
}

#[test]
fn text_is_pooled_at_the_explicit_eos_and_ignores_later_tokens() {
    let params = Params::new(0, &Device::Cpu);
    let m = model(Kernels::Fused, &params);
    let (_, tokens, eos) = inputs();
    let out = m.encode_text(&tokens, &eos, Capture::TOKENS).unwrap();
    // The pooled embedding equals the projected token at the EOS position of each row.
    let per_token = out.tokens.unwrap();
    for (row, e) in [(0usize, 11usize), (1, 4), (2, 7)] {
        assert_close(
            &out.embedding.i(row).unwrap(),
            &per_token.i((row, e)).unwrap(),
            1e-6,
            "pool at eos",
        );
    }
    // Changing tokens after EOS (padding) changes nothing; changing a token before it does.
    let mut ids: Vec<u32> = tokens.flatten_all().unwrap().to_vec1().unwrap();
    ids[12 + 9] = 3; // row 1, position 9 > eos 4
    let after = Tensor::from_vec(ids.clone(), (3, 12), &Device::Cpu).unwrap();
    let changed = m.encode_text(&after, &eos, Capture::NONE).unwrap();
    assert_close(
        &changed.embedding,
        &out.embedding,
        0.0,
        "padding is ignored",
    );
    ids[12 + 2] = 3; // row 1, position 2 < eos
    let before = Tensor::from_vec(ids, (3, 12), &Device::Cpu).unwrap();
    let changed = m.encode_text(&before, &eos, Capture::NONE).unwrap();
    assert!(
        kernels::check::max_abs_diff(
            &changed.embedding.i(1).unwrap(),
            &out.embedding.i(1).unwrap()
        )
        .unwrap()
            > 1e-4
    );
}

#[test]
fn parameter_names_are_stable_and_sorted() {
    let trainer = Trainer::new(tiny_config()).unwrap();
    let names: Vec<String> = trainer.params().all().into_iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for expected in [
        "loss.clip.logit_scale",
        "model.image_proj.weight",
        "model.text.blocks.0.attn.qkv.weight",
        "model.text.pos",
        "model.text.token_embed",
        "model.vision.blocks.1.mlp.fc.bias",
        "model.vision.cls",
        "model.vision.patch_embed.weight",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected}: {names:?}"
        );
    }
    // Same seed, same initial values; another seed, others.
    let again = Trainer::new(tiny_config()).unwrap();
    let w = |t: &Trainer| {
        t.params()
            .get("model.vision.patch_embed.weight")
            .unwrap()
            .as_tensor()
            .clone()
    };
    assert_close(&w(&trainer), &w(&again), 0.0, "init");
    let mut cfg = tiny_config();
    cfg.train.seed = 1;
    assert!(
        kernels::check::max_abs_diff(&w(&trainer), &w(&Trainer::new(cfg).unwrap())).unwrap() > 0.0
    );
}
