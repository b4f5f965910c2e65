//! Line plots, grouped bar plots and heatmaps, laid out by plotters and written as PNG or SVG.
//!
//! Each figure is a plain struct with public fields; `write(path)` picks the format from the
//! extension (`.png` or `.svg`), `write_sized(path, (w, h))` sets the size (default
//! [`DEFAULT_SIZE`]), `to_png` / `to_svg` render in memory. Data is checked before anything is
//! drawn: empty or mismatched data is an error naming the figure and the file, never a panic.
//! Non-finite values are skipped: a line breaks at them, a bar is left out, a cell is grey `n/a`.
//!
//! Every figure is built the same way (`frame`, `chart`, `mesh` below): the title over the whole
//! width (`DrawingArea::titled`, its font shrunk when the title is wider than the figure); a strip
//! split off the right for what must not cover the data, namely the legend (plotters'
//! `configure_series_labels` at `SeriesLabelPosition::UpperLeft` on a chart of its own, drawn
//! when there is more than one series) or the heatmap's colour scale (a second chart, ticks on the
//! right); and one `ChartBuilder` chart with fixed label-area sizes (from the measured tick
//! labels) whose axes, ticks, grid and axis descriptions come from `configure_mesh`. Drawn by hand
//! are only category names under bars (vertical in a smaller font, every k-th, when they do not
//! fit side by side), the heatmap cells with their values, and the cut of lines at a fixed y range
//! (plotters would pull points outside onto the edge and bend the line).
//!
//! Text is DejaVu Sans embedded in the binary (`assets/fonts/DejaVuSans.ttf`, rasterised by
//! `ab_glyph`), so the output does not depend on the machine's fonts; PNGs are 8-bit RGB encoded
//! by the `png` crate; SVGs keep text as text (family `sans-serif`).
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
use std::sync::OnceLock;

use anyhow::{anyhow, bail, ensure, Context, Result};
use plotters::chart::MeshStyle;
use plotters::coord::{types::RangedCoordf64, Shift};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle, FontTransform};

/// Size in pixels (width, height) used by `write`; SVG output uses it as its viewport.
pub const DEFAULT_SIZE: (u32, u32) = (1000, 640);
const MIN_SIZE: (u32, u32) = (240, 180);
const MAX_SIZE: u32 = 10_000;
/// The family every text element asks for; the embedded font is registered under it.
const FAMILY: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const TITLE: f64 = 26.0;
const DESC: f64 = 19.0;
const TICK: f64 = 15.0;
const LEGEND: f64 = 16.0;
const MARGIN: u32 = 16;
/// Matplotlib's "tab10" for series in order, and viridis' anchors (interpolated) for heatmaps.
const PALETTE: [u32; 10] = [
    0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22,
    0x17becf,
];
const VIRIDIS: [u32; 8] = [
    0x440154, 0x46327f, 0x365c8d, 0x277f8f, 0x1fa288, 0x4ac26e, 0xa0db39, 0xfee825,
];

/// One named curve of a [`LinePlot`]: `(x, y)` points joined in order; a non-finite coordinate
/// breaks the line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Legend entry (the legend is drawn when the plot has more than one series).
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
/// the data's padded by 4%; the y range is `y_range` or the data's padded by 6% (a single value
/// gets a range around it). Lines are cut where they leave a fixed `y_range`.
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
    /// empty for none; a non-finite or zero entry draws no bar.
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
    /// Fixed-point with this many decimals: `Fixed(2)` prints 0.8734 as `0.87`.
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

    /// A colour-scale tick: as `format`, with the decimals the tick `step` needs.
    fn format_tick(&self, v: f64, step: f64) -> String {
        match *self {
            ValueFormat::Fixed(_) => format!("{v:.*}", decimals_for(step)),
            ValueFormat::Percent(_) => format!("{:.*}%", decimals_for(100.0 * step), 100.0 * v),
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

/// Output format of a figure, from the file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// The format for `path` by its extension (`png` or `svg`, any case), else an error naming it.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str());
        match ext.map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(ImageFormat::Png),
            Some("svg") => Ok(ImageFormat::Svg),
            _ => bail!(
                "cannot write a plot to {}: unsupported file extension (expected .png or .svg)",
                path.display()
            ),
        }
    }
}

