//! Line plots, grouped bar plots and heatmaps, written as PNG or SVG.
//!
//! Each figure is a plain struct with public fields; `write(path)` picks the format from the
//! extension (`.png` or `.svg`) and `write_sized(path, (width, height))` sets the size in pixels
//! (the default is [`DEFAULT_SIZE`]). Data is checked before anything is drawn: empty or
//! mismatched data is an error that names the figure and the file, never a panic. Non-finite
//! values (NaN, ±inf) are skipped: a line is broken at them, a bar is left out, a cell is grey.
//!
//! Text is drawn with DejaVu Sans embedded in the binary (`assets/fonts/DejaVuSans.ttf`,
//! rasterised by `ab_glyph`), so the output does not depend on the fonts of the machine.
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

use std::fmt::Display;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, FontTransform};

/// Size in pixels (width, height) used by `write`; SVG output uses it as its viewport.
pub const DEFAULT_SIZE: (u32, u32) = (1000, 640);

/// Smallest and largest accepted sizes in pixels (width, height).
const MIN_SIZE: (u32, u32) = (240, 180);
const MAX_SIZE: u32 = 10_000;

/// The family every text element asks for; the embedded font is registered under it.
const FAMILY: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

const TITLE_SIZE: f64 = 26.0;
const DESC_SIZE: f64 = 19.0;
const TICK_SIZE: f64 = 15.0;
const LEGEND_SIZE: f64 = 16.0;
const MARGIN: i32 = 16;
const MARKER_R: i32 = 4;
/// Horizontal space reserved left of each legend text for its line/marker sample.
const LEGEND_SAMPLE: i32 = 34;
const LEGEND_MARGIN: i32 = 8;

/// Matplotlib's "tab10" colours, used for series in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Anchor colours of viridis (matplotlib's default colour map), interpolated linearly.
const VIRIDIS: [(f64, f64, f64); 8] = [
    (68.0, 1.0, 84.0),
    (70.0, 50.0, 127.0),
    (54.0, 92.0, 141.0),
    (39.0, 127.0, 143.0),
    (31.0, 162.0, 136.0),
    (74.0, 194.0, 110.0),
    (160.0, 219.0, 57.0),
    (254.0, 232.0, 37.0),
];

const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
const NAN_CELL: RGBColor = RGBColor(200, 200, 200);

// ------------------------------------------------------------------------------------------------
// Public data types
// ------------------------------------------------------------------------------------------------

/// One named curve of a [`LinePlot`]: `(x, y)` points drawn in the given order, joined by a line
/// and marked. Points with a non-finite coordinate are skipped and break the line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Legend entry (the legend is drawn when the plot has more than one series).
    pub name: String,
    /// Points `(x, y)`, joined in this order.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from a name and its points.
    pub fn new(name: impl Into<String>, points: impl IntoIterator<Item = (f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points: points.into_iter().collect(),
        }
    }
}

/// Curves of `y` against `x` (e.g. robust accuracy against eps, one series per model or attack).
///
/// Every point gets a marker (shape and colour differ by series); a legend is drawn when there is
/// more than one series, in the corner where it covers the fewest points. The x range is the data's
/// with 5% padding on each side; the y range is `y_range` or likewise the data's. A single point
/// or a constant coordinate gets a range around it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinePlot {
    /// Title above the plot (none when empty).
    pub title: String,
    /// Description under the x axis.
    pub x_label: String,
    /// Description left of the y axis.
    pub y_label: String,
    /// The curves, coloured in order.
    pub series: Vec<Series>,
    /// Fixed y range `(low, high)`; `None` fits the data. Parts outside it are clipped.
    pub y_range: Option<(f64, f64)>,
}

/// One named set of bars of a [`BarPlot`]: one value per category (non-finite values draw no bar).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarSeries {
    /// Legend entry (the legend is drawn when the plot has more than one series).
    pub name: String,
    /// One value per category of the plot, in the same order.
    pub values: Vec<f64>,
}

impl BarSeries {
    /// A bar series from a name and its values.
    pub fn new(name: impl Into<String>, values: impl IntoIterator<Item = f64>) -> Self {
        BarSeries {
            name: name.into(),
            values: values.into_iter().collect(),
        }
    }
}

/// Grouped bars: for each category (e.g. a layer name) one bar per series, side by side.
///
/// The y axis always includes 0 (bars start there). Category labels are written horizontally when
/// they fit, otherwise vertically; labels longer than about a quarter of the image height are
/// shortened in the middle with "…", and with very many categories only every k-th is labelled.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarPlot {
    /// Title above the plot (none when empty).
    pub title: String,
    /// Description under the category labels.
    pub x_label: String,
    /// Description left of the y axis.
    pub y_label: String,
    /// Category names along the x axis, in order.
    pub categories: Vec<String>,
    /// The bar series, coloured in order; each has one value per category.
    pub series: Vec<BarSeries>,
}

/// How a [`Heatmap`] prints values in its cells and on its colour scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueFormat {
    /// Fixed-point with this many decimals: `Fixed(2)` prints 0.8734 as `0.87`.
    Fixed(usize),
    /// Multiplied by 100 with this many decimals and a `%`: `Percent(1)` prints 0.8734 as `87.3%`.
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
        if !v.is_finite() {
            return "n/a".to_string();
        }
        match *self {
            ValueFormat::Fixed(d) => format!("{:.*}", d, v),
            ValueFormat::Percent(d) => format!("{:.*}%", d, 100.0 * v),
        }
    }

    /// A tick label on the colour scale: as `format`, with the decimals the tick `step` needs.
    fn format_tick(&self, v: f64, step: f64) -> String {
        match *self {
            ValueFormat::Fixed(_) => format!("{:.*}", decimals_for(step), v),
            ValueFormat::Percent(_) => format!("{:.*}%", decimals_for(100.0 * step), 100.0 * v),
        }
    }
}

