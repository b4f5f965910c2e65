//! train::metrics::read: what `append` writes reads back (empty optional fields as `None`); a
//! malformed row or a missing file is an error naming the file (and the row's line).

use advtrain::train::metrics::{self, EpochMetrics};

fn row(epoch: usize) -> EpochMetrics {
    EpochMetrics {
        epoch,
        lr: 0.1 / epoch as f64,
        train_loss: 0.5 + epoch as f64,
        train_clean_acc: Some(0.25 * epoch as f64),
        train_adv_acc: (epoch % 2 == 0).then_some(0.125),
        val_clean_acc: None,
        val_pgd_acc: Some(0.5),
        images_per_s: 1234.5,
        epoch_time_s: 12.25,
    }
}

#[test]
fn read_returns_what_append_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.csv");
    let rows: Vec<EpochMetrics> = (1..=3).map(row).collect();
    for m in &rows {
        metrics::append(&path, m).unwrap();
    }
    let back = metrics::read(&path).unwrap();
    assert_eq!(back.len(), 3);
    for (got, want) in back.iter().zip(&rows) {
        // lr is written with 7 significant digits.
        assert!(
            (got.lr - want.lr).abs() <= 1e-6 * want.lr,
            "{got:?} vs {want:?}"
        );
        assert_eq!(
            EpochMetrics {
                lr: want.lr,
                ..got.clone()
            },
            *want
        );
    }
    assert_eq!((back[0].train_adv_acc, back[0].val_clean_acc), (None, None));
    assert_eq!(back[1].train_adv_acc, Some(0.125));

    // Only the header: no rows.
    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, format!("{}\n", metrics::HEADER)).unwrap();
    assert!(metrics::read(&empty).unwrap().is_empty());
}

#[test]
fn malformed_rows_and_missing_files_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.csv");
    for m in [row(1), row(2)] {
        metrics::append(&path, &m).unwrap();
    }
    let good = std::fs::read_to_string(&path).unwrap();
    let cases = [
        // A row torn by a kill: fewer fields.
        (format!("{good}3,1.0e-1,0.5"), 4),
        // A number that is not one.
        (good.replacen("\n2,", "\nzwei,", 1), 3),
        (good.replacen(",1234.5,", ",fast,", 1), 2),
    ];
    for (text, line) in cases {
        std::fs::write(&path, &text).unwrap();
        let msg = format!("{:#}", metrics::read(&path).expect_err(&text));
        let want = format!("{} line {line}", path.display());
        assert!(msg.contains(&want), "{msg:?} lacks {want:?}");
    }
    let missing = dir.path().join("nope.csv");
    let msg = format!("{:#}", metrics::read(&missing).unwrap_err());
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
}

/// `truncate_after` (resume) keeps the header and the whole rows of epochs <= the last one,
/// byte for byte: a torn row and later epochs go; a quoted field holding a comma (the routes of
/// `branches.csv`) is one field, so those rows are kept too (split by hand, they were dropped).
#[test]
fn truncate_after_keeps_whole_rows_up_to_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.csv");
    for m in (1..=4).map(row) {
        metrics::append(&path, &m).unwrap();
    }
    let full = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = full.lines().collect();
    // A kill mid-append leaves a torn fifth row.
    std::fs::write(&path, format!("{full}5,0.1,0.2")).unwrap();
    metrics::truncate_after(&path, 2).unwrap();
    let want = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);
    let epochs: Vec<usize> = metrics::read(&path)
        .unwrap()
        .iter()
        .map(|m| m.epoch)
        .collect();
    assert_eq!(epochs, [1, 2]);
    // Nothing after the epoch: unchanged.
    metrics::truncate_after(&path, 9).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), want);

    let branches = dir.path().join("branches.csv");
    let text = "epoch,route,val_clean_acc,val_pgd_acc\n\
                1,\"ns=clean,ap=clean\",0.500000,0.250000\n\
                1,\"ns=adv,ap=adv\",0.400000,\n\
                2,\"ns=clean,ap=clean\",0.600000,0.300000\n\
                2,\"ns=adv,ap=a";
    std::fs::write(&branches, text).unwrap();
    metrics::truncate_after(&branches, 2).unwrap();
    let kept = std::fs::read_to_string(&branches).unwrap();
    let want: Vec<&str> = text.lines().take(4).collect();
    assert_eq!(kept, want.join("\n") + "\n");
    metrics::truncate_after(&branches, 1).unwrap();
    let want: Vec<&str> = text.lines().take(3).collect();
    assert_eq!(
        std::fs::read_to_string(&branches).unwrap(),
        want.join("\n") + "\n"
    );
}
