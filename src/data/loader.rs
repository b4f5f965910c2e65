//! In-memory datasets (uint8 images, on the host or resident on the training device),
//! deterministic shuffling and augmentation.
//!
//! Batches are gathered where the images are: a host dataset is gathered and augmented on the
//! host and copied to the batch device; a device-resident one ([`Dataset::to_device`], as
//! training keeps its training set) is gathered and augmented on the device, so a step copies
//! only the batch's order slice and its crop/flip draws (a few bytes per image) to the device.
//! The draws come from the seeded host generator in the same order either way (per image its
//! crop offsets, then per image its flip), and crop and flip are exact index operations, so
//! both placements give the same bits (`tests/loader_device.rs`).

use super::raw::RawImages;
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// Images `[N,C,H,W]` as uint8 and labels `[N]` as int64, both on the host unless moved to a
/// device by [`Dataset::to_device`].
pub struct Dataset {
    /// NCHW: uint8 pixels (0..=255), or float32 in [0, 1] (points files); see [`to_unit`].
    pub images: Tensor,
    pub labels: Tensor,
    pub num_classes: usize,
}

/// Training-time augmentation: random crop after zero padding, random horizontal flip.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Augment {
    pub crop_padding: i64,
    pub hflip: bool,
}

impl Dataset {
    /// Wrap validated raw images.
    pub fn from_raw(raw: &RawImages) -> Result<Dataset> {
        raw.validate()?;
        let dims = [raw.n as i64, raw.c as i64, raw.h as i64, raw.w as i64];
        let images = Tensor::from_slice(&raw.pixels).reshape(dims);
        let labels = Tensor::from_slice(&raw.labels).to_kind(Kind::Int64);
        Ok(Dataset {
            images,
            labels,
            num_classes: raw.num_classes,
        })
    }

    /// Build from float images in [0,1] (tests, synthetic data).
    pub fn from_float(images: &Tensor, labels: &Tensor, num_classes: usize) -> Dataset {
        let images = (images.to_device(Device::Cpu) * 255.0)
            .round()
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8);
        Dataset {
            images,
            labels: labels.to_device(Device::Cpu).to_kind(Kind::Int64),
            num_classes,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// The device the images are on.
    pub fn device(&self) -> Device {
        self.images.device()
    }

    /// The same images (their kind kept: uint8 is a quarter of float32) and labels on
    /// `device`; on their own device the tensors are shared, not copied.
    pub fn to_device(&self, device: Device) -> Dataset {
        Dataset {
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
            num_classes: self.num_classes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `n` images (all if fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len()) as i64;
        Dataset {
            images: self.images.narrow(0, 0, n),
            labels: self.labels.narrow(0, 0, n),
            num_classes: self.num_classes,
        }
    }

    /// Images `start..start + n` (clamped to the end).
    pub fn slice(&self, start: usize, n: usize) -> Dataset {
        let start = start.min(self.len());
        let n = n.min(self.len() - start) as i64;
        Dataset {
            images: self.images.narrow(0, start as i64, n),
            labels: self.labels.narrow(0, start as i64, n),
            num_classes: self.num_classes,
        }
    }

    fn select(&self, idx: &[i64]) -> Dataset {
        let idx = Tensor::from_slice(idx);
        Dataset {
            images: self.images.index_select(0, &idx),
            labels: self.labels.index_select(0, &idx),
            num_classes: self.num_classes,
        }
    }

    /// Split off `val` images chosen by a seeded permutation: returns (rest, held_out).
    pub fn split(&self, val: usize, seed: u64) -> (Dataset, Dataset) {
        let mut idx: Vec<i64> = (0..self.len() as i64).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let (held, rest) = idx.split_at(val);
        let mut rest = rest.to_vec();
        let mut held = held.to_vec();
        rest.sort_unstable();
        held.sort_unstable();
        (self.select(&rest), self.select(&held))
    }

    /// Mini-batches in order (`rng = None`) or shuffled and augmented by a seeded RNG.
    pub fn batches(
        &self,
        batch_size: usize,
        rng: Option<ChaCha8Rng>,
        augment: Augment,
        device: Device,
    ) -> Batches<'_> {
        let mut order: Vec<i64> = (0..self.len() as i64).collect();
        let mut rng = rng;
        if let Some(r) = rng.as_mut() {
            order.shuffle(r);
        }
        // The whole pass's order, copied to the data's device once.
        let order_t = Tensor::from_slice(&order).to_device(self.device());
        Batches {
            data: self,
            order,
            order_t,
            pos: 0,
            batch_size: batch_size.max(1),
            rng,
            augment,
            device,
        }
    }
}

/// Iterator over `(images in [0,1] float32 on device, labels int64 on device)`.
pub struct Batches<'a> {
    data: &'a Dataset,
    order: Vec<i64>,
    /// `order` on the data's device.
    order_t: Tensor,
    pos: usize,
    batch_size: usize,
    rng: Option<ChaCha8Rng>,
    augment: Augment,
    device: Device,
}

