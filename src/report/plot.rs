//! Line plots, grouped bar plots and heatmaps drawn by plotters, written as PNG.
//!
//! Each figure is a plain struct; `write(path)` writes a PNG at [`DEFAULT_SIZE`], `to_png`
//! renders in memory, [`grid_png`] puts several on one image (plotters' `split_evenly`). Data is
//! checked first: empty or mismatched data is an error naming the figure, never a panic;
//! non-finite values are skipped (a line breaks, a bar is left out, a cell is grey `n/a`). The
//! layout is plotters' own (caption, label areas, mesh, series labels in a strip beside the
//! plot, markers); bars whose names do not fit turn horizontal; heatmap cells are viridis with
//! their values printed. Text is DejaVu Sans embedded from `assets/fonts/`, so output does not
//! depend on the machine's fonts.
//!
//! ```no_run
//! use advtrain::report::{LinePlot, Series};
//! let plot = LinePlot {
//!     title: "Robust accuracy (PGD-20)".into(),
//!     x_label: "eps (x 1/255)".into(),
//!     y_label: "accuracy".into(),
//!     series: vec![
//!         Series::new("standard", vec![(0.0, 0.92), (2.0, 0.41), (4.0, 0.08), (8.0, 0.0)]),
//!         Series::new("PGD-AT", vec![(0.0, 0.85), (2.0, 0.78), (4.0, 0.70), (8.0, 0.52)]),
//!     ],
//!     y_range: Some((0.0, 1.0)),
//! };
//! plot.write(std::path::Path::new("runs/x/robust.png"))?;
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::Path;

use anyhow::{anyhow, ensure, Context, Result};
use plotters::coord::{types::RangedCoordf64, Shift};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// Size in pixels (width, height) used by `write`.
pub const DEFAULT_SIZE: (u32, u32) = (1000, 640);
/// The family every text asks for; the embedded font is registered under it.
const FAMILY: &str = "sans-serif";
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// Font sizes (pixels) of the title, axis descriptions and tick labels; the margin.
const TITLE: f64 = 26.0;
const DESC: f64 = 19.0;
const TICK: f64 = 15.0;
const MARGIN: u32 = 16;
/// Matplotlib's "tab10": the series colours in order.
const TAB10: [u32; 10] = [
    0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22,
    0x17becf,
];

/// One named curve of a [`LinePlot`]: `(x, y)` points joined in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Legend entry (a legend is drawn when the plot has more than one series).
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: impl IntoIterator<Item = (f64, f64)>) -> Self {
        let (name, points) = (name.into(), points.into_iter().collect());
        Series { name, points }
    }
}

/// Curves of `y` against `x`, every point marked (shape and colour by series). The x range is
/// the data's padded by 4%; the y range is `y_range` or the data's padded by 6%.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinePlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    pub y_range: Option<(f64, f64)>,
}

/// One named set of bars of a [`BarPlot`]: one value per category (non-finite: no bar).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<f64>,
    /// Error bar half-lengths (`value +- error`, e.g. a standard deviation), one per value, or
    /// empty for none; a non-finite or zero entry draws no error bar.
    pub errors: Vec<f64>,
}

impl BarSeries {
    pub fn new(name: impl Into<String>, values: impl IntoIterator<Item = f64>) -> Self {
        let (name, values) = (name.into(), values.into_iter().collect());
        BarSeries {
            name,
            values,
            errors: vec![],
        }
    }

    /// The same bars with error bars `value +- error`.
    pub fn with_errors(mut self, errors: impl IntoIterator<Item = f64>) -> Self {
        self.errors = errors.into_iter().collect();
        self
    }
}

/// Grouped bars from 0: per category (e.g. a layer) one bar per series, side by side.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<BarSeries>,
}

/// How a [`Heatmap`] prints the values in its cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueFormat {
    /// Fixed-point with this many decimals: `Fixed(2)` (the default) prints 0.8734 as `0.87`.
    Fixed(usize),
    /// Times 100 with this many decimals and `%`: `Percent(1)` prints 0.8734 as `87.3%`.
    Percent(usize),
}