type Area<DB> = DrawingArea<DB, Shift>;
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// What each figure provides to the shared writer.
trait Figure {
    const KIND: &'static str;
    fn title(&self) -> &str;
    /// Checks the data; the caller adds figure and file to the message.
    fn validate(&self) -> Result<()>;
    /// Draws onto a white area; only called after `validate` succeeded.
    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<()>;
}

/// plotters' errors are generic over the backend and not always `'static`: into anyhow as text.
trait PlotErr<T> {
    fn pe(self) -> Result<T>;
}

impl<T, E: std::fmt::Display> PlotErr<T> for std::result::Result<T, E> {
    fn pe(self) -> Result<T> {
        self.map_err(|e| anyhow!("drawing failed: {e}"))
    }
}

fn render<F: Figure, DB: DrawingBackend>(fig: &F, backend: DB) -> Result<()> {
    static FONT: OnceLock<bool> = OnceLock::new();
    let font_ok = FONT.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT_BYTES).is_ok());
    ensure!(
        *font_ok,
        "the embedded font (assets/fonts/DejaVuSans.ttf) is not a valid font"
    );
    let root = backend.into_drawing_area();
    root.fill(&WHITE).pe()?;
    fig.draw(&root)?;
    root.present().pe()
}

fn check<F: Figure>(fig: &F, (w, h): (u32, u32)) -> Result<()> {
    let (lo, hi) = (MIN_SIZE, MAX_SIZE);
    let ok = (lo.0..=hi).contains(&w) && (lo.1..=hi).contains(&h);
    ensure!(
        ok,
        "size {w}x{h} is outside {}x{} ..= {hi}x{hi} pixels",
        lo.0,
        lo.1
    );
    fig.validate()
}

fn png_bytes<F: Figure>(fig: &F, (w, h): (u32, u32)) -> Result<Vec<u8>> {
    check(fig, (w, h))?;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    render(fig, BitMapBackend::with_buffer(&mut rgb, (w, h)))?;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().context("encoding PNG")?;
    writer.write_image_data(&rgb).context("encoding PNG")?;
    writer.finish().context("encoding PNG")?;
    Ok(out)
}

fn svg_text<F: Figure>(fig: &F, size: (u32, u32)) -> Result<String> {
    check(fig, size)?;
    let mut svg = String::new();
    render(fig, SVGBackend::with_string(&mut svg, size))?;
    Ok(svg)
}

fn describe<F: Figure>(fig: &F) -> String {
    match fig.title() {
        "" => F::KIND.to_string(),
        t => format!("{} '{t}'", F::KIND),
    }
}

fn write_figure<F: Figure>(fig: &F, path: &Path, size: (u32, u32)) -> Result<()> {
    let bytes = match ImageFormat::from_path(path)? {
        ImageFormat::Png => png_bytes(fig, size),
        ImageFormat::Svg => svg_text(fig, size).map(String::into_bytes),
    };
    let bytes =
        bytes.with_context(|| format!("cannot plot {} to {}", describe(fig), path.display()))?;
    std::fs::write(path, bytes)
        .with_context(|| format!("cannot write {} to {}", describe(fig), path.display()))
}

