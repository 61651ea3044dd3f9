//! BasicMotions (sktime / UEA archive): 80 ten-second smartwatch recordings, accelerometer
//! x, y, z and gyroscope x, y, z at 10 Hz, of four activities (standing, walking, running,
//! badminton), in the archive's own TRAIN / TEST split of 40 each. `anymal data basic-motions`
//! turns them into one CSV per recording and alignment manifests.
//!
//! ```text
//! out/recordings/train_000.csv ... test_039.csv   t,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z
//! out/train.jsonl  (32 of TRAIN)   {"imu": "recordings/train_000.csv", "label": "running",
//! out/valid.jsonl  (8 of TRAIN)     "text": "The person is running."}
//! out/test.jsonl   (all of TEST)
//! out/train-augmented.jsonl  (--augment N variants of each train recording: train_000_aug1.csv)
//! ```
//!
//! The validation split is fixed and stratified: of each class's TRAIN recordings in file
//! order, the 5th and the 10th (2 of 10 per class). Files are named by their position in the
//! archive's file, whatever their split, so a name always means the same recording. Building
//! again rewrites the same bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use anymal_encoders::imu::read_ts;

use super::imu_augment;

/// The four classes, lower case, in the order of [`caption`].
pub const CLASSES: [&str; 4] = ["standing", "walking", "running", "badminton"];
/// The archive states one sample every tenth of a second.
pub const RATE_HZ: f32 = 10.0;
/// Header of every written CSV; the channels in the archive's order of dimensions.
pub const CSV_HEADER: &str = "t,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z";

/// The manifest of the train recordings' augmented variants (`--augment N` of each).
pub const AUGMENTED_MANIFEST: &str = "train-augmented.jsonl";

const FETCH: &str = "scripts/fetch-assets.sh basic-motions";

/// What was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub train: usize,
    pub valid: usize,
    pub test: usize,
    /// Augmented variants of the train recordings (in [`AUGMENTED_MANIFEST`]).
    pub augmented: usize,
    /// Per class: recordings in (train, valid, test).
    pub per_class: BTreeMap<String, (usize, usize, usize)>,
}

/// Where `scripts/fetch-assets.sh basic-motions` puts the files below the anymal cache.
pub fn default_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("data").join("basic-motions")
}

/// The caption of a class (lower case), `None` for anything else.
pub fn caption(label: &str) -> Option<&'static str> {
    match label {
        "standing" => Some("The person is standing."),
        "walking" => Some("The person is walking."),
        "running" => Some("The person is running."),
        "badminton" => Some("The person is playing badminton."),
        _ => None,
    }
}

/// Whether the `ordinal`-th (0-based, file order) TRAIN recording of its class goes to
/// validation: the 5th and 10th of each class.
pub fn is_held_out(ordinal: usize) -> bool {
    ordinal % 5 == 4
}