/// A matrix of values as coloured cells, each with its value printed in it (e.g. accuracy of
/// normalisation statistics NS against attack path AP), with a colour scale on the right.
///
/// Row 0 is at the top. Colours follow viridis from the low end of the range (dark) to the high
/// end (yellow); the range is `value_range` or the data's. Non-finite cells are grey with `n/a`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Heatmap {
    /// Title above the plot (none when empty).
    pub title: String,
    /// Description left of the row names.
    pub row_label: String,
    /// Description under the column names.
    pub col_label: String,
    /// Row names, top to bottom.
    pub rows: Vec<String>,
    /// Column names, left to right.
    pub cols: Vec<String>,
    /// `values[r][c]` for row `r` and column `c`: one inner vector per row, each as long as `cols`.
    pub values: Vec<Vec<f64>>,
    /// How cell values and colour-scale ticks are printed.
    pub value_format: ValueFormat,
    /// Fixed colour range `(low, high)` (e.g. `(0.0, 1.0)` so that matrices compare); `None` fits
    /// the data. Values outside it take the end colours.
    pub value_range: Option<(f64, f64)>,
}

/// Output format of a figure, from the file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// `.png`: RGB raster.
    Png,
    /// `.svg`: vector; text stays text (font family `sans-serif`).
    Svg,
}

impl ImageFormat {
    /// The format for `path` by its extension (`png` or `svg`, any case); an error naming the path
    /// otherwise.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("png") => Ok(ImageFormat::Png),
            Some("svg") => Ok(ImageFormat::Svg),
            _ => bail!(
                "cannot write a plot to {}: unsupported file extension (expected .png or .svg)",
                path.display()
            ),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Shared writing machinery
// ------------------------------------------------------------------------------------------------

/// What each figure type provides to the shared writer.
trait Figure {
    /// "line plot", "bar plot", "heatmap": for messages.
    const KIND: &'static str;
    fn title(&self) -> &str;
    /// Checks the data; the message says what is wrong (the caller adds figure and file).
    fn validate(&self) -> Result<()>;
    /// Draws onto a white area of the final size. Only called after `validate` succeeded.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>;
}

/// Converts plotters' errors (generic over the backend, not always `'static`) into anyhow.
trait PlotErr<T> {
    fn pe(self) -> Result<T>;
}

impl<T, E: Display> PlotErr<T> for std::result::Result<T, E> {
    fn pe(self) -> Result<T> {
        self.map_err(|e| anyhow!("drawing failed: {e}"))
    }
}

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FAMILY, FontStyle::Normal, FONT_BYTES).map_err(|_| {
                "the embedded font (assets/fonts/DejaVuSans.ttf) is not a valid font".to_string()
            })
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn describe<F: Figure>(fig: &F) -> String {
    if fig.title().is_empty() {
        F::KIND.to_string()
    } else {
        format!("{} '{}'", F::KIND, fig.title())
    }
}

fn check_size((w, h): (u32, u32)) -> Result<()> {
    if w < MIN_SIZE.0 || h < MIN_SIZE.1 || w > MAX_SIZE || h > MAX_SIZE {
        bail!(
            "size {w}x{h} is outside {}x{} ..= {MAX_SIZE}x{MAX_SIZE} pixels",
            MIN_SIZE.0,
            MIN_SIZE.1
        );
    }
    Ok(())
}

fn render_png<F: Figure>(fig: &F, size: (u32, u32)) -> Result<Vec<u8>> {
    check_size(size)?;
    fig.validate()?;
    ensure_font()?;
    let (w, h) = size;
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).pe()?;
        fig.draw(&root)?;
        root.present().pe()?;
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().context("encoding PNG")?;
        writer.write_image_data(&rgb).context("encoding PNG")?;
        writer.finish().context("encoding PNG")?;
    }
    Ok(out)
}

fn render_svg<F: Figure>(fig: &F, size: (u32, u32)) -> Result<String> {
    check_size(size)?;
    fig.validate()?;
    ensure_font()?; // text extents are measured with the embedded font for layout
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).pe()?;
        fig.draw(&root)?;
        root.present().pe()?;
    }
    Ok(svg)
}

fn write_figure<F: Figure>(fig: &F, path: &Path, size: (u32, u32)) -> Result<()> {
    let format = ImageFormat::from_path(path)?;
    let bytes = match format {
        ImageFormat::Png => render_png(fig, size),
        ImageFormat::Svg => render_svg(fig, size).map(String::into_bytes),
    }
    .with_context(|| format!("cannot plot {} to {}", describe(fig), path.display()))?;
    std::fs::write(path, bytes)
        .with_context(|| format!("cannot write {} to {}", describe(fig), path.display()))
}

macro_rules! figure_methods {
    ($t:ty) => {
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

            /// The figure as the bytes of a PNG file of `size = (width, height)` pixels.
            pub fn to_png(&self, size: (u32, u32)) -> Result<Vec<u8>> {
                render_png(self, size).with_context(|| format!("cannot plot {}", describe(self)))
            }

            /// The figure as an SVG document of `size = (width, height)` pixels.
            pub fn to_svg(&self, size: (u32, u32)) -> Result<String> {
                render_svg(self, size).with_context(|| format!("cannot plot {}", describe(self)))
            }
        }
    };
}

figure_methods!(LinePlot);
figure_methods!(BarPlot);
figure_methods!(Heatmap);

// ------------------------------------------------------------------------------------------------
// Helpers: ranges, ticks, text, legend placement, clipping, colours
// ------------------------------------------------------------------------------------------------

