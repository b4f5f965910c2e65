//! The figure of a robustness curve (`eval --curve` / `--curve-steps`): robust accuracy (%)
//! over the varied setting, and the clean accuracy over eps.

use super::plot::{LinePlot, Series};
use crate::eval::{CurveAxis, CurveReport};

/// The line plot of `r`: one robust series, plus the clean accuracy when eps varies.
pub fn curve_plot(r: &CurveReport) -> LinePlot {
    let (xy, eps) = (r.xy(), r.vary == CurveAxis::Eps);
    let series = |name: String, y: &dyn Fn(f64) -> f64| Series {
        name,
        points: xy.iter().map(|&(x, acc)| (x, 100.0 * y(acc))).collect(),
    };
    let mut all = vec![series(format!("{} robust", r.attack), &|acc| acc)];
    if eps {
        all.push(series("clean".into(), &|_| r.clean_accuracy));
    }
    let x_label = if eps {
        format!("eps ({})", r.norm)
    } else {
        "steps".into()
    };
    LinePlot {
        title: format!("{} ({}, n={}) on {}", r.attack, r.norm, r.n, r.checkpoint),
        x_label,
        y_label: "accuracy (%)".into(),
        series: all,
        y_range: Some((0.0, 100.0)),
    }
}
