//! WebDataset shards: tar files whose members `key.jpg` (or `.jpeg`, `.png`, `.webp`) and
//! `key.txt` form one image–caption pair, read as a stream.
//!
//! [`TarReader`] reads the ustar format from any [`Read`] one member at a time, never the whole
//! shard: 512-byte headers (checksum verified, sizes in octal or base-256), data padded to 512
//! bytes, GNU long names (`L`) and pax `path` records (`x`); directories, links and other
//! member types are skipped. A member that claims more than [`TarReader::max_member_bytes`], a
//! header that fails its checksum, or a shard that ends inside a member is an error naming the
//! shard, the member and the byte offset.
//!
//! [`PairStream`] groups consecutive members by key (the member's path up to the first dot of
//! its file name, as WebDataset does) and yields one [`WdsPair`] per key with an image and a
//! caption. A key with only one half, an empty or non-UTF-8 caption, or an unreadable shard is a
//! bad sample under the [`BadSample`] policy: `Fail` stops the stream with the error, `Skip`
//! counts it (a broken shard counts once and the stream moves to the next shard).

use crate::data::decode::is_image_extension;
use crate::data::policy::{BadSample, BadSampleReport};
use crate::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

mod members;

pub use members::{read_member, set_checksum, write_tar};

const BLOCK: usize = 512;

/// One regular file of a tar archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarMember {
    /// The member's path inside the archive.
    pub name: String,
    /// Its bytes (empty when the reader skips this member's data; see
    /// [`TarReader::skip_data_of`]).
    pub data: Vec<u8>,
    /// Byte offset of its header in the archive.
    pub offset: u64,
    /// Byte offset of its data in the archive.
    pub data_offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// A streaming reader of ustar / GNU / pax tar archives (regular files only).
pub struct TarReader<R: Read> {
    inner: R,
    path: PathBuf,
    offset: u64,
    done: bool,
    /// Members larger than this many bytes are refused (default 256 MiB).
    pub max_member_bytes: u64,
    skip: Option<fn(&str) -> bool>,
}