impl Batches<'_> {
    /// Number of batches in one pass.
    pub fn num_batches(&self) -> usize {
        self.order.len().div_ceil(self.batch_size)
    }
}

impl Iterator for Batches<'_> {
    type Item = (Tensor, Tensor);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let idx = self
            .order_t
            .narrow(0, self.pos as i64, (end - self.pos) as i64);
        self.pos = end;
        let mut x = self.data.images.index_select(0, &idx);
        let y = self.data.labels.index_select(0, &idx);
        if let Some(rng) = self.rng.as_mut() {
            x = apply_augment(&x, self.augment, rng);
        }
        Some((to_unit(&x.to_device(self.device)), y.to_device(self.device)))
    }
}

/// Images of a [`Dataset`] as float32 in [0, 1]: uint8 pixels divided by 255, float images
/// (already in [0, 1], from a points file) as they are.
pub fn to_unit(x: &Tensor) -> Tensor {
    if x.kind() == Kind::Uint8 {
        x.to_kind(Kind::Float) / 255.0
    } else {
        x.to_kind(Kind::Float)
    }
}

/// Random crop of the original size from the zero-padded image, then a random horizontal flip,
/// computed on `x`'s device with the draws of [`AugmentDraws::draw`].
pub fn apply_augment(x: &Tensor, aug: Augment, rng: &mut ChaCha8Rng) -> Tensor {
    AugmentDraws::draw(x.size()[0] as usize, aug, rng).apply(x)
}

/// One batch's augmentation draws from the host generator, in the loader's order: for each
/// image its crop offsets `(dy, dx)` in `0..=2p` (when `crop_padding = p > 0`), then for each
/// image its flip (probability 1/2, when `hflip`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AugmentDraws {
    /// Crop padding `p` (0: no crop).
    pub padding: i64,
    /// `(dy, dx)` per image (empty without crop).
    pub offsets: Vec<(i64, i64)>,
    /// Flip per image (empty without flip).
    pub flips: Vec<bool>,
}

impl AugmentDraws {
    /// The draws for `n` images.
    pub fn draw(n: usize, aug: Augment, rng: &mut ChaCha8Rng) -> AugmentDraws {
        let p = aug.crop_padding.max(0);
        let offsets = if p > 0 {
            (0..n)
                .map(|_| (rng.gen_range(0..=2 * p), rng.gen_range(0..=2 * p)))
                .collect()
        } else {
            vec![]
        };
        let flips = if aug.hflip {
            (0..n).map(|_| rng.gen_bool(0.5)).collect()
        } else {
            vec![]
        };
        AugmentDraws {
            padding: p,
            offsets,
            flips,
        }
    }

