//! report::plot: every figure type writes a PNG of the requested size with rendered text and, drawn
//! on plotters' SVG backend (`draw_grid`), shows its title, series names and labels as text; bad
//! data, bad extensions (`.svg` too: PNG only) and unwritable paths are errors that name the file;
//! non-finite values and degenerate ranges are drawn, not refused.

use std::path::{Path, PathBuf};

use advtrain::report::{
    draw_grid, BarPlot, BarSeries, Figure, Heatmap, LinePlot, Series, ValueFormat,
};

const SIZE: (u32, u32) = (800, 500);

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Width and height from the PNG signature and IHDR chunk (bytes 16..24).
fn png_header_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 33, "PNG too short: {} bytes", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk is not IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

/// Decoded RGB pixels (the writer emits 8-bit RGB).
struct Image {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(bytes: &[u8]) -> Image {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().expect("PNG decodes");
        let mut buf = vec![0; reader.output_buffer_size().expect("PNG buffer size")];
        let info = reader.next_frame(&mut buf).expect("PNG frame decodes");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        Image {
            w: info.width as usize,
            h: info.height as usize,
            rgb: buf,
        }
    }

    fn px(&self, x: usize, y: usize) -> (u8, u8, u8) {
        let i = 3 * (y * self.w + x);
        (self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
    }

    /// Pixels in the rectangle `[x0, x1) x [y0, y1)` satisfying `pred`.
    fn count(
        &self,
        (x0, x1): (usize, usize),
        (y0, y1): (usize, usize),
        pred: impl Fn((u8, u8, u8)) -> bool,
    ) -> usize {
        (y0..y1.min(self.h))
            .flat_map(|y| (x0..x1.min(self.w)).map(move |x| (x, y)))
            .filter(|&(x, y)| pred(self.px(x, y)))
            .count()
    }
}

fn dark(p: (u8, u8, u8)) -> bool {
    p.0 < 90 && p.1 < 90 && p.2 < 90
}

fn colourful(p: (u8, u8, u8)) -> bool {
    let (hi, lo) = (p.0.max(p.1).max(p.2), p.0.min(p.1).min(p.2));
    hi - lo > 60
}

/// Reads a written PNG, checks signature and size, returns the decoded image.
fn check_png(path: &Path, size: (u32, u32)) -> Image {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(png_header_size(&bytes), size, "{}", path.display());
    let img = Image::decode(&bytes);
    assert_eq!((img.w as u32, img.h as u32), size);
    img
}

/// The title is drawn centred in the top band: rendered glyphs show up as dark pixels there.
fn assert_title_rendered(img: &Image) {
    let n = img.count((img.w / 4, 3 * img.w / 4), (0, 40), dark);
    assert!(
        n > 150,
        "title band has only {n} dark pixels: text not rendered?"
    );
}

/// `fig` drawn as an SVG document of `size` pixels (plotters' SVG backend keeps text as text).
fn svg_of(fig: Figure, size: (u32, u32)) -> String {
    let mut svg = String::new();
    draw_grid(
        &[fig],
        1,
        plotters::backend::SVGBackend::with_string(&mut svg, size),
    )
    .unwrap();
    assert!(
        svg.starts_with("<svg"),
        "not an SVG: {}",
        &svg[..svg.len().min(80)]
    );
    svg
}

fn err_text(r: anyhow::Result<()>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

fn robust_plot() -> LinePlot {
    let eps = [0.0, 2.0, 4.0, 8.0, 16.0];
    LinePlot {
        title: "Robust accuracy vs eps".into(),
        x_label: "eps (x 1/255)".into(),
        y_label: "accuracy".into(),
        series: vec![
            Series::new(
                "standard model",
                eps.iter().map(|&e| (e, 0.9 * (-e / 3.0f64).exp())),
            ),
            Series::new("PGD-AT model", eps.iter().map(|&e| (e, 0.85 - 0.02 * e))),
            Series::new("MDN model", eps.iter().map(|&e| (e, 0.87 - 0.015 * e))),
        ],
        y_range: Some((0.0, 1.0)),
    }
}

fn layer_bars() -> BarPlot {
    let categories: Vec<String> = (0..20)
        .map(|i| format!("layer{}.{}.bn{}", i / 4 + 1, i % 4, i % 2 + 1))
        .collect();
    BarPlot {
        title: "BN statistics distance".into(),
        x_label: "layer".into(),
        y_label: "distance".into(),
        categories,
        series: vec![
            BarSeries::new("mean distance", (0..20).map(|i| 0.1 + 0.04 * i as f64)),
            BarSeries::new("var distance", (0..20).map(|i| 0.9 - 0.03 * i as f64)),
        ],
    }
}

fn swap_matrix() -> Heatmap {
    Heatmap {
        title: "NS x AP accuracy".into(),
        row_label: "NS".into(),
        col_label: "AP".into(),
        rows: vec!["clean".into(), "adv".into(), "mixed".into()],
        cols: vec!["clean-AP".into(), "adv-AP".into(), "mixed-AP".into()],
        values: vec![
            vec![0.912, 0.031, 0.41],
            vec![0.84, 0.52, 0.6],
            vec![0.88, 0.33, 0.47],
        ],
        value_format: ValueFormat::Percent(1),
        value_range: Some((0.0, 1.0)),
    }
}

#[test]
fn line_plot_png_has_requested_size_and_drawn_content() {
    let dir = tmp();
    let path = dir.path().join("robust.png");
    robust_plot().write_sized(&path, SIZE).unwrap();
    let img = check_png(&path, SIZE);
    assert_title_rendered(&img);
    let coloured = img.count((0, img.w), (0, img.h), colourful);
    assert!(
        coloured > 1000,
        "only {coloured} coloured pixels: series not drawn?"
    );
    // Default size.
    let path = dir.path().join("default.PNG");
    robust_plot().write(&path).unwrap();
    check_png(&path, advtrain::report::DEFAULT_SIZE);
}

#[test]
fn line_plot_svg_has_title_and_series_names() {
    let svg = svg_of(Figure::LinePlot(&robust_plot()), SIZE);
    assert!(
        svg.contains(r#"width="800""#) && svg.contains(r#"height="500""#),
        "size not in SVG"
    );
    for needle in [
        "Robust accuracy vs eps",
        "standard model",
        "PGD-AT model",
        "MDN model",
        "eps (x 1/255)",
        "accuracy",
        // Tick labels of both axes (y range 0..1, x 0..16), each the whole text of an element.
        ">\n0.4\n</text>",
        ">\n1.0\n</text>",
        ">\n16\n</text>",
    ] {
        assert!(svg.contains(needle), "SVG lacks {needle:?}");
    }
}

/// tab10, the series colours in order.
const SERIES_COLOURS: [(u8, u8, u8); 3] = [(31, 119, 180), (255, 127, 14), (44, 160, 44)];

#[test]
fn legend_covers_no_data_and_every_series_is_drawn_in_its_colour() {
    // Data in every corner of a fixed y range: a legend anywhere inside the plot covers some.
    let plot = LinePlot {
        title: "legend placement".into(),
        x_label: "x".into(),
        y_label: "y".into(),
        series: vec![
            Series::new("top", (0..=10).map(|i| (i as f64, 0.98))),
            Series::new("bottom", (0..=10).map(|i| (i as f64, 0.02))),
            Series::new("rising", (0..=10).map(|i| (i as f64, 0.1 * i as f64))),
        ],
        y_range: Some((0.0, 1.0)),
    };
    let img = Image::decode(&plot.to_png(SIZE).unwrap());
    // The legend box: rows with a long run of its border grey.
    let grey = |x: usize, y: usize| img.px(x, y) == (160, 160, 160);
    let mut boxed: Option<(usize, usize, usize, usize)> = None;
    for y in 0..img.h {
        let mut run = 0;
        for x in 0..img.w {
            run = if grey(x, y) { run + 1 } else { 0 };
            if run >= 40 {
                let (x0, x1, y0, y1) = boxed.unwrap_or((x + 1 - run, x, y, y));
                boxed = Some((x0.min(x + 1 - run), x1.max(x), y0.min(y), y1.max(y)));
            }
        }
    }
    let (lx0, lx1, ly0, ly1) = boxed.expect("no legend box found");
    assert!(
        ly1 > ly0 + 40 && lx1 > lx0 + 60,
        "legend box {lx0}..{lx1} x {ly0}..{ly1}"
    );
    let in_legend = |x: usize, y: usize| x >= lx0 && x <= lx1 && y >= ly0 && y <= ly1;
    for (i, &c) in SERIES_COLOURS.iter().enumerate() {
        let (mut data, mut sample, mut right) = (0, 0, 0);
        for y in 0..img.h {
            for x in 0..img.w {
                if img.px(x, y) != c {
                    continue;
                }
                if in_legend(x, y) {
                    sample += 1;
                } else {
                    data += 1;
                    right = right.max(x);
                }
            }
        }
        assert!(
            data > 800,
            "series {i}: only {data} pixels of its colour in the plot"
        );
        assert!(
            sample > 20,
            "series {i}: only {sample} pixels of its colour in the legend"
        );
        assert!(
            right < lx0,
            "series {i} reaches x = {right}, the legend starts at {lx0}"
        );
    }
}

#[test]
fn bar_plot_with_many_layers_writes_png_and_labels() {
    let dir = tmp();
    let png_path = dir.path().join("bn.png");
    let bars = layer_bars();
    bars.write_sized(&png_path, SIZE).unwrap();
    let img = check_png(&png_path, SIZE);
    assert_title_rendered(&img);
    // 20 names do not fit side by side: horizontal bars, the names left of them.
    let labels = img.count((0, img.w / 5), (img.h / 8, 7 * img.h / 8), dark);
    assert!(
        labels > 1000,
        "only {labels} dark pixels left of the bars: category labels missing?"
    );

    let svg = svg_of(Figure::BarPlot(&bars), SIZE);
    for needle in [
        "BN statistics distance",
        "mean distance",
        "var distance",
        "layer1.0.bn1",
        "layer5.3.bn2",
    ] {
        assert!(svg.contains(needle), "SVG lacks {needle:?}");
    }
}

#[test]
fn heatmap_prints_cell_values() {
    let dir = tmp();
    let png_path = dir.path().join("swap.png");
    let mut hm = swap_matrix();
    hm.write_sized(&png_path, SIZE).unwrap();
    let img = check_png(&png_path, SIZE);
    assert_title_rendered(&img);
    let cells = img.count((0, img.w), (0, img.h), colourful);
    assert!(
        cells > 50_000,
        "only {cells} coloured pixels: cells not filled?"
    );

    hm.values[1][2] = f64::NAN;
    let svg = svg_of(Figure::Heatmap(&hm), SIZE);
    for needle in [
        "NS x AP accuracy",
        "91.2%",
        "3.1%",
        "47.0%",
        "n/a",
        "clean-AP",
        "mixed",
    ] {
        assert!(svg.contains(needle), "SVG lacks {needle:?}");
    }

    let two = Heatmap {
        rows: vec!["NS=clean".into(), "NS=adv".into()],
        cols: vec!["AP=clean".into(), "AP=adv".into()],
        values: vec![vec![0.9, 0.1], vec![0.85, 0.5]],
        value_format: ValueFormat::Fixed(2),
        value_range: None,
        ..swap_matrix()
    };
    let svg = svg_of(Figure::Heatmap(&two), SIZE);
    for needle in ["0.90", "0.10", "0.85", "0.50", "NS=adv", "AP=clean"] {
        assert!(svg.contains(needle), "2x2 SVG lacks {needle:?}");
    }
}

#[test]
fn non_finite_values_and_degenerate_ranges_are_drawn() {
    let dir = tmp();
    let line = LinePlot {
        title: "with gaps".into(),
        series: vec![
            Series::new(
                "gappy",
                [
                    (0.0, 0.9),
                    (1.0, f64::NAN),
                    (2.0, 0.5),
                    (f64::INFINITY, 0.4),
                    (4.0, 0.3),
                ],
            ),
            Series::new("all NaN", [(0.0, f64::NAN), (1.0, f64::NAN)]),
            Series::new("empty", []),
        ],
        ..Default::default()
    };
    line.write_sized(&dir.path().join("nan.png"), SIZE).unwrap();
    svg_of(Figure::LinePlot(&line), SIZE);
    // Points outside a fixed y range are clipped, not an error.
    LinePlot {
        y_range: Some((0.4, 0.6)),
        ..line.clone()
    }
    .write_sized(&dir.path().join("clip.png"), SIZE)
    .unwrap();

    let single = LinePlot {
        series: vec![Series::new("one", [(0.5, 0.5)])],
        ..Default::default()
    };
    single
        .write_sized(&dir.path().join("single.png"), SIZE)
        .unwrap();
    let flat = LinePlot {
        series: vec![Series::new("flat", [(1.0, 0.0), (1.0, 0.0)])],
        ..Default::default()
    };
    flat.write_sized(&dir.path().join("flat.png"), SIZE)
        .unwrap();

    let mut bars = layer_bars();
    bars.series[0].values[3] = f64::NAN;
    bars.series[1].values = vec![0.0; 20];
    bars.write_sized(&dir.path().join("nan_bars.png"), SIZE)
        .unwrap();
    let negative = BarPlot {
        categories: vec!["a".into(), "b".into()],
        series: vec![BarSeries::new("delta", [-0.5, 0.25])],
        ..Default::default()
    };
    negative
        .write_sized(&dir.path().join("neg.png"), SIZE)
        .unwrap();

    let mut hm = swap_matrix();
    hm.values[0][0] = f64::NAN;
    hm.value_range = None;
    hm.write_sized(&dir.path().join("nan_hm.png"), SIZE)
        .unwrap();
    let constant = Heatmap {
        values: vec![vec![0.5; 3]; 3],
        ..hm.clone()
    };
    constant
        .write_sized(&dir.path().join("const_hm.png"), SIZE)
        .unwrap();
}

#[test]
fn unsupported_extension_is_an_error_naming_the_path() {
    let dir = tmp();
    for name in ["robust.jpg", "robust.svg", "robust", "robust.png.txt"] {
        let path = dir.path().join(name);
        let msg = err_text(robust_plot().write(&path));
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("expected .png"), "{msg}");
        assert!(!path.exists(), "{} was written", path.display());
    }
}

#[test]
fn unwritable_path_is_an_error_naming_the_path() {
    let dir = tmp();
    let path: PathBuf = dir.path().join("no-such-dir").join("robust.png");
    let msg = err_text(robust_plot().write(&path));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // A regular file used as a directory.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let path = file.join("swap.png");
    let msg = err_text(swap_matrix().write(&path));
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn mismatched_or_empty_data_is_a_clear_error() {
    let dir = tmp();
    let out = dir.path().join("bad.png");

    let mut ragged = swap_matrix();
    ragged.values[1] = vec![0.1, 0.2];
    let msg = err_text(ragged.write(&out));
    assert!(
        msg.contains(&out.display().to_string())
            && msg.contains("row 1")
            && msg.contains("2 values"),
        "{msg}"
    );

    let mut short = swap_matrix();
    short.values.pop();
    let msg = err_text(short.write(&out));
    assert!(
        msg.contains("2 rows") && msg.contains("3 row names"),
        "{msg}"
    );

    let empty_hm = Heatmap {
        rows: vec![],
        values: vec![],
        ..swap_matrix()
    };
    assert!(err_text(empty_hm.write(&out)).contains("at least one row"));

    let mut bars = layer_bars();
    bars.series[1].values.truncate(19);
    let msg = err_text(bars.write(&out));
    assert!(
        msg.contains("var distance") && msg.contains("19 values") && msg.contains("20 categories"),
        "{msg}"
    );
    let no_categories = BarPlot {
        categories: vec![],
        ..layer_bars()
    };
    assert!(err_text(no_categories.write(&out)).contains("no categories"));

    let no_series = LinePlot {
        series: vec![],
        ..robust_plot()
    };
    assert!(err_text(no_series.write(&out)).contains("no series"));
    let all_nan = LinePlot {
        series: vec![Series::new("x", [(f64::NAN, 1.0), (0.0, f64::NAN)])],
        ..robust_plot()
    };
    assert!(err_text(all_nan.write(&out)).contains("no finite points"));
    let bad_range = LinePlot {
        y_range: Some((1.0, 0.0)),
        ..robust_plot()
    };
    assert!(err_text(bad_range.write(&out)).contains("y_range"));
    let bad_range = Heatmap {
        value_range: Some((0.0, f64::NAN)),
        ..swap_matrix()
    };
    assert!(err_text(bad_range.write(&out)).contains("value_range"));

    let msg = err_text(robust_plot().write_sized(&out, (10, 10)));
    assert!(msg.contains("10x10"), "{msg}");
    assert!(!out.exists(), "a refused plot left {}", out.display());
}

/// The texts of an SVG's `<text>` elements (plotters writes each as `>\nTEXT\n</text>`).
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("</text>")
        .filter_map(|t| t.rsplit_once('>').map(|(_, s)| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn an_integer_x_axis_has_integer_ticks() {
    // Epochs 1..=n (as a run's curves): every tick label on x is an integer, and there are
    // some; the y axis (values 0.2 .. 0.4) keeps its decimals.
    for n in [1usize, 2, 3, 7, 12, 150] {
        let plot = LinePlot {
            title: format!("{n} epochs"),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            series: vec![Series::new(
                "train loss",
                (1..=n).map(|e| (e as f64, 0.2 + 0.2 / e as f64)),
            )],
            y_range: None,
        };
        let texts = svg_texts(&svg_of(Figure::LinePlot(&plot), SIZE));
        let numbers: Vec<&String> = texts.iter().filter(|t| t.parse::<f64>().is_ok()).collect();
        let x_ticks: Vec<u64> = numbers
            .iter()
            .filter_map(|t| t.parse::<u64>().ok())
            .collect();
        assert!(
            !x_ticks.is_empty() && x_ticks.iter().all(|&e| e as usize <= n),
            "{n} epochs: x ticks {x_ticks:?} in {texts:?}"
        );
        if n <= 7 {
            assert_eq!(
                x_ticks.len(),
                n,
                "{n} epochs: every epoch a tick: {texts:?}"
            );
        }
        // Everything else is a y tick with decimals, none a fractional epoch.
        for t in numbers.iter().filter(|t| t.parse::<u64>().is_err()) {
            let v: f64 = t.parse().unwrap();
            assert!(
                t.contains('.') && v < 1.0,
                "{n} epochs: tick {t:?} in {texts:?}"
            );
        }
    }
}

#[test]
fn in_memory_rendering_matches_the_requested_size() {
    let png = layer_bars().to_png((640, 400)).unwrap();
    assert_eq!(png_header_size(&png), (640, 400));
    let svg = svg_of(Figure::Heatmap(&swap_matrix()), (640, 400));
    assert!(
        svg.contains(r#"viewBox="0 0 640 400""#),
        "{}",
        &svg[..svg.len().min(200)]
    );
}

/// One figure of every kind the crate draws, with the titles, labels and series names its callers
/// use (eval curves, domain gap, BN divergence, gradient conflict, BN swap), written to
/// `$ADVTRAIN_PLOT_GALLERY` when set (to look at them) and to a temporary folder otherwise.
#[test]
fn gallery_of_every_kind() {
    let tmp = tmp();
    let dir = std::env::var_os("ADVTRAIN_PLOT_GALLERY")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let eps = [0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0];
    // src/cli/eval.rs: accuracy (%) against eps, here with three series.
    LinePlot {
        title: "pgd (linf, n=1000) on runs/cifar10-pgdat-seed0/checkpoints/best.safetensors".into(),
        x_label: "eps (linf)".into(),
        y_label: "accuracy (%)".into(),
        series: vec![
            Series::new(
                "pgd robust",
                eps.iter().map(|&e| (e, 84.0 * (-e / 9.0f64).exp())),
            ),
            Series::new(
                "apgd-ce robust",
                eps.iter().map(|&e| (e, 83.0 * (-e / 8.0f64).exp())),
            ),
            Series::new("clean", eps.iter().map(|&e| (e, 84.5))),
        ],
        y_range: Some((0.0, 100.0)),
    }
    .write(&dir.join("eval_eps.png"))
    .unwrap();
    // src/cli/eval.rs with --vary steps: one series, no legend.
    LinePlot {
        title: "pgd (linf, n=500) on runs/fmnist/checkpoints/last.safetensors".into(),
        x_label: "steps".into(),
        y_label: "accuracy (%)".into(),
        series: vec![Series::new(
            "pgd robust",
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0].map(|k: f64| (k, 40.0 + 30.0 / k.sqrt())),
        )],
        y_range: Some((0.0, 100.0)),
    }
    .write(&dir.join("eval_steps.png"))
    .unwrap();
    // src/analysis/domain_gap.rs: six series against the BN layer index, auto y range.
    let layer = |i: usize| (i + 1) as f64;
    let gap = |f: fn(f64) -> f64| (0..20).map(move |i| (layer(i), f(i as f64)));
    LinePlot {
        title: "Domain gap, eps 0.03137 (n=512, route adv): preact-resnet18".into(),
        x_label: "BN layer (forward order)".into(),
        y_label: "W1 to clean running statistics".into(),
        series: vec![
            Series::new("adv-mu", gap(|i| 0.05 + 0.02 * i + 0.01 * (i * 1.3).sin())),
            Series::new("noise-mu", gap(|i| 0.03 + 0.004 * i)),
            Series::new("adv-sigma", gap(|i| 0.08 + 0.03 * i)),
            Series::new("noise-sigma", gap(|i| 0.04 + 0.006 * i)),
            Series::new("clean-mu (baseline)", gap(|i| 0.01 + 0.0005 * i)),
            Series::new("clean-sigma (baseline)", gap(|i| 0.015 + 0.0008 * i)),
        ],
        y_range: None,
    }
    .write(&dir.join("domain_gap.png"))
    .unwrap();
    // src/analysis/bn_divergence.rs: up to four W1 series, auto y range.
    let div = |f: fn(f64) -> f64| (0..20).map(move |i| (layer(i), f(i as f64)));
    LinePlot {
        title: "BN branch divergence (clean vs adv): preact-resnet18".into(),
        x_label: "norm layer (forward order)".into(),
        y_label: "W1 (clean vs adv)".into(),
        series: vec![
            Series::new("W1 mu (running mean)", div(|i| 0.2 + 0.1 * i)),
            Series::new("W1 sigma (running std)", div(|i| 0.1 + 0.15 * i)),
            Series::new("W1 gamma", div(|i| 0.05 + 0.01 * (i * 0.7).cos().abs())),
            Series::new("W1 beta", div(|i| 0.02 + 0.03 * i)),
        ],
        y_range: None,
    }
    .write(&dir.join("bn_divergence.png"))
    .unwrap();
    // src/analysis/grad_conflict.rs: cosine (may be negative) and a fraction per layer, with the
    // layer names of a PreAct ResNet-18 (sorted).
    let mut layers = vec!["bn".to_string(), "conv1".to_string(), "linear".to_string()];
    for s in 1..=4 {
        for b in 0..2 {
            for p in ["bn1", "bn2", "conv1", "conv2"] {
                layers.push(format!("layer{s}.{b}.{p}"));
            }
            if s > 1 && b == 0 {
                layers.push(format!("layer{s}.{b}.shortcut.0"));
            }
        }
    }
    layers.sort();
    let n = layers.len() as f64;
    BarPlot {
        title:
            "Gradient conflict clean vs adv, eps 0.03137 (n=256, adv route adv): preact-resnet18"
                .into(),
        x_label: "layer".into(),
        y_label: "cosine / fraction".into(),
        series: vec![
            BarSeries::new(
                "cosine",
                (0..layers.len()).map(|i| 0.6 - 0.9 * i as f64 / n),
            ),
            BarSeries::new(
                "opposite-sign fraction",
                (0..layers.len()).map(|i| 0.2 + 0.3 * i as f64 / n),
            ),
        ],
        categories: layers,
    }
    .write_sized(&dir.join("grad_conflict.png"), (1000, 160 + 18 * n as u32))
    .unwrap();
    // A small grouped bar plot with three series.
    BarPlot {
        title: "Robust accuracy per attack".into(),
        x_label: "attack".into(),
        y_label: "accuracy".into(),
        categories: ["clean", "pgd-20", "apgd-ce", "apgd-t", "square"]
            .map(String::from)
            .to_vec(),
        series: vec![
            BarSeries::new("standard", [0.93, 0.0, 0.0, 0.0, 0.01]),
            BarSeries::new("PGD-AT", [0.84, 0.52, 0.50, 0.48, 0.55]),
            BarSeries::new("MDN", [0.86, 0.55, 0.53, 0.50, 0.58]),
        ],
    }
    .write(&dir.join("bars_grouped.png"))
    .unwrap();
    // src/analysis/bn_swap.rs: rows NS, columns AP, at its size 760x560.
    let swap = |what: &str, values| Heatmap {
        title: format!("{what} (n=1000): preact-resnet18"),
        row_label: "normalisation statistics".into(),
        col_label: "affine parameters".into(),
        rows: vec![
            "NS adv".into(),
            "NS clean".into(),
            "NS re-est. (train)".into(),
        ],
        cols: vec!["AP adv".into(), "AP clean".into()],
        values,
        value_format: ValueFormat::Percent(1),
        value_range: Some((0.0, 1.0)),
    };
    swap(
        "clean accuracy",
        vec![vec![0.812, 0.455], vec![0.64, 0.871], vec![0.79, f64::NAN]],
    )
    .write_sized(&dir.join("bn_swap_clean.png"), (760, 560))
    .unwrap();
    swap(
        "pgd accuracy (eps 0.03137)",
        vec![vec![0.47, 0.12], vec![0.21, 0.02], vec![0.44, 0.31]],
    )
    .write_sized(&dir.join("bn_swap_robust.png"), (760, 560))
    .unwrap();
    robust_plot().write(&dir.join("robust.png")).unwrap();
    layer_bars().write(&dir.join("layer_bars.png")).unwrap();
    swap_matrix().write(&dir.join("swap_3x3.png")).unwrap();
    // Edge cases at the tests' smaller size: gaps and a fixed y range the data leaves, negative
    // bars, many layer names.
    LinePlot {
        title: "with gaps, y range 0.4..0.6".into(),
        x_label: "x".into(),
        y_label: "y".into(),
        series: vec![
            Series::new(
                "gappy",
                [
                    (0.0, 0.9),
                    (1.0, f64::NAN),
                    (2.0, 0.5),
                    (3.0, 0.45),
                    (4.0, 0.3),
                ],
            ),
            Series::new("inside", [(0.0, 0.5), (2.0, 0.55), (4.0, 0.42)]),
        ],
        y_range: Some((0.4, 0.6)),
    }
    .write_sized(&dir.join("clip_small.png"), SIZE)
    .unwrap();
    BarPlot {
        title: "delta".into(),
        categories: vec!["a".into(), "b".into(), "c".into()],
        series: vec![BarSeries::new("delta", [-0.5, 0.25, 0.1])],
        ..Default::default()
    }
    .write_sized(&dir.join("neg_bars_small.png"), SIZE)
    .unwrap();
    layer_bars()
        .write_sized(&dir.join("layer_bars_small.png"), SIZE)
        .unwrap();
}
