//! Reports: figures written next to a run's results.
//!
//! [`plot`] draws every figure the tool makes: [`LinePlot`] (robust accuracy against eps or steps
//! from `eval`; training curves; per-layer statistics from `analyze domain-gap` and `analyze
//! bn-divergence`), [`BarPlot`] (per-layer gradient conflict; a study's means with error bars) and
//! [`Heatmap`] (the BN swap matrices), as PNG, alone or several on one
//! image ([`grid_png`]); the layout is plotters' own. [`html`] builds self-contained HTML pages
//! (tables, figures embedded as base64 PNG) and Markdown tables; [`run`] is the report of one run
//! folder (`curves.png` after every epoch, `report.html` by `advtrain report RUN` and at the end of
//! `train`).

pub mod html;
pub mod plot;
pub mod run;

pub use plot::{
    draw_grid, grid_png, write_grid, BarPlot, BarSeries, Figure, Heatmap, LinePlot, Series,
    ValueFormat, DEFAULT_SIZE,
};