impl Default for ValueFormat {
    fn default() -> Self {
        ValueFormat::Fixed(2)
    }
}

impl ValueFormat {
    /// The text for `v` (`n/a` for a non-finite value).
    pub fn format(&self, v: f64) -> String {
        match *self {
            _ if !v.is_finite() => "n/a".into(),
            ValueFormat::Fixed(d) => format!("{v:.d$}"),
            ValueFormat::Percent(d) => format!("{:.d$}%", 100.0 * v),
        }
    }
}

/// A matrix as coloured cells with their values printed, row 0 on top, coloured
/// viridis from the low end of `value_range` (or of the data) to its high end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub row_label: String,
    pub col_label: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// `values[r][c]`: one inner vector per row, each as long as `cols`.
    pub values: Vec<Vec<f64>>,
    pub value_format: ValueFormat,
    pub value_range: Option<(f64, f64)>,
}

/// Any figure, borrowed: the cells of [`grid_png`].
#[derive(Clone, Copy, Debug)]
pub enum Figure<'a> {
    LinePlot(&'a LinePlot),
    BarPlot(&'a BarPlot),
    Heatmap(&'a Heatmap),
}

/// `figs` on one PNG of `size` pixels, in a grid of `cols` columns (as many rows as needed),
/// each in an equal cell: e.g. a run's stacked training curves, the two BN-swap heatmaps.
pub fn grid_png(figs: &[Figure], cols: usize, (w, h): (u32, u32)) -> Result<Vec<u8>> {
    let ok = (240..=10_000).contains(&w) && (180..=10_000).contains(&h);
    ensure!(ok, "size {w}x{h} is outside 240x180 ..= 10000x10000 pixels");
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    draw_grid(figs, cols, BitMapBackend::with_buffer(&mut rgb, (w, h)))?;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().context("encoding PNG")?;
    writer.write_image_data(&rgb).context("encoding PNG")?;
    writer.finish().context("encoding PNG")?;
    Ok(out)
}

/// Writes [`grid_png`] to `path`, which must end in `.png` (any case).
pub fn write_grid(figs: &[Figure], cols: usize, path: &Path, size: (u32, u32)) -> Result<()> {
    let png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let fail = || format!("cannot write {}", path.display());
    ensure!(
        png,
        "{}: unsupported file extension (expected .png)",
        fail()
    );
    std::fs::write(path, grid_png(figs, cols, size).with_context(fail)?).with_context(fail)
}

/// Checks `figs` and draws them with `backend` (any plotters backend, e.g. its `SVGBackend`)
/// in a grid of `cols` columns.
pub fn draw_grid<DB: DrawingBackend>(figs: &[Figure], cols: usize, backend: DB) -> Result<()> {
    static FONT_OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = FONT_OK.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ensure!(
        *ok,
        "the embedded font (assets/fonts/DejaVuSans.ttf) is not valid"
    );
    ensure!(!figs.is_empty() && cols > 0, "no figure to draw");
    for f in figs {
        let (kind, title, valid) = match f {
            Figure::LinePlot(p) => ("line plot", &p.title, p.validate()),
            Figure::BarPlot(p) => ("bar plot", &p.title, p.validate()),
            Figure::Heatmap(p) => ("heatmap", &p.title, p.validate()),
        };
        valid.with_context(|| match title.as_str() {
            "" => format!("cannot plot a {kind}"),
            t => format!("cannot plot {kind} '{t}'"),
        })?;
    }
    let root = backend.into_drawing_area();
    pe(root.fill(&WHITE))?;
    let cells = root.split_evenly((figs.len().div_ceil(cols), cols));
    for (fig, area) in figs.iter().zip(&cells) {
        match fig {
            Figure::LinePlot(p) => p.draw(area)?,
            Figure::BarPlot(p) => p.draw(area)?,
            Figure::Heatmap(p) => p.draw(area)?,
        }
    }
    pe(root.present())
}

macro_rules! figure_methods {
    ($($t:ident),*) => {$(
        impl $t {
            /// Writes the figure as a PNG of [`DEFAULT_SIZE`] to `path` (`.png`); errors name
            /// the file for another extension, invalid data or an unwritable path.
            pub fn write(&self, path: &Path) -> Result<()> {
                write_grid(&[Figure::$t(self)], 1, path, DEFAULT_SIZE)
            }
            /// As [`write`](Self::write), at `size = (width, height)` pixels.
            pub fn write_sized(&self, path: &Path, size: (u32, u32)) -> Result<()> {
                write_grid(&[Figure::$t(self)], 1, path, size)
            }
            /// The figure as the bytes of a PNG file of `size` pixels.
            pub fn to_png(&self, size: (u32, u32)) -> Result<Vec<u8>> {
                grid_png(&[Figure::$t(self)], 1, size)
            }
        }
    )*};
}
figure_methods!(LinePlot, BarPlot, Heatmap);

type Area<DB> = DrawingArea<DB, Shift>;
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type Label<'a> = Box<dyn Fn(&f64) -> String + 'a>;

/// plotters' errors are generic over the backend and not always `'static`: into anyhow as text.
fn pe<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("drawing failed: {e}"))
}

