//! Line plots, grouped bar plots and heatmaps drawn by plotters, as PNG or SVG.
//!
//! Each figure is a plain struct; `write(path)` picks the format by the extension (`.png` or
//! `.svg`), `write_sized(path, (w, h))` sets the size (default [`DEFAULT_SIZE`]), `to_png` /
//! `to_svg` render in memory, and [`grid_png`] puts several figures on one image (plotters'
//! `split_evenly`). Data is checked first: empty or mismatched data is an error naming the figure
//! (and the file), never a panic. Non-finite values are skipped: a line breaks at them (and at
//! points outside a fixed `y_range`), a bar is left out, a cell is grey `n/a`.
//!
//! The layout is plotters': the title over the figure (`titled`, shrunk to fit), `ChartBuilder`
//! label areas, `configure_mesh` for axes, ticks (on integers when every x is one, as epochs and
//! layer indices are), grid and axis descriptions, `configure_series_labels` for the legend in a
//! strip of its own beside the plot (so it never covers data), `PathElement` error bars, viridis
//! (`ViridisRGB`) with a colour scale chart for heatmaps. Text is DejaVu Sans embedded from
//! `assets/fonts/` (rasterised by `ab_glyph`), so output does not depend on the machine's fonts;
//! PNGs are 8-bit RGB (the `png` crate); SVGs keep text as text.
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

use anyhow::{anyhow, bail, ensure, Context, Result};
use plotters::coord::{types::RangedCoordf64, Shift};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};

/// Size in pixels (width, height) used by `write`; SVG output uses it as its viewport.
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

/// How a [`Heatmap`] prints values in its cells and on its colour scale.
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

/// A matrix as coloured cells with their values printed, row 0 on top, and a colour scale:
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
pub fn grid_png(figs: &[Figure], cols: usize, size: (u32, u32)) -> Result<Vec<u8>> {
    check(figs, cols, size)?;
    let (w, h) = size;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    draw_grid(figs, cols, BitMapBackend::with_buffer(&mut rgb, size))?;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().context("encoding PNG")?;
    writer.write_image_data(&rgb).context("encoding PNG")?;
    writer.finish().context("encoding PNG")?;
    Ok(out)
}

/// As [`grid_png`], an SVG document.
pub fn grid_svg(figs: &[Figure], cols: usize, size: (u32, u32)) -> Result<String> {
    check(figs, cols, size)?;
    let mut svg = String::new();
    draw_grid(figs, cols, SVGBackend::with_string(&mut svg, size))?;
    Ok(svg)
}

/// Writes `figs` to `path`: [`grid_png`] for `.png`, [`grid_svg`] for `.svg` (any case).
pub fn write_grid(figs: &[Figure], cols: usize, path: &Path, size: (u32, u32)) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let bytes = match ext.as_deref() {
        Some("png") => grid_png(figs, cols, size),
        Some("svg") => grid_svg(figs, cols, size).map(String::into_bytes),
        _ => bail!(
            "cannot write a plot to {}: unsupported file extension (expected .png or .svg)",
            path.display()
        ),
    };
    let fail = || format!("cannot write {}", path.display());
    std::fs::write(path, bytes.with_context(fail)?).with_context(fail)
}

macro_rules! figure_methods {
    ($($t:ident),*) => {$(
        impl $t {
            /// Writes the figure at [`DEFAULT_SIZE`] to `path`: PNG for `.png`, SVG for `.svg`.
            /// Errors (naming the file) for another extension, invalid data or an unwritable path.
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
            /// The figure as an SVG document of `size` pixels.
            pub fn to_svg(&self, size: (u32, u32)) -> Result<String> {
                grid_svg(&[Figure::$t(self)], 1, size)
            }
        }
    )*};
}
figure_methods!(LinePlot, BarPlot, Heatmap);

type Area<DB> = DrawingArea<DB, Shift>;
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// plotters' errors are generic over the backend and not always `'static`: into anyhow as text.
fn pe<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("drawing failed: {e}"))
}

