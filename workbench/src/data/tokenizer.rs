//! Text tokenization on top of the `tokenizers` crate.
//!
//! Two ways to get a [`Tokenizer`]:
//! - [`Tokenizer::fit_word_level`]: a word-level vocabulary fitted on a dataset's captions
//!   (lower-casing, whitespace and punctuation split, `[PAD] [UNK] [BOS] [EOS]` specials,
//!   `[BOS] … [EOS]` template). Saved as `tokenizer.json` with every run.
//! - [`Tokenizer::from_file`]: any Hugging Face `tokenizer.json` (CLIP's BPE, WordPiece, …). BOS,
//!   EOS and PAD are found among the usual special-token names; PAD falls back to EOS.
//!
//! [`Tokenizer::encode`] always yields exactly `context_length` ids: BOS, the text, EOS, then PAD.
//! A tokenizer loaded by [`Tokenizer::from_file_with`] without BOS (SigLIP's) starts with the
//! text itself; one with `pad_to_context: true` makes batches of full context length (a
//! bidirectional text tower pooled at the last position sees the padding).
//! Text longer than the context is truncated and still ends in EOS, and the EOS position is
//! returned explicitly — the text tower pools there (never at the argmax of the ids).

use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::normalizers::Lowercase;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

/// Special tokens of the fitted word-level tokenizer, in id order.
pub const WORD_LEVEL_SPECIALS: [&str; 4] = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"];

const BOS_NAMES: [&str; 5] = ["[BOS]", "<|startoftext|>", "<s>", "<bos>", "[CLS]"];
const EOS_NAMES: [&str; 5] = ["[EOS]", "<|endoftext|>", "</s>", "<eos>", "[SEP]"];
const PAD_NAMES: [&str; 3] = ["[PAD]", "<pad>", "<|pad|>"];

/// A tokenizer with explicit BOS/EOS/PAD ids and a fixed context length.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    context_length: usize,
    add_bos: bool,
    pad_to_context: bool,
}

/// One encoded text, padded to the context length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    /// `context_length` token ids: BOS, text, EOS, PAD….
    pub ids: Vec<u32>,
    /// Position of EOS (= number of real tokens − 1). The text tower pools here.
    pub eos: usize,
    /// Byte span of each token in the input text; `(0, 0)` for specials and padding.
    pub offsets: Vec<(usize, usize)>,
    /// Whether each position is a special token or padding.
    pub special: Vec<bool>,
    /// Whether the text was cut to fit the context.
    pub truncated: bool,
}

impl Encoding {
    /// For each position, the index of the mention whose span contains that token, if any.
    /// `spans` are byte ranges of the encoded text (e.g. a caption's mentions).
    pub fn token_spans(&self, spans: &[(usize, usize)]) -> Vec<Option<usize>> {
        self.offsets
            .iter()
            .zip(&self.special)
            .map(|(&(s, e), &special)| {
                if special || e <= s {
                    return None;
                }
                spans.iter().position(|&(a, b)| s >= a && e <= b)
            })
            .collect()
    }
}

fn tok_err(path: Option<&Path>, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        path: path.map(Path::to_path_buf),
        msg: msg.to_string(),
    }
}

fn pre_tokenizer() -> Sequence {
    Sequence::new(vec![Whitespace.into(), Punctuation::default().into()])
}

impl Tokenizer {
    /// Fits a word-level tokenizer on `corpus`. Words are ordered by descending frequency, then
    /// alphabetically, so the same corpus always gives the same ids.
    pub fn fit_word_level(corpus: &[String], context_length: usize) -> Result<Self> {
        let pre = pre_tokenizer();
        let mut counts: HashMap<String, u64> = HashMap::new();
        for text in corpus {
            let mut pts = PreTokenizedString::from(text.to_lowercase().as_str());
            pre.pre_tokenize(&mut pts).map_err(|e| tok_err(None, e))?;
            for (word, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
                *counts.entry(word.to_string()).or_default() += 1;
            }
        }
        let mut words: Vec<(String, u64)> = counts
            .into_iter()
            .filter(|(w, _)| !WORD_LEVEL_SPECIALS.contains(&w.as_str()))
            .collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let vocab = WORD_LEVEL_SPECIALS
            .iter()
            .map(ToString::to_string)
            .chain(words.into_iter().map(|(w, _)| w))
            .enumerate()
            .map(|(i, w)| (w, i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tok_err(None, e))?;
        let post = TemplateProcessing::builder()
            .try_single("[BOS] $A [EOS]")
            .map_err(|e| tok_err(None, e))?
            .special_tokens(vec![("[BOS]", 2), ("[EOS]", 3)])
            .build()
            .map_err(|e| tok_err(None, e))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner
            .with_normalizer(Some(Lowercase))
            .with_pre_tokenizer(Some(pre_tokenizer()))
            .with_post_processor(Some(post));
        inner.add_special_tokens(
            &WORD_LEVEL_SPECIALS
                .iter()
                .map(|s| tokenizers::AddedToken::from(*s, true))
                .collect::<Vec<_>>(),
        );
        Self::wrap(inner, context_length, None)
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>, context_length: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| tok_err(Some(path), format!("not a valid tokenizer.json: {e}")))?;
        Self::wrap(inner, context_length, Some(path))
    }

    fn wrap(
        inner: tokenizers::Tokenizer,
        context_length: usize,
        path: Option<&Path>,
    ) -> Result<Self> {
        if context_length < 3 {
            return Err(Error::config(
                "tokenizer.context_length",
                format!("{context_length} leaves no room for BOS, a word and EOS (need >= 3)"),
            ));
        }
        Self::wrap_with(inner, context_length, path, true)
    }