fn finite2(p: (f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

fn check_range(what: &str, r: Option<(f64, f64)>) -> Result<()> {
    if let Some((lo, hi)) = r {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            bail!("{what} ({lo}, {hi}) must be finite with low < high");
        }
    }
    Ok(())
}

/// Min and max of the finite values, if any.
fn min_max(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// A non-degenerate range around `[lo, hi]`: a given span padded by `pad` of itself on each side,
/// a single value widened by 10% of its magnitude (or by 1 around 0).
fn padded((lo, hi): (f64, f64), pad: f64) -> (f64, f64) {
    let span = hi - lo;
    let scale = lo.abs().max(hi.abs());
    if span > scale * 1e-9 && span > f64::MIN_POSITIVE {
        (lo - pad * span, hi + pad * span)
    } else {
        let c = 0.5 * (lo + hi);
        let half = if c.abs() > 1e-12 { 0.1 * c.abs() } else { 1.0 };
        (c - half, c + half)
    }
}

/// Decimals needed to print multiples of `step` exactly (0 for integral steps), at most 8.
fn decimals_for(step: f64) -> usize {
    if !(step.is_finite() && step > 0.0) {
        return 2;
    }
    let mut d = 0usize;
    while d < 8 {
        let s = step * 10f64.powi(d as i32);
        if (s - s.round()).abs() < 1e-6 * s.max(1.0) {
            break;
        }
        d += 1;
    }
    d
}

/// Tick values plotters will use for `range` with at most `n` labels, and a formatter that prints
/// them all with the same, sufficient number of decimals (scientific for extreme magnitudes).
fn tick_formatter((lo, hi): (f64, f64), n: usize) -> (Vec<f64>, impl Fn(&f64) -> String) {
    let ticks = RangedCoordf64::from(lo..hi).key_points(n);
    let step = if ticks.len() >= 2 {
        ticks[1] - ticks[0]
    } else {
        hi - lo
    };
    let mag = lo.abs().max(hi.abs());
    let sci = mag >= 1e6 || step < 1e-4;
    let dec = decimals_for(step);
    let fmt = move |v: &f64| {
        let v = if v.abs() < step * 1e-6 { 0.0 } else { *v };
        if sci {
            format!("{v:.2e}")
        } else {
            format!("{v:.dec$}")
        }
    };
    (ticks, fmt)
}

fn text_style(size: f64) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
}

fn text_width<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    size: f64,
) -> Result<i32> {
    if text.is_empty() {
        return Ok(0);
    }
    Ok(root.estimate_text_size(text, &text_style(size)).pe()?.0 as i32)
}

/// `text` shortened in the middle with "…" until it is at most `max_px` wide.
fn shorten<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    text: &str,
    size: f64,
    max_px: i32,
) -> Result<String> {
    if text_width(root, text, size)? <= max_px {
        return Ok(text.to_string());
    }
    let chars: Vec<char> = text.chars().collect();
    let mut keep = chars.len().saturating_sub(1);
    while keep > 1 {
        let head = keep.div_ceil(2);
        let tail = keep - head;
        let s: String = chars[..head]
            .iter()
            .chain(std::iter::once(&'…'))
            .chain(chars[chars.len() - tail..].iter())
            .collect();
        if text_width(root, &s, size)? <= max_px {
            return Ok(s);
        }
        keep -= 1;
    }
    Ok(format!("{}…", chars[0]))
}

/// How category labels along a horizontal axis are drawn.
struct CategoryLabels {
    texts: Vec<String>,
    size: f64,
    vertical: bool,
    /// Only every `every`-th label is drawn.
    every: usize,
    /// Height in pixels the labels take below the axis (tick and gap included).
    extent: i32,
    /// `prefix…suffix` when a prefix and suffix common to all names were left out of the labels.
    stripped: Option<String>,
}

impl CategoryLabels {
    /// The axis description: `desc`, followed by the parts left out of the labels, if any.
    fn desc(&self, desc: &str) -> String {
        match (&self.stripped, desc.is_empty()) {
            (None, _) => desc.to_string(),
            (Some(a), true) => a.clone(),
            (Some(a), false) => format!("{desc} ({a})"),
        }
    }
}

fn is_separator(c: char) -> bool {
    matches!(c, '.' | '/' | '_' | ':' | '-' | ' ' | '|')
}

/// Lengths in chars of the longest prefix ending in a separator and the longest suffix starting
/// with one that all `names` share, leaving at least one char of each name.
fn common_affixes(names: &[Vec<char>]) -> (usize, usize) {
    let Some(first) = names.first() else {
        return (0, 0);
    };
    if names.len() < 2 {
        return (0, 0);
    }
    let shortest = names.iter().map(Vec::len).min().unwrap_or(0);
    let mut pre = names
        .iter()
        .map(|n| n.iter().zip(first).take_while(|(a, b)| a == b).count())
        .min()
        .unwrap_or(0);
    while pre > 0 && !is_separator(first[pre - 1]) {
        pre -= 1;
    }
    let mut suf = names
        .iter()
        .map(|n| {
            n.iter()
                .rev()
                .zip(first.iter().rev())
                .take_while(|(a, b)| a == b)
                .count()
        })
        .min()
        .unwrap_or(0);
    while suf > 0 && !is_separator(first[first.len() - suf]) {
        suf -= 1;
    }
    if pre + suf >= shortest {
        suf = 0;
    }
    if pre >= shortest {
        pre = 0;
    }
    (pre, suf)
}

/// Lays out `names` for `n` slots along `plot_w` pixels: horizontal if they fit, otherwise
/// vertical, shortened to at most `max_len` pixels, thinned out when slots are narrower than text.
fn layout_categories<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    names: &[String],
    plot_w: i32,
    max_len: i32,
) -> Result<CategoryLabels> {
    let n = names.len().max(1);
    let slot = plot_w as f64 / n as f64;
    let mut widths = Vec::with_capacity(names.len());
    for s in names {
        widths.push(text_width(root, s, TICK_SIZE)?);
    }
    let max_w = widths.iter().copied().max().unwrap_or(0);
    if (max_w as f64) <= 0.92 * slot {
        return Ok(CategoryLabels {
            texts: names.to_vec(),
            size: TICK_SIZE,
            vertical: false,
            every: 1,
            extent: TICK_SIZE as i32 + 10,
            stripped: None,
        });
    }
    let size = (slot - 2.0).clamp(9.0, TICK_SIZE);
    let every = ((size + 2.0) / slot).ceil().max(1.0) as usize;
    // Too long even vertically: leave out what all names share (e.g. "features." and ".weight").
    let mut names = names.to_vec();
    let mut stripped = None;
    if (max_w as f64) * size / TICK_SIZE > max_len as f64 {
        let chars: Vec<Vec<char>> = names.iter().map(|s| s.chars().collect()).collect();
        let (pre, suf) = common_affixes(&chars);
        if pre + suf > 0 {
            let head: String = chars[0][..pre].iter().collect();
            let tail: String = chars[0][chars[0].len() - suf..].iter().collect();
            stripped = Some(format!("{head}…{tail}"));
            names = chars
                .iter()
                .map(|c| c[pre..c.len() - suf].iter().collect())
                .collect();
        }
    }
    let mut texts = Vec::with_capacity(names.len());
    let mut longest = 0;
    for s in &names {
        let t = shorten(root, s, size, max_len)?;
        longest = longest.max(text_width(root, &t, size)?);
        texts.push(t);
    }
    Ok(CategoryLabels {
        texts,
        size,
        vertical: true,
        every,
        extent: longest + 12,
        stripped,
    })
}