fn check(figs: &[Figure], cols: usize, (w, h): (u32, u32)) -> Result<()> {
    static FONT_OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = FONT_OK.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    ensure!(
        *ok,
        "the embedded font (assets/fonts/DejaVuSans.ttf) is not a valid font"
    );
    ensure!(!figs.is_empty() && cols > 0, "no figure to draw");
    let ok = (240..=10_000).contains(&w) && (180..=10_000).contains(&h);
    ensure!(ok, "size {w}x{h} is outside 240x180 ..= 10000x10000 pixels");
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
    Ok(())
}

fn draw_grid<DB: DrawingBackend>(figs: &[Figure], cols: usize, backend: DB) -> Result<()> {
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

/// One axis of a chart: its range, how many ticks plotters may put on it (at most), their
/// label and the axis description.
struct Axis<'a> {
    range: (f64, f64),
    n: usize,
    label: Box<dyn Fn(&f64) -> String + 'a>,
    desc: &'a str,
}

impl<'a> Axis<'a> {
    /// At most `n` ticks (when `int`, no more than the integers in `range`, so that plotters'
    /// steps of 1, 2, 5 x 10^k stay integers), printed with the decimals their step needs
    /// (scientific for extreme magnitudes).
    fn numeric(range: (f64, f64), n: usize, int: bool, desc: &'a str) -> Self {
        let ints = (range.1.floor() - range.0.ceil() + 1.0).max(1.0) as usize;
        let n = if int { n.min(ints) } else { n };
        let ticks = RangedCoordf64::from(range.0..range.1).key_points(n);
        let step = match ticks.as_slice() {
            [a, b, ..] => b - a,
            _ => 1.0,
        };
        let sci = range.0.abs().max(range.1.abs()) >= 1e6 || step < 1e-4;
        let dec = (-step.log10().floor()).clamp(0.0, 8.0) as usize;
        let label = Box::new(move |v: &f64| match (sci, v.abs() < 1e-9 * step) {
            (true, true) => "0".into(),
            (true, false) => format!("{v:.1e}"),
            (false, zero) => format!("{:.dec$}", if zero { 0.0 } else { *v }),
        });
        Axis {
            range,
            n,
            label,
            desc,
        }
    }

    /// `names` at `0, 1, ..` (row 0 at the top when `reverse`), at most `n` of them labelled.
    fn named(names: &'a [String], n: usize, reverse: bool, desc: &'a str) -> Self {
        let len = names.len() as f64;
        let at = move |v: &f64| {
            let i = if reverse { len - 1.0 - v } else { *v };
            let whole = (i - i.round()).abs() < 1e-6 && i >= -0.1;
            whole
                .then(|| names.get(i.round() as usize).cloned())
                .flatten()
                .unwrap_or_default()
        };
        let label = Box::new(at);
        Axis {
            range: (-0.5, len - 0.5),
            n: n.min(names.len()),
            label,
            desc,
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

/// Marker of series `i`: circle, square, triangle, diamond (a filled polygon) around pixel `at`.
fn marker(i: usize, at: (i32, i32)) -> Polygon<(i32, i32)> {
    let (corners, turn, r) = [
        (10, 0.0, 5.0),
        (4, 0.125, 5.7),
        (3, 0.0, 6.5),
        (4, 0.0, 6.5),
    ][i % 4];
    let corner = |k: usize| {
        let a = std::f64::consts::TAU * (k as f64 / corners as f64 + turn);
        (
            at.0 + (r * a.sin()).round() as i32,
            at.1 - (r * a.cos()).round() as i32,
        )
    };
    Polygon::new(
        (0..corners).map(corner).collect::<Vec<_>>(),
        colour(i).filled(),
    )
}

/// The title over the whole width (shrunk to fit), and a strip `strip` pixels wide split off the
/// right (none for 0): the areas for the chart and for what goes beside it.
fn frame<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    strip: u32,
) -> Result<(Area<DB>, Area<DB>)> {
    let mut area = root.margin(MARGIN / 2, 0, 0, 0);
    if !title.is_empty() {
        let fit = (root.dim_in_pixel().0 - 2 * MARGIN) as f64
            / widest(root, &[title], TITLE).max(1) as f64;
        area = pe(area.titled(title, font(TITLE * fit.min(1.0))))?;
    }
    Ok(area.split_horizontally(area.dim_in_pixel().0 - strip))
}

/// The chart on `area` with label areas fitted to the tick labels (`x_height`: the x tick
/// labels' height) and the axis descriptions.
fn chart<'a, DB: DrawingBackend>(
    area: &'a Area<DB>,
    x: &Axis,
    y: &Axis,
    x_height: u32,
) -> Result<Chart<'a, DB>> {
    let desc = |d: &str| if d.is_empty() { 0 } else { DESC as u32 + 12 };
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(MARGIN)
        .x_label_area_size(x_height + 14 + desc(x.desc))
        .y_label_area_size(widest(area, &y.ticks(), TICK) + 14 + desc(y.desc));
    pe(builder.build_cartesian_2d(x.range.0..x.range.1, y.range.0..y.range.1))
}

