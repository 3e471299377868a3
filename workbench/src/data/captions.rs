//! Captions files: CSV / TSV with a header, and JSON Lines.
//!
//! Both parsers work on the bytes of the file (no I/O, so they can be fuzzed) and return one
//! [`CaptionRow`] per caption, with the 1-based line it starts on. Several rows may name the
//! same image; [`group_rows`] merges them into one entry per image with all its captions, in
//! order of first appearance.
//!
//! **CSV / TSV** ([`parse_captions_csv`]): RFC 4180 — fields separated by `,` (or tab), quoted
//! fields may hold the delimiter, newlines and doubled quotes (`""`), lines end in LF or CRLF,
//! a UTF-8 byte-order mark is ignored. The first record is the header; it must name the image
//! and caption columns ([`CsvColumns`], by default `image` and `caption`). Blank lines are
//! skipped.
//!
//! ```text
//! image,caption
//! cat.jpg,"a cat on a mat, asleep"
//! cat.jpg,a sleeping cat
//! dog.png,"a dog saying ""woof"""
//! ```
//!
//! **JSON Lines** ([`parse_captions_jsonl`]): one object per line with a string `image` and a
//! `caption` that is a string or an array of strings. Blank lines are skipped.
//!
//! ```text
//! {"image": "cat.jpg", "caption": "a cat on a mat"}
//! {"image": "dog.png", "caption": ["a dog", "a brown dog on grass"]}
//! ```
//!
//! A problem confined to one row (wrong number of fields, invalid UTF-8, an empty caption, a line
//! that is not JSON) is a bad sample, handled by the [`BadSample`] policy; a problem with the
//! whole file (no header, a missing column, a quote that never closes) is always an error.

use crate::data::policy::{BadSample, BadSampleReport};
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// Longest caption accepted, in bytes; longer ones are bad samples (the tokenizer would cut
/// them to a few dozen tokens anyway).
pub const MAX_CAPTION_BYTES: usize = 64 * 1024;

/// One caption of one image, as read from a captions file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptionRow {
    /// The image's path as written in the file (relative to the images folder).
    pub image: String,
    /// The caption, trimmed of surrounding whitespace.
    pub caption: String,
    /// 1-based line the row starts on.
    pub line: usize,
}

/// Which header columns hold the image path and the caption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsvColumns {
    /// Name of the image column (default `image`).
    pub image: String,
    /// Name of the caption column (default `caption`).
    pub caption: String,
}

impl Default for CsvColumns {
    fn default() -> Self {
        Self {
            image: "image".into(),
            caption: "caption".into(),
        }
    }
}

/// One record of a delimited file: raw fields and the line it starts on.
struct Record {
    fields: Vec<Vec<u8>>,
    line: usize,
}

/// A record that could not be read, with where it starts; the reader has moved past it.
struct BadRecord {
    line: usize,
    msg: String,
}

/// An RFC 4180 record reader over bytes.
struct CsvReader<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
    delimiter: u8,
}

impl<'a> CsvReader<'a> {
    fn new(text: &'a [u8], delimiter: u8) -> Self {
        let pos = if text.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        Self {
            text,
            pos,
            line: 1,
            delimiter,
        }
    }

    /// Skips to just past the next line feed (recovery after a bad record).
    fn skip_line(&mut self) {
        while self.pos < self.text.len() {
            let b = self.text[self.pos];
            self.pos += 1;
            if b == b'\n' {
                self.line += 1;
                return;
            }
        }
    }

    /// The next record: `None` at the end, `Some(Err(Ok(bad)))` for a bad record the reader
    /// skipped, `Some(Err(Err(fatal)))` for a quote that never closes.
    #[allow(clippy::type_complexity)]
    fn next_record(&mut self) -> Option<std::result::Result<Record, Result<BadRecord, String>>> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start_line = self.line;
        let mut fields = Vec::new();
        let mut field = Vec::new();
        loop {
            // At the start of a field.
            if self.text.get(self.pos) == Some(&b'"') {
                let quote_line = self.line;
                self.pos += 1;
                loop {
                    let Some(&b) = self.text.get(self.pos) else {
                        return Some(Err(Err(format!(
                            "the quote opened on line {quote_line} never closes"
                        ))));
                    };
                    self.pos += 1;
                    if b == b'"' {
                        if self.text.get(self.pos) == Some(&b'"') {
                            field.push(b'"');
                            self.pos += 1;
                        } else {
                            break;
                        }
                    } else {
                        if b == b'\n' {
                            self.line += 1;
                        }
                        field.push(b);
                    }
                }
                // After the closing quote: a delimiter, a line end or the end of the text.
                match self.text.get(self.pos) {
                    None | Some(b'\n') => {}
                    Some(b'\r') if matches!(self.text.get(self.pos + 1), None | Some(b'\n')) => {}
                    Some(&b) if b == self.delimiter => {}
                    Some(&b) => {
                        let msg = format!(
                            "bad quoting: {:?} after a closing quote (a quote inside a quoted \
                             field must be doubled: \"\")",
                            char::from(b)
                        );
                        self.skip_line();
                        return Some(Err(Ok(BadRecord {
                            line: start_line,
                            msg,
                        })));
                    }
                }
            }
            // Unquoted part (or what follows a closing quote): up to a delimiter or line end.
            loop {
                match self.text.get(self.pos) {
                    None => {
                        fields.push(std::mem::take(&mut field));
                        return Some(Ok(Record {
                            fields,
                            line: start_line,
                        }));
                    }
                    Some(b'\n') => {
                        self.pos += 1;
                        self.line += 1;
                        if field.last() == Some(&b'\r') {
                            field.pop();
                        }
                        fields.push(std::mem::take(&mut field));
                        return Some(Ok(Record {
                            fields,
                            line: start_line,
                        }));
                    }
                    Some(&b) if b == self.delimiter => {
                        self.pos += 1;
                        fields.push(std::mem::take(&mut field));
                        break;
                    }
                    Some(&b) => {
                        field.push(b);
                        self.pos += 1;
                    }
                }
            }
        }
    }
}