/// Draws the category labels and ticks under the axis whose centre positions (backend pixels) are
/// `centres`, the axis being at pixel row `axis_y`.
fn draw_categories<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    labels: &CategoryLabels,
    centres: &[i32],
    axis_y: i32,
) -> Result<()> {
    for (i, (text, &x)) in labels.texts.iter().zip(centres).enumerate() {
        if i % labels.every != 0 {
            continue;
        }
        root.draw(&PathElement::new(
            vec![(x, axis_y), (x, axis_y + 5)],
            BLACK.stroke_width(1),
        ))
        .pe()?;
        let style = text_style(labels.size);
        if labels.vertical {
            let style = style
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Right, VPos::Center));
            root.draw_text(text, &style, (x, axis_y + 8)).pe()?;
        } else {
            root.draw_text(
                text,
                &style.pos(Pos::new(HPos::Center, VPos::Top)),
                (x, axis_y + 8),
            )
            .pe()?;
        }
    }
    Ok(())
}

/// Legend entries: the series names, shortened to 40% of the image width.
fn legend_names<'s, DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    names: impl Iterator<Item = &'s str>,
) -> Result<Vec<String>> {
    let max_w = (root.dim_in_pixel().0 as f64 * 0.4) as i32;
    names
        .map(|n| shorten(root, n, LEGEND_SIZE, max_w))
        .collect()
}

/// Legend box size in pixels for these entries.
fn legend_box<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    names: &[String],
) -> Result<(i32, i32)> {
    let mut w = 0;
    for n in names {
        w = w.max(text_width(root, n, LEGEND_SIZE)?);
    }
    let h = (names.len() as f64 * LEGEND_SIZE * 1.25).ceil() as i32;
    Ok((
        w + LEGEND_SAMPLE + 2 * LEGEND_MARGIN + 12,
        h + 2 * LEGEND_MARGIN + 12,
    ))
}

/// The legend corner (and how many of `samples`, in unit plot coordinates, it would cover) for a
/// box of `(bw, bh)` as fractions of the plot area: the fewest covered, ties in the order
/// upper right, upper left, lower right, lower left.
fn pick_corner(samples: &[(f64, f64)], (bw, bh): (f64, f64)) -> (SeriesLabelPosition, usize) {
    let corners = [
        (
            SeriesLabelPosition::UpperRight,
            (1.0 - bw, 1.0),
            (1.0 - bh, 1.0),
        ),
        (SeriesLabelPosition::UpperLeft, (0.0, bw), (1.0 - bh, 1.0)),
        (SeriesLabelPosition::LowerRight, (1.0 - bw, 1.0), (0.0, bh)),
        (SeriesLabelPosition::LowerLeft, (0.0, bw), (0.0, bh)),
    ];
    let mut best = (SeriesLabelPosition::UpperRight, usize::MAX);
    for (pos, (x0, x1), (y0, y1)) in corners {
        let covered = samples
            .iter()
            .filter(|&&(x, y)| x >= x0 && x <= x1 && y >= y0 && y <= y1)
            .count();
        if covered < best.1 {
            best = (pos, covered);
        }
    }
    best
}

/// Liang–Barsky: the part of segment `a`-`b` inside the box, if any.
fn clip_segment(
    a: (f64, f64),
    b: (f64, f64),
    xr: (f64, f64),
    yr: (f64, f64),
) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - xr.0),
        (dx, xr.1 - a.0),
        (-dy, a.1 - yr.0),
        (dy, yr.1 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    if t0 > t1 {
        return None;
    }
    let at = |t: f64| {
        if t == 0.0 {
            a
        } else if t == 1.0 {
            b
        } else {
            (a.0 + t * dx, a.1 + t * dy)
        }
    };
    Some((at(t0), at(t1)))
}

/// The polylines to draw for `points` inside the box: broken at non-finite points and where the
/// curve leaves the box.
fn clipped_runs(points: &[(f64, f64)], xr: (f64, f64), yr: (f64, f64)) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut cur: Vec<(f64, f64)> = Vec::new();
    let flush = |cur: &mut Vec<(f64, f64)>, runs: &mut Vec<Vec<(f64, f64)>>| {
        if cur.len() >= 2 {
            runs.push(std::mem::take(cur));
        } else {
            cur.clear();
        }
    };
    let mut prev: Option<(f64, f64)> = None;
    for &p in points {
        if !finite2(p) {
            flush(&mut cur, &mut runs);
            prev = None;
            continue;
        }
        if let Some(a) = prev {
            match clip_segment(a, p, xr, yr) {
                Some((s, e)) => {
                    if cur.last() != Some(&s) {
                        flush(&mut cur, &mut runs);
                        cur.push(s);
                    }
                    cur.push(e);
                    if e != p {
                        flush(&mut cur, &mut runs);
                    }
                }
                None => flush(&mut cur, &mut runs),
            }
        }
        prev = Some(p);
    }
    flush(&mut cur, &mut runs);
    runs
}

fn in_box(p: (f64, f64), xr: (f64, f64), yr: (f64, f64)) -> bool {
    p.0 >= xr.0 && p.0 <= xr.1 && p.1 >= yr.0 && p.1 <= yr.1
}