/// plotters' mesh: axes, ticks, labels (x labels in `x_font`), descriptions; a light grid at the
/// x and y ticks as `grid` says.
fn mesh<DB: DrawingBackend>(
    chart: &mut Chart<DB>,
    x: &Axis,
    y: &Axis,
    x_font: TextStyle,
    grid: (bool, bool),
) -> Result<()> {
    let mut mesh = chart.configure_mesh();
    mesh.label_style(font(TICK))
        .x_label_style(x_font)
        .axis_desc_style(font(DESC))
        .x_desc(x.desc)
        .y_desc(y.desc)
        .x_labels(x.n)
        .y_labels(y.n)
        .x_label_formatter(&x.label)
        .y_label_formatter(&y.label)
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(TRANSPARENT);
    if !grid.0 {
        mesh.disable_x_mesh();
    }
    if !grid.1 {
        mesh.disable_y_mesh();
    }
    pe(mesh.draw())
}

/// Width of a legend strip for these series names: none for fewer than two, at most 40%.
fn legend_width<DB: DrawingBackend>(root: &Area<DB>, names: &[&str]) -> u32 {
    match names.len() {
        0 | 1 => 0,
        _ => (widest(root, names, 16.0) + 70).min(root.dim_in_pixel().0 * 2 / 5),
    }
}

