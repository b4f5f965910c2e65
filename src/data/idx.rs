//! Reader for the IDX format used by MNIST and Fashion-MNIST (raw or gzip-compressed).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::raw::{bad_header, check_labels, read_file, DataError, RawImages};

/// Magic number of an IDX file of u8 images with 3 dimensions (n, rows, cols).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of u8 labels with 1 dimension (n).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Reads an IDX image file; returns `(n, rows, cols, pixels)`.
pub fn read_idx_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let (dims, pixels) = read_idx(path, IMAGES_MAGIC)?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if n > 0 && (rows == 0 || cols == 0) {
        return Err(bad_header(
            path,
            format!("{n} images of size {rows}x{cols}; expected non-zero rows and cols"),
        ));
    }
    Ok((n, rows, cols, pixels))
}

/// Reads an IDX label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    Ok(read_idx(path, LABELS_MAGIC)?.1)
}

/// Loads the train (`train-*`) or test (`t10k-*`) split from an MNIST-style directory.
pub fn load_idx_dir(dir: &Path, train: bool, num_classes: usize) -> Result<RawImages, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingDir {
            path: dir.to_path_buf(),
        });
    }
    let prefix = if train { "train" } else { "t10k" };
    let images_path = images_file(dir, train)?;
    let labels_path = find_file(dir, &candidates(prefix, "labels", 1))?;
    let (n, h, w, pixels) = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if n == 0 {
        return Err(bad_header(
            &images_path,
            "header says 0 images; expected at least one".into(),
        ));
    }
    if labels.len() != n {
        return Err(DataError::CountMismatch {
            images_path,
            images: n,
            labels_path,
            labels: labels.len(),
        });
    }
    check_labels(&labels_path, &labels, num_classes)?;
    Ok(RawImages {
        n,
        c: 1,
        h,
        w,
        pixels,
        labels,
        num_classes,
    })
}

/// The images file of the train (`train-*`) or test (`t10k-*`) split in `dir` (the one
/// [`load_idx_dir`] reads).
pub fn images_file(dir: &Path, train: bool) -> Result<PathBuf, DataError> {
    let prefix = if train { "train" } else { "t10k" };
    find_file(dir, &candidates(prefix, "images", 3))
}

/// File names tried for one split and kind, in order of preference.
fn candidates(prefix: &str, kind: &str, ndims: u8) -> Vec<String> {
    let dashed = format!("{prefix}-{kind}-idx{ndims}-ubyte");
    let dotted = format!("{prefix}-{kind}.idx{ndims}-ubyte");
    vec![
        dashed.clone(),
        format!("{dashed}.gz"),
        dotted.clone(),
        format!("{dotted}.gz"),
    ]
}

/// The first candidate that exists as a file in `dir`, or `MissingFile` listing them all.
fn find_file(dir: &Path, names: &[String]) -> Result<PathBuf, DataError> {
    names
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| DataError::MissingFile {
            path: dir.to_path_buf(),
            expected: names.join(", "),
        })
}

/// Reads an IDX file of u8 data with the given magic (decompressing it when it starts with the
/// gzip magic bytes); returns its dimensions and body. The body is read only up to the size the
/// header gives, and only as far as the data goes, so a header claiming more than the file
/// holds (e.g. 2^32 images), or a gzip stream that inflates past it, is refused without
/// allocating for it.
fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = read_file(path)?;
    if !bytes.starts_with(&GZIP_MAGIC) {
        return parse_idx(path, magic, &mut bytes.as_slice());
    }
    let mut stream = flate2::read::MultiGzDecoder::new(bytes.as_slice());
    let parsed = parse_idx(path, magic, &mut stream);
    if matches!(parsed, Err(ref e) if !matches!(e, DataError::BadGzip { .. })) {
        // A corrupt stream is the cause to report, not the header it garbled.
        std::io::copy(&mut stream, &mut std::io::sink()).map_err(|source| DataError::BadGzip {
            path: path.to_path_buf(),
            source,
        })?;
    }
    parsed
}