macro_rules! figure_methods {
    ($($t:ty),*) => {$(
        impl $t {
            /// Writes the figure at [`DEFAULT_SIZE`] to `path`: PNG for `.png`, SVG for `.svg`.
            /// Errors (naming the file) for another extension, invalid data or an unwritable path.
            pub fn write(&self, path: &Path) -> Result<()> {
                write_figure(self, path, DEFAULT_SIZE)
            }
            /// As [`write`](Self::write), at `size = (width, height)` pixels.
            pub fn write_sized(&self, path: &Path, size: (u32, u32)) -> Result<()> {
                write_figure(self, path, size)
            }
            /// The figure as the bytes of a PNG file of `size` pixels.
            pub fn to_png(&self, size: (u32, u32)) -> Result<Vec<u8>> {
                png_bytes(self, size).with_context(|| format!("cannot plot {}", describe(self)))
            }
            /// The figure as an SVG document of `size` pixels.
            pub fn to_svg(&self, size: (u32, u32)) -> Result<String> {
                svg_text(self, size).with_context(|| format!("cannot plot {}", describe(self)))
            }
        }
    )*};
}
figure_methods!(LinePlot, BarPlot, Heatmap);

fn finite2(p: (f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

fn check_range(what: &str, range: Option<(f64, f64)>) -> Result<()> {
    let (lo, hi) = range.unwrap_or((0.0, 1.0));
    ensure!(
        lo.is_finite() && hi.is_finite() && lo < hi,
        "{what} ({lo}, {hi}) must be finite with low < high"
    );
    Ok(())
}

/// Min and max of the finite values, if any.
fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let fin = values.into_iter().filter(|v| v.is_finite());
    fin.fold(None, |acc, v| {
        Some(acc.map_or((v, v), |(lo, hi): (f64, f64)| (lo.min(v), hi.max(v))))
    })
}

/// `[lo, hi]` padded by `pad` of its span on each side; a single value widened by 10% of its
/// magnitude (or by 1 around 0).
fn padded((lo, hi): (f64, f64), pad: f64) -> (f64, f64) {
    let span = hi - lo;
    if span > lo.abs().max(hi.abs()) * 1e-9 && span > f64::MIN_POSITIVE {
        return (lo - pad * span, hi + pad * span);
    }
    let c = 0.5 * (lo + hi);
    let half = if c.abs() > 1e-12 { 0.1 * c.abs() } else { 1.0 };
    (c - half, c + half)
}

/// Decimals needed to print multiples of `step` exactly (0 for integral steps), at most 8.
fn decimals_for(step: f64) -> usize {
    let scaled = |d: usize| step * 10f64.powi(d as i32);
    let exact = |d: &usize| (scaled(*d) - scaled(*d).round()).abs() < 1e-6 * scaled(*d).max(1.0);
    match step.is_finite() && step > 0.0 {
        true => (0..8).find(exact).unwrap_or(8),
        false => 2,
    }
}

/// plotters' ticks on `range` (at most `n`) and their step.
fn key_points((lo, hi): (f64, f64), n: usize) -> (Vec<f64>, f64) {
    let t = RangedCoordf64::from(lo..hi).key_points(n);
    let step = if t.len() >= 2 { t[1] - t[0] } else { hi - lo };
    (t, step)
}

/// A formatter printing the ticks plotters puts on `range` (at most `n`) with the decimals their
/// step needs (scientific for extreme magnitudes), and the pixel width of the widest.
fn ticks<DB: DrawingBackend>(
    a: &Area<DB>,
    range: (f64, f64),
    n: usize,
) -> Result<(impl Fn(&f64) -> String, u32)> {
    let (t, step) = key_points(range, n);
    let (sci, dec) = (
        range.0.abs().max(range.1.abs()) >= 1e6 || step < 1e-4,
        decimals_for(step),
    );
    let fmt = move |v: &f64| {
        let v = if v.abs() < step * 1e-6 { 0.0 } else { *v };
        if sci {
            format!("{v:.2e}")
        } else {
            format!("{v:.dec$}")
        }
    };
    let w = widest(a, &t.iter().map(&fmt).collect::<Vec<_>>(), TICK)?;
    Ok((fmt, w))
}

/// The pieces of the polyline `run` inside `lo..=hi` in y, cut where it crosses an edge.
fn clip_y(run: &[(f64, f64)], (lo, hi): (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let mut pieces: Vec<Vec<(f64, f64)>> = vec![];
    for w in run.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        let (a, b) = ((lo - y0) / (y1 - y0), (hi - y0) / (y1 - y0));
        let (ta, tb) = match y1 == y0 {
            true if y0 < lo || y0 > hi => continue,
            true => (0.0, 1.0),
            false => (a.min(b).max(0.0), a.max(b).min(1.0)),
        };
        let at = |t: f64| (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        match pieces.last_mut() {
            _ if ta > tb => {}
            Some(p) if p.last() == Some(&at(ta)) => p.push(at(tb)),
            _ => pieces.push(vec![at(ta), at(tb)]),
        }
    }
    pieces
}

fn font(size: f64) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

/// Width in pixels of the widest of `texts` at `size`.
fn widest<DB: DrawingBackend, S: AsRef<str>>(a: &Area<DB>, texts: &[S], size: f64) -> Result<u32> {
    let mut w = 0;
    for t in texts {
        w = w.max(a.estimate_text_size(t.as_ref(), &font(size)).pe()?.0);
    }
    Ok(w)
}

/// Size of a label area: `labels` pixels, plus room for the axis description when there is one.
fn with_desc(labels: u32, desc: &str) -> u32 {
    labels + if desc.is_empty() { 0 } else { DESC as u32 + 12 }
}

fn rgb(c: u32) -> RGBColor {
    RGBColor((c >> 16) as u8, (c >> 8) as u8, c as u8)
}

fn colour(i: usize) -> RGBColor {
    rgb(PALETTE[i % PALETTE.len()])
}

fn viridis(t: f64) -> RGBColor {
    let x = t.max(0.0).min(1.0) * (VIRIDIS.len() - 1) as f64; // NaN.max(0.0) is 0.0
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let (a, b) = (rgb(VIRIDIS[i]), rgb(VIRIDIS[i + 1]));
    let mix = |u: u8, v: u8| (u as f64 + (x - i as f64) * (v as f64 - u as f64)).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Marker of series `i` (circle, square, triangle, diamond) centred at pixel offset `(dx, dy)`.
fn marker(i: usize, (dx, dy): (i32, i32)) -> Polygon<(i32, i32)> {
    let (corners, turn, r) = [
        (10, 0.0, 5.0),
        (4, 0.125, 5.7),
        (3, 0.0, 6.5),
        (4, 0.0, 6.5),
    ][i % 4];
    let corner = |k: usize| {
        let a = std::f64::consts::TAU * (k as f64 / corners as f64 + turn);
        (
            dx + (r * a.sin()).round() as i32,
            dy - (r * a.cos()).round() as i32,
        )
    };
    Polygon::new(
        (0..corners).map(corner).collect::<Vec<_>>(),
        colour(i).filled(),
    )
}

/// The title over the whole width (font shrunk to fit), and a strip `strip` pixels wide split off
/// the right (none for 0): the areas for the chart and for what goes beside it.
fn frame<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    strip: u32,
) -> Result<(Area<DB>, Option<Area<DB>>)> {
    let mut area = root.margin(MARGIN / 2, 0, 0, 0);
    if !title.is_empty() {
        let fit = (root.dim_in_pixel().0 - 2 * MARGIN) as f64
            / widest(root, &[title], TITLE)?.max(1) as f64;
        area = area.titled(title, font(TITLE * fit.min(1.0))).pe()?;
    }
    if strip == 0 {
        return Ok((area, None));
    }
    let (chart, side) = area.split_horizontally(area.dim_in_pixel().0 - strip);
    Ok((chart, Some(side)))
}

/// The chart on `area`: ranges `x`, `y`, label areas `x_area` high and `y_area` wide.
fn chart<DB: DrawingBackend>(
    area: &Area<DB>,
    (x, y): ((f64, f64), (f64, f64)),
    (x_area, y_area): (u32, u32),
) -> Result<Chart<'_, DB>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(MARGIN)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area);
    builder.build_cartesian_2d(x.0..x.1, y.0..y.1).pe()
}

/// `configure_mesh` styled alike for every figure, with axis descriptions `x` and `y`.
fn mesh<'a, 'b, DB: DrawingBackend>(
    chart: &'b mut Chart<'a, DB>,
    x: &str,
    y: &str,
) -> MeshStyle<'a, 'b, RangedCoordf64, RangedCoordf64, DB> {
    let mut mesh = chart.configure_mesh();
    mesh.label_style(font(TICK))
        .axis_desc_style(font(DESC))
        .x_desc(x)
        .y_desc(y);
    mesh.bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(TRANSPARENT);
    mesh
}

/// Width of the legend strip for these series names: none for one series, at most 40%.
fn legend_width<DB: DrawingBackend>(root: &Area<DB>, names: &[&str]) -> Result<u32> {
    let w =
        (widest(root, names, LEGEND)? + 34 + 2 * 8 + MARGIN + 4).min(root.dim_in_pixel().0 * 2 / 5);
    Ok(if names.len() < 2 { 0 } else { w })
}

/// The legend in `strip` (if any): plotters' series labels, upper left, on a chart holding only
/// them; `sample(i, at)` draws series `i`'s sample.
fn legend<'a, DB: DrawingBackend + 'a, E: IntoDynElement<'a, DB, (i32, i32)>>(
    strip: &'a Option<Area<DB>>,
    names: &[&str],
    sample: impl Fn(usize, (i32, i32)) -> E + Copy + 'a,
) -> Result<()> {
    let Some(strip) = strip else { return Ok(()) };
    let mut builder = ChartBuilder::on(strip);
    let mut chart = builder
        .margin_top(MARGIN)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .pe()?;
    for (i, name) in names.iter().enumerate() {
        let none = std::iter::empty::<EmptyElement<(f64, f64), DB>>();
        chart
            .draw_series(none)
            .pe()?
            .label(*name)
            .legend(move |at| sample(i, at));
    }
    let mut labels = chart.configure_series_labels();
    labels
        .position(SeriesLabelPosition::UpperLeft)
        .margin(8)
        .legend_area_size(34);
    labels
        .label_font(font(LEGEND))
        .background_style(WHITE)
        .border_style(RGBColor(160, 160, 160));
    labels.draw().pe()
}