fn finite2(p: (f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

fn check_range(what: &str, range: Option<(f64, f64)>) -> Result<()> {
    let (lo, hi) = range.unwrap_or((0.0, 1.0));
    let ok = lo.is_finite() && hi.is_finite() && lo < hi;
    ensure!(ok, "{what} ({lo}, {hi}) must be finite with low < high");
    Ok(())
}

/// `[lo, hi]` of the finite values (`(0, 1)` for none) padded by `pad` of its span on each
/// side; a single value widened by 10% of its magnitude (or by 1 around 0).
fn padded(values: impl IntoIterator<Item = f64>, pad: f64) -> (f64, f64) {
    let fin = values.into_iter().filter(|v| v.is_finite());
    let (lo, hi) = fin.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
    let (span, c) = (hi - lo, 0.5 * (lo + hi));
    match span > 1e-9 * lo.abs().max(hi.abs()) && span > f64::MIN_POSITIVE {
        true => (lo - pad * span, hi + pad * span),
        false if c.abs() > 1e-12 => (c - 0.1 * c.abs(), c + 0.1 * c.abs()),
        false => (c - 1.0, c + 1.0),
    }
}

/// Tick labels of `range` cut in at most `n` ticks, with the decimals their step needs
/// (scientific for extreme magnitudes).
fn numeric<'a>(range: (f64, f64), n: usize) -> Label<'a> {
    let ticks = RangedCoordf64::from(range.0..range.1).key_points(n);
    let step = ticks.get(1).zip(ticks.first()).map_or(1.0, |(b, a)| b - a);
    let sci = range.0.abs().max(range.1.abs()) >= 1e6 || step < 1e-4;
    let dec = (-step.log10().floor()).clamp(0.0, 8.0) as usize;
    Box::new(move |v| match (sci, v.abs() < 1e-9 * step) {
        (_, true) if sci => "0".into(),
        (true, _) => format!("{v:.1e}"),
        (false, zero) => format!("{:.dec$}", if zero { 0.0 } else { *v }),
    })
}

/// `names` at `0, 1, ..` (row 0 at the top when `reverse`).
fn named(names: &[String], reverse: bool) -> Label<'_> {
    let last = names.len() as f64 - 1.0;
    Box::new(move |v| {
        let i = if reverse { last - v } else { *v };
        let whole = (i - i.round()).abs() < 1e-6 && i > -0.5;
        let name = whole.then(|| names.get(i.round() as usize)).flatten();
        name.cloned().unwrap_or_default()
    })
}

/// One axis of a chart: range, at most `n` ticks with `label`s in a font of `size`, the axis
/// description and whether grid lines mark its ticks.
struct Axis<'a> {
    range: (f64, f64),
    n: usize,
    label: Label<'a>,
    size: f64,
    desc: &'a str,
    grid: bool,
}

