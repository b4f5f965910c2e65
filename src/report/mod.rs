//! Reports: figures written next to a run's results.
//!
//! [`plot`] draws every figure the tool makes (robust accuracy against eps, per-layer statistics,
//! swap matrices) as PNG or SVG, chosen by the file extension. It needs no system library or
//! font: glyphs are rasterised in Rust from DejaVu Sans, embedded in the binary from
//! `assets/fonts/`.

pub mod plot;

pub use plot::{
    BarPlot, BarSeries, Heatmap, ImageFormat, LinePlot, Series, ValueFormat, DEFAULT_SIZE,
};