/// Parses a numeric header field: octal digits (NUL- or space-terminated) or GNU base-256.
fn parse_number(field: &[u8]) -> Option<u64> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        let mut v = u64::from(first & 0x3f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// The NUL-terminated string at the start of `field`, lossily decoded.
fn c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

impl<R: Read> TarReader<R> {
    /// A reader over `inner`; `path` names the shard in messages.
    pub fn new(inner: R, path: impl Into<PathBuf>) -> Self {
        Self {
            inner,
            path: path.into(),
            offset: 0,
            done: false,
            max_member_bytes: 256 * 1024 * 1024,
            skip: None,
        }
    }

    /// Regular files whose name satisfies `skip` are returned without their data (read past
    /// in small chunks, never held), with their offset and size: an index of the archive.
    #[must_use]
    pub fn skip_data_of(mut self, skip: fn(&str) -> bool) -> Self {
        self.skip = Some(skip);
        self
    }

    fn err(&self, msg: String) -> Error {
        Error::input(&self.path, None, msg)
    }

    /// Fills `buf` completely; returns how many bytes were read before the end of the input.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.path, e)),
            }
        }
        self.offset += n as u64;
        Ok(n)
    }

    /// Reads a member's `size` bytes (or, with `keep` false, reads past them) and the padding
    /// after them.
    fn read_data(&mut self, name: &str, size: u64, header_at: u64, keep: bool) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        let mut take = (&mut self.inner).take(size);
        let got = if keep {
            take.read_to_end(&mut data).map(|n| n as u64)
        } else {
            std::io::copy(&mut take, &mut std::io::sink())
        }
        .map_err(|e| Error::io(&self.path, e))?;
        self.offset += got as u64;
        if (got as u64) < size {
            return Err(self.err(format!(
                "truncated: member `{name}` (header at byte {header_at}) claims {size} bytes but \
                 the shard ends after {got}"
            )));
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        let mut skip = [0u8; BLOCK];
        // Missing padding at the very end of a shard is tolerated.
        self.fill(&mut skip[..pad])?;
        Ok(data)
    }

    /// The next regular file, `None` at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<TarMember>> {
        if self.done {
            return Ok(None);
        }
        let mut long_name: Option<String> = None;
        loop {
            let header_at = self.offset;
            let mut h = [0u8; BLOCK];
            let n = self.fill(&mut h)?;
            if n == 0 && header_at == 0 {
                self.done = true;
                return Err(self.err("zero-byte file; expected a tar shard".into()));
            }
            if n == 0 || (n == BLOCK && h.iter().all(|&b| b == 0)) {
                self.done = true;
                return Ok(None);
            }
            if n < BLOCK {
                self.done = true;
                return Err(self.err(format!(
                    "truncated: the shard ends inside the header at byte {header_at} ({n} of 512 bytes)"
                )));
            }
            let stored = parse_number(&h[148..156]);
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            if stored != Some(sum) {
                self.done = true;
                return Err(self.err(format!(
                    "the header at byte {header_at} is not a tar header (checksum mismatch); \
                     expected a ustar archive"
                )));
            }
            let mut name = c_string(&h[0..100]);
            if &h[257..262] == b"ustar" {
                let prefix = c_string(&h[345..500]);
                if !prefix.is_empty() {
                    name = format!("{prefix}/{name}");
                }
            }
            if let Some(n) = long_name.take() {
                name = n;
            }
            let Some(size) = parse_number(&h[124..136]) else {
                self.done = true;
                return Err(self.err(format!(
                    "member `{name}` (header at byte {header_at}): size field {:?} is not a number",
                    String::from_utf8_lossy(&h[124..136])
                )));
            };
            if size > self.max_member_bytes {
                self.done = true;
                return Err(self.err(format!(
                    "member `{name}` (header at byte {header_at}) claims {size} bytes; members \
                     larger than {} bytes are refused",
                    self.max_member_bytes
                )));
            }
            let kind = h[156];
            let regular = matches!(kind, b'0' | 0 | b'7');
            let keep = !(regular && self.skip.is_some_and(|skip| skip(&name)));
            let data_offset = self.offset;
            let data = self.read_data(&name, size, header_at, keep);
            let data = match data {
                Ok(d) => d,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            };
            match kind {
                b'0' | 0 | b'7' => {
                    return Ok(Some(TarMember {
                        name,
                        data,
                        offset: header_at,
                        data_offset,
                        size,
                    }));
                }
                b'L' => long_name = Some(c_string(&data)),
                b'x' => {
                    if let Some(p) = pax_path(&data) {
                        long_name = Some(p);
                    }
                }
                // Directories, links, devices, global pax headers: nothing to return.
                _ => {}
            }
        }
    }
}

/// The `path` record of a pax extended header (`"<len> path=<value>\n"` records).
fn pax_path(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    text.lines().find_map(|rec| {
        let (_, kv) = rec.split_once(' ')?;
        kv.strip_prefix("path=").map(str::to_string)
    })
}

impl<R: Read> Iterator for TarReader<R> {
    type Item = Result<TarMember>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_member().transpose()
    }
}

/// Splits a member path into its WebDataset key and extension: `dir/a.b.jpg` → (`dir/a`, `b.jpg`).
pub fn split_key(name: &str) -> (&str, &str) {
    let base_start = name.rfind('/').map_or(0, |i| i + 1);
    match name[base_start..].find('.') {
        Some(dot) => (&name[..base_start + dot], &name[base_start + dot + 1..]),
        None => (name, ""),
    }
}

/// One image–caption pair of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WdsPair {
    /// The sample's key.
    pub key: String,
    /// Where the image came from, `shard.tar/key.jpg` (for messages).
    pub image_name: PathBuf,
    /// The encoded image bytes (empty from an indexing stream; see [`PairStream::indexing`]).
    pub image: Vec<u8>,
    /// Where the image's bytes start in its shard.
    pub image_offset: u64,
    /// The image's size in bytes.
    pub image_len: u64,
    /// The caption, trimmed.
    pub caption: String,
}

/// Members of one key collected so far.
#[derive(Default)]
struct Group {
    key: String,
    image: Option<(String, Vec<u8>, u64, u64)>,
    caption: Option<(String, Vec<u8>)>,
}