/// The legend in `strip`: plotters' series labels (upper left, framed) on a chart holding only
/// them; `sample(i, at)` draws series `i`'s sample.
fn legend<'a, DB: DrawingBackend + 'a, E: IntoDynElement<'a, DB, (i32, i32)>>(
    strip: &'a Area<DB>,
    names: &[&str],
    sample: impl Fn(usize, (i32, i32)) -> E + Copy + 'a,
) -> Result<()> {
    if names.len() < 2 {
        return Ok(());
    }
    let mut chart = pe(ChartBuilder::on(strip)
        .margin_top(MARGIN)
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
        .legend_area_size(34);
    labels
        .label_font(font(16.0))
        .background_style(WHITE)
        .border_style(RGBColor(160, 160, 160));
    pe(labels.draw())
}

impl LinePlot {
    fn validate(&self) -> Result<()> {
        ensure!(!self.series.is_empty(), "no series to plot");
        check_range("y_range", self.y_range)?;
        let finite = self
            .series
            .iter()
            .flat_map(|s| &s.points)
            .any(|&p| finite2(p));
        ensure!(
            finite,
            "no finite points to plot in {} series",
            self.series.len()
        );
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<()> {
        let pts = || {
            self.series
                .iter()
                .flat_map(|s| &s.points)
                .filter(|p| finite2(**p))
        };
        let int = pts().all(|p| p.0.fract() == 0.0);
        let x = Axis::numeric(padded(pts().map(|p| p.0), 0.04), 10, int, &self.x_label);
        let yr = self
            .y_range
            .unwrap_or_else(|| padded(pts().map(|p| p.1), 0.06));
        let y = Axis::numeric(yr, 8, false, &self.y_label);
        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        let (area, strip) = frame(root, &self.title, legend_width(root, &names))?;
        let mut chart = chart(&area, &x, &y, TICK as u32)?;
        mesh(&mut chart, &x, &y, font(TICK), (true, true))?;
        // A line breaks at non-finite points and at points outside a fixed y range.
        let shown = |p: &(f64, f64)| finite2(*p) && p.1 >= yr.0 && p.1 <= yr.1;
        for (i, s) in self.series.iter().enumerate() {
            for run in s.points.split(|p| !shown(p)) {
                pe(chart.draw_series(LineSeries::new(
                    run.iter().copied(),
                    colour(i).stroke_width(2),
                )))?;
            }
            let marks = s.points.iter().filter(|p| shown(p));
            pe(chart.draw_series(marks.map(|&p| EmptyElement::at(p) + marker(i, (0, 0)))))?;
        }
        legend(&strip, &names, |i, at| {
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
        let (min, max) = (
            ends.iter().copied().fold(0.0, f64::min),
            ends.iter().copied().fold(0.0, f64::max),
        );
        let yr = (
            if min < 0.0 { lo } else { 0.0 },
            if max > 0.0 { hi } else { 0.0 },
        );
        let yr = if yr.0 < yr.1 { yr } else { (0.0, 1.0) };
        let y = Axis::numeric(yr, 8, false, &self.y_label);
        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        let (area, strip) = frame(root, &self.title, legend_width(root, &names))?;
        // Category names side by side if they fit their slots, else vertical in a font that
        // fits the slot (down to 9 px, then every k-th name), at most 35% of the height.
        let slot = area.dim_in_pixel().0 as f64 * 0.85 / n;
        let wide = widest(root, &self.categories, TICK) as f64;
        let vertical = wide > 0.92 * slot;
        let size = if vertical {
            (slot - 2.0).clamp(9.0, TICK)
        } else {
            TICK
        };
        let every = ((size + 2.0) / slot).ceil() as usize;
        let x_height = if vertical {
            (wide * size / TICK) as u32
        } else {
            TICK as u32
        };
        let shown = if vertical {
            0
        } else {
            self.categories.len().div_ceil(every)
        };
        let x = Axis::named(&self.categories, shown, false, &self.x_label);
        let mut chart = chart(
            &area,
            &x,
            &y,
            x_height.min(area.dim_in_pixel().1 * 35 / 100),
        )?;
        mesh(&mut chart, &x, &y, font(size), (false, true))?;
        if vertical {
            // plotters' mesh centres a rotated label on its tick (over the plot): drawn here,
            // hanging from the axis.
            let style = font(size)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center));
            let base = root.get_base_pixel();
            for (i, name) in self.categories.iter().enumerate().step_by(every) {
                let (px, py) = chart.backend_coord(&(i as f64, y.range.0));
                let (px, py) = (px - base.0, py - base.1);
                pe(root.draw(&PathElement::new(vec![(px, py), (px, py + 5)], BLACK)))?;
                pe(root.draw_text(name, &style, (px, py + 8)))?;
            }
        }
        let w = 0.8 / k;
        for (j, s) in self.series.iter().enumerate() {
            let left = |i: usize| i as f64 - 0.4 + w * j as f64;
            let bars = s.values.iter().enumerate().filter(|(_, v)| v.is_finite());
            pe(chart.draw_series(bars.clone().map(|(i, &v)| {
                Rectangle::new([(left(i), 0.0), (left(i) + w, v)], colour(j).filled())
            })))?;
            // Error bars: a vertical line through the bar's middle with caps.
            let with_err = bars.filter(|&(i, _)| err(s, i) > 0.0 && err(s, i).is_finite());
            pe(chart.draw_series(with_err.flat_map(|(i, &v)| {
                let (x, e, cap) = (left(i) + w / 2.0, err(s, i), w / 4.0);
                let line = |a: (f64, f64), b: (f64, f64)| {
                    PathElement::new(vec![a, b], BLACK.stroke_width(2))
                };
                [
                    line((x, v - e), (x, v + e)),
                    line((x - cap, v - e), (x + cap, v - e)),
                    line((x - cap, v + e), (x + cap, v + e)),
                ]
            })))?;
        }
        if y.range.0 < 0.0 {
            pe(chart.draw_series([PathElement::new(vec![(-0.5, 0.0), (n - 0.5, 0.0)], BLACK)]))?;
        }
        legend(&strip, &names, |j, (x, y)| {
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
        let (nr, nc) = (self.rows.len(), self.cols.len());
        let (vmin, vmax) = self
            .value_range
            .unwrap_or_else(|| padded(self.values.iter().flatten().copied(), 0.0));
        // The colour scale's ticks, in the cells' format with the decimals the ticks need.
        let mut scale = Axis::numeric((vmin, vmax), 6, false, "");
        if let ValueFormat::Percent(_) = self.value_format {
            let pct = Axis::numeric((100.0 * vmin, 100.0 * vmax), 6, false, "");
            let f = pct.label;
            scale.label = Box::new(move |v: &f64| format!("{}%", f(&(100.0 * v))));
        }
        let scale_w = widest(root, &scale.ticks(), TICK) + 14;
        let (area, strip) = frame(root, &self.title, scale_w + 24 + MARGIN)?;
        let x = Axis::named(&self.cols, nc, false, &self.col_label);
        let y = Axis::named(&self.rows, nr, true, &self.row_label);
        let mut chart = chart(&area, &x, &y, TICK as u32)?;
        let (pw, ph) = chart.plotting_area().dim_in_pixel();
        let longest = self
            .values
            .iter()
            .flatten()
            .map(|&v| self.value_format.format(v).len())
            .max();
        let per_char = 0.85 * pw as f64 / nc as f64 / (0.62 * longest.unwrap_or(1) as f64);
        let value_size = 24f64
            .min(0.38 * ph as f64 / nr as f64)
            .min(per_char)
            .floor();
        for (r, row) in self.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (x, y) = (c as f64, (nr - r - 1) as f64);
                let fill = match v.is_finite() {
                    true => ViridisRGB::get_color_normalized(v, vmin, vmax),
                    false => RGBColor(200, 200, 200),
                };
                let cell = [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)];
                pe(chart.draw_series([
                    Rectangle::new(cell, fill.filled()),
                    Rectangle::new(cell, WHITE.stroke_width(2)),
                ]))?;
                let lum = 0.2126 * fill.0 as f64 + 0.7152 * fill.1 as f64 + 0.0722 * fill.2 as f64;
                let ink = if lum > 140.0 { BLACK } else { WHITE };
                let style = font(value_size)
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                if value_size >= 7.0 {
                    pe(chart.draw_series([Text::new(self.value_format.format(v), (x, y), style)]))?;
                }
            }
        }
        mesh(&mut chart, &x, &y, font(TICK), (false, false))?;
        // The colour scale: a chart of its own, as tall as the cells, ticks on the right.
        let mut builder = ChartBuilder::on(&strip);
        builder
            .margin(MARGIN)
            .margin_left(2)
            .x_label_area_size(TICK as u32 + 14 + DESC as u32 + 12);
        builder.right_y_label_area_size(scale_w);
        let mut cb = pe(builder.build_cartesian_2d(0.0..1.0, vmin..vmax))?;
        let mut m = cb.configure_mesh();
        m.disable_mesh()
            .disable_x_axis()
            .label_style(font(TICK))
            .y_labels(scale.n)
            .y_label_formatter(&scale.label);
        pe(m.draw())?;
        let band = |b: usize| vmin + (vmax - vmin) * b as f64 / 96.0;
        pe(cb.draw_series((0..96).map(|b| {
            let fill =
                ViridisRGB::get_color_normalized(band(b) + (vmax - vmin) / 192.0, vmin, vmax);
            Rectangle::new([(0.0, band(b)), (1.0, band(b + 1))], fill.filled())
        })))?;
        pe(cb.draw_series([Rectangle::new([(0.0, vmin), (1.0, vmax)], BLACK)]))?;
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
        let ticks = |r, int| Axis::numeric(r, 10, int, "").ticks();
        assert_eq!(ticks((0.9, 3.1), true), ["1", "2", "3"]);
        assert_eq!(
            ticks((0.0, 1.0), false),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        assert_eq!(ticks((0.0, 1e-5), false)[..2], ["0", "2.0e-6"]);
        let t = ticks((-0.3, 0.3), false);
        assert!(
            t.contains(&"0.0".into()) && !t.contains(&"-0.0".into()),
            "{t:?}"
        );
        assert_eq!(ValueFormat::Percent(1).format(0.8734), "87.3%");
        assert_eq!(ValueFormat::Fixed(2).format(f64::NAN), "n/a");
        assert_eq!(ValueFormat::default().format(0.8734), "0.87");
    }
}
