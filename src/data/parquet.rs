//! Alignment data held as Parquet shards, the way Hugging Face `datasets` stores public
//! corpora (LibriSpeech, Common Voice, AudioCaps, COCO caption exports): one shard or a glob
//! of them, a media column and a text column per row.
//!
//! The media column may be
//! - a struct `{bytes, path}` (the `datasets` `Audio`/`Image` feature): the embedded bytes are
//!   decoded in memory, never written out; a row whose `bytes` is null but whose `path` names a
//!   file next to the shard reads that file;
//! - a binary column: the bytes themselves;
//! - a string column: a file path, relative to the shard's folder.
//!
//! The text column is a string column. Which columns hold them is `data.columns`; they default
//! to the modality's name and `text`. Rows are numbered from 0 within their shard, as
//! `dataset[i]` counts them; a bad row (no text, no media, bytes that do not decode) is skipped
//! and reported as `<shard>#row <i>: <why>`, like a bad JSONL line. A shard that cannot be read
//! at all (cut off before its footer) or whose columns have the wrong type is an error naming
//! the shard and the column: every row of it would fail.
//!
//! The embedded bytes of every row stay in memory (as stored, compressed) for the run, so
//! encoding and the feature cache (keyed by the bytes' hash: a clip in a shard and the same
//! clip as a file share an entry) can read them without touching the shard again.
//!
//! Read with the `parquet` crate's row API: a projection onto the two columns, so the shards'
//! other columns are never decoded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use parquet::basic::{LogicalType, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::{Type, TypePtr};

use super::manifest::{Columns, Manifest, ManifestItem};