impl Figure for LinePlot {
    const KIND: &'static str = "line plot";

    fn title(&self) -> &str {
        &self.title
    }

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
        let points = self.series.iter().flat_map(|s| s.points.iter().copied());
        let (xs, ys): (Vec<f64>, Vec<f64>) = points.filter(|&p| finite2(p)).unzip();
        let xr = padded(min_max(xs).unwrap_or((0.0, 1.0)), 0.04);
        let yr = (self.y_range).unwrap_or_else(|| padded(min_max(ys).unwrap_or((0.0, 1.0)), 0.06));
        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        let (area, strip) = frame(root, &self.title, legend_width(root, &names)?)?;
        let ((fx, _), (fy, y_w)) = (ticks(root, xr, 10)?, ticks(root, yr, 8)?);
        let x_area = with_desc(TICK as u32 + 14, &self.x_label);
        let mut chart = chart(
            &area,
            (xr, yr),
            (x_area, with_desc(y_w + 14, &self.y_label)),
        )?;
        let mut mesh = mesh(&mut chart, &self.x_label, &self.y_label);
        mesh.x_labels(10)
            .y_labels(8)
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .draw()
            .pe()?;
        for (i, s) in self.series.iter().enumerate() {
            for run in s
                .points
                .split(|&p| !finite2(p))
                .flat_map(|run| clip_y(run, yr))
            {
                chart
                    .draw_series(LineSeries::new(run, colour(i).stroke_width(2)))
                    .pe()?;
            }
            let inside = s
                .points
                .iter()
                .filter(|p| finite2(**p) && p.1 >= yr.0 && p.1 <= yr.1);
            chart
                .draw_series(inside.map(|&p| EmptyElement::at(p) + marker(i, (0, 0))))
                .pe()?;
        }
        legend(&strip, &names, |i, at| {
            EmptyElement::at(at)
                + PathElement::new(vec![(0, 0), (24, 0)], colour(i).stroke_width(2))
                + marker(i, (12, 0))
        })
    }
}