fn series_colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn viridis(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (VIRIDIS.len() - 1) as f64;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |u: f64, v: f64| (u + f * (v - u)).round().clamp(0.0, 255.0) as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Black or white, whichever reads better on `c`.
fn text_on(c: RGBColor) -> RGBColor {
    let lum = 0.2126 * c.0 as f64 + 0.7152 * c.1 as f64 + 0.0722 * c.2 as f64;
    if lum > 140.0 {
        BLACK
    } else {
        WHITE
    }
}

/// Runs `$body` with `$mk` bound to a constructor `|ox, oy| shape` of the marker of series `$kind`
/// (cycling circle, square, triangle, diamond, cross) centred at pixel offset `(ox, oy)`. Each
/// shape has its own type, hence a macro rather than a function returning one type.
macro_rules! with_marker {
    ($kind:expr, $colour:expr, |$mk:ident| $body:block) => {{
        let r = MARKER_R;
        let colour: RGBColor = $colour;
        let fill = colour.filled();
        match $kind % 5 {
            0 => {
                let $mk = move |ox: i32, oy: i32| Circle::new((ox, oy), r, fill);
                $body
            }
            1 => {
                let $mk = move |ox: i32, oy: i32| {
                    Rectangle::new([(ox - r + 1, oy - r + 1), (ox + r - 1, oy + r - 1)], fill)
                };
                $body
            }
            2 => {
                let $mk = move |ox: i32, oy: i32| TriangleMarker::new((ox, oy), r + 1, fill);
                $body
            }
            3 => {
                let $mk = move |ox: i32, oy: i32| {
                    Polygon::new(
                        vec![
                            (ox, oy - r - 1),
                            (ox + r + 1, oy),
                            (ox, oy + r + 1),
                            (ox - r - 1, oy),
                        ],
                        fill,
                    )
                };
                $body
            }
            _ => {
                let $mk = move |ox: i32, oy: i32| Cross::new((ox, oy), r, colour.stroke_width(2));
                $body
            }
        }
    }};
}

// ------------------------------------------------------------------------------------------------
// Line plot
// ------------------------------------------------------------------------------------------------

/// Pixel layout shared by the x/y charts: label areas and the approximate plot area.
struct Frame {
    caption_h: i32,
    x_area: i32,
    y_area: i32,
    right: i32,
    plot_w: i32,
    plot_h: i32,
}

impl Frame {
    fn new((w, h): (u32, u32), title: &str, x_area: i32, y_area: i32, right: i32) -> Frame {
        let caption_h = if title.is_empty() {
            0
        } else {
            (TITLE_SIZE * 1.2) as i32 + MARGIN / 2
        };
        let plot_w = (w as i32 - 2 * MARGIN - y_area - right).max(10);
        let plot_h = (h as i32 - 2 * MARGIN - caption_h - x_area).max(10);
        Frame {
            caption_h,
            x_area,
            y_area,
            right,
            plot_w,
            plot_h,
        }
    }

    /// Draws `title` (shortened to the image width) centred at the top of `root` and returns the
    /// area below it, for [`builder`](Self::builder). (plotters' own caption is centred on the area
    /// left of the right margin, which is off-centre for the heatmap.)
    fn area<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        title: &str,
    ) -> Result<DrawingArea<DB, Shift>> {
        if title.is_empty() {
            return Ok(root.clone());
        }
        let w = root.dim_in_pixel().0 as i32;
        let text = shorten(root, title, TITLE_SIZE, w - 2 * MARGIN)?;
        let style = text_style(TITLE_SIZE).pos(Pos::new(HPos::Center, VPos::Top));
        root.draw_text(&text, &style, (w / 2, MARGIN / 2)).pe()?;
        Ok(root.margin(self.caption_h, 0, 0, 0))
    }

    /// A chart builder with this layout on `area` (from [`area`](Self::area)).
    fn builder<'a, 'b, DB: DrawingBackend>(
        &self,
        area: &'a DrawingArea<DB, Shift>,
    ) -> ChartBuilder<'a, 'b, DB> {
        let mut b = ChartBuilder::on(area);
        b.margin(MARGIN)
            .margin_right(MARGIN + self.right)
            .x_label_area_size(self.x_area)
            .y_label_area_size(self.y_area);
        b
    }

    /// The axis descriptions, shortened to the plot area's width and height.
    fn descs<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        x: &str,
        y: &str,
    ) -> Result<(String, String)> {
        Ok((
            shorten(root, x, DESC_SIZE, self.plot_w)?,
            shorten(root, y, DESC_SIZE, self.plot_h)?,
        ))
    }
}

/// Width of the y label area for tick labels `labels`.
fn y_area_for<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    labels: &[String],
    desc: &str,
) -> Result<i32> {
    let mut w = 0;
    for l in labels {
        w = w.max(text_width(root, l, TICK_SIZE)?);
    }
    let desc_w = if desc.is_empty() {
        0
    } else {
        DESC_SIZE as i32 + 12
    };
    Ok(w + 14 + desc_w)
}

impl Figure for LinePlot {
    const KIND: &'static str = "line plot";

    fn title(&self) -> &str {
        &self.title
    }