/// Parses IDX data from `r` (the whole file, or its decompressed stream).
fn parse_idx(
    path: &Path,
    magic: u32,
    r: &mut impl Read,
) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    // Reading a byte slice cannot fail: an error comes from decompression.
    let gz = |source| DataError::BadGzip {
        path: path.to_path_buf(),
        source,
    };
    let ndims = usize::from(magic.to_be_bytes()[3]);
    let header_len = 4 + 4 * ndims;
    let mut header = Vec::with_capacity(header_len);
    r.by_ref()
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(gz)?;
    let truncated = |expected_bytes: u64, found_bytes: u64| DataError::Truncated {
        path: path.to_path_buf(),
        expected_bytes,
        found_bytes,
    };
    if header.len() < 4 {
        return Err(truncated(header_len as u64, header.len() as u64));
    }
    let found = be_u32(&header, 0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: magic,
            found,
        });
    }
    if header.len() < header_len {
        return Err(truncated(header_len as u64, header.len() as u64));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| be_u32(&header, 4 + 4 * i) as usize)
        .collect();
    let expected_bytes = expected_len(path, header_len, &dims)?;
    let mut body = Vec::new();
    r.by_ref()
        .take(expected_bytes - header_len as u64)
        .read_to_end(&mut body)
        .map_err(gz)?;
    let rest = std::io::copy(r, &mut std::io::sink()).map_err(gz)?;
    let found_bytes = (header_len + body.len()) as u64 + rest;
    if found_bytes < expected_bytes {
        return Err(truncated(expected_bytes, found_bytes));
    }
    if found_bytes > expected_bytes {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected_bytes,
            found_bytes,
        });
    }
    Ok((dims, body))
}

/// Header length plus the product of the dimensions, or `BadHeader` if it overflows.
fn expected_len(path: &Path, header_len: usize, dims: &[usize]) -> Result<u64, DataError> {
    dims.iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .and_then(|body| body.checked_add(header_len as u64))
        .ok_or_else(|| bad_header(path, format!("dimensions {dims:?} overflow")))
}

