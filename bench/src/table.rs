//! Result tables, printed as Markdown so that a run's output can be pasted into `docs/benchmarks.md` as is.

/// A titled table: the first column left-aligned, the others right-aligned.
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Table {
            title: title.to_string(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let cell = |row: &[String], i: usize| row.get(i).cloned().unwrap_or_default();
        let mut widths = vec![3usize; columns];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(cell(row, i).chars().count());
            }
        }
        let line = |row: &[String]| {
            let cells: Vec<String> = (0..columns)
                .map(|i| {
                    let text = cell(row, i);
                    let pad = widths[i].saturating_sub(text.chars().count());
                    if i == 0 {
                        format!("{text}{}", " ".repeat(pad))
                    } else {
                        format!("{}{text}", " ".repeat(pad))
                    }
                })
                .collect();
            format!("| {} |\n", cells.join(" | "))
        };
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    format!(":{}", "-".repeat(w.saturating_sub(1)))
                } else {
                    format!("{}:", "-".repeat(w.saturating_sub(1)))
                }
            })
            .collect();
        let mut out = format!("\n## {}\n\n", self.title);
        out.push_str(&line(&self.headers));
        out.push_str(&format!("| {} |\n", rule.join(" | ")));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// Seconds with two decimals and the unit.
pub fn secs(seconds: f64) -> String {
    format!("{seconds:.2} s")
}

/// A size in MiB or GiB.
pub fn bytes(bytes: i64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= 1024.0 * MIB {
        format!("{:.2} GiB", b / (1024.0 * MIB))
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

/// The nearest-rank percentile `p` (0–100) of `sorted` (ascending); 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[0.3], 99.0), 0.3);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn renders_aligned_markdown() {
        let mut t = Table::new("T", &["name", "value"]);
        t.row(["a", "1.00 s"]);
        t.row(["longer", "2 s"]);
        let text = t.render();
        assert!(text.contains("| name   |  value |"), "{text}");
        assert!(text.contains("| :----- | -----: |"), "{text}");
        assert!(text.contains("| longer |    2 s |"), "{text}");
    }
}
