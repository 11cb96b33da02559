//! `pixpro demo` end to end on a small TuxSeg: the time it announces from a
//! timing of this machine, the table it ends with, continuing a stopped
//! pretraining, and a re-run that keeps what was measured.
mod common;
use common::{pixpro, s};

#[test]
fn demo_announces_its_time_continues_a_stopped_run_and_ends_with_the_table() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tuxseg");
    let out = tmp.path().join("demo");
    let (ok, _, err) = pixpro(&[
        "data",
        "tuxseg",
        "--out",
        s(&data),
        "--pretrain-images",
        "40",
        "--train-images",
        "6",
        "--val-images",
        "4",
    ]);
    assert!(ok, "{err}");
    // Step 1 of a 2-step pretraining of the preset into `run`, with `extra`
    // flags: what a stopped demo leaves.
    let begin = |run: &std::path::Path, extra: &[&str]| {
        let pretrain = data.join("pretrain");
        let mut args = vec!["pretrain", "--data", s(&pretrain), "--out", s(run)];
        args.extend(["--preset", "cpu", "--steps", "2", "--stop-at", "1"]);
        args.extend(extra);
        let (ok, _, err) = pixpro(&args);
        assert!(ok, "{err}");
    };
    begin(&out.join("pretrain"), &[]);
    // One begun under another learning-rate rule (the preset's before
    // issue #17) is not continued under the preset's.
    let old = tmp.path().join("old-preset");
    let linear = tmp.path().join("linear.toml");
    std::fs::write(&linear, "[optim]\nlr_scaling = \"linear\"\nlr_per_256 = 1.0\n").unwrap();
    begin(&old.join("pretrain"), &["--config", s(&linear)]);
    let (ok, _, err) = pixpro(&["demo", "--out", s(&old), "--data", s(&data), "--steps", "2"]);
    assert!(!ok, "{err}");
    let keys = "optim.lr_per_256, optim.lr_scaling";
    assert!(err.contains("another recipe") && err.contains(keys), "{err}");
    assert!(err.contains(s(&old.join("pretrain"))), "{err}");

    let demo =
        ["demo", "--out", s(&out), "--data", s(&data), "--steps", "2", "--protocols", "retrieval"];
    let (ok, table, err) = pixpro(&demo);
    assert!(ok, "{err}");
    assert!(err.contains("minutes for the preset's 1330 steps on 2 idle cores"), "{err}");
    let timed =
        err.lines().find(|l| l.contains("images/s here")).unwrap_or_else(|| panic!("{err}"));
    assert!(timed.contains("(1 step, continuing from step 1)"), "{timed}");
    assert!(timed.contains("minutes of pretraining") && timed.contains("in all"), "{timed}");
    assert!(err.contains("resuming"), "{err}");
    assert!(table.contains("pretrained 2 steps against random init"), "{table}");
    let row = table.lines().find(|l| l.starts_with("| retrieval |")).unwrap_or_else(|| {
        panic!("{table}");
    });
    let cells: Vec<f64> = row.split('|').filter_map(|c| c.trim().parse().ok()).collect();
    assert_eq!(cells.len(), 3, "{row}");
    assert!((cells[0] - cells[1] - cells[2]).abs() < 2e-4, "difference column: {row}");

    // Done pretraining: nothing is timed again and the measurement is kept.
    let (ok, again, err) = pixpro(&demo);
    assert!(ok, "{err}");
    assert!(!err.contains("images/s here"), "{err}");
    assert!(err.contains("retrieval: mIoU") && err.contains("(kept from an earlier run)"), "{err}");
    assert_eq!(again.lines().last(), table.lines().last());
}
