//! The training loader's batches (gathered, cropped and flipped where the data is: on the host,
//! or on the training device for a resident training set) are bit-identical to an independent
//! per-image, per-pixel loop over the raw uint8 pixels with the same seeded draws (the loader's
//! algorithm before it moved to the device: per image its crop offsets, then per image its flip).

use advtrain::data::loader::{apply_augment, AugmentDraws};
use advtrain::data::{Augment, Dataset, RawImages};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

const DIMS: (usize, usize, usize, usize) = (23, 3, 5, 6);

fn raw() -> RawImages {
    let (n, c, h, w) = DIMS;
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    RawImages {
        n,
        c,
        h,
        w,
        // 1..=255 so that the zero padding is told apart from every pixel.
        pixels: (0..n * c * h * w)
            .map(|_| rng.gen_range(1..=255u8))
            .collect(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        num_classes: 10,
    }
}

/// The reference: shuffle, then per batch per image `(dy, dx)`, then per image the flip; pixel
/// `(r, q)` of the output is pixel `(dy + r - p, dx + q' - p)` of the image (0 outside), with
/// `q' = w - 1 - q` when flipped. Returns per batch (pixels as f32 / 255, labels).
fn reference(raw: &RawImages, batch: usize, seed: u64, aug: Augment) -> Vec<(Vec<f32>, Vec<i64>)> {
    let (n, c, h, w) = (raw.n, raw.c, raw.h, raw.w);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let p = aug.crop_padding as i64;
    let mut out = vec![];
    for chunk in order.chunks(batch) {
        let offs: Vec<(i64, i64)> = if p > 0 {
            chunk
                .iter()
                .map(|_| (rng.gen_range(0..=2 * p), rng.gen_range(0..=2 * p)))
                .collect()
        } else {
            vec![(p, p); chunk.len()]
        };
        let flips: Vec<bool> = if aug.hflip {
            chunk.iter().map(|_| rng.gen_bool(0.5)).collect()
        } else {
            vec![false; chunk.len()]
        };
        let mut px = vec![];
        for (k, &i) in chunk.iter().enumerate() {
            let (dy, dx) = offs[k];
            for ch in 0..c {
                for r in 0..h as i64 {
                    for q in 0..w as i64 {
                        let q2 = if flips[k] { w as i64 - 1 - q } else { q };
                        let (sr, sq) = (dy + r - p, dx + q2 - p);
                        let v = if (0..h as i64).contains(&sr) && (0..w as i64).contains(&sq) {
                            raw.pixels[((i * c + ch) * h + sr as usize) * w + sq as usize]
                        } else {
                            0
                        };
                        px.push(v as f32 / 255.0);
                    }
                }
            }
        }
        let labels = chunk.iter().map(|&i| raw.labels[i] as i64).collect();
        out.push((px, labels));
    }
    out
}

fn batches_of(d: &Dataset, batch: usize, seed: u64, aug: Augment) -> Vec<(Vec<f32>, Vec<i64>)> {
    let rng = ChaCha8Rng::seed_from_u64(seed);
    d.batches(batch, Some(rng), aug, Device::Cpu)
        .map(|(x, y)| {
            assert_eq!(x.kind(), Kind::Float);
            let x = x.to_device(Device::Cpu).contiguous().flatten(0, -1);
            (
                Vec::<f32>::try_from(&x).unwrap(),
                Vec::<i64>::try_from(&y.to_device(Device::Cpu)).unwrap(),
            )
        })
        .collect()
}

const AUGMENTS: [Augment; 5] = [
    Augment {
        crop_padding: 0,
        hflip: false,
    },
    Augment {
        crop_padding: 0,
        hflip: true,
    },
    Augment {
        crop_padding: 2,
        hflip: false,
    },
    Augment {
        crop_padding: 2,
        hflip: true,
    },
    // Padding larger than the image (offsets reach past it: all-zero rows and columns).
    Augment {
        crop_padding: 7,
        hflip: true,
    },
];

#[test]
fn batches_equal_the_per_pixel_reference_bit_for_bit() {
    let raw = raw();
    let host = Dataset::from_raw(&raw).unwrap();
    // What training iterates: the set on the training device (the CPU here; shared tensors).
    let resident = host.to_device(Device::Cpu);
    let mut compared = 0;
    for aug in AUGMENTS {
        // Seeds stand for (seed, epoch) pairs: training derives one data seed per epoch.
        for seed in [0u64, 1, 7, 123456789] {
            let expect = reference(&raw, 8, seed, aug);
            assert_eq!(expect.len(), 3, "23 images in batches of 8");
            for d in [&host, &resident] {
                let got = batches_of(d, 8, seed, aug);
                assert_eq!(got.len(), expect.len());
                for (b, (g, e)) in got.iter().zip(&expect).enumerate() {
                    assert_eq!(g.1, e.1, "labels, batch {b}, {aug:?}, seed {seed}");
                    let same =
                        g.0.iter()
                            .zip(&e.0)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same && g.0.len() == e.0.len(),
                        "pixels, batch {b}, {aug:?}, seed {seed}"
                    );
                    compared += 1;
                }
            }
        }
    }
    assert_eq!(compared, 5 * 4 * 2 * 3);
}

#[test]
fn the_reference_can_tell_augmentations_apart() {
    // The comparison above must be able to fail: another seed, or the flip left out, changes
    // the batches.
    let raw = raw();
    let d = Dataset::from_raw(&raw).unwrap();
    let aug = AUGMENTS[3];
    assert_ne!(batches_of(&d, 8, 0, aug), reference(&raw, 8, 1, aug));
    let no_flip = Augment {
        hflip: false,
        ..aug
    };
    assert_ne!(batches_of(&d, 8, 0, aug), reference(&raw, 8, 0, no_flip));
}

#[test]
fn device_augmentation_equals_the_host_one() {
    // On a CUDA machine: the resident set's batches (gather, crop, flip on the GPU) equal the
    // host ones bit for bit. On the CPU: the draws applied to a float batch equal the uint8 one.
    let raw = raw();
    let host = Dataset::from_raw(&raw).unwrap();
    let aug = AUGMENTS[3];
    let x = host.images.narrow(0, 0, 8);
    let draws = AugmentDraws::draw(8, aug, &mut ChaCha8Rng::seed_from_u64(5));
    let u8_out = draws.apply(&x);
    let f_out = draws.apply(&x.to_kind(Kind::Float));
    assert!(u8_out.to_kind(Kind::Float).equal(&f_out));
    assert!(apply_augment(&x, aug, &mut ChaCha8Rng::seed_from_u64(5)).equal(&u8_out));
    if tch::Cuda::is_available() {
        let dev = Device::Cuda(0);
        let resident = host.to_device(dev);
        assert_eq!(resident.device(), dev);
        for seed in [0u64, 3] {
            let rng = |s| Some(ChaCha8Rng::seed_from_u64(s));
            let a: Vec<(Tensor, Tensor)> = host.batches(8, rng(seed), aug, dev).collect();
            let b: Vec<(Tensor, Tensor)> = resident.batches(8, rng(seed), aug, dev).collect();
            for ((xa, ya), (xb, yb)) in a.iter().zip(&b) {
                assert!(xa.equal(xb) && ya.equal(yb), "seed {seed}");
            }
        }
    }
}
