//! `rkt image list`, with rkt's fields, sort keys, order and formats.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::SystemTime;

use anyhow::Result;
use clap::Args;
use rkt_engine::store::ImageInfo;
use serde::Serialize;

use crate::flags::{Format, GlobalFlags, print_json};
use crate::podview;
use crate::table::Table;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Id,
    Name,
    Size,
    ImportTime,
    LastUsed,
    Latest,
}

impl Field {
    const ALL: [(Field, &'static str, &'static str); 6] = [
        (Field::Id, "id", "ID"),
        (Field::Name, "name", "NAME"),
        (Field::Size, "size", "SIZE"),
        (Field::ImportTime, "importtime", "IMPORT TIME"),
        (Field::LastUsed, "lastused", "LAST USED"),
        (Field::Latest, "latest", "LATEST"),
    ];

    fn header(self) -> &'static str {
        Field::ALL
            .iter()
            .find(|(f, _, _)| *f == self)
            .map(|(_, _, h)| *h)
            .unwrap_or("")
    }
}

/// A `--fields` or `--sort` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldList(pub Vec<Field>);

/// rkt's option lists: comma-separated, case-insensitive, each field once.
fn parse_fields(value: &str) -> Result<FieldList, String> {
    let mut fields = Vec::new();
    for word in value.split(',') {
        let word = word.trim().to_ascii_lowercase();
        let Some((field, _, _)) = Field::ALL.iter().find(|(_, name, _)| *name == word) else {
            let names: Vec<&str> = Field::ALL.iter().map(|(_, n, _)| *n).collect();
            return Err(format!("unknown field {word:?} (allowed: {})", names.join(", ")));
        };
        if fields.contains(field) {
            return Err(format!("field {word:?} given twice"));
        }
        fields.push(*field);
    }
    Ok(FieldList(fields))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Comma-separated list of fields to display: id, name, size, importtime, lastused, latest
    #[arg(long, default_value = "id,name,size,importtime,lastused", value_parser = parse_fields)]
    pub fields: FieldList,
    /// Sort the output by this comma-separated list of fields
    #[arg(long, default_value = "importtime", value_parser = parse_fields)]
    pub sort: FieldList,
    /// Sorting order
    #[arg(long, value_enum, default_value = "asc", ignore_case = true)]
    pub order: Order,
    /// Suppress the legend
    #[arg(long)]
    pub no_legend: bool,
    /// Use long output format (full IDs, sizes in bytes, absolute times)
    #[arg(long)]
    pub full: bool,
    /// Output format
    #[arg(long)]
    pub format: Option<Format>,
}

/// One row, and rkt's JSON entry (`v1.ImageListEntry`).
#[derive(Debug, Clone, Serialize)]
struct Entry {
    id: String,
    /// `name:version` when the image has a version label.
    name: String,
    import_time: i64,
    last_used_time: i64,
    /// The archive plus the trees rendered with this image on top.
    size: u64,
    #[serde(skip)]
    bare_name: String,
    #[serde(skip)]
    latest: bool,
}

pub fn list(global: &GlobalFlags, args: ListArgs) -> Result<u8> {
    let runtime = global.runtime_read_only()?;
    let images = runtime.store.list()?;
    let mut tree_sizes: HashMap<String, u64> = HashMap::new();
    for tree in runtime.store.trees()? {
        if let Some(top) = tree.images.last() {
            *tree_sizes.entry(top.as_str().to_string()).or_default() += tree.size;
        }
    }
    let newest = newest_per_name(&images);
    let mut entries: Vec<Entry> = images
        .iter()
        .map(|info| Entry {
            id: info.id.as_str().to_string(),
            name: match info.labels.iter().find(|l| l.name.as_str() == "version") {
                Some(v) => format!("{}:{}", info.name, v.value),
                None => info.name.to_string(),
            },
            import_time: nanos(info.imported_at),
            last_used_time: nanos(info.last_used),
            size: info.size + tree_sizes.get(info.id.as_str()).copied().unwrap_or(0),
            bare_name: info.name.to_string(),
            latest: newest.get(info.name.as_str()) == Some(&info.id.as_str()),
        })
        .collect();
    entries.sort_by(|a, b| {
        let ordering = args
            .sort
            .0
            .iter()
            .map(|field| compare(a, b, *field))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal);
        match args.order {
            Order::Asc => ordering,
            Order::Desc => ordering.reverse(),
        }
    });
    if let Some(format) = args.format {
        print_json(&entries, format)?;
        return Ok(0);
    }
    let headers: Vec<&str> = args.fields.0.iter().map(|f| f.header()).collect();
    let mut table = Table::new(&headers, !args.no_legend);
    for entry in &entries {
        table.push(args.fields.0.iter().map(|f| cell(entry, *f, args.full)).collect());
    }
    print!("{}", table.render());
    Ok(0)
}

