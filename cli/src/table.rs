//! rkt's tab-aligned tables: columns padded to their widest cell, a legend line
//! unless `--no-legend`.

pub struct Table {
    rows: Vec<Vec<String>>,
    legend: bool,
}

impl Table {
    pub fn new(header: &[&str], legend: bool) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
            legend,
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let rows = if self.legend { &self.rows[..] } else { &self.rows[1..] };
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let pad = widths[c].saturating_sub(cell.chars().count()) + 1;
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push('\t');
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_legend_is_optional() {
        let mut t = Table::new(&["UUID", "APP"], true);
        t.push(vec!["abc".into(), "x".into()]);
        assert_eq!(t.render(), "UUID \tAPP\nabc  \tx\n");
        let mut t = Table::new(&["UUID", "APP"], false);
        t.push(vec!["abc".into(), "x".into()]);
        assert_eq!(t.render(), "abc \tx\n");
    }
}
