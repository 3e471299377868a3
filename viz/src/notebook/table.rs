//! [`Table`]: a table of text cells that displays as HTML in a notebook, and the evcxr
//! rich-output blocks every inline display here is made of.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use workbench::events::EvalReport;

use super::Run;

/// Prints evcxr rich-output blocks in one locked write.
pub(crate) fn emit(blocks: &str) {
    let mut out = std::io::stdout().lock();
    // Nothing useful can be done in a notebook cell if stdout is gone.
    let _ = out.write_all(blocks.as_bytes()).and_then(|()| out.flush());
}

/// One evcxr output block of `mime` type.
pub(crate) fn block(mime: &str, payload: &str) -> String {
    format!("EVCXR_BEGIN_CONTENT {mime}\n{payload}\nEVCXR_END_CONTENT\n")
}

/// `text` with `& < > " '` replaced by HTML entities.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value with three decimals, or `–` when absent.
pub fn num(value: Option<f32>) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
}

/// A table of text cells that shows as HTML in a notebook (and as aligned text elsewhere).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    /// Shown above the table (may be empty).
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells; a short row leaves its last columns empty.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            title: String::new(),
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// The same table with a title.
    #[must_use]
    pub fn titled(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Appends a row.
    pub fn push<S: ToString>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        self.rows
            .push(cells.into_iter().map(|c| c.to_string()).collect());
        self
    }

    /// The same table with one more row.
    #[must_use]
    pub fn row<S: ToString>(mut self, cells: impl IntoIterator<Item = S>) -> Self {
        self.push(cells);
        self
    }

    /// One row per named evaluation (`None`: not evaluated): retrieval both ways, zero-shot
    /// accuracy, modality gap and validation loss.
    pub fn evals(reports: &[(&str, Option<&EvalReport>)]) -> Self {
        let mut table = Self::new([
            "run",
            "step",
            "i→t R@1",
            "i→t R@5",
            "t→i R@1",
            "t→i R@5",
            "zero-shot",
            "gap",
            "val loss",
        ]);
        for (name, report) in reports {
            match report {
                Some(r) => table.push([
                    (*name).to_string(),
                    r.step.to_string(),
                    num(Some(r.image_to_text.r1)),
                    num(Some(r.image_to_text.r5)),
                    num(Some(r.text_to_image.r1)),
                    num(Some(r.text_to_image.r5)),
                    num(r.zero_shot.as_ref().map(|z| z.accuracy)),
                    num(Some(r.modality_gap)),
                    num(r.loss),
                ]),
                None => table.push([(*name).to_string(), "not evaluated".to_string()]),
            };
        }
        table
    }

    /// [`Table::evals`] of finished runs under their names, with their training time.
    pub fn runs(runs: &[Run]) -> Self {
        let reports: Vec<(&str, Option<&EvalReport>)> = runs
            .iter()
            .map(|r| (r.name.as_str(), r.last_eval()))
            .collect();
        let mut table = Self::evals(&reports);
        table.header.push("time".into());
        for (row, run) in table.rows.iter_mut().zip(runs) {
            row.resize(table.header.len() - 1, String::new());
            row.push(format!("{:.0} s", run.seconds));
        }
        table
    }

    fn columns(&self) -> usize {
        self.rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0)
    }

    /// The table as an HTML fragment; every cell is escaped.
    pub fn html(&self) -> String {
        let columns = self.columns();
        let mut html = String::from("<table>");
        let cells = |html: &mut String, row: &[String], tag: &str| {
            for i in 0..columns {
                let text = row.get(i).map_or("", String::as_str);
                let _ = write!(html, "<{tag}>{}</{tag}>", escape_html(text));
            }
        };
        if !self.title.is_empty() {
            let _ = write!(html, "<caption>{}</caption>", escape_html(&self.title));
        }
        html.push_str("<thead><tr>");
        cells(&mut html, &self.header, "th");
        html.push_str("</tr></thead><tbody>");
        for row in &self.rows {
            html.push_str("<tr>");
            cells(&mut html, row, "td");
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table>");
        html
    }

    /// The evcxr blocks: `text/html`, then the aligned `text/plain` form.
    pub fn evcxr_blocks(&self) -> String {
        format!(
            "{}{}",
            block("text/html", &self.html()),
            block("text/plain", &self.to_string())
        )
    }

    /// Shows the table inline in a notebook.
    pub fn evcxr_display(&self) {
        emit(&self.evcxr_blocks());
    }
}

impl fmt::Display for Table {
    /// Aligned columns separated by two spaces, the title on its own line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let columns = self.columns();
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        if !self.title.is_empty() {
            writeln!(f, "{}", self.title)?;
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let line: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = row.get(i).map_or("", String::as_str);
                    let pad = widths[i] - cell.chars().count();
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect();
            writeln!(f, "{}", line.join("  ").trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_every_cell_and_pads_short_rows() {
        let t = Table::new(["a<b", "c"])
            .titled("x & y")
            .row(["\"q\"", "'s'"])
            .row(["only"]);
        let html = t.html();
        assert!(html.contains("<caption>x &amp; y</caption>"));
        assert!(html.contains("<th>a&lt;b</th>"));
        assert!(html.contains("<td>&quot;q&quot;</td><td>&#39;s&#39;</td>"));
        assert!(html.contains("<tr><td>only</td><td></td></tr>"));
        // Column 0 is 4 wide ("only"): "a<b" gets 1 space of padding, then the 2-space gap.
        assert_eq!(t.to_string(), "x & y\na<b   c\n\"q\"   's'\nonly\n");
    }
}
