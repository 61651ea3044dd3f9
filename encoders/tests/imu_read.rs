//! IMU readers: sktime `.ts` (the real BasicMotions files and small made-up ones), CSV in its
//! common shapes, and every kind of bad input giving an error that names the file, never a
//! panic.

mod common;

use std::path::PathBuf;

use anymal_encoders::imu::{
    load_imu, load_imu_with_length, read_csv, read_ts, ImuCsvOptions, ImuPreprocessConfig,
    Normalize, TimeUnit,
};

/// A file with `text` in this test process's temp folder.
fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anymal-imu-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn basic_motions(split: &str) -> PathBuf {
    common::asset(
        &format!("data/basic-motions/BasicMotions_{split}.ts"),
        "basic-motions",
    )
}

fn err_of<T: std::fmt::Debug>(r: anymal_encoders::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn ts_basic_motions_counts_labels_and_values() {
    for split in ["TRAIN", "TEST"] {
        let path = basic_motions(split);
        let recs = read_ts(&path, 10.0).unwrap();
        assert_eq!(recs.len(), 40, "{split}");
        for (r, label) in &recs {
            assert_eq!((r.channels, r.len(), r.rate_hz), (6, 100, 10.0));
            assert!(label.is_some());
        }
        for class in ["Standing", "Walking", "Running", "Badminton"] {
            let n = recs
                .iter()
                .filter(|(_, l)| l.as_deref() == Some(class))
                .count();
            assert_eq!(n, 10, "{split} {class}");
        }
        // The first recording against the file's own text, value by value.
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text
            .lines()
            .skip_while(|l| !l.starts_with("@data"))
            .nth(1)
            .unwrap();
        let fields: Vec<&str> = line.split(':').collect();
        assert_eq!(fields.len(), 7);
        let (r, label) = &recs[0];
        assert_eq!(label.as_deref(), Some(fields[6].trim()));
        for (d, f) in fields[..6].iter().enumerate() {
            for (t, v) in f.split(',').enumerate() {
                assert_eq!(
                    r.data[t * 6 + d],
                    v.parse::<f32>().unwrap(),
                    "dim {d} t {t}"
                );
            }
        }
    }
    // Spot values of TRAIN's first row, copied from the file.
    let (r, _) = &read_ts(&basic_motions("TRAIN"), 10.0).unwrap()[0];
    assert_eq!(r.channel(0)[..4], [0.079106, 0.079106, -0.903497, 1.116125]);
}

#[test]
fn ts_unequal_lengths_without_labels() {
    let p = write(
        "unequal.ts",
        "# comment\n@problemName x\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel false\n@data\n1,2,3:4,5,6\n\n7,8:9,10\n",
    );
    let recs = read_ts(&p, 25.0).unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].0.data, vec![1., 4., 2., 5., 3., 6.]);
    assert_eq!(recs[1].0.len(), 2);
    assert_eq!(recs[1].0.rate_hz, 25.0);
    assert!(recs.iter().all(|(_, l)| l.is_none()));
}