/// Writes `recordings/*.csv` and `train.jsonl`, `valid.jsonl`, `test.jsonl` into `out_dir`
/// from `BasicMotions_TRAIN.ts` and `BasicMotions_TEST.ts` in `cache` (see the module docs),
/// and `augment` variants of each train recording ([`super::imu_augment`];
/// `recordings/train_000_aug1.csv` ...) listed in [`AUGMENTED_MANIFEST`]. Validation and test
/// recordings are never augmented.
pub fn build(cache: &Path, out_dir: &Path, augment: usize) -> Result<Summary> {
    let rec_dir = out_dir.join("recordings");
    std::fs::create_dir_all(&rec_dir)
        .with_context(|| format!("{}: cannot create", rec_dir.display()))?;
    let mut summary = Summary::default();
    let mut manifests: BTreeMap<&str, String> = BTreeMap::new();
    let mut augmented = String::new();
    for (file, prefix) in [
        ("BasicMotions_TRAIN.ts", "train"),
        ("BasicMotions_TEST.ts", "test"),
    ] {
        let path = cache.join(file);
        if !path.is_file() {
            bail!("{}: not found; fetch it with `{FETCH}`", path.display());
        }
        let recs = read_ts(&path, RATE_HZ)?;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for (i, (rec, label)) in recs.iter().enumerate() {
            let label = label.as_deref().unwrap_or("").to_lowercase();
            let Some(text) = caption(&label) else {
                bail!(
                    "{}: recording {}: label '{label}' is not one of {}",
                    path.display(),
                    i + 1,
                    CLASSES.join(", ")
                );
            };
            if rec.channels != 6 {
                bail!(
                    "{}: recording {}: {} dimensions, BasicMotions has 6",
                    path.display(),
                    i + 1,
                    rec.channels
                );
            }
            let ordinal = seen.entry(label.clone()).or_default();
            let split = match prefix {
                "train" if is_held_out(*ordinal) => "valid",
                "train" => "train",
                _ => "test",
            };
            *ordinal += 1;

            let rel = format!("recordings/{prefix}_{i:03}.csv");
            write_csv(&out_dir.join(&rel), &rec.data, rec.channels)?;
            if split == "train" {
                for v in 1..=augment {
                    let arel = format!("recordings/{prefix}_{i:03}_aug{v}.csv");
                    let seed = anymal_util::rng::fnv1a(arel.as_bytes());
                    write_csv(
                        &out_dir.join(&arel),
                        &imu_augment::augment(&rec.data, seed),
                        rec.channels,
                    )?;
                    let line = serde_json::json!({"imu": arel, "text": text, "label": label});
                    augmented.push_str(&line.to_string());
                    augmented.push('\n');
                    summary.augmented += 1;
                }
            }

            let line = serde_json::json!({"imu": rel, "text": text, "label": label});
            let m = manifests.entry(split).or_default();
            m.push_str(&line.to_string());
            m.push('\n');
            let counts = summary.per_class.entry(label).or_default();
            match split {
                "train" => {
                    summary.train += 1;
                    counts.0 += 1;
                }
                "valid" => {
                    summary.valid += 1;
                    counts.1 += 1;
                }
                _ => {
                    summary.test += 1;
                    counts.2 += 1;
                }
            }
        }
    }
    for split in ["train", "valid", "test"] {
        let text = manifests.get(split).cloned().unwrap_or_default();
        anymal_util::fs::write_atomic(&out_dir.join(format!("{split}.jsonl")), text.as_bytes())?;
    }
    anymal_util::fs::write_atomic(&out_dir.join(AUGMENTED_MANIFEST), augmented.as_bytes())?;
    Ok(summary)
}

/// One recording as CSV: a time column, then the channels. One decimal is exact for k / 10 s;
/// `{}` of an f32 is its shortest exact text, so reading the CSV back gives the same samples.
fn write_csv(path: &Path, data: &[f32], channels: usize) -> Result<()> {
    let mut csv = String::with_capacity(data.len() * 10);
    csv.push_str(CSV_HEADER);
    csv.push('\n');
    for (k, row) in data.chunks(channels).enumerate() {
        csv.push_str(&format!("{:.1}", k as f64 / RATE_HZ as f64));
        for v in row {
            csv.push_str(&format!(",{v}"));
        }
        csv.push('\n');
    }
    Ok(anymal_util::fs::write_atomic(path, csv.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_and_holdout() {
        for c in CLASSES {
            assert!(caption(c).is_some_and(|t| t.starts_with("The person is")));
        }
        assert_eq!(caption("Running"), None);
        let held: Vec<usize> = (0..10).filter(|&i| is_held_out(i)).collect();
        assert_eq!(held, vec![4, 9]);
    }

    #[test]
    fn missing_files_name_the_fetch_command() {
        let out = std::env::temp_dir().join(format!("anymal-bm-missing-{}", std::process::id()));
        let err = build(Path::new("/nonexistent/basic-motions"), &out, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BasicMotions_TRAIN.ts") && err.contains(FETCH),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}
