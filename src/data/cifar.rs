//! Reader for the CIFAR-10 / CIFAR-100 binary formats.
//!
//! Each record is one (CIFAR-10) or two (CIFAR-100: coarse, fine) label bytes followed by
//! 3072 pixel bytes: the 32x32 red plane, then green, then blue, each row-major. That is
//! already CHW, so the records' pixels are copied as they are into an NCHW buffer.

use std::path::{Path, PathBuf};

use super::raw::{check_labels, read_file, DataError, RawImages};

/// Image side length.
const SIDE: usize = 32;
/// Channels per image.
const CHANNELS: usize = 3;
/// Pixel bytes per record.
const PIXELS: usize = CHANNELS * SIDE * SIDE;

/// Folder name of the CIFAR-10 binary archive.
pub const CIFAR10_SUBDIR: &str = "cifar-10-batches-bin";
/// Folder name of the CIFAR-100 binary archive.
pub const CIFAR100_SUBDIR: &str = "cifar-100-binary";

/// Layout of one dataset's records.
struct Format {
    /// Label bytes before the pixels of each record.
    label_bytes: usize,
    /// Which of the label bytes is used.
    label_index: usize,
    /// Labels must be below this.
    num_classes: usize,
}

impl Format {
    fn record_len(&self) -> usize {
        self.label_bytes + PIXELS
    }
}

/// Loads the CIFAR-10 train (`data_batch_1..5.bin`) or test (`test_batch.bin`) split.
///
/// `dir` holds the `.bin` files or is the parent of `cifar-10-batches-bin`.
pub fn load_cifar10_dir(dir: &Path, train: bool) -> Result<RawImages, DataError> {
    let files: Vec<String> = if train {
        (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
    } else {
        vec!["test_batch.bin".to_string()]
    };
    let format = Format {
        label_bytes: 1,
        label_index: 0,
        num_classes: 10,
    };
    load(dir, CIFAR10_SUBDIR, &files, &format)
}

/// Loads the CIFAR-100 train (`train.bin`) or test (`test.bin`) split with fine (100) or
/// coarse (20) labels.
///
/// `dir` holds the `.bin` files or is the parent of `cifar-100-binary`.
pub fn load_cifar100_dir(dir: &Path, train: bool, coarse: bool) -> Result<RawImages, DataError> {
    let file = if train { "train.bin" } else { "test.bin" };
    let format = if coarse {
        Format {
            label_bytes: 2,
            label_index: 0,
            num_classes: 20,
        }
    } else {
        Format {
            label_bytes: 2,
            label_index: 1,
            num_classes: 100,
        }
    };
    load(dir, CIFAR100_SUBDIR, &[file.to_string()], &format)
}

/// Resolves the folder, then reads and concatenates the given files in order.
fn load(
    dir: &Path,
    subdir: &str,
    files: &[String],
    format: &Format,
) -> Result<RawImages, DataError> {
    let root = resolve_dir(dir, subdir, &files[0])?;
    let paths = files
        .iter()
        .map(|name| existing_file(&root, name, subdir))
        .collect::<Result<Vec<_>, _>>()?;
    let mut images = RawImages {
        n: 0,
        c: CHANNELS,
        h: SIDE,
        w: SIDE,
        pixels: Vec::new(),
        labels: Vec::new(),
        num_classes: format.num_classes,
    };
    for path in &paths {
        append_file(path, format, &mut images)?;
    }
    Ok(images)
}

/// `dir` itself if it holds `first_file`, else `dir/subdir` if that folder exists, else `dir`.
fn resolve_dir(dir: &Path, subdir: &str, first_file: &str) -> Result<PathBuf, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    let nested = dir.join(subdir);
    if !dir.join(first_file).is_file() && nested.is_dir() {
        return Ok(nested);
    }
    Ok(dir.to_path_buf())
}

/// `root/name` if it is a file, else `MissingFile`.
fn existing_file(root: &Path, name: &str, subdir: &str) -> Result<PathBuf, DataError> {
    let path = root.join(name);
    if path.is_file() {
        return Ok(path);
    }
    let expected = if root.ends_with(subdir) {
        name.to_string()
    } else {
        format!("{name} (here or in a {subdir}/ subfolder)")
    };
    Err(DataError::MissingFile {
        path: root.to_path_buf(),
        expected,
    })
}