/// For each image name, the ID a bare name resolves to: the newest import.
fn newest_per_name(images: &[ImageInfo]) -> HashMap<&str, &str> {
    let mut newest: HashMap<&str, &ImageInfo> = HashMap::new();
    for info in images {
        let slot = newest.entry(info.name.as_str()).or_insert(info);
        if (info.imported_at, &info.id) > (slot.imported_at, &slot.id) {
            *slot = info;
        }
    }
    newest
        .into_iter()
        .map(|(name, info)| (name, info.id.as_str()))
        .collect()
}

fn compare(a: &Entry, b: &Entry, field: Field) -> Ordering {
    match field {
        Field::Id => a.id.cmp(&b.id),
        Field::Name => a.bare_name.cmp(&b.bare_name).then_with(|| a.name.cmp(&b.name)),
        Field::Size => a.size.cmp(&b.size),
        Field::ImportTime => a.import_time.cmp(&b.import_time),
        Field::LastUsed => a.last_used_time.cmp(&b.last_used_time),
        Field::Latest => a.latest.cmp(&b.latest),
    }
}

fn cell(entry: &Entry, field: Field, full: bool) -> String {
    let time = |nanos: i64| {
        let t = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
        if full {
            podview::absolute(Some(t))
        } else {
            podview::relative(Some(t))
        }
    };
    match field {
        // rkt's short form: the algorithm and the first 12 hex digits.
        Field::Id if full => entry.id.clone(),
        Field::Id => entry.id.chars().take("sha512-".len() + 12).collect(),
        Field::Name => entry.name.clone(),
        Field::Size if full => entry.size.to_string(),
        Field::Size => ibytes(entry.size),
        Field::ImportTime => time(entry.import_time),
        Field::LastUsed => time(entry.last_used_time),
        Field::Latest => entry.latest.to_string(),
    }
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// Sizes as rkt printed them (go-humanize's IBytes): `512 B`, `1.5 KiB`, `12 MiB`.
fn ibytes(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if size < 10 {
        return format!("{size} B");
    }
    let mut exp = 0;
    let mut scaled = size as f64;
    while scaled >= 1024.0 && exp < UNITS.len() - 1 {
        scaled /= 1024.0;
        exp += 1;
    }
    let rounded = (scaled * 10.0 + 0.5).floor() / 10.0;
    if rounded < 10.0 {
        format!("{rounded:.1} {}", UNITS[exp])
    } else {
        format!("{rounded:.0} {}", UNITS[exp])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_rkts() {
        assert_eq!(ibytes(0), "0 B");
        assert_eq!(ibytes(9), "9 B");
        assert_eq!(ibytes(512), "512 B");
        assert_eq!(ibytes(1536), "1.5 KiB");
        assert_eq!(ibytes(12 << 20), "12 MiB");
        assert_eq!(ibytes(113_309_184), "108 MiB");
    }

    #[test]
    fn fields_parse_like_rkts_option_lists() {
        assert_eq!(
            parse_fields("ID,name").expect("parse"),
            FieldList(vec![Field::Id, Field::Name])
        );
        assert!(parse_fields("id,id").expect_err("dup").contains("twice"));
        assert!(parse_fields("bogus").expect_err("unknown").contains("allowed"));
    }
}
