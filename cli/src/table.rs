//! rkt's tab-aligned tables, as Go's tabwriter made them (tab width 8, padding 1,
//! padded with tabs): every column starts at the same tab stop, so the output both
//! lines up on a terminal and splits on tabs for scripts. A legend line unless
//! `--no-legend`.

const TAB_WIDTH: usize = 8;

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
        let rows = if self.legend {
            &self.rows[..]
        } else {
            &self.rows[1..]
        };
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                let widest = rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max();
                (widest.unwrap_or(0) + 1).div_ceil(TAB_WIDTH) * TAB_WIDTH
            })
            .collect();
        let mut out = String::new();
        for row in rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if c + 1 < row.len() {
                    let tabs = (widths[c] - cell.chars().count()).div_ceil(TAB_WIDTH);
                    line.extend(std::iter::repeat_n('\t', tabs));
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
        t.push(vec!["a-longer-cell".into(), "y".into()]);
        assert_eq!(t.render(), "UUID\t\tAPP\nabc\t\tx\na-longer-cell\ty\n");
        let mut t = Table::new(&["UUID", "APP"], false);
        t.push(vec!["abc".into(), "x".into()]);
        assert_eq!(t.render(), "abc\tx\n");
    }
}