/// Big-endian u32 at `offset` (caller guarantees 4 bytes are there).
fn be_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{write::GzEncoder, Compression};
    use std::io::Write;
    use std::path::PathBuf;

    const FASHION_DIR: &str = "/usr/share/datasets/fashion-mnist";

    /// IDX image file bytes: header for `n x rows x cols` followed by `pixels`.
    fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [IMAGES_MAGIC, n, rows, cols] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(pixels);
        v
    }

    /// IDX label file bytes.
    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
        v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        v.extend_from_slice(labels);
        v
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// 3 images of 2x3 with distinct pixel values `7 * i + 1` for flat index `i`.
    fn sample_pixels() -> Vec<u8> {
        (0..18u8)
            .map(|i| i.wrapping_mul(7).wrapping_add(1))
            .collect()
    }

    /// Writes `{prefix}-images-idx3-ubyte` (3 images of 2x3) and the labels file, optionally gzipped.
    fn write_split(dir: &Path, prefix: &str, gz: bool, labels: &[u8]) {
        let ext = if gz { ".gz" } else { "" };
        let enc = |b: Vec<u8>| if gz { gzip(&b) } else { b };
        let images = enc(idx_images(3, 2, 3, &sample_pixels()));
        write(dir, &format!("{prefix}-images-idx3-ubyte{ext}"), &images);
        write(
            dir,
            &format!("{prefix}-labels-idx1-ubyte{ext}"),
            &enc(idx_labels(labels)),
        );
    }

    #[test]
    fn reads_raw_images_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "img", &idx_images(3, 2, 3, &sample_pixels()));
        let (n, rows, cols, px) = read_idx_images(&p).unwrap();
        assert_eq!((n, rows, cols), (3, 2, 3));
        assert_eq!(px, sample_pixels());
    }

    #[test]
    fn reads_gzip_images_and_labels_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let img = write(
            dir.path(),
            "img.gz",
            &gzip(&idx_images(3, 2, 3, &sample_pixels())),
        );
        let lab = write(dir.path(), "lab.gz", &gzip(&idx_labels(&[4, 0, 9])));
        assert_eq!(read_idx_images(&img).unwrap(), (3, 2, 3, sample_pixels()));
        assert_eq!(read_idx_labels(&lab).unwrap(), vec![4, 0, 9]);
    }

    #[test]
    fn gzip_is_detected_by_magic_not_extension() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "labels-no-ext", &gzip(&idx_labels(&[1, 2])));
        assert_eq!(read_idx_labels(&p).unwrap(), vec![1, 2]);
        // And an uncompressed file named .gz is read as raw.
        let q = write(dir.path(), "raw.gz", &idx_labels(&[3]));
        assert_eq!(read_idx_labels(&q).unwrap(), vec![3]);
    }

    #[test]
    fn bad_magic_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "labels-as-images", &idx_labels(&[1, 2]));
        let err = read_idx_images(&p).unwrap_err();
        match &err {
            DataError::BadMagic {
                path,
                expected,
                found,
            } => {
                assert_eq!((path, *expected, *found), (&p, IMAGES_MAGIC, LABELS_MAGIC));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("labels-as-images"), "{err}");
    }

    #[test]
    fn truncated_header_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let full = idx_images(1, 1, 1, &[5]);
        for cut in [0, 2, 10] {
            let p = write(dir.path(), "short", &full[..cut]);
            match read_idx_images(&p).unwrap_err() {
                DataError::Truncated {
                    path,
                    expected_bytes,
                    found_bytes,
                } => {
                    assert_eq!((path, expected_bytes, found_bytes), (p, 16, cut as u64));
                }
                other => panic!("cut {cut}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_body_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = idx_images(3, 2, 3, &sample_pixels());
        bytes.truncate(bytes.len() - 5);
        let p = write(dir.path(), "short-body", &bytes);
        let err = read_idx_images(&p).unwrap_err();
        assert!(
            matches!(
                &err,
                DataError::Truncated {
                    expected_bytes: 34,
                    found_bytes: 29,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("short-body"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = idx_labels(&[1, 2, 3]);
        bytes.extend_from_slice(&[0, 0]);
        let p = write(dir.path(), "long", &bytes);
        let err = read_idx_labels(&p).unwrap_err();
        assert!(
            matches!(
                &err,
                DataError::TrailingBytes {
                    expected_bytes: 11,
                    found_bytes: 13,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn corrupt_gzip_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let good = gzip(&idx_images(3, 2, 3, &sample_pixels()));
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        let cut = &good[..good.len() / 2];
        for (name, bytes) in [
            ("flipped.gz", flipped.as_slice()),
            ("cut.gz", cut),
            ("header-only.gz", &[0x1f, 0x8b]),
        ] {
            let p = write(dir.path(), name, bytes);
            let err = read_idx_images(&p).unwrap_err();
            assert!(matches!(&err, DataError::BadGzip { .. }), "{name}: {err:?}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn gzip_inflating_past_the_header_is_reported_exactly() {
        // One 1x1 image, then 8 MB of zeros: the body is read up to the header's size only,
        // the rest counted, not kept.
        let dir = tempfile::tempdir().unwrap();
        let mut raw = idx_images(1, 1, 1, &[5]);
        raw.resize(raw.len() + (8 << 20), 0);
        let p = write(dir.path(), "long.gz", &gzip(&raw));
        let err = read_idx_images(&p).unwrap_err();
        match &err {
            DataError::TrailingBytes {
                expected_bytes,
                found_bytes,
                ..
            } => assert_eq!((*expected_bytes, *found_bytes), (17, raw.len() as u64)),
            other => panic!("unexpected {other:?}"),
        }
        // A header claiming 2^32 - 1 images of 28x28 over a short gzip body is truncated.
        let p = write(
            dir.path(),
            "huge.gz",
            &gzip(&idx_images(u32::MAX, 28, 28, &[1; 100])),
        );
        let err = read_idx_images(&p).unwrap_err();
        assert!(
            matches!(
                &err,
                DataError::Truncated {
                    found_bytes: 116,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn zero_sized_images_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "zero", &idx_images(2, 0, 3, &[]));
        assert!(matches!(
            read_idx_images(&p).unwrap_err(),
            DataError::BadHeader { .. }
        ));
    }

    #[test]
    fn overflowing_dimensions_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "huge",
            &idx_images(u32::MAX, u32::MAX, u32::MAX, &[1, 2]),
        );
        let err = read_idx_images(&p).unwrap_err();
        assert!(
            matches!(&err, DataError::BadHeader { .. }) && err.to_string().contains("overflow"),
            "{err:?}"
        );
    }

    #[test]
    fn missing_file_gives_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        let err = read_idx_labels(&p).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}", p.display())),
            "{err}"
        );
    }

    #[test]
    fn loads_raw_and_gz_dirs() {
        for (gz, train) in [(false, true), (true, false)] {
            let dir = tempfile::tempdir().unwrap();
            let prefix = if train { "train" } else { "t10k" };
            write_split(dir.path(), prefix, gz, &[7, 0, 9]);
            let im = load_idx_dir(dir.path(), train, 10).unwrap();
            assert_eq!((im.n, im.c, im.h, im.w, im.num_classes), (3, 1, 2, 3, 10));
            assert_eq!(im.pixels, sample_pixels());
            assert_eq!(im.labels, vec![7, 0, 9]);
            im.validate().unwrap();
            // Second image, row 1, col 2 is flat index 6 + 1 * 3 + 2 = 11.
            assert_eq!(im.pixels[11], 11 * 7 + 1);
        }
    }

    #[test]
    fn loads_dotted_file_names() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t10k-images.idx3-ubyte",
            &idx_images(3, 2, 3, &sample_pixels()),
        );
        write(
            dir.path(),
            "t10k-labels.idx1-ubyte",
            &idx_labels(&[1, 1, 2]),
        );
        assert_eq!(
            load_idx_dir(dir.path(), false, 10).unwrap().labels,
            vec![1, 1, 2]
        );
    }

    #[test]
    fn split_selects_the_right_files() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "t10k", false, &[1, 2, 3]);
        let err = load_idx_dir(dir.path(), true, 10).unwrap_err();
        assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    }

    #[test]
    fn label_out_of_range_names_labels_file() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), "train", false, &[0, 10, 3]);
        let err = load_idx_dir(dir.path(), true, 10).unwrap_err();
        match &err {
            DataError::LabelOutOfRange {
                path,
                index,
                label,
                num_classes,
            } => {
                assert_eq!(path, &dir.path().join("train-labels-idx1-ubyte"));
                assert_eq!((*index, *label, *num_classes), (1, 10, 10));
            }
            other => panic!("unexpected {other:?}"),
        }
        // The same data is fine with more classes.
        assert_eq!(
            load_idx_dir(dir.path(), true, 11).unwrap().labels,
            vec![0, 10, 3]
        );
    }

    #[test]
    fn count_mismatch_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let img = write(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx_images(3, 2, 3, &sample_pixels()),
        );
        let lab = write(
            dir.path(),
            "train-labels-idx1-ubyte.gz",
            &gzip(&idx_labels(&[1, 2])),
        );
        match load_idx_dir(dir.path(), true, 10).unwrap_err() {
            DataError::CountMismatch {
                images_path,
                images,
                labels_path,
                labels,
            } => {
                assert_eq!((images_path, images, labels_path, labels), (img, 3, lab, 2));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn empty_dataset_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "train-images-idx3-ubyte",
            &idx_images(0, 28, 28, &[]),
        );
        write(dir.path(), "train-labels-idx1-ubyte", &idx_labels(&[]));
        let err = load_idx_dir(dir.path(), true, 10).unwrap_err();
        assert!(err.to_string().contains("0 images"), "{err}");
    }

    #[test]
    fn missing_dir_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("does-not-exist");
        match load_idx_dir(&gone, true, 10).unwrap_err() {
            DataError::MissingDir { path } => assert_eq!(path, gone),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_file_lists_candidates() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "t10k-images-idx3-ubyte.gz",
            &gzip(&idx_images(3, 2, 3, &sample_pixels())),
        );
        let err = load_idx_dir(dir.path(), false, 10).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingFile { path, .. } if path == dir.path()),
            "{err:?}"
        );
        let msg = err.to_string();
        for name in [
            "t10k-labels-idx1-ubyte",
            "t10k-labels-idx1-ubyte.gz",
            "t10k-labels.idx1-ubyte.gz",
        ] {
            assert!(msg.contains(name), "{msg} lacks {name}");
        }
        assert!(!msg.contains("images"), "{msg}");
    }

    #[test]
    fn real_fashion_mnist_test_set() {
        let dir = Path::new(FASHION_DIR);
        if !dir.is_dir() {
            eprintln!("skipping: {FASHION_DIR} not present");
            return;
        }
        let im = load_idx_dir(dir, false, 10).unwrap();
        assert_eq!((im.n, im.c, im.h, im.w), (10_000, 1, 28, 28));
        assert_eq!(im.pixels.len(), 10_000 * 28 * 28);
        im.validate().unwrap();
        let mut counts = [0usize; 10];
        for &l in &im.labels {
            counts[usize::from(l)] += 1;
        }
        assert_eq!(counts, [1000; 10]);
    }
}