impl<'a> Axis<'a> {
    fn new(range: (f64, f64), n: usize, label: Label<'a>, desc: &'a str, grid: bool) -> Self {
        let size = TICK;
        Axis {
            range,
            n,
            label,
            size,
            desc,
            grid,
        }
    }

    fn ticks(&self) -> Vec<String> {
        let t = RangedCoordf64::from(self.range.0..self.range.1).key_points(self.n);
        t.iter().map(&self.label).collect()
    }
}

fn font(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

/// Width in pixels of the widest of `texts` at `size`.
fn widest<DB: DrawingBackend, S: AsRef<str>>(a: &Area<DB>, texts: &[S], size: f64) -> u32 {
    let w = texts
        .iter()
        .map(|t| a.estimate_text_size(t.as_ref(), &font(size)));
    w.filter_map(|s| s.ok()).map(|s| s.0).max().unwrap_or(0)
}

fn colour(i: usize) -> RGBColor {
    let c = TAB10[i % TAB10.len()];
    RGBColor((c >> 16) as u8, (c >> 8) as u8, c as u8)
}

/// plotters' marker of series `i` at pixel `at`: circle, square, triangle, cross.
fn marker<DB: DrawingBackend>(i: usize, at: (i32, i32)) -> DynElement<'static, DB, (i32, i32)> {
    let s = colour(i).filled();
    match i % 4 {
        0 => Circle::new(at, 5, s).into_dyn(),
        1 => Rectangle::new([(at.0 - 4, at.1 - 4), (at.0 + 4, at.1 + 4)], s).into_dyn(),
        2 => TriangleMarker::new(at, 6, s).into_dyn(),
        _ => Cross::new(at, 5, colour(i).stroke_width(2)).into_dyn(),
    }
}

/// The chart on `root`: the title on top (shrunk to fit), label areas fitted to the tick labels
/// and the axis descriptions, plotters' mesh drawn.
fn chart<'a, DB: DrawingBackend>(
    root: &'a Area<DB>,
    title: &str,
    x: &Axis,
    y: &Axis,
) -> Result<Chart<'a, DB>> {
    let desc = |a: &Axis| {
        if a.desc.is_empty() {
            0
        } else {
            DESC as u32 + 12
        }
    };
    let mut b = ChartBuilder::on(root);
    b.margin(MARGIN);
    if !title.is_empty() {
        let room = root.dim_in_pixel().0.saturating_sub(2 * MARGIN);
        let fit = room as f64 / widest(root, &[title], TITLE).max(1) as f64;
        b.caption(title, font(TITLE * fit.min(1.0)));
    }
    b.x_label_area_size(x.size as u32 + 14 + desc(x))
        .y_label_area_size(widest(root, &y.ticks(), y.size) + 14 + desc(y));
    let mut chart = pe(b.build_cartesian_2d(x.range.0..x.range.1, y.range.0..y.range.1))?;
    let mut mesh = chart.configure_mesh();
    mesh.x_label_style(font(x.size))
        .y_label_style(font(y.size))
        .axis_desc_style(font(DESC))
        .x_desc(x.desc)
        .y_desc(y.desc)
        .x_labels(x.n)
        .y_labels(y.n)
        .x_label_formatter(&x.label)
        .y_label_formatter(&y.label)
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(TRANSPARENT);
    if !x.grid {
        mesh.disable_x_mesh();
    }
    if !y.grid {
        mesh.disable_y_mesh();
    }
    pe(mesh.draw())?;
    Ok(chart)
}