/// Reads one `.bin` file and appends its records to `images`.
fn append_file(path: &Path, format: &Format, images: &mut RawImages) -> Result<(), DataError> {
    let bytes = read_file(path)?;
    let record_len = format.record_len();
    check_size(path, bytes.len(), record_len)?;
    let count = bytes.len() / record_len;
    let labels: Vec<u8> = bytes
        .chunks_exact(record_len)
        .map(|r| r[format.label_index])
        .collect();
    check_labels(path, &labels, format.num_classes)?;
    images.pixels.reserve(count * PIXELS);
    for record in bytes.chunks_exact(record_len) {
        images
            .pixels
            .extend_from_slice(&record[format.label_bytes..]);
    }
    images.labels.extend_from_slice(&labels);
    images.n += count;
    Ok(())
}

/// `Truncated` (expecting the next whole record) unless `len` is a non-zero multiple of `record_len`.
fn check_size(path: &Path, len: usize, record_len: usize) -> Result<(), DataError> {
    if len > 0 && len.is_multiple_of(record_len) {
        return Ok(());
    }
    let records = len / record_len + 1;
    Err(DataError::Truncated {
        path: path.to_path_buf(),
        expected_bytes: (records * record_len) as u64,
        found_bytes: len as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pixel value at record `i`, channel `c`, row `h`, column `w` in the test files.
    fn pixel(i: usize, c: usize, h: usize, w: usize) -> u8 {
        (i * 71 + c * 37 + h * 5 + w * 3) as u8
    }

    /// One record: `labels` followed by the CHW pixel planes of image `i`.
    fn record(i: usize, labels: &[u8]) -> Vec<u8> {
        let mut r = labels.to_vec();
        for c in 0..CHANNELS {
            for h in 0..SIDE {
                for w in 0..SIDE {
                    r.push(pixel(i, c, h, w));
                }
            }
        }
        r
    }

    /// Writes records `first..first + labels.len()` to `dir/name`.
    fn write_records(dir: &Path, name: &str, first: usize, labels: &[&[u8]]) -> PathBuf {
        let bytes: Vec<u8> = labels
            .iter()
            .enumerate()
            .flat_map(|(k, l)| record(first + k, l))
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// NCHW value of the loaded images at (n, c, h, w).
    fn at(im: &RawImages, n: usize, c: usize, h: usize, w: usize) -> u8 {
        im.pixels[((n * im.c + c) * im.h + h) * im.w + w]
    }

    /// Checks shape and a few pixels of every channel for images `0..n`.
    fn check_pixels(im: &RawImages, n: usize) {
        assert_eq!((im.n, im.c, im.h, im.w), (n, 3, 32, 32));
        assert_eq!(im.pixels.len(), n * PIXELS);
        for i in 0..n {
            for c in 0..3 {
                for (h, w) in [(0, 0), (0, 31), (31, 0), (17, 5), (31, 31)] {
                    assert_eq!(
                        at(im, i, c, h, w),
                        pixel(i, c, h, w),
                        "image {i} c{c} ({h},{w})"
                    );
                }
            }
        }
    }

    #[test]
    fn cifar10_test_split_layout() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), "test_batch.bin", 0, &[&[3], &[0], &[9]]);
        let im = load_cifar10_dir(dir.path(), false).unwrap();
        check_pixels(&im, 3);
        assert_eq!(im.labels, vec![3, 0, 9]);
        assert_eq!(im.num_classes, 10);
        // Exact planar placement: record 1, green (c=1), row 2, col 4 sits at
        // 1*3072 + 1*1024 + 2*32 + 4 and equals 71 + 37 + 10 + 12.
        assert_eq!(im.pixels[3072 + 1024 + 64 + 4], 130);
        im.validate().unwrap();
    }

    #[test]
    fn cifar10_train_concatenates_batches_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for b in 0..5 {
            write_records(
                dir.path(),
                &format!("data_batch_{}.bin", b + 1),
                b,
                &[&[b as u8]],
            );
        }
        let im = load_cifar10_dir(dir.path(), true).unwrap();
        check_pixels(&im, 5);
        assert_eq!(im.labels, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn cifar10_parent_dir_is_resolved() {
        let parent = tempfile::tempdir().unwrap();
        let sub = parent.path().join(CIFAR10_SUBDIR);
        std::fs::create_dir(&sub).unwrap();
        write_records(&sub, "test_batch.bin", 0, &[&[1], &[2], &[3]]);
        let im = load_cifar10_dir(parent.path(), false).unwrap();
        check_pixels(&im, 3);
        assert_eq!(im.labels, vec![1, 2, 3]);
    }

    #[test]
    fn cifar10_missing_batch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for b in [1, 2, 4, 5] {
            write_records(dir.path(), &format!("data_batch_{b}.bin"), 0, &[&[0]]);
        }
        let err = load_cifar10_dir(dir.path(), true).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingFile { path, .. } if path == dir.path()),
            "{err:?}"
        );
        assert!(err.to_string().contains("data_batch_3.bin"), "{err}");
    }

    #[test]
    fn cifar10_missing_test_file_mentions_subfolder() {
        let dir = tempfile::tempdir().unwrap();
        let msg = load_cifar10_dir(dir.path(), false).unwrap_err().to_string();
        assert!(
            msg.contains("test_batch.bin") && msg.contains(CIFAR10_SUBDIR),
            "{msg}"
        );
    }

    #[test]
    fn missing_dir_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nope");
        assert!(
            matches!(load_cifar10_dir(&gone, true), Err(DataError::MissingDir { path }) if path == gone)
        );
        assert!(matches!(
            load_cifar100_dir(&gone, false, false),
            Err(DataError::MissingDir { .. })
        ));
    }

    #[test]
    fn cifar10_truncated_file_expects_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_records(dir.path(), "test_batch.bin", 0, &[&[1], &[2]]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..3073 + 100]).unwrap();
        match load_cifar10_dir(dir.path(), false).unwrap_err() {
            DataError::Truncated {
                path: p,
                expected_bytes,
                found_bytes,
            } => {
                assert_eq!((p, expected_bytes, found_bytes), (path, 6146, 3173));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("test_batch.bin"), []).unwrap();
        let err = load_cifar10_dir(dir.path(), false).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected_bytes: 3073,
                    found_bytes: 0,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn cifar10_label_out_of_range_names_file_and_record() {
        let dir = tempfile::tempdir().unwrap();
        for b in 1..=5 {
            let label: &[u8] = if b == 4 { &[10] } else { &[9] };
            write_records(
                dir.path(),
                &format!("data_batch_{b}.bin"),
                0,
                &[&[0], label],
            );
        }
        match load_cifar10_dir(dir.path(), true).unwrap_err() {
            DataError::LabelOutOfRange {
                path,
                index,
                label,
                num_classes,
            } => {
                assert_eq!(path, dir.path().join("data_batch_4.bin"));
                assert_eq!((index, label, num_classes), (1, 10, 10));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cifar100_fine_and_coarse_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), "train.bin", 0, &[&[19, 99], &[0, 42], &[7, 3]]);
        let fine = load_cifar100_dir(dir.path(), true, false).unwrap();
        check_pixels(&fine, 3);
        assert_eq!(
            (fine.labels.as_slice(), fine.num_classes),
            (&[99, 42, 3][..], 100)
        );
        let coarse = load_cifar100_dir(dir.path(), true, true).unwrap();
        check_pixels(&coarse, 3);
        assert_eq!(
            (coarse.labels.as_slice(), coarse.num_classes),
            (&[19, 0, 7][..], 20)
        );
        assert_eq!(fine.pixels, coarse.pixels);
    }

    #[test]
    fn cifar100_parent_dir_and_test_split() {
        let parent = tempfile::tempdir().unwrap();
        let sub = parent.path().join(CIFAR100_SUBDIR);
        std::fs::create_dir(&sub).unwrap();
        write_records(&sub, "test.bin", 5, &[&[1, 2], &[3, 4]]);
        let im = load_cifar100_dir(parent.path(), false, false).unwrap();
        assert_eq!(im.labels, vec![2, 4]);
        assert_eq!(at(&im, 1, 2, 31, 31), pixel(6, 2, 31, 31));
        let err = load_cifar100_dir(parent.path(), true, false).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingFile { path, .. } if path == &sub),
            "{err:?}"
        );
        assert!(err.to_string().contains("train.bin"), "{err}");
    }

    #[test]
    fn cifar100_label_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_records(dir.path(), "test.bin", 0, &[&[1, 2], &[20, 50], &[3, 100]]);
        match load_cifar100_dir(dir.path(), false, true).unwrap_err() {
            DataError::LabelOutOfRange {
                path: p,
                index,
                label,
                num_classes,
            } => {
                assert_eq!((p, index, label, num_classes), (path.clone(), 1, 20, 20));
            }
            other => panic!("unexpected {other:?}"),
        }
        match load_cifar100_dir(dir.path(), false, false).unwrap_err() {
            DataError::LabelOutOfRange {
                index,
                label,
                num_classes,
                ..
            } => {
                assert_eq!((index, label, num_classes), (2, 100, 100));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cifar10_file_read_as_cifar100_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), "test.bin", 0, &[&[1], &[2]]);
        let err = load_cifar100_dir(dir.path(), false, false).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::Truncated {
                    expected_bytes: 6148,
                    found_bytes: 6146,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