/// Whether a `data.train` / `data.valid` entry names Parquet shards (by its extension).
pub fn is_parquet(spec: &Path) -> bool {
    spec.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// The shards `spec` names: the file itself, or the files its glob (`*`, `?`, `[...]`)
/// matches, sorted.
pub fn shards(spec: &Path) -> Result<Vec<PathBuf>> {
    let text = spec.to_string_lossy();
    if !text.contains(['*', '?', '[']) {
        return Ok(vec![spec.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in glob::glob(&text).with_context(|| format!("{text}: not a valid glob"))? {
        out.push(entry.with_context(|| format!("{text}: cannot list"))?);
    }
    if out.is_empty() {
        bail!("{text}: no file matches");
    }
    out.sort();
    Ok(out)
}

/// How a shard's media column holds the media.
#[derive(Debug, Clone, Copy, PartialEq)]
enum MediaColumn {
    /// `{bytes, path}`, as `datasets` writes `Audio` and `Image` features.
    Struct,
    Binary,
    /// A path relative to the shard.
    Path,
}

/// Reads every shard `spec` names into one manifest (`Manifest::path` is `spec`).
pub fn read(spec: &Path, columns: &Columns) -> Result<Manifest> {
    let mut items = Vec::new();
    let mut problems = Vec::new();
    for shard in shards(spec)? {
        read_shard(&shard, columns, &mut items, &mut problems)?;
    }
    Ok(Manifest {
        path: spec.to_path_buf(),
        items,
        problems,
        unit: "rows",
    })
}

fn read_shard(
    shard: &Path,
    columns: &Columns,
    items: &mut Vec<ManifestItem>,
    problems: &mut Vec<String>,
) -> Result<()> {
    let at = shard.display();
    let file = std::fs::File::open(shard).with_context(|| format!("{at}: cannot open"))?;
    let reader = SerializedFileReader::new(file).map_err(|e| {
        anyhow::anyhow!("{at}: not a readable Parquet file (cut off, or not Parquet): {e}")
    })?;
    let schema = reader.metadata().file_metadata().schema();
    let find = |name: &str| -> Result<TypePtr> {
        schema
            .get_fields()
            .iter()
            .find(|f| f.name() == name)
            .cloned()
            .with_context(|| {
                let have: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
                format!(
                    "{at}: no column '{name}' (the shard has {}); name the columns with data.columns = {{ {} = \"...\", text = \"...\" }}",
                    have.join(", "),
                    columns.modality
                )
            })
    };
    let media_field = find(&columns.media)?;
    let text_field = find(&columns.text)?;
    let media_kind =
        media_column(&media_field).with_context(|| format!("{at}: column '{}'", columns.media))?;
    if !is_string(&text_field) {
        bail!(
            "{at}: column '{}' is {}, expected a string column",
            columns.text,
            describe(&text_field)
        );
    }
    let projection = Type::group_type_builder(schema.name())
        .with_fields(vec![media_field, text_field])
        .build()
        .context("internal: projecting the shard's columns")?;
    let rows = reader
        .get_row_iter(Some(projection))
        .with_context(|| format!("{at}: cannot read rows"))?;
    let base = shard.parent().unwrap_or(Path::new("."));
    for (i, row) in rows.enumerate() {
        let name = format!("{at}#row {i}");
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                // A damaged page: the rows after it cannot be told apart, so the shard ends here.
                problems.push(format!(
                    "{name}: cannot read, rest of the shard skipped: {e}"
                ));
                break;
            }
        };
        let mut text = None;
        let mut media = None;
        for (col, field) in row.get_column_iter() {
            if *col == columns.text {
                text = Some(field);
            } else if *col == columns.media {
                media = Some(field);
            }
        }
        let item = text
            .context("internal: projected text column missing")
            .and_then(|t| row_text(t, &columns.text))
            .and_then(|text| {
                let (path, embedded) = row_media(
                    media.context("internal: projected media column missing")?,
                    media_kind,
                    &columns.media,
                    base,
                    &name,
                )?;
                Ok(ManifestItem {
                    line: i,
                    at: name.clone(),
                    path,
                    text,
                    fields: Default::default(),
                    embedded,
                })
            });
        match item {
            Ok(it) => items.push(it),
            Err(e) => problems.push(format!("{name}: {e:#}")),
        }
    }
    Ok(())
}

fn row_text(field: &Field, column: &str) -> Result<String> {
    match field {
        Field::Str(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Field::Str(_) => bail!("empty text"),
        Field::Null => bail!("no text ('{column}' is null)"),
        other => bail!("'{column}' holds {other:?}, not a string"),
    }
}

/// The media of one row: its name and embedded bytes, or the file it names.
fn row_media(
    field: &Field,
    kind: MediaColumn,
    column: &str,
    base: &Path,
    name: &str,
) -> Result<(PathBuf, Option<Arc<[u8]>>)> {
    let embedded = |bytes: &[u8], original: Option<&str>| -> Result<_> {
        if bytes.is_empty() {
            bail!("'{column}' holds no bytes");
        }
        // The original file name after the row, so its extension hints the format.
        let shown = match original.and_then(|p| Path::new(p).file_name()) {
            Some(f) => format!("{name}/{}", f.to_string_lossy()),
            None => name.to_string(),
        };
        Ok((PathBuf::from(shown), Some(Arc::from(bytes))))
    };
    let file = |rel: &str| -> Result<_> {
        let path = base.join(rel);
        if !path.is_file() {
            bail!("'{column}' names {}, which is not a file", path.display());
        }
        Ok((path, None))
    };
    match (kind, field) {
        (_, Field::Null) => bail!("no media ('{column}' is null)"),
        (MediaColumn::Binary, Field::Bytes(b)) => embedded(b.data(), None),
        (MediaColumn::Path, Field::Str(p)) => file(p),
        (MediaColumn::Struct, Field::Group(g)) => {
            let mut bytes = None;
            let mut path = None;
            for (k, v) in g.get_column_iter() {
                match (k.as_str(), v) {
                    ("bytes", Field::Bytes(b)) => bytes = Some(b.data()),
                    ("path", Field::Str(p)) => path = Some(p.as_str()),
                    _ => {}
                }
            }
            match (bytes, path) {
                (Some(b), p) => embedded(b, p),
                (None, Some(p)) => file(p),
                (None, None) => bail!("'{column}' has neither bytes nor a path"),
            }
        }
        (_, other) => bail!("'{column}' holds {other:?}"),
    }
}

/// How a media column holds its media, or why it cannot.
fn media_column(field: &Type) -> Result<MediaColumn> {
    if field.is_group() {
        let sub = |n: &str| field.get_fields().iter().find(|f| f.name() == n);
        return match (sub("bytes"), sub("path")) {
            (Some(b), p) if is_binary(b) && p.is_none_or(|p| is_string(p)) => {
                Ok(MediaColumn::Struct)
            }
            _ => bail!(
                "is {}, expected a struct {{bytes, path}} (a `datasets` Audio or Image feature), binary, or a string path",
                describe(field)
            ),
        };
    }
    if is_string(field) {
        Ok(MediaColumn::Path)
    } else if is_binary(field) {
        Ok(MediaColumn::Binary)
    } else {
        bail!(
            "is {}, expected a struct {{bytes, path}} (a `datasets` Audio or Image feature), binary, or a string path",
            describe(field)
        )
    }
}

fn is_byte_array(t: &Type) -> bool {
    t.is_primitive() && t.get_physical_type() == PhysicalType::BYTE_ARRAY
}

fn is_string(t: &Type) -> bool {
    is_byte_array(t)
        && (matches!(
            t.get_basic_info().logical_type_ref(),
            Some(LogicalType::String)
        ) || t.get_basic_info().converted_type() == parquet::basic::ConvertedType::UTF8)
}

fn is_binary(t: &Type) -> bool {
    is_byte_array(t) && !is_string(t)
}

/// A column's type as a user reads it: `INT64`, `a string`, `a struct {a, b}`.
fn describe(t: &Type) -> String {
    if t.is_group() {
        let names: Vec<&str> = t.get_fields().iter().map(|f| f.name()).collect();
        if t.get_basic_info().converted_type() == parquet::basic::ConvertedType::LIST
            || matches!(
                t.get_basic_info().logical_type_ref(),
                Some(LogicalType::List)
            )
        {
            return "a list".into();
        }
        return format!("a struct {{{}}}", names.join(", "));
    }
    if is_string(t) {
        return "a string".into();
    }
    if is_binary(t) {
        return "binary".into();
    }
    t.get_physical_type().to_string()
}