/// A stream of pairs over shards read one after another.
pub struct PairStream<I: Iterator<Item = (PathBuf, Box<dyn Read + Send>)>> {
    shards: I,
    current: Option<(PathBuf, TarReader<Box<dyn Read + Send>>)>,
    group: Group,
    policy: BadSample,
    report: BadSampleReport,
    failed: bool,
    index_only: bool,
}

impl<I: Iterator<Item = (PathBuf, Box<dyn Read + Send>)>> PairStream<I> {
    /// Pairs from `shards` (name, reader) under `policy`.
    pub fn new(shards: I, policy: BadSample) -> Self {
        Self {
            shards,
            current: None,
            group: Group::default(),
            policy,
            report: BadSampleReport::default(),
            failed: false,
            index_only: false,
        }
    }

    /// Pairs from `shards` without their image bytes: each [`WdsPair`] has its caption and where
    /// its image lies in the shard (`image_offset`, `image_len`); read it with [`read_member`].
    /// Memory stays bounded by the captions, whatever the size of the shards.
    pub fn indexing(shards: I, policy: BadSample) -> Self {
        Self {
            index_only: true,
            ..Self::new(shards, policy)
        }
    }

    /// Bad samples skipped so far.
    pub fn report(&self) -> &BadSampleReport {
        &self.report
    }

    /// Turns the finished group into a pair, or a bad-sample error.
    fn finish(&mut self, shard: &Path) -> Option<Result<WdsPair>> {
        let g = std::mem::take(&mut self.group);
        if g.key.is_empty() && g.image.is_none() && g.caption.is_none() {
            return None;
        }
        let at = shard.join(&g.key);
        let pair = match (g.image, g.caption) {
            (Some((iname, image, image_offset, image_len)), Some((cname, text))) => {
                match String::from_utf8(text) {
                    Ok(t) if t.trim().is_empty() => {
                        Err(Error::input(shard.join(&cname), None, "empty caption"))
                    }
                    Ok(t) => Ok(WdsPair {
                        key: g.key,
                        image_name: shard.join(iname),
                        image,
                        image_offset,
                        image_len,
                        caption: t.trim().to_string(),
                    }),
                    Err(e) => Err(Error::input(
                        shard.join(&cname),
                        None,
                        format!(
                            "caption is not UTF-8 (invalid byte at {})",
                            e.utf8_error().valid_up_to()
                        ),
                    )),
                }
            }
            (Some(_), None) => Err(Error::input(
                at,
                None,
                "image without a `.txt` caption in the shard",
            )),
            (None, Some(_)) => Err(Error::input(
                at,
                None,
                "caption without an image (`.jpg`, `.jpeg`, `.png` or `.webp`) in the shard",
            )),
            (None, None) => Err(Error::input(
                at,
                None,
                "neither an image nor a `.txt` caption for this key",
            )),
        };
        Some(pair)
    }

    /// Applies the policy to a finished group: a pair to hand out, nothing, or the error.
    fn settle(&mut self, r: Option<Result<WdsPair>>) -> Option<Result<WdsPair>> {
        match r {
            Some(Err(e)) => match self.policy.handle(&mut self.report, e) {
                Ok(()) => None,
                Err(e) => {
                    self.failed = true;
                    Some(Err(e))
                }
            },
            other => other,
        }
    }
}

impl<I: Iterator<Item = (PathBuf, Box<dyn Read + Send>)>> Iterator for PairStream<I> {
    type Item = Result<WdsPair>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            let Some((shard, reader)) = self.current.as_mut() else {
                let (name, r) = self.shards.next()?;
                let mut reader = TarReader::new(r, name.clone());
                if self.index_only {
                    reader = reader.skip_data_of(is_image_member);
                }
                self.current = Some((name, reader));
                continue;
            };
            let shard = shard.clone();
            match reader.next_member() {
                Ok(Some(m)) => {
                    let (key, ext) = split_key(&m.name);
                    let (key, ext) = (key.to_string(), ext.to_ascii_lowercase());
                    let mut out = None;
                    if key != self.group.key {
                        let done = self.finish(&shard);
                        out = self.settle(done);
                        self.group.key = key;
                    }
                    if is_image_extension(&ext) {
                        if self.group.image.is_none() {
                            self.group.image = Some((m.name, m.data, m.data_offset, m.size));
                        }
                    } else if ext == "txt" && self.group.caption.is_none() {
                        self.group.caption = Some((m.name, m.data));
                    }
                    if out.is_some() {
                        return out;
                    }
                }
                Ok(None) => {
                    self.current = None;
                    let done = self.finish(&shard);
                    if let Some(r) = self.settle(done) {
                        return Some(r);
                    }
                }
                Err(e) => {
                    // The rest of this shard cannot be framed: it counts as one bad sample.
                    self.current = None;
                    self.group = Group::default();
                    match self.policy.handle(&mut self.report, e) {
                        Ok(()) => {}
                        Err(e) => {
                            self.failed = true;
                            return Some(Err(e));
                        }
                    }
                }
            }
        }
    }
}