    fn validate(&self) -> Result<()> {
        if self.series.is_empty() {
            bail!("no series to plot");
        }
        check_range("y_range", self.y_range)?;
        if !self
            .series
            .iter()
            .flat_map(|s| &s.points)
            .any(|&p| finite2(p))
        {
            bail!("no finite points to plot in {} series", self.series.len());
        }
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let pts = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter().copied())
                .filter(|&p| finite2(p))
        };
        let xr = padded(min_max(pts().map(|p| p.0)).unwrap_or((0.0, 1.0)), 0.04);
        let mut yr = match self.y_range {
            Some(r) => r,
            None => padded(min_max(pts().map(|p| p.1)).unwrap_or((0.0, 1.0)), 0.06),
        };

        // Legend placement, before the layout: an auto y range may grow to make room on top.
        let names = legend_names(root, self.series.iter().map(|s| s.name.as_str()))?;
        let with_legend = self.series.len() > 1;
        let x_area = TICK_SIZE as i32
            + 14
            + if self.x_label.is_empty() {
                0
            } else {
                DESC_SIZE as i32 + 10
            };
        let mut legend_pos = SeriesLabelPosition::UpperRight;
        for attempt in 0..2 {
            let y_labels: Vec<String> = {
                let (ticks, f) = tick_formatter(yr, 8);
                ticks.iter().map(f).collect()
            };
            let frame = Frame::new(
                root.dim_in_pixel(),
                &self.title,
                x_area,
                y_area_for(root, &y_labels, &self.y_label)?,
                20,
            );
            if !with_legend {
                break;
            }
            let (lw, lh) = legend_box(root, &names)?;
            let frac = (
                lw as f64 / frame.plot_w as f64,
                lh as f64 / frame.plot_h as f64,
            );
            let mut samples = Vec::new();
            let unit = |p: (f64, f64)| ((p.0 - xr.0) / (xr.1 - xr.0), (p.1 - yr.0) / (yr.1 - yr.0));
            for run in self
                .series
                .iter()
                .flat_map(|s| clipped_runs(&s.points, xr, yr))
            {
                for w in run.windows(2) {
                    for k in 0..=8 {
                        let t = k as f64 / 8.0;
                        samples.push(unit((
                            w[0].0 + t * (w[1].0 - w[0].0),
                            w[0].1 + t * (w[1].1 - w[0].1),
                        )));
                    }
                }
            }
            samples.extend(pts().filter(|&p| in_box(p, xr, yr)).map(unit));
            let (pos, covered) = pick_corner(&samples, frac);
            legend_pos = pos;
            if covered == 0 || attempt == 1 || self.y_range.is_some() || frac.1 >= 0.6 {
                break;
            }
            // Grow the top so the legend sits above the data.
            let span = yr.1 - yr.0;
            yr.1 += span * (frac.1 + 0.03) / (1.0 - frac.1 - 0.03);
        }

        let (y_ticks, fy) = tick_formatter(yr, 8);
        let (_, fx) = tick_formatter(xr, 10);
        let y_labels: Vec<String> = y_ticks.iter().map(&fy).collect();
        let frame = Frame::new(
            root.dim_in_pixel(),
            &self.title,
            x_area,
            y_area_for(root, &y_labels, &self.y_label)?,
            20,
        );
        let (x_desc, y_desc) = frame.descs(root, &self.x_label, &self.y_label)?;
        let area = frame.area(root, &self.title)?;
        let mut chart = frame
            .builder(&area)
            .build_cartesian_2d(xr.0..xr.1, yr.0..yr.1)
            .pe()?;
        let mut mesh = chart.configure_mesh();
        mesh.x_labels(10)
            .y_labels(8)
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .label_style((FAMILY, TICK_SIZE))
            .axis_desc_style((FAMILY, DESC_SIZE))
            .bold_line_style(GRID_BOLD)
            .light_line_style(TRANSPARENT);
        if !x_desc.is_empty() {
            mesh.x_desc(x_desc);
        }
        if !y_desc.is_empty() {
            mesh.y_desc(y_desc);
        }
        mesh.draw().pe()?;

        for (i, s) in self.series.iter().enumerate() {
            let colour = series_colour(i);
            let runs = clipped_runs(&s.points, xr, yr);
            chart
                .draw_series(
                    runs.into_iter()
                        .map(|r| PathElement::new(r, colour.stroke_width(2))),
                )
                .pe()?;
            let marks: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|&p| finite2(p) && in_box(p, xr, yr))
                .collect();
            with_marker!(i, colour, |mk| {
                let anno = chart
                    .draw_series(marks.into_iter().map(|p| EmptyElement::at(p) + mk(0, 0)))
                    .pe()?;
                if with_legend {
                    anno.label(names[i].as_str()).legend(move |at| {
                        EmptyElement::at(at)
                            + PathElement::new(vec![(0, 0), (24, 0)], colour.stroke_width(2))
                            + mk(12, 0)
                    });
                }
            });
        }
        if with_legend {
            chart
                .configure_series_labels()
                .position(legend_pos)
                .margin(LEGEND_MARGIN)
                .legend_area_size(LEGEND_SAMPLE)
                .label_font((FAMILY, LEGEND_SIZE))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .draw()
                .pe()?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Bar plot
// ------------------------------------------------------------------------------------------------

impl Figure for BarPlot {
    const KIND: &'static str = "bar plot";

    fn title(&self) -> &str {
        &self.title
    }

    fn validate(&self) -> Result<()> {
        if self.categories.is_empty() {
            bail!("no categories to plot");
        }
        if self.series.is_empty() {
            bail!("no series to plot");
        }
        for s in &self.series {
            if s.values.len() != self.categories.len() {
                bail!(
                    "series '{}' has {} values but there are {} categories",
                    s.name,
                    s.values.len(),
                    self.categories.len()
                );
            }
        }
        if !self
            .series
            .iter()
            .flat_map(|s| &s.values)
            .any(|v| v.is_finite())
        {
            bail!("no finite values to plot in {} series", self.series.len());
        }
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let n = self.categories.len();
        let k = self.series.len();
        let (lo, hi) = min_max(self.series.iter().flat_map(|s| s.values.iter().copied()))
            .unwrap_or((0.0, 1.0));
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let mut yr = if hi - lo > 0.0 {
            let span = hi - lo;
            (
                if lo < 0.0 { lo - 0.05 * span } else { 0.0 },
                if hi > 0.0 { hi + 0.05 * span } else { 0.0 },
            )
        } else {
            (0.0, 1.0)
        };
        let (img_w, img_h) = root.dim_in_pixel();

        // Layout: y labels, then category labels (which need the plot width).
        let desc_h = DESC_SIZE as i32 + 10;
        let names = legend_names(root, self.series.iter().map(|s| s.name.as_str()))?;
        let with_legend = k > 1;
        let mut legend_pos = SeriesLabelPosition::UpperRight;
        let mut cats = None;
        for attempt in 0..2 {
            let y_labels: Vec<String> = {
                let (ticks, f) = tick_formatter(yr, 8);
                ticks.iter().map(f).collect()
            };
            let y_area = y_area_for(root, &y_labels, &self.y_label)?;
            let probe = Frame::new((img_w, img_h), &self.title, 0, y_area, 10);
            let max_len = ((img_h as f64) * 0.26) as i32;
            let c = layout_categories(root, &self.categories, probe.plot_w, max_len)?;
            let desc_h = if c.desc(&self.x_label).is_empty() {
                0
            } else {
                desc_h
            };
            let frame = Frame::new(
                (img_w, img_h),
                &self.title,
                c.extent + desc_h + 6,
                y_area,
                10,
            );
            cats = Some((c, frame));
            if !with_legend {
                break;
            }
            let frame = &cats.as_ref().unwrap().1;
            let (lw, lh) = legend_box(root, &names)?;
            let frac = (
                lw as f64 / frame.plot_w as f64,
                lh as f64 / frame.plot_h as f64,
            );
            let mut samples = Vec::new();
            for (j, s) in self.series.iter().enumerate() {
                for (i, &v) in s.values.iter().enumerate() {
                    if !v.is_finite() {
                        continue;
                    }
                    let x0 = i as f64 + 0.1 + 0.8 * j as f64 / k as f64;
                    let x1 = x0 + 0.8 / k as f64;
                    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
                        let y = (t * v - yr.0) / (yr.1 - yr.0);
                        samples.push((x0 / n as f64, y));
                        samples.push((x1 / n as f64, y));
                    }
                }
            }
            let (pos, covered) = pick_corner(&samples, frac);
            legend_pos = pos;
            if covered == 0 || attempt == 1 || frac.1 >= 0.6 || yr.1 <= 0.0 {
                break;
            }
            let span = yr.1 - yr.0;
            yr.1 += span * (frac.1 + 0.03) / (1.0 - frac.1 - 0.03);
        }
        let (cats, frame) = cats.expect("layout computed");

        let (_, fy) = tick_formatter(yr, 8);
        let (x_desc, y_desc) = frame.descs(root, &cats.desc(&self.x_label), &self.y_label)?;
        let area = frame.area(root, &self.title)?;
        let mut chart = frame
            .builder(&area)
            .build_cartesian_2d(0.0..n as f64, yr.0..yr.1)
            .pe()?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh()
            .x_labels(0)
            .y_labels(8)
            .y_label_formatter(&fy)
            .label_style((FAMILY, TICK_SIZE))
            .axis_desc_style((FAMILY, DESC_SIZE))
            .bold_line_style(GRID_BOLD)
            .light_line_style(TRANSPARENT);
        if !x_desc.is_empty() {
            mesh.x_desc(x_desc);
        }
        if !y_desc.is_empty() {
            mesh.y_desc(y_desc);
        }
        mesh.draw().pe()?;

        let clamp = |v: f64| v.clamp(yr.0, yr.1);
        for (j, s) in self.series.iter().enumerate() {
            let colour = series_colour(j);
            let bars: Vec<_> = s
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| {
                    let x0 = i as f64 + 0.1 + 0.8 * j as f64 / k as f64;
                    let x1 = x0 + 0.8 / k as f64;
                    Rectangle::new([(x0, clamp(0.0)), (x1, clamp(v))], colour.filled())
                })
                .collect();
            let anno = chart.draw_series(bars).pe()?;
            if with_legend {
                anno.label(names[j].as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x + 2, y - 6), (x + 22, y + 6)], colour.filled())
                });
            }
        }
        if yr.0 < 0.0 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(0.0, 0.0), (n as f64, 0.0)],
                    BLACK.stroke_width(1),
                )))
                .pe()?;
        }

        let centres: Vec<i32> = (0..n)
            .map(|i| chart.backend_coord(&(i as f64 + 0.5, yr.0)).0)
            .collect();
        let axis_y = chart.backend_coord(&(0.0, yr.0)).1;
        draw_categories(root, &cats, &centres, axis_y)?;

        if with_legend {
            chart
                .configure_series_labels()
                .position(legend_pos)
                .margin(LEGEND_MARGIN)
                .legend_area_size(LEGEND_SAMPLE)
                .label_font((FAMILY, LEGEND_SIZE))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(160, 160, 160))
                .draw()
                .pe()?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------------