/// The legend of `names` in `strip`, beside the plot (so it covers no data), its top at `top`
/// pixels: plotters' series labels (framed) of empty series on a chart of their own;
/// `sample(i, at)` draws series `i`'s sample.
fn legend<'a, DB: DrawingBackend + 'a, E: IntoDynElement<'a, DB, (i32, i32)>>(
    strip: &'a Area<DB>,
    top: u32,
    names: &[&str],
    sample: impl Fn(usize, (i32, i32)) -> E + Copy + 'a,
) -> Result<()> {
    if names.len() < 2 {
        return Ok(());
    }
    let mut chart = pe(ChartBuilder::on(strip)
        .margin_top(top)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0))?;
    for (i, name) in names.iter().enumerate() {
        let none = std::iter::empty::<EmptyElement<(f64, f64), DB>>();
        pe(chart.draw_series(none))?
            .label(*name)
            .legend(move |at| sample(i, at));
    }
    let mut labels = chart.configure_series_labels();
    labels
        .position(SeriesLabelPosition::UpperLeft)
        .margin(8)
        .legend_area_size(34)
        .label_font(font(16.0))
        .background_style(WHITE)
        .border_style(RGBColor(160, 160, 160));
    pe(labels.draw())
}

/// `root` split into the chart's area and a strip on the right for the legend of `names`
/// (none for fewer than two; at most 40% of the width).
fn with_legend<DB: DrawingBackend>(root: &Area<DB>, names: &[&str]) -> (Area<DB>, Area<DB>) {
    let w = root.dim_in_pixel().0;
    let strip = match names.len() {
        0 | 1 => 0,
        _ => (widest(root, names, 16.0) + 70).min(w * 2 / 5),
    };
    root.split_horizontally(w - strip)
}

/// Pixels from the top of `root` to the top of the chart's plot.
fn plot_top<DB: DrawingBackend>(root: &Area<DB>, chart: &Chart<DB>) -> u32 {
    (chart.plotting_area().get_base_pixel().1 - root.get_base_pixel().1).max(0) as u32
}

