//! Reports: figures written next to a run's results.
//!
//! [`plot`] draws every figure the tool makes: [`LinePlot`] (robust accuracy against eps or steps
//! from `eval`; per-layer statistics from `analyze domain-gap` and `analyze bn-divergence`),
//! [`BarPlot`] (per-layer gradient conflict) and [`Heatmap`] (the BN swap matrices), as PNG or
//! SVG by the file extension. plotters lays them out (title, `ChartBuilder` label areas,
//! `configure_mesh`, a legend or colour scale in a strip beside the plot); glyphs are rasterised in
//! Rust from DejaVu Sans, embedded from `assets/fonts/`, so no system library or font is needed.

//!
//! [`curve`] is the figure of an `eval` curve.
//!
//! [`html`] builds self-contained HTML pages (tables, figures embedded as base64 PNG) and
//! Markdown tables; [`run`] is the report of one run folder (`curves.png` after every epoch,
//! `report.html` by `advtrain report RUN` and at the end of `train`).

pub mod curve;
pub mod html;
pub mod plot;
pub mod run;

pub use plot::{
    BarPlot, BarSeries, Heatmap, ImageFormat, LinePlot, Series, ValueFormat, DEFAULT_SIZE,
};