// Heatmap
// ------------------------------------------------------------------------------------------------

impl Heatmap {
    fn colour_range(&self) -> (f64, f64) {
        match self.value_range {
            Some(r) => r,
            None => {
                let (lo, hi) = min_max(self.values.iter().flatten().copied()).unwrap_or((0.0, 1.0));
                if hi > lo {
                    (lo, hi)
                } else {
                    padded((lo, hi), 0.0)
                }
            }
        }
    }
}

impl Figure for Heatmap {
    const KIND: &'static str = "heatmap";

    fn title(&self) -> &str {
        &self.title
    }

    fn validate(&self) -> Result<()> {
        if self.rows.is_empty() || self.cols.is_empty() {
            bail!(
                "needs at least one row and one column (got {} rows, {} columns)",
                self.rows.len(),
                self.cols.len()
            );
        }
        if self.values.len() != self.rows.len() {
            bail!(
                "values has {} rows but there are {} row names",
                self.values.len(),
                self.rows.len()
            );
        }
        for (r, row) in self.values.iter().enumerate() {
            if row.len() != self.cols.len() {
                bail!(
                    "row {r} ('{}') has {} values but there are {} columns",
                    self.rows[r],
                    row.len(),
                    self.cols.len()
                );
            }
        }
        check_range("value_range", self.value_range)?;
        if !self.values.iter().flatten().any(|v| v.is_finite()) {
            bail!("no finite values to plot");
        }
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()> {
        let (nr, nc) = (self.rows.len(), self.cols.len());
        let (vmin, vmax) = self.colour_range();
        let (img_w, img_h) = root.dim_in_pixel();

        // Colour-scale ticks and the room they need on the right.
        let cb_ticks = RangedCoordf64::from(vmin..vmax).key_points(6);
        let cb_step = if cb_ticks.len() >= 2 {
            cb_ticks[1] - cb_ticks[0]
        } else {
            vmax - vmin
        };
        let cb_labels: Vec<String> = cb_ticks
            .iter()
            .map(|&v| self.value_format.format_tick(v, cb_step))
            .collect();
        let mut cb_text = 0;
        for l in &cb_labels {
            cb_text = cb_text.max(text_width(root, l, TICK_SIZE)?);
        }
        let (cb_gap, cb_bar) = (18, 22);
        let right = cb_gap + cb_bar + 6 + cb_text + 8;

        // Row names on the left (shortened to a third of the width), column names below.
        let max_row_w = (img_w as f64 * 0.3) as i32;
        let mut row_texts = Vec::with_capacity(nr);
        let mut row_w = 0;
        for r in &self.rows {
            let t = shorten(root, r, TICK_SIZE, max_row_w)?;
            row_w = row_w.max(text_width(root, &t, TICK_SIZE)?);
            row_texts.push(t);
        }
        let y_area = row_w
            + 14
            + if self.row_label.is_empty() {
                0
            } else {
                DESC_SIZE as i32 + 12
            };
        let probe = Frame::new((img_w, img_h), &self.title, 0, y_area, right);
        let cats = layout_categories(
            root,
            &self.cols,
            probe.plot_w,
            ((img_h as f64) * 0.26) as i32,
        )?;
        let desc_h = if cats.desc(&self.col_label).is_empty() {
            0
        } else {
            DESC_SIZE as i32 + 10
        };
        let frame = Frame::new(
            (img_w, img_h),
            &self.title,
            cats.extent + desc_h + 6,
            y_area,
            right,
        );

        let (x_desc, y_desc) = frame.descs(root, &cats.desc(&self.col_label), &self.row_label)?;
        let area = frame.area(root, &self.title)?;
        let mut chart = frame
            .builder(&area)
            .build_cartesian_2d(0.0..nc as f64, 0.0..nr as f64)
            .pe()?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_mesh()
            .disable_axes()
            .x_labels(0)
            .y_labels(0)
            .axis_desc_style((FAMILY, DESC_SIZE));
        if !x_desc.is_empty() {
            mesh.x_desc(x_desc);
        }
        if !y_desc.is_empty() {
            mesh.y_desc(y_desc);
        }
        mesh.draw().pe()?;

        // Cells, their values, white separators.
        let cell_w = frame.plot_w as f64 / nc as f64;
        let cell_h = frame.plot_h as f64 / nr as f64;
        let longest = self
            .values
            .iter()
            .flatten()
            .map(|&v| self.value_format.format(v).chars().count())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let value_size = (24.0f64)
            .min(0.38 * cell_h)
            .min(0.85 * cell_w / (0.62 * longest))
            .floor();
        let norm = |v: f64| (v - vmin) / (vmax - vmin);
        for (r, row) in self.values.iter().enumerate() {
            let y0 = (nr - r - 1) as f64;
            for (c, &v) in row.iter().enumerate() {
                let x0 = c as f64;
                let fill = if v.is_finite() {
                    viridis(norm(v))
                } else {
                    NAN_CELL
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                        fill.filled(),
                    )))
                    .pe()?;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                        WHITE.stroke_width(2),
                    )))
                    .pe()?;
                if value_size >= 7.0 {
                    let ink = text_on(fill);
                    let style = text_style(value_size)
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    chart
                        .draw_series(std::iter::once(Text::new(
                            self.value_format.format(v),
                            (x0 + 0.5, y0 + 0.5),
                            style,
                        )))
                        .pe()?;
                }
            }
        }

        // Row and column names.
        for (r, t) in row_texts.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, (nr - r) as f64 - 0.5));
            root.draw(&PathElement::new(
                vec![(x - 5, y), (x, y)],
                BLACK.stroke_width(1),
            ))
            .pe()?;
            root.draw_text(
                t,
                &text_style(TICK_SIZE).pos(Pos::new(HPos::Right, VPos::Center)),
                (x - 8, y),
            )
            .pe()?;
        }
        let centres: Vec<i32> = (0..nc)
            .map(|c| chart.backend_coord(&(c as f64 + 0.5, 0.0)).0)
            .collect();
        let axis_y = chart.backend_coord(&(0.0, 0.0)).1;
        draw_categories(root, &cats, &centres, axis_y)?;

        // Colour scale.
        let (px1, py0) = chart.backend_coord(&(nc as f64, nr as f64));
        let (_, py1) = chart.backend_coord(&(nc as f64, 0.0));
        let bx0 = px1 + cb_gap;
        let bx1 = bx0 + cb_bar;
        let bands = 96;
        let height = (py1 - py0).max(1) as f64;
        for b in 0..bands {
            let t0 = b as f64 / bands as f64;
            let t1 = (b + 1) as f64 / bands as f64;
            let ya = py1 - (t0 * height).round() as i32;
            let yb = py1 - (t1 * height).round() as i32;
            let colour = viridis((t0 + t1) / 2.0);
            root.draw(&Rectangle::new([(bx0, yb), (bx1, ya)], colour.filled()))
                .pe()?;
        }
        root.draw(&Rectangle::new(
            [(bx0, py0), (bx1, py1)],
            BLACK.stroke_width(1),
        ))
        .pe()?;
        for (v, l) in cb_ticks.iter().zip(&cb_labels) {
            let y = py1 - (norm(*v) * height).round() as i32;
            root.draw(&PathElement::new(
                vec![(bx1, y), (bx1 + 5, y)],
                BLACK.stroke_width(1),
            ))
            .pe()?;
            root.draw_text(
                l,
                &text_style(TICK_SIZE).pos(Pos::new(HPos::Left, VPos::Center)),
                (bx1 + 8, y),
            )
            .pe()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_breaks_lines_at_nan_and_box() {
        let pts = [
            (0.0, 0.0),
            (1.0, 1.0),
            (f64::NAN, 1.0),
            (2.0, 0.5),
            (3.0, 2.0),
            (4.0, 0.5),
        ];
        let runs = clipped_runs(&pts, (0.0, 4.0), (0.0, 1.0));
        assert_eq!(runs.len(), 3, "{runs:?}");
        assert_eq!(runs[0], vec![(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(runs[1][0], (2.0, 0.5));
        assert!((runs[1][1].1 - 1.0).abs() < 1e-12);
        assert_eq!(*runs[2].last().unwrap(), (4.0, 0.5));
    }

    #[test]
    fn common_affixes_stop_at_separators() {
        let v = |names: &[&str]| {
            names
                .iter()
                .map(|s| s.chars().collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            common_affixes(&v(&[
                "features.layer1.bn.weight",
                "features.layer2.bn.weight"
            ])),
            (9, 10)
        );
        assert_eq!(common_affixes(&v(&["bn10", "bn11"])), (0, 0));
        assert_eq!(common_affixes(&v(&["a.x", "a.x"])), (2, 0));
        assert_eq!(common_affixes(&v(&["only.one"])), (0, 0));
    }

    #[test]
    fn ranges_and_formats() {
        assert_eq!(padded((1.0, 1.0), 0.05), (0.9, 1.1));
        assert_eq!(padded((0.0, 0.0), 0.05), (-1.0, 1.0));
        assert_eq!(decimals_for(0.25), 2);
        assert_eq!(decimals_for(5.0), 0);
        assert_eq!(ValueFormat::Percent(1).format(0.8734), "87.3%");
        assert_eq!(ValueFormat::Fixed(2).format(f64::NAN), "n/a");
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(254, 232, 37));
    }
}