    fn wrap_with(
        inner: tokenizers::Tokenizer,
        context_length: usize,
        path: Option<&Path>,
        add_bos: bool,
    ) -> Result<Self> {
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let eos = find(&EOS_NAMES).ok_or_else(|| {
            tok_err(
                path,
                format!("no end-of-text token; looked for {EOS_NAMES:?}"),
            )
        })?;
        let bos = match find(&BOS_NAMES) {
            Some(id) => id,
            None if !add_bos => eos,
            None => {
                return Err(tok_err(
                    path,
                    format!("no begin-of-text token; looked for {BOS_NAMES:?}"),
                ));
            }
        };
        let pad = find(&PAD_NAMES).unwrap_or(eos);
        Ok(Self {
            inner,
            bos,
            eos,
            pad,
            context_length,
            add_bos,
            pad_to_context: false,
        })
    }

    /// Loads a Hugging Face `tokenizer.json` whose texts start with BOS only if `bos` (a
    /// tokenizer without a BOS token is accepted then), and whose batches are padded to the full
    /// context when `pad_to_context`.
    pub fn from_file_with(
        path: impl AsRef<Path>,
        context_length: usize,
        bos: bool,
        pad_to_context: bool,
    ) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| tok_err(Some(path), format!("not a valid tokenizer.json: {e}")))?;
        if context_length < 2 + usize::from(bos) {
            return Err(Error::config(
                "tokenizer.context_length",
                format!("{context_length} leaves no room for the text and EOS"),
            ));
        }
        let mut t = Self::wrap_with(inner, context_length, Some(path), bos)?;
        t.pad_to_context = pad_to_context;
        Ok(t)
    }

    /// Whether encodings start with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether batches are padded to the full context length (else to the longest text).
    pub fn pads_to_context(&self) -> bool {
        self.pad_to_context
    }

    /// Writes `tokenizer.json` (readable by Python's `tokenizers.Tokenizer.from_file`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| tok_err(Some(path), e))?;
        crate::checkpoint::write_atomic(path, json.as_bytes())
    }

    /// Number of ids (including specials and added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Fixed number of positions every encoding has.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Id of the end-of-text token.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Id of the begin-of-text token (the EOS id when the vocabulary has none and texts start
    /// without it; see [`Tokenizer::adds_bos`]).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Id of `token`, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Encodes `text` to exactly `context_length` ids with the EOS position.
    pub fn encode(&self, text: &str) -> Result<Encoding> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| tok_err(None, format!("cannot encode {text:?}: {e}")))?;
        let mut ids: Vec<u32> = enc.get_ids().to_vec();
        let mut offsets: Vec<(usize, usize)> = enc.get_offsets().to_vec();
        let mut special: Vec<bool> = enc
            .get_special_tokens_mask()
            .iter()
            .map(|&m| m != 0)
            .collect();
        // Tokenizers without a post-processor add no BOS/EOS: add them here.
        if self.add_bos && ids.first() != Some(&self.bos) {
            ids.insert(0, self.bos);
            offsets.insert(0, (0, 0));
            special.insert(0, true);
        }
        if ids.len() < 1 + usize::from(self.add_bos) || ids.last() != Some(&self.eos) {
            ids.push(self.eos);
            offsets.push((0, 0));
            special.push(true);
        }
        let truncated = ids.len() > self.context_length;
        if truncated {
            let n = self.context_length;
            ids.truncate(n);
            offsets.truncate(n);
            special.truncate(n);
            ids[n - 1] = self.eos;
            offsets[n - 1] = (0, 0);
            special[n - 1] = true;
        }
        let eos = ids.len() - 1;
        ids.resize(self.context_length, self.pad);
        offsets.resize(self.context_length, (0, 0));
        special.resize(self.context_length, true);
        Ok(Encoding {
            ids,
            eos,
            offsets,
            special,
            truncated,
        })
    }

    /// Text of `ids`, without special tokens and padding.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| tok_err(None, format!("cannot decode: {e}")))
    }

    /// The path-free JSON of the tokenizer, e.g. to compare two tokenizers.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| tok_err(None, e))
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("context_length", &self.context_length)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish_non_exhaustive()
    }
}

/// Where a run keeps its tokenizer.
pub fn tokenizer_path(run_dir: &Path) -> PathBuf {
    run_dir.join("tokenizer.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_level_fit_encode_decode() {
        let corpus = vec![
            "A red circle".to_string(),
            "two shapes: a blue square".to_string(),
        ];
        let t = Tokenizer::fit_word_level(&corpus, 10).unwrap();
        let e = t.encode("Two shapes: a red square").unwrap();
        assert_eq!(e.ids.len(), 10);
        assert_eq!(e.ids[0], t.bos_id());
        assert_eq!(e.eos, 7); // bos two shapes : a red square eos
        assert_eq!(e.ids[7], t.eos_id());
        assert!(e.ids[8..].iter().all(|&i| i == t.pad_id()));
        assert_eq!(t.decode(&e.ids).unwrap(), "two shapes : a red square");
        let unk = t.encode("a mauve circle").unwrap();
        assert_eq!(unk.ids[2], t.token_to_id("[UNK]").unwrap());
    }

    #[test]
    fn long_text_is_truncated_and_still_ends_in_eos() {
        let corpus = vec!["a b c d e f g".to_string()];
        let t = Tokenizer::fit_word_level(&corpus, 5).unwrap();
        let e = t.encode("a b c d e f g").unwrap();
        assert!(e.truncated);
        assert_eq!(e.eos, 4);
        assert_eq!(e.ids[4], t.eos_id());
    }
}