fn is_blank(r: &Record) -> bool {
    r.fields.len() == 1 && r.fields[0].iter().all(u8::is_ascii_whitespace)
}

/// Checks one caption: not empty, not absurdly long. Returns it trimmed.
fn check_caption(caption: &str) -> std::result::Result<String, String> {
    let c = caption.trim();
    if c.is_empty() {
        return Err("empty caption".into());
    }
    if c.len() > MAX_CAPTION_BYTES {
        return Err(format!(
            "caption of {} bytes; at most {MAX_CAPTION_BYTES} are accepted",
            c.len()
        ));
    }
    Ok(c.to_string())
}

/// Checks an image path from a captions file: not empty, relative, without `..`.
fn check_image_name(image: &str) -> std::result::Result<String, String> {
    let i = image.trim();
    if i.is_empty() {
        return Err("empty image path".into());
    }
    let p = Path::new(i);
    if p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!(
            "image path {i:?} must be relative to the images folder, without `..`"
        ));
    }
    Ok(i.to_string())
}

/// Parses a CSV (`delimiter` `b','`) or TSV (`b'\t'`) captions file. `path` is only used in
/// messages.
pub fn parse_captions_csv(
    text: &[u8],
    path: &Path,
    delimiter: u8,
    columns: &CsvColumns,
    policy: BadSample,
    report: &mut BadSampleReport,
) -> Result<Vec<CaptionRow>> {
    let mut reader = CsvReader::new(text, delimiter);
    let fatal = |line: usize, msg: String| Error::input(path, Some(line), msg);
    // The header: the first non-blank record.
    let header = loop {
        match reader.next_record() {
            None => {
                return Err(Error::input(
                    path,
                    None,
                    format!(
                        "empty captions file; expected a header naming the `{}` and `{}` columns",
                        columns.image, columns.caption
                    ),
                ));
            }
            Some(Err(Err(msg))) => return Err(fatal(reader.line, msg)),
            Some(Err(Ok(bad))) => return Err(fatal(bad.line, format!("header: {}", bad.msg))),
            Some(Ok(r)) if is_blank(&r) => {}
            Some(Ok(r)) => break r,
        }
    };
    let names: Vec<String> = header
        .fields
        .iter()
        .map(|f| {
            std::str::from_utf8(f)
                .map(|s| s.trim().to_string())
                .map_err(|_| fatal(header.line, "header: invalid UTF-8".into()))
        })
        .collect::<Result<_>>()?;
    let find = |want: &str| {
        names.iter().position(|n| n == want).ok_or_else(|| {
            fatal(
                header.line,
                format!(
                    "header has no `{want}` column (found: {}); expected columns `{}` and `{}`",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    columns.image,
                    columns.caption
                ),
            )
        })
    };
    let image_col = find(&columns.image)?;
    let caption_col = find(&columns.caption)?;
    let mut rows = Vec::new();
    while let Some(rec) = reader.next_record() {
        let rec = match rec {
            Ok(r) => r,
            Err(Err(msg)) => return Err(fatal(reader.line, msg)),
            Err(Ok(bad)) => {
                policy.handle(report, fatal(bad.line, bad.msg))?;
                continue;
            }
        };
        if is_blank(&rec) {
            continue;
        }
        let line = rec.line;
        let bad = |msg: String| Error::input(path, Some(line), msg);
        if rec.fields.len() != names.len() {
            policy.handle(
                report,
                bad(format!(
                    "expected {} fields as in the header, found {}",
                    names.len(),
                    rec.fields.len()
                )),
            )?;
            continue;
        }
        let text_of = |col: usize| {
            std::str::from_utf8(&rec.fields[col]).map_err(|e| {
                format!(
                    "invalid UTF-8 in `{}` at byte {}",
                    names[col],
                    e.valid_up_to()
                )
            })
        };
        let row = text_of(image_col)
            .and_then(check_image_name)
            .and_then(|image| {
                let caption = check_caption(text_of(caption_col)?)?;
                Ok(CaptionRow {
                    image,
                    caption,
                    line,
                })
            });
        match row {
            Ok(r) => rows.push(r),
            Err(msg) => policy.handle(report, bad(msg))?,
        }
    }
    Ok(rows)
}