#[test]
fn ts_bad_inputs() {
    let head = "@dimensions 2\n@classLabel true a b\n@data\n";
    let cases = [
        (
            "missing.ts",
            format!("{head}1,2,3:4,?,6:a\n"),
            "line 4, column dimension 2, value 2: missing value",
        ),
        (
            "nan.ts",
            format!("{head}1,2,3:4,5,6:a\n1,NaN,3:4,5,6:b\n"),
            "line 5, column dimension 1, value 2",
        ),
        (
            "label.ts",
            format!("{head}1,2,3:4,5,6:c\n"),
            "'c' is not one of the declared labels",
        ),
        (
            "dims.ts",
            format!("{head}1,2,3:a\n"),
            "1 dimensions, the header declares 2",
        ),
        (
            "ragged.ts",
            format!("{head}1,2,3:4,5:a\n"),
            "different lengths (3, 2)",
        ),
        (
            "stamps.ts",
            "@timeStamps true\n@data\n(0,1),(1,2)\n".to_string(),
            "not supported",
        ),
        ("nodata.ts", "@dimensions 2\n".to_string(), "no @data"),
        ("norecs.ts", head.to_string(), "no recordings"),
        ("blank.ts", "\n\n".to_string(), "empty file"),
    ];
    for (name, text, want) in cases {
        let e = err_of(read_ts(&write(name, &text), 10.0));
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
}

#[test]
fn csv_with_and_without_header() {
    let with = write("with.csv", "t,acc_x,acc_y\n0.0,1,2\n0.1,3,4\n0.2,5,6\n");
    let r = read_csv(&with, &ImuCsvOptions::default()).unwrap();
    assert_eq!(r.names, vec!["acc_x", "acc_y"]);
    assert_eq!(r.data, vec![1., 2., 3., 4., 5., 6.]);
    assert!((r.rate_hz - 10.0).abs() < 1e-4, "{}", r.rate_hz);

    let without = write("without.csv", "0.0,1,2\r\n0.1,3,4\r\n0.2,5,6\r\n");
    let r2 = read_csv(&without, &ImuCsvOptions::default()).unwrap();
    assert_eq!((r2.channels, r2.data.clone()), (2, r.data.clone()));
    assert_eq!(r2.names, vec!["dim_0", "dim_1"]);
    assert!((r2.rate_hz - 10.0).abs() < 1e-4);

    // No time column: rows are samples at the given rate.
    let bare = write("bare.csv", "acc_x,acc_y\n1,2\n3,4\n5,6\n");
    let opts = ImuCsvOptions {
        rate_hz: Some(50.0),
        ..Default::default()
    };
    let r3 = read_csv(&bare, &opts).unwrap();
    assert_eq!((r3.rate_hz, r3.data.clone()), (50.0, r.data.clone()));
    let e = err_of(read_csv(&bare, &ImuCsvOptions::default()));
    assert!(
        e.contains("bare.csv") && e.contains("no time column"),
        "{e}"
    );
}

#[test]
fn csv_time_units() {
    // Milliseconds, told by the step (20) and by the header.
    let ms = write("ms.csv", "t,x\n1000,0\n1020,1\n1040,2\n1060,3\n");
    assert!((read_csv(&ms, &ImuCsvOptions::default()).unwrap().rate_hz - 50.0).abs() < 1e-3);
    let ms_named = write("ms_named.csv", "time_ms,x\n0,0\n0.25,1\n0.5,2\n");
    assert!(
        (read_csv(&ms_named, &ImuCsvOptions::default())
            .unwrap()
            .rate_hz
            - 4000.0)
            .abs()
            < 1e-2
    );
    // Epoch nanoseconds at 100 Hz, no header.
    let ns = write(
        "ns.csv",
        "1700000000000000000,1\n1700000000010000000,2\n1700000000020000000,3\n",
    );
    let r = read_csv(&ns, &ImuCsvOptions::default()).unwrap();
    assert!((r.rate_hz - 100.0).abs() < 1e-2, "{}", r.rate_hz);
    // Microseconds only when asked for.
    let us = write("us.csv", "t,x\n0,0\n5000,1\n10000,2\n");
    let opts = ImuCsvOptions {
        time_unit: TimeUnit::Microseconds,
        ..Default::default()
    };
    assert!((read_csv(&us, &opts).unwrap().rate_hz - 200.0).abs() < 1e-3);
}

#[test]
fn csv_irregular_timestamps_are_resampled() {
    // x = 2t + 1 and y = -t sampled at uneven times; the median step is 0.1 s.
    let times = [0.0, 0.1, 0.2, 0.27, 0.4, 0.5, 0.63, 0.7, 0.8, 0.9, 1.0];
    let mut text = String::from("timestamp,x,y\n");
    for t in times {
        text += &format!("{t},{},{}\n", 2.0 * t + 1.0, -t);
    }
    let r = read_csv(&write("irregular.csv", &text), &ImuCsvOptions::default()).unwrap();
    assert!((r.rate_hz - 10.0).abs() < 1e-3, "{}", r.rate_hz);
    assert_eq!(r.len(), 11);
    for k in 0..11 {
        let t = k as f32 * 0.1;
        assert!(
            (r.data[k * 2] - (2.0 * t + 1.0)).abs() < 1e-5,
            "{k}: {:?}",
            r.data
        );
        assert!((r.data[k * 2 + 1] + t).abs() < 1e-5);
    }
}

#[test]
fn csv_semicolons_tabs_and_decimal_commas() {
    let semi = write("semi.csv", "zeit;ax;ay\n0,0;1,5;2\n0,1;3;4,25\n");
    let opts = ImuCsvOptions {
        rate_hz: Some(10.0),
        ..Default::default()
    };
    // No time-like header ("zeit"): every column is a channel at the given rate.
    let r = read_csv(&semi, &opts).unwrap();
    assert_eq!(r.data, vec![0.0, 1.5, 2.0, 0.1, 3.0, 4.25]);
    let semi_t = write("semi_t.csv", "time;ax;ay\n0,0;1,5;2\n0,1;3;4,25\n");
    let r = read_csv(&semi_t, &ImuCsvOptions::default()).unwrap();
    assert_eq!((r.channels, r.data.clone()), (2, vec![1.5, 2.0, 3.0, 4.25]));
    let tab = write("tab.tsv", "t\tx\n0\t1\n0.25\t2\n0.5\t3\n");
    let r = read_csv(&tab, &ImuCsvOptions::default()).unwrap();
    assert_eq!((r.rate_hz, r.data.clone()), (4.0, vec![1., 2., 3.]));
}

#[test]
fn csv_bad_inputs_name_file_line_and_column() {
    let cases = [
        (
            "nan.csv",
            "t,acc_x,acc_y\n0,1,2\n0.1,NaN,2\n",
            "line 3, column 2 (acc_x): 'NaN' is not a finite number",
        ),
        (
            "inf.csv",
            "t,acc_x,acc_y\n0,1,2\n0.1,1,-inf\n",
            "line 3, column 3 (acc_y)",
        ),
        (
            "word.csv",
            "0,1,2\n0.1,1,abc\n",
            "line 2, column 3: 'abc' is not a number",
        ),
        (
            "blankcell.csv",
            "t,x\n0,1\n0.1,\n",
            "line 3, column 2 (x): empty cell",
        ),
        ("few.csv", "t,x\n0,1\n", "only 1 data row"),
        ("header_only.csv", "t,x\n", "no data rows"),
        ("empty.csv", "", "empty file"),
        ("blank.csv", "\n  \n# only a comment\n", "empty file"),
        (
            "ragged.csv",
            "t,x,y\n0,1,2\n0.1,1\n",
            "line 3: 2 fields, expected 3",
        ),
        (
            "back.csv",
            "t,x\n0,1\n0.2,1\n0.1,1\n",
            "line 4, column 1 (t): time 0.1 does not increase",
        ),
        ("same.csv", "t,x\n0,1\n0,1\n", "line 3, column 1 (t)"),
    ];
    for (name, text, want) in cases {
        let e = err_of(read_csv(&write(name, text), &ImuCsvOptions::default()));
        assert!(e.contains(name) && e.contains(want), "{name}: {e}");
    }
    let missing = std::env::temp_dir().join("anymal-imu-no-such-file.csv");
    let e = err_of(read_csv(&missing, &ImuCsvOptions::default()));
    assert!(e.contains("anymal-imu-no-such-file.csv"), "{e}");
    let bin = std::env::temp_dir().join(format!("anymal-imu-bin-{}.csv", std::process::id()));
    std::fs::write(&bin, [0xffu8, 0xfe, 0x00, 0x41]).unwrap();
    let e = err_of(read_csv(&bin, &ImuCsvOptions::default()));
    assert!(e.contains("not UTF-8"), "{e}");
    let _ = std::fs::remove_file(&bin);
}

#[test]
fn load_imu_checks_channels_and_windows() {
    let cfg = ImuPreprocessConfig {
        rate_hz: 10.0,
        window: 20,
        channels: 2,
        normalize: Normalize::None,
        ..Default::default()
    };
    // 50 Hz for 3 s -> 31 rows at 10 Hz -> the centre 20.
    let mut text = String::from("t,a,b\n");
    for i in 0..151 {
        let t = i as f64 / 50.0;
        text += &format!("{t},{},{}\n", t, 1.0);
    }
    let (x, valid) = load_imu_with_length(&write("ok.csv", &text), &cfg).unwrap();
    assert_eq!((x.len(), valid), (40, 20));
    // Centre crop of 31 rows starts at row 5 (t = 0.5 s); a line survives the smoothing.
    assert!(
        (x[0] - 0.5).abs() < 1e-4 && (x[38] - 2.4).abs() < 1e-4,
        "{x:?}"
    );

    let three = write("three.csv", "t,a,b,c\n0,1,2,3\n0.1,1,2,3\n");
    let e = err_of(load_imu(&three, &cfg));
    assert!(
        e.contains("three.csv") && e.contains("3 channels (a, b, c)") && e.contains("expects 2"),
        "{e}"
    );

    // A single-recording .ts is an input; several are not.
    let one = write(
        "one.ts",
        "@dimensions 2\n@classLabel false\n@data\n1,2,3:4,5,6\n",
    );
    let (x, valid) = load_imu_with_length(&one, &cfg).unwrap();
    assert_eq!(valid, 3);
    assert_eq!(&x[..6], &[1., 4., 2., 5., 3., 6.]);
    let two = write("two.ts", "@data\n1,2:3,4\n5,6:7,8\n");
    let e = err_of(load_imu(&two, &cfg));
    assert!(
        e.contains("two.ts") && e.contains("holds 2 recordings"),
        "{e}"
    );
    let e = err_of(load_imu(&write("x.json", "{}"), &cfg));
    assert!(
        e.contains("x.json") && e.contains("unknown IMU file type"),
        "{e}"
    );
}