impl Figure for BarPlot {
    const KIND: &'static str = "bar plot";

    fn title(&self) -> &str {
        &self.title
    }

    fn validate(&self) -> Result<()> {
        let n = self.categories.len();
        ensure!(n > 0, "no categories to plot");
        ensure!(!self.series.is_empty(), "no series to plot");
        for s in &self.series {
            let (name, got) = (&s.name, s.values.len());
            ensure!(
                got == n,
                "series '{name}' has {got} values but there are {n} categories"
            );
            let e = s.errors.len();
            ensure!(
                e == 0 || e == n,
                "series '{name}' has {e} error bars but there are {n} categories"
            );
        }
        let k = self.series.len();
        let finite = self
            .series
            .iter()
            .flat_map(|s| &s.values)
            .any(|v| v.is_finite());
        ensure!(finite, "no finite values to plot in {k} series");
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<()> {
        let (n, k) = (self.categories.len(), self.series.len());
        let ends = self.series.iter().flat_map(|s| {
            s.values.iter().enumerate().flat_map(|(i, &v)| {
                let e = s
                    .errors
                    .get(i)
                    .copied()
                    .filter(|e| e.is_finite())
                    .unwrap_or(0.0);
                [v - e.abs(), v + e.abs()]
            })
        });
        let (lo, hi) = min_max(ends).map_or((0.0, 1.0), |(lo, hi)| (lo.min(0.0), hi.max(0.0)));
        // From 0 (or a bit below the lowest value) to a bit above the highest (or 0).
        let pad = 0.05 * (hi - lo);
        let yr = match (lo < 0.0, hi > 0.0) {
            (false, false) => (0.0, 1.0),
            (neg, pos) => (
                if neg { lo - pad } else { 0.0 },
                if pos { hi + pad } else { 0.0 },
            ),
        };
        let names: Vec<&str> = self.series.iter().map(|s| s.name.as_str()).collect();
        let (area, strip) = frame(root, &self.title, legend_width(root, &names)?)?;
        let (fy, y_w) = ticks(root, yr, 8)?;
        let y_area = with_desc(y_w + 14, &self.y_label);
        // Category names side by side if they fit their slots, else vertical in a font that
        // fits the slot (down to 9 px, then every k-th name), at most 35% of the height.
        let slot = (area.dim_in_pixel().0 - 2 * MARGIN - y_area) as f64 / n as f64;
        let wide = widest(root, &self.categories, TICK)? as f64;
        let vertical = wide > 0.92 * slot;
        let size = if vertical {
            (slot - 2.0).clamp(9.0, TICK)
        } else {
            TICK
        };
        let every = ((size + 2.0) / slot).ceil().max(1.0) as usize;
        let extent = if vertical { wide * size / TICK } else { TICK };
        let extent = (extent as u32).min(area.dim_in_pixel().1 * 35 / 100) + 12;

        let mut chart = chart(
            &area,
            ((0.0, n as f64), yr),
            (with_desc(extent, &self.x_label), y_area),
        )?;
        let mut mesh = mesh(&mut chart, &self.x_label, &self.y_label);
        mesh.disable_x_mesh()
            .x_labels(0)
            .y_labels(8)
            .y_label_formatter(&fy)
            .draw()
            .pe()?;
        let clamp = |v: f64| v.clamp(yr.0, yr.1);
        for (j, s) in self.series.iter().enumerate() {
            let bars = s.values.iter().enumerate().filter(|(_, v)| v.is_finite());
            let bars = bars.map(|(i, &v)| {
                let x = i as f64 + 0.1 + 0.8 * j as f64 / k as f64;
                Rectangle::new(
                    [(x, clamp(0.0)), (x + 0.8 / k as f64, clamp(v))],
                    colour(j).filled(),
                )
            });
            chart.draw_series(bars).pe()?;
            // Error bars: a vertical line through the bar's middle with caps.
            let w = 0.8 / k as f64;
            for (i, (&v, &e)) in s.values.iter().zip(&s.errors).enumerate() {
                if !(v.is_finite() && e.is_finite() && e != 0.0) {
                    continue;
                }
                let x = i as f64 + 0.1 + 0.8 * j as f64 / k as f64 + w / 2.0;
                let (a, b) = (clamp(v - e.abs()), clamp(v + e.abs()));
                let cap = w / 4.0;
                let style = BLACK.stroke_width(2);
                chart
                    .draw_series([
                        PathElement::new(vec![(x, a), (x, b)], style),
                        PathElement::new(vec![(x - cap, a), (x + cap, a)], style),
                        PathElement::new(vec![(x - cap, b), (x + cap, b)], style),
                    ])
                    .pe()?;
            }
        }
        if yr.0 < 0.0 {
            let zero = PathElement::new(vec![(0.0, 0.0), (n as f64, 0.0)], BLACK);
            chart.draw_series([zero]).pe()?;
        }
        let style = match vertical {
            true => font(size)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center)),
            false => font(size).pos(Pos::new(HPos::Center, VPos::Top)),
        };
        for (i, name) in self.categories.iter().enumerate().step_by(every) {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, yr.0));
            root.draw(&PathElement::new(vec![(x, y), (x, y + 5)], BLACK))
                .pe()?;
            root.draw_text(name, &style, (x, y + 8)).pe()?;
        }
        legend(&strip, &names, |j, (x, y)| {
            Rectangle::new([(x + 2, y - 6), (x + 22, y + 6)], colour(j).filled())
        })
    }
}