/// Parses a JSON Lines captions file. `path` is only used in messages.
pub fn parse_captions_jsonl(
    text: &[u8],
    path: &Path,
    policy: BadSample,
    report: &mut BadSampleReport,
) -> Result<Vec<CaptionRow>> {
    let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text);
    let mut rows = Vec::new();
    let mut any = false;
    for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        any = true;
        match parse_jsonl_line(raw) {
            Ok((image, captions)) => rows.extend(captions.into_iter().map(|caption| CaptionRow {
                image: image.clone(),
                caption,
                line,
            })),
            Err(msg) => policy.handle(report, Error::input(path, Some(line), msg))?,
        }
    }
    if !any {
        return Err(Error::input(
            path,
            None,
            "empty captions file; expected one JSON object per line with `image` and `caption`",
        ));
    }
    Ok(rows)
}

fn parse_jsonl_line(raw: &[u8]) -> std::result::Result<(String, Vec<String>), String> {
    let v: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", kind(&v)))?;
    let image = match obj.get("image") {
        Some(serde_json::Value::String(s)) => check_image_name(s)?,
        Some(other) => return Err(format!("`image` must be a string, found {}", kind(other))),
        None => return Err("missing key `image`".into()),
    };
    let captions = match obj.get("caption") {
        Some(serde_json::Value::String(s)) => vec![check_caption(s)?],
        Some(serde_json::Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(k, c)| match c {
                serde_json::Value::String(s) => {
                    check_caption(s).map_err(|m| format!("`caption[{k}]`: {m}"))
                }
                other => Err(format!(
                    "`caption[{k}]` must be a string, found {}",
                    kind(other)
                )),
            })
            .collect::<std::result::Result<_, _>>()?,
        Some(serde_json::Value::Array(_)) => return Err("`caption` is an empty array".into()),
        Some(other) => {
            return Err(format!(
                "`caption` must be a string or an array of strings, found {}",
                kind(other)
            ));
        }
        None => return Err("missing key `caption`".into()),
    };
    Ok((image, captions))
}

/// The JSON type of `v`, for messages.
pub(crate) fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// All captions of one image, merged from the rows that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageCaptions {
    /// The image's path as written in the file.
    pub image: String,
    /// Its captions, in file order.
    pub captions: Vec<String>,
    /// The line of the first row naming it.
    pub line: usize,
}

/// Merges rows naming the same image: one entry per image, in order of first appearance.
pub fn group_rows(rows: Vec<CaptionRow>) -> Vec<ImageCaptions> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<ImageCaptions> = Vec::new();
    for r in rows {
        if let Some(&i) = index.get(&r.image) {
            out[i].captions.push(r.caption);
        } else {
            index.insert(r.image.clone(), out.len());
            out.push(ImageCaptions {
                image: r.image,
                captions: vec![r.caption],
                line: r.line,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str, policy: BadSample) -> (Result<Vec<CaptionRow>>, BadSampleReport) {
        let mut r = BadSampleReport::default();
        let rows = parse_captions_csv(
            text.as_bytes(),
            Path::new("c.csv"),
            b',',
            &CsvColumns::default(),
            policy,
            &mut r,
        );
        (rows, r)
    }

    #[test]
    fn quoting_crlf_bom_and_line_numbers() {
        let text =
            "\u{feff}id,image,caption\r\n1,a.png,\"x, \"\"y\"\"\r\nz\"\r\n\r\n2,b.png,plain\r\n";
        let rows = csv(text, BadSample::Fail).0.unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].caption, "x, \"y\"\r\nz");
        assert_eq!((rows[1].image.as_str(), rows[1].line), ("b.png", 5));
    }

    #[test]
    fn bad_rows_follow_the_policy() {
        let text = "image,caption\na.png,\"x\"y\nb.png,\nc.png,ok\nd.png,1,2\n";
        let err = csv(text, BadSample::Fail).0.unwrap_err().to_string();
        assert!(err.starts_with("c.csv:2: bad quoting"), "{err}");
        let (rows, rep) = csv(text, BadSample::Skip);
        assert_eq!(rows.unwrap().len(), 1);
        assert_eq!(rep.count, 3);
        assert!(rep.examples[1].contains("c.csv:3: empty caption"));
        let e = csv("image,caption\na.png,\"open\n", BadSample::Skip)
            .0
            .unwrap_err();
        assert!(e.to_string().contains("line 2 never closes"), "{e}");
    }

    #[test]
    fn jsonl_strings_arrays_and_errors() {
        let text = b"{\"image\":\"a.png\",\"caption\":\"x\"}\n\n{\"image\":\"b.png\",\"caption\":[\"y\",\"z\"]}\n{\"image\":\"c.png\"}\n";
        let mut r = BadSampleReport::default();
        let rows =
            parse_captions_jsonl(text, Path::new("c.jsonl"), BadSample::Skip, &mut r).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(r.examples, ["c.jsonl:4: missing key `caption`"]);
        let groups = group_rows(rows);
        assert_eq!(groups[1].captions, ["y", "z"]);
        assert_eq!(groups[1].line, 3);
    }
}