/// Opens shard files for a [`PairStream`], lazily; a shard that cannot be opened yields a reader
/// that fails with the open error, which the stream then handles by its policy.
pub fn open_shards(paths: Vec<PathBuf>) -> impl Iterator<Item = (PathBuf, Box<dyn Read + Send>)> {
    paths.into_iter().map(|p| {
        let reader: Box<dyn Read + Send> = match std::fs::File::open(&p) {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_dir()) => Box::new(FailingReader(Some(
                std::io::Error::other("is a directory, not a tar shard"),
            ))),
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => Box::new(FailingReader(Some(e))),
        };
        (p, reader)
    })
}

/// Whether a member path names an image (by its extension after the key).
fn is_image_member(name: &str) -> bool {
    is_image_extension(&split_key(name).1.to_ascii_lowercase())
}

/// A reader that returns one stored error (a shard that could not be opened).
struct FailingReader(Option<std::io::Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        match self.0.take() {
            Some(e) => Err(e),
            None => Ok(0),
        }
    }
}

/// The pairs of one in-memory shard (for tests and fuzzing): every pair and the report.
pub fn parse_shard(
    bytes: &[u8],
    path: &Path,
    policy: BadSample,
) -> Result<(Vec<WdsPair>, BadSampleReport)> {
    let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(bytes.to_vec()));
    let mut stream = PairStream::new(std::iter::once((path.to_path_buf(), reader)), policy);
    let pairs = stream.by_ref().collect::<Result<Vec<_>>>()?;
    Ok((pairs, stream.report().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_by_key_and_missing_halves() {
        let tar = write_tar(&[
            ("a/x.jpg", b"img1"),
            ("a/x.txt", b" a cat "),
            ("a/y.png", b"img2"),
            ("a/z.txt", b"orphan"),
            ("a/w.json", b"{}"),
        ]);
        let p = Path::new("s.tar");
        let (pairs, rep) = parse_shard(&tar, p, BadSample::Skip).unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(
            (pairs[0].key.as_str(), pairs[0].caption.as_str()),
            ("a/x", "a cat")
        );
        assert_eq!(rep.count, 3);
        assert_eq!(
            rep.examples[0],
            "s.tar/a/y: image without a `.txt` caption in the shard"
        );
        let e = parse_shard(&tar, p, BadSample::Fail).unwrap_err();
        assert!(e.to_string().contains("a/y"));
        assert_eq!(split_key("d/k.seg.png"), ("d/k", "seg.png"));
        assert_eq!(parse_number(b"0000017\0"), Some(15));
        assert_eq!(parse_number(&[0x80, 0, 1, 0]), Some(256));
    }

    #[test]
    fn absurd_sizes_and_truncation_are_errors() {
        let mut tar = write_tar(&[("k.jpg", b"abc")]);
        tar[124..136].copy_from_slice(b"77777777777\0");
        set_checksum(&mut tar[..512]);
        let e = parse_shard(&tar, Path::new("s.tar"), BadSample::Fail).unwrap_err();
        assert!(e.to_string().contains("claims 8589934591 bytes"), "{e}");
        let tar = write_tar(&[("k.jpg", &[7u8; 2000])]);
        let e = parse_shard(&tar[..1200], Path::new("s.tar"), BadSample::Fail).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let (pairs, rep) = parse_shard(&tar[..1200], Path::new("s.tar"), BadSample::Skip).unwrap();
        assert!(pairs.is_empty());
        assert_eq!(rep.count, 1);
    }
}