impl Figure for Heatmap {
    const KIND: &'static str = "heatmap";

    fn title(&self) -> &str {
        &self.title
    }

    fn validate(&self) -> Result<()> {
        let (nr, nc) = (self.rows.len(), self.cols.len());
        ensure!(
            nr > 0 && nc > 0,
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
        ensure!(
            self.values.iter().flatten().any(|v| v.is_finite()),
            "no finite values to plot"
        );
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &Area<DB>) -> Result<()> {
        let (nr, nc) = (self.rows.len(), self.cols.len());
        let (lo, hi) = min_max(self.values.iter().flatten().copied()).unwrap_or((0.0, 1.0));
        let (vmin, vmax) = self.value_range.unwrap_or(if hi > lo {
            (lo, hi)
        } else {
            padded((lo, hi), 0.0)
        });
        let (cb_ticks, step) = key_points((vmin, vmax), 6);
        let cb_fmt = |v: &f64| self.value_format.format_tick(*v, step);
        let cb_w = widest(root, &cb_ticks.iter().map(cb_fmt).collect::<Vec<_>>(), TICK)? + 14;
        let (area, scale) = frame(root, &self.title, cb_w + 22 + 2 + MARGIN)?;
        // Cell (r, c) spans c ± 0.5 and (nr-1-r) ± 0.5, so that plotters' ticks fall on integers.
        let x_area = with_desc(TICK as u32 + 14, &self.col_label);
        let y_area = with_desc(widest(root, &self.rows, TICK)? + 14, &self.row_label);
        let ranges = ((-0.5, nc as f64 - 0.5), (-0.5, nr as f64 - 0.5));
        let mut chart = chart(&area, ranges, (x_area, y_area))?;
        let (pw, ph) = chart.plotting_area().dim_in_pixel();
        let longest = self
            .values
            .iter()
            .flatten()
            .map(|&v| self.value_format.format(v).len());
        let per_char = 0.85 * pw as f64 / nc as f64 / (0.62 * longest.max().unwrap_or(1) as f64);
        let value_size = 24f64
            .min(0.38 * ph as f64 / nr as f64)
            .min(per_char)
            .floor();
        for (r, row) in self.values.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                let (x, y) = (c as f64, (nr - r - 1) as f64);
                let fill = match v.is_finite() {
                    true => viridis((v - vmin) / (vmax - vmin)),
                    false => RGBColor(200, 200, 200),
                };
                let cell = [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)];
                let border = Rectangle::new(cell, WHITE.stroke_width(2));
                chart
                    .draw_series([Rectangle::new(cell, fill.filled()), border])
                    .pe()?;
                let lum = 0.2126 * fill.0 as f64 + 0.7152 * fill.1 as f64 + 0.0722 * fill.2 as f64;
                let ink = if lum > 140.0 { BLACK } else { WHITE };
                let style = font(value_size)
                    .color(&ink)
                    .pos(Pos::new(HPos::Center, VPos::Center));
                if value_size >= 7.0 {
                    chart
                        .draw_series([Text::new(self.value_format.format(v), (x, y), style)])
                        .pe()?;
                }
            }
        }
        // Axes after the cells, which would cover their ends.
        let name = |names: &[String], v: f64| match v.round() {
            i if (v - i).abs() < 1e-6 && i >= 0.0 => {
                names.get(i as usize).cloned().unwrap_or_default()
            }
            _ => String::new(),
        };
        let (col, row) = (
            |v: &f64| name(&self.cols, *v),
            |v: &f64| name(&self.rows, (nr - 1) as f64 - v),
        );
        let mut mesh = mesh(&mut chart, &self.col_label, &self.row_label);
        mesh.disable_mesh()
            .x_labels(nc)
            .y_labels(nr)
            .x_label_formatter(&col)
            .y_label_formatter(&row);
        mesh.draw().pe()?;

        // The colour scale: a chart of its own, as tall as the cells, ticks on the right.
        let scale = scale.expect("the colour-scale strip");
        let mut builder = ChartBuilder::on(&scale);
        builder
            .margin(MARGIN)
            .margin_left(2)
            .x_label_area_size(x_area)
            .right_y_label_area_size(cb_w);
        let mut cb = builder.build_cartesian_2d(0.0..1.0, vmin..vmax).pe()?;
        let mut mesh = cb.configure_mesh();
        mesh.disable_mesh()
            .disable_x_axis()
            .y_labels(6)
            .y_label_formatter(&cb_fmt);
        mesh.label_style(font(TICK)).draw().pe()?;
        let band = |b: usize| vmin + (vmax - vmin) * b as f64 / 96.0;
        let bands = (0..96).map(|b| {
            let fill = viridis((b as f64 + 0.5) / 96.0).filled();
            Rectangle::new([(0.0, band(b)), (1.0, band(b + 1))], fill)
        });
        cb.draw_series(bands).pe()?;
        cb.draw_series([Rectangle::new([(0.0, vmin), (1.0, vmax)], BLACK)])
            .pe()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_at_the_y_range() {
        let run = [(0.0, 0.5), (1.0, 0.5), (2.0, 1.5), (3.0, 1.5), (4.0, 0.5)];
        let cut = vec![
            vec![(0.0, 0.5), (1.0, 0.5), (1.5, 1.0)],
            vec![(3.5, 1.0), (4.0, 0.5)],
        ];
        assert_eq!(clip_y(&run, (0.0, 1.0)), cut);
        assert!(clip_y(&[(0.0, 2.0), (1.0, 3.0)], (0.0, 1.0)).is_empty());
    }

    #[test]
    fn ranges_and_formats() {
        assert_eq!(padded((1.0, 1.0), 0.05), (0.9, 1.1));
        assert_eq!(padded((0.0, 0.0), 0.05), (-1.0, 1.0));
        assert_eq!((decimals_for(0.25), decimals_for(5.0)), (2, 0));
        assert_eq!(ValueFormat::Percent(1).format(0.8734), "87.3%");
        assert_eq!(ValueFormat::Fixed(2).format(f64::NAN), "n/a");
        assert_eq!(ValueFormat::default().format(0.8734), "0.87");
        assert_eq!(
            (viridis(0.0), viridis(1.0)),
            (RGBColor(68, 1, 84), RGBColor(254, 232, 37))
        );
    }
}
