//! Framework-free image container and the typed errors of the dataset readers.

use std::path::{Path, PathBuf};

/// Placeholder path used when validating images that did not come from one file.
const IN_MEMORY: &str = "<in-memory images>";

/// Images as bytes in NCHW order plus labels.
#[derive(Debug, Clone)]
pub struct RawImages {
    /// Number of images.
    pub n: usize,
    /// Channels per image.
    pub c: usize,
    /// Image height in pixels.
    pub h: usize,
    /// Image width in pixels.
    pub w: usize,
    /// `n * c * h * w` bytes, NCHW order.
    pub pixels: Vec<u8>,
    /// One label per image, each `< num_classes`.
    pub labels: Vec<u8>,
    /// Number of classes the labels index into.
    pub num_classes: usize,
}

impl RawImages {
    /// Bytes per image (`c * h * w`).
    pub fn image_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Checks that the buffer sizes match the shape and every label is `< num_classes`.
    pub fn validate(&self) -> Result<(), DataError> {
        let path = Path::new(IN_MEMORY);
        let expected = [self.n, self.c, self.h, self.w]
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                bad_header(
                    path,
                    format!(
                        "shape {}x{}x{}x{} overflows usize",
                        self.n, self.c, self.h, self.w
                    ),
                )
            })?;
        if self.pixels.len() != expected {
            let msg = format!(
                "pixels has {} bytes, expected n*c*h*w = {}x{}x{}x{} = {expected}",
                self.pixels.len(),
                self.n,
                self.c,
                self.h,
                self.w
            );
            return Err(bad_header(path, msg));
        }
        if self.labels.len() != self.n {
            let msg = format!(
                "labels has {} entries, expected n = {}",
                self.labels.len(),
                self.n
            );
            return Err(bad_header(path, msg));
        }
        check_labels(path, &self.labels, self.num_classes)
    }
}

/// Errors of the dataset readers; every message names the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file starts like gzip but does not decompress.
    #[error("cannot decompress {}: corrupt or truncated gzip stream: {source}", path.display())]
    BadGzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The dataset directory does not exist (or is not a directory).
    #[error("dataset directory {} does not exist or is not a directory", path.display())]
    MissingDir { path: PathBuf },
    /// None of the candidate file names exists in the directory.
    #[error("no dataset file found in {}: looked for {expected}", path.display())]
    MissingFile { path: PathBuf, expected: String },
    /// The file's magic number is not the expected one.
    #[error("{}: bad magic number: expected {expected:#010x}, found {found:#010x}", path.display())]
    BadMagic {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    /// The file is shorter than its header or record size requires.
    #[error("{} is truncated: expected {expected_bytes} bytes, found {found_bytes}", path.display())]
    Truncated {
        path: PathBuf,
        expected_bytes: u64,
        found_bytes: u64,
    },
    /// The file is longer than its header says.
    #[error("{} has trailing bytes: expected {expected_bytes} bytes, found {found_bytes}", path.display())]
    TrailingBytes {
        path: PathBuf,
        expected_bytes: u64,
        found_bytes: u64,
    },
    /// A label is not below the number of classes.
    #[error("{}: label {label} at index {index} is out of range (expected < {num_classes})", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u8,
        num_classes: usize,
    },
    /// The image and label files disagree on the number of items.
    #[error(
        "count mismatch: {} holds {images} images but {} holds {labels} labels",
        images_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        images_path: PathBuf,
        images: usize,
        labels_path: PathBuf,
        labels: usize,
    },
    /// The header is readable but describes an unusable dataset.
    #[error("{}: bad header: {msg}", path.display())]
    BadHeader { path: PathBuf, msg: String },
    /// The images are not of the shape the data set's models take.
    #[error(
        "{}: the images are {found} (channels x height x width), but data.dataset '{dataset}' \
         models take {expected} inputs; use files of that image size (or another data.dataset)",
        path.display()
    )]
    WrongShape {
        path: PathBuf,
        dataset: String,
        /// `CxHxW` of the file.
        found: String,
        /// `CxHxW` the models expect.
        expected: String,
    },
}

/// Returns `LabelOutOfRange` (naming `path`) for the first label `>= num_classes`.
pub(crate) fn check_labels(
    path: &Path,
    labels: &[u8],
    num_classes: usize,
) -> Result<(), DataError> {
    match labels.iter().position(|&l| usize::from(l) >= num_classes) {
        None => Ok(()),
        Some(index) => Err(DataError::LabelOutOfRange {
            path: path.to_path_buf(),
            index,
            label: labels[index],
            num_classes,
        }),
    }
}

/// Shorthand for a `BadHeader` error.
pub(crate) fn bad_header(path: &Path, msg: String) -> DataError {
    DataError::BadHeader {
        path: path.to_path_buf(),
        msg,
    }
}

/// Reads a whole file, mapping failures to `DataError::Io`.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: usize, labels: Vec<u8>) -> RawImages {
        RawImages {
            n,
            c: 1,
            h: 2,
            w: 3,
            pixels: vec![7; n * 6],
            labels,
            num_classes: 10,
        }
    }

    #[test]
    fn valid_images_pass() {
        let im = images(2, vec![0, 9]);
        assert_eq!(im.image_len(), 6);
        im.validate().unwrap();
    }

    #[test]
    fn wrong_pixel_count_is_rejected() {
        let mut im = images(2, vec![0, 1]);
        im.pixels.pop();
        let err = im.validate().unwrap_err();
        assert!(matches!(err, DataError::BadHeader { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("11 bytes") && msg.contains("12"), "{msg}");
    }

    #[test]
    fn wrong_label_count_is_rejected() {
        let err = images(2, vec![0]).validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("labels has 1 entries, expected n = 2"),
            "{err}"
        );
    }

    #[test]
    fn label_out_of_range_names_index_and_value() {
        let err = images(3, vec![1, 2, 10]).validate().unwrap_err();
        match &err {
            DataError::LabelOutOfRange {
                index,
                label,
                num_classes,
                ..
            } => {
                assert_eq!((*index, *label, *num_classes), (2, 10, 10));
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("label 10 at index 2") && msg.contains("< 10"),
            "{msg}"
        );
    }

    #[test]
    fn overflowing_shape_is_rejected() {
        let im = RawImages {
            n: usize::MAX,
            c: 2,
            h: 1,
            w: 1,
            pixels: vec![],
            labels: vec![],
            num_classes: 1,
        };
        assert!(im.validate().unwrap_err().to_string().contains("overflows"));
    }

    #[test]
    fn messages_name_the_path() {
        let p = PathBuf::from("/x/y.bin");
        let io = DataError::Io {
            path: p.clone(),
            source: std::io::Error::other("boom"),
        };
        assert_eq!(io.to_string(), "cannot read /x/y.bin: boom");
        let magic = DataError::BadMagic {
            path: p.clone(),
            expected: 0x803,
            found: 0x801,
        };
        assert_eq!(
            magic.to_string(),
            "/x/y.bin: bad magic number: expected 0x00000803, found 0x00000801"
        );
        let cm = DataError::CountMismatch {
            images_path: p.clone(),
            images: 3,
            labels_path: "/l".into(),
            labels: 2,
        };
        assert_eq!(
            cm.to_string(),
            "count mismatch: /x/y.bin holds 3 images but /l holds 2 labels"
        );
        let t = DataError::Truncated {
            path: p,
            expected_bytes: 16,
            found_bytes: 4,
        };
        assert_eq!(
            t.to_string(),
            "/x/y.bin is truncated: expected 16 bytes, found 4"
        );
    }
}