impl LinePlot {
    fn validate(&self) -> Result<()> {
        ensure!(!self.series.is_empty(), "no series to plot");
        check_range("y_range", self.y_range)?;
        let n = self.series.len();
        let finite = self
            .series
            .iter()
            .flat_map(|s| &s.points)
            .any(|&p| finite2(p));
        ensure!(finite, "no finite points to plot in {n} series");
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<()> {
        let pts = || {
            self.series
                .iter()
                .flat_map(|s| &s.points)
                .filter(|p| finite2(**p))
        };
        let xr = padded(pts().map(|p| p.0), 0.04);
        let yr = self
            .y_range
            .unwrap_or_else(|| padded(pts().map(|p| p.1), 0.06));
        // At most one tick per integer on an integer axis: plotters' 1, 2, 5 x 10^k steps stay
        // integers.
        let ints = (xr.1.floor() - xr.0.ceil() + 1.0).max(1.0) as usize;
        let xn = if pts().all(|p| p.0.fract() == 0.0) {
            ints.min(10)
        } else {
            10
        };
        let x = Axis::new(xr, xn, numeric(xr, xn), &self.x_label, true);
        let y = Axis::new(yr, 8, numeric(yr, 8), &self.y_label, true);
        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        let (area, strip) = with_legend(root, &names);
        let mut chart = chart(&area, &self.title, &x, &y)?;
        // A line breaks at non-finite points and at points outside a fixed y range.
        let shown = |p: &&(f64, f64)| finite2(**p) && p.1 >= yr.0 && p.1 <= yr.1;
        for (i, s) in self.series.iter().enumerate() {
            for run in s.points.split(|p| !shown(&p)) {
                let line = LineSeries::new(run.iter().copied(), colour(i).stroke_width(2));
                pe(chart.draw_series(line))?;
            }
            let marks = s.points.iter().filter(shown);
            pe(chart.draw_series(marks.map(|&p| EmptyElement::at(p) + marker(i, (0, 0)))))?;
        }
        legend(&strip, plot_top(root, &chart), &names, |i, at| {
            let line = PathElement::new(vec![(0, 0), (24, 0)], colour(i).stroke_width(2));
            EmptyElement::at(at) + line + marker(i, (12, 0))
        })
    }
}

impl BarPlot {
    fn validate(&self) -> Result<()> {
        let n = self.categories.len();
        ensure!(n > 0, "no categories to plot");
        ensure!(!self.series.is_empty(), "no series to plot");
        for s in &self.series {
            let (name, got, e) = (&s.name, s.values.len(), s.errors.len());
            ensure!(
                got == n,
                "series '{name}' has {got} values but there are {n} categories"
            );
            let ok = e == 0 || e == n;
            ensure!(
                ok,
                "series '{name}' has {e} error bars but there are {n} categories"
            );
        }
        let finite = self
            .series
            .iter()
            .flat_map(|s| &s.values)
            .any(|v| v.is_finite());
        ensure!(
            finite,
            "no finite values to plot in {} series",
            self.series.len()
        );
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<()> {
        let (n, k) = (self.categories.len() as f64, self.series.len() as f64);
        let err = |s: &BarSeries, i: usize| s.errors.get(i).map_or(0.0, |e| e.abs());
        let ends: Vec<f64> = (self.series.iter())
            .flat_map(|s| (s.values.iter().enumerate()).map(move |(i, v)| (v, err(s, i))))
            .flat_map(|(v, e)| [v - e, v + e])
            .filter(|v| v.is_finite())
            .collect();
        // From 0 (or a bit below the lowest end) to a bit above the highest (or 0).
        let (lo, hi) = padded(ends.iter().copied().chain([0.0]), 0.05);
        let below = ends.iter().any(|&v| v < 0.0);
        let vr = (
            if below { lo } else { 0.0 },
            if ends.iter().any(|&v| v > 0.0) {
                hi
            } else {
                0.0
            },
        );
        let vr = if vr.0 < vr.1 { vr } else { (0.0, 1.0) };
        let values = Axis::new(vr, 8, numeric(vr, 8), &self.y_label, true);
        let mut cats = Axis::new(
            (-0.5, n - 0.5),
            n as usize,
            named(&self.categories, false),
            &self.x_label,
            false,
        );
        // Category names side by side when they fit their slots, else horizontal bars: the
        // names on the y axis (first on top), in a font that fits their rows.
        let (w, h) = root.dim_in_pixel();
        let flip = widest(root, &self.categories, TICK) as f64 > 0.8 * w as f64 / n;
        let (x, y) = if flip {
            cats.label = named(&self.categories, true);
            cats.size = ((h as f64 - 150.0) / n - 2.0).clamp(8.0, TICK);
            (
                Axis {
                    desc: &self.y_label,
                    ..values
                },
                Axis {
                    desc: &self.x_label,
                    ..cats
                },
            )
        } else {
            (cats, values)
        };
        let at = |c: f64, v: f64| if flip { (v, n - 1.0 - c) } else { (c, v) };
        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        let (area, strip) = with_legend(root, &names);
        let mut chart = chart(&area, &self.title, &x, &y)?;
        let bw = 0.8 / k;
        for (j, s) in self.series.iter().enumerate() {
            let left = |i: usize| i as f64 - 0.4 + bw * j as f64;
            let bars = s.values.iter().enumerate().filter(|(_, v)| v.is_finite());
            pe(chart.draw_series(bars.clone().map(|(i, &v)| {
                Rectangle::new([at(left(i), 0.0), at(left(i) + bw, v)], colour(j).filled())
            })))?;
            // Error bars: a line through the bar's middle with caps.
            let with_err = bars.filter(|&(i, _)| err(s, i) > 0.0 && err(s, i).is_finite());
            pe(chart.draw_series(with_err.flat_map(|(i, &v)| {
                let (c, e, cap) = (left(i) + bw / 2.0, err(s, i), bw / 4.0);
                let line = |a, b| PathElement::new(vec![a, b], BLACK.stroke_width(2));
                [
                    line(at(c, v - e), at(c, v + e)),
                    line(at(c - cap, v - e), at(c + cap, v - e)),
                    line(at(c - cap, v + e), at(c + cap, v + e)),
                ]
            })))?;
        }
        if below {
            pe(chart.draw_series([PathElement::new(
                vec![at(-0.5, 0.0), at(n - 0.5, 0.0)],
                BLACK,
            )]))?;
        }
        legend(&strip, plot_top(root, &chart), &names, |j, (x, y)| {
            Rectangle::new([(x + 2, y - 6), (x + 22, y + 6)], colour(j).filled())
        })
    }
}

impl Heatmap {
    fn validate(&self) -> Result<()> {
        let (nr, nc) = (self.rows.len(), self.cols.len());
        let ok = nr > 0 && nc > 0;
        ensure!(
            ok,
            "needs at least one row and one column (got {nr} rows, {nc} columns)"
        );
        let got = self.values.len();
        ensure!(
            got == nr,
            "values has {got} rows but there are {nr} row names"
        );
        for (r, (row, name)) in self.values.iter().zip(&self.rows).enumerate() {
            let got = row.len();
            ensure!(
                got == nc,
                "row {r} ('{name}') has {got} values but there are {nc} columns"
            );
        }
        check_range("value_range", self.value_range)?;
        let finite = self.values.iter().flatten().any(|v| v.is_finite());
        ensure!(finite, "no finite values to plot");
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<()> {
        let (nr, nc) = (self.rows.len() as f64, self.cols.len() as f64);
        let all = || self.values.iter().flatten().copied();
        let (lo, hi) = self.value_range.unwrap_or_else(|| padded(all(), 0.0));
        let x = Axis::new(
            (-0.5, nc - 0.5),
            nc as usize,
            named(&self.cols, false),
            &self.col_label,
            false,
        );
        let y = Axis::new(
            (-0.5, nr - 0.5),
            nr as usize,
            named(&self.rows, true),
            &self.row_label,
            false,
        );
        let mut chart = chart(root, &self.title, &x, &y)?;
        let (pw, ph) = chart.plotting_area().dim_in_pixel();
        let longest = all()
            .map(|v| self.value_format.format(v).len())
            .max()
            .unwrap_or(1);
        let per_char = 0.85 * pw as f64 / nc / (0.62 * longest as f64);
        let size = 24f64.min(0.38 * ph as f64 / nr).min(per_char).floor();
        let cells = self.values.iter().enumerate().flat_map(|(r, row)| {
            row.iter()
                .enumerate()
                .map(move |(c, &v)| (c as f64, nr - 1.0 - r as f64, v))
        });
        for (x, y, v) in cells {
            let fill = match v.is_finite() {
                true => ViridisRGB::get_color_normalized(v, lo, hi),
                false => RGBColor(200, 200, 200),
            };
            let cell = [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)];
            let (a, b) = (
                Rectangle::new(cell, fill.filled()),
                Rectangle::new(cell, WHITE.stroke_width(2)),
            );
            pe(chart.draw_series([a, b]))?;
            let lum = 0.2126 * fill.0 as f64 + 0.7152 * fill.1 as f64 + 0.0722 * fill.2 as f64;
            let ink = if lum > 140.0 { BLACK } else { WHITE };
            let style = font(size)
                .color(&ink)
                .pos(Pos::new(HPos::Center, VPos::Center));
            if size >= 7.0 {
                pe(chart.draw_series([Text::new(self.value_format.format(v), (x, y), style)]))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_ticks_and_formats() {
        assert_eq!(padded([1.0, 1.0], 0.05), (0.9, 1.1));
        assert_eq!(padded([0.0, f64::NAN], 0.05), (-1.0, 1.0));
        let ticks = |r, n| Axis::new(r, n, numeric(r, n), "", false).ticks();
        assert_eq!(ticks((0.9, 3.1), 3), ["1", "2", "3"]);
        assert_eq!(
            ticks((0.0, 1.0), 10),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        assert_eq!(ticks((0.0, 1e-5), 10)[..2], ["0", "2.0e-6"]);
        let t = ticks((-0.3, 0.3), 10);
        assert!(
            t.contains(&"0.0".into()) && !t.contains(&"-0.0".into()),
            "{t:?}"
        );
        assert_eq!(ValueFormat::Percent(1).format(0.8734), "87.3%");
        assert_eq!(ValueFormat::Fixed(2).format(f64::NAN), "n/a");
        assert_eq!(ValueFormat::default().format(0.8734), "0.87");
    }
}