    /// Apply to `x` `[n, c, h, w]` on its device: output pixel `(i, ch, r, q)` is pixel
    /// `(dy_i + r, dx_i + q')` of image `i` zero-padded by `p`, with `q' = w - 1 - q` for a
    /// flipped image and `q` otherwise (crop, then flip of the crop). One gather over the
    /// padded batch: an exact copy of pixels, whatever the device and kind.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let crop = !self.offsets.is_empty();
        let flip = !self.flips.is_empty();
        if !crop && !flip {
            return x.shallow_clone();
        }
        let (n, c, h, w) = x.size4().expect("NCHW images");
        let dev = x.device();
        // Per image: dy, dx, flip (one small host-to-device copy).
        let mut per = Vec::with_capacity(3 * n as usize);
        for i in 0..n as usize {
            let (dy, dx) = self.offsets.get(i).copied().unwrap_or((0, 0));
            per.extend([dy, dx, self.flips.get(i).copied().unwrap_or(false) as i64]);
        }
        let per = Tensor::from_slice(&per).view([n, 3]).to_device(dev);
        let (dy, dx, fl) = (per.select(1, 0), per.select(1, 1), per.select(1, 2));
        let q = Tensor::arange(w, (Kind::Int64, dev)).view([1, w]);
        // Column read for output column q: flipped = w - 1 - q.
        let col = &q + fl.view([n, 1]) * (q.neg() * 2 + (w - 1));
        if !crop {
            let idx = col.view([n, 1, 1, w]).expand([n, c, h, w], false);
            return x.gather(3, &idx, false);
        }
        let p = self.padding;
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        let padded = x.constant_pad_nd([p, p, p, p]).reshape([n, c, hp * wp]);
        let rows = dy.view([n, 1]) + Tensor::arange(h, (Kind::Int64, dev)).view([1, h]);
        let cols = dx.view([n, 1]) + col;
        let lin = (rows.view([n, h, 1]) * wp + cols.view([n, 1, w])).view([n, 1, h * w]);
        padded
            .gather(2, &lin.expand([n, c, h * w], false), false)
            .view([n, c, h, w])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let raw = RawImages {
            n,
            c: 1,
            h: 4,
            w: 4,
            pixels: (0..n * 16).map(|i| (i % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 3) as u8).collect(),
            num_classes: 3,
        };
        Dataset::from_raw(&raw).unwrap()
    }

    fn first_pixels(d: &Dataset) -> Vec<i64> {
        Vec::<i64>::try_from(
            d.images
                .select(2, 0)
                .select(2, 0)
                .flatten(0, -1)
                .to_kind(Kind::Int64),
        )
        .unwrap()
    }

    #[test]
    fn split_is_disjoint_complete_and_seeded() {
        let d = toy(50);
        let (rest, held) = d.split(10, 3);
        assert_eq!((rest.len(), held.len()), (40, 10));
        let mut all: Vec<i64> = first_pixels(&rest)
            .into_iter()
            .chain(first_pixels(&held))
            .collect();
        all.sort_unstable();
        let mut expect = first_pixels(&d);
        expect.sort_unstable();
        assert_eq!(all, expect, "every image lands in exactly one split");
        assert_eq!(
            first_pixels(&d.split(10, 3).1),
            first_pixels(&held),
            "same seed, same split"
        );
        assert_ne!(
            first_pixels(&d.split(10, 4).1),
            first_pixels(&held),
            "another seed, another split"
        );
    }

    #[test]
    fn shuffled_batches_follow_the_seed_and_cover_the_set() {
        let d = toy(37);
        let order = |seed| -> Vec<i64> {
            let rng = ChaCha8Rng::seed_from_u64(seed);
            d.batches(8, Some(rng), Augment::default(), Device::Cpu)
                .flat_map(|(x, _)| {
                    Vec::<f32>::try_from(x.select(2, 0).select(2, 0).flatten(0, -1)).unwrap()
                })
                .map(|v| (v * 255.0).round() as i64)
                .collect()
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2));
        let mut seen = order(1);
        seen.sort_unstable();
        let mut expect = first_pixels(&d);
        expect.sort_unstable();
        assert_eq!(seen, expect);
        assert_eq!(
            d.batches(8, None, Augment::default(), Device::Cpu)
                .num_batches(),
            5
        );
        let (x, _) = d
            .batches(8, None, Augment::default(), Device::Cpu)
            .next()
            .unwrap();
        assert!(x.max().double_value(&[]) <= 1.0 && x.kind() == Kind::Float);
    }

    #[test]
    fn augmentation_crops_within_padding_and_flips() {
        let x = Tensor::arange(16, (Kind::Uint8, Device::Cpu)).view([1, 1, 4, 4]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert!(
            apply_augment(&x, Augment::default(), &mut rng).equal(&x),
            "no augmentation = identity"
        );
        let mut flipped = 0;
        for _ in 0..40 {
            let y = apply_augment(
                &x,
                Augment {
                    crop_padding: 0,
                    hflip: true,
                },
                &mut rng,
            );
            if y.equal(&x.flip([3])) {
                flipped += 1;
            } else {
                assert!(y.equal(&x));
            }
        }
        assert!((5..35).contains(&flipped), "{flipped} flips of 40");
        for _ in 0..20 {
            let y = apply_augment(
                &x,
                Augment {
                    crop_padding: 1,
                    hflip: false,
                },
                &mut rng,
            );
            assert_eq!(y.size(), vec![1, 1, 4, 4]);
            // A crop of the 1-padded image: a shift by at most one pixel, zeros elsewhere.
            let shifted = (-1..=1).any(|dy: i64| {
                (-1..=1).any(|dx: i64| {
                    let p = x.constant_pad_nd([1, 1, 1, 1]);
                    y.equal(&p.narrow(2, 1 + dy, 4).narrow(3, 1 + dx, 4))
                })
            });
            assert!(shifted);
        }
    }
}
