//! Charts as SVG, drawn on the server (plotters), so that no page needs a
//! script. Only numbers and dates this module formats itself go into
//! them: no string from a repository is ever drawn.

use chrono::{DateTime, TimeZone, Utc};
use plotters::prelude::*;

/// One line of a chart: its legend and its points, oldest first.
pub(crate) struct Series<'a> {
    pub label: &'static str,
    pub points: &'a [(DateTime<Utc>, f64)],
}

const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

/// A time chart of `series` with values shown by `unit`; `None` when
/// there is nothing to draw.
pub(crate) fn time_chart(series: &[Series<'_>], unit: fn(f64) -> String) -> Option<String> {
    // A series without points gets no line and no legend.
    let series: Vec<&Series<'_>> = series.iter().filter(|s| !s.points.is_empty()).collect();
    let all = || series.iter().flat_map(|s| s.points.iter());
    let first = all().map(|(t, _)| t.timestamp()).min()?;
    let last = all().map(|(t, _)| t.timestamp()).max()?;
    let top = all().map(|(_, v)| *v).fold(0f64, f64::max);
    // A margin of a twentieth of the span (a minute at least), so that a
    // single instant still gets a visible range.
    let margin = ((last - first) as f64 / 20.0).max(60.0);
    let (x0, x1) = (first as f64 - margin, last as f64 + margin);
    let format = if last - first < 86_400 {
        "%H:%M:%S"
    } else {
        "%Y-%m-%d"
    };
    let y1 = if top > 0.0 { top * 1.1 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 260)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(80)
            .build_cartesian_2d(x0..x1, 0f64..y1)
            .ok()?;
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|x| {
                Utc.timestamp_opt(*x as i64, 0)
                    .single()
                    .map(|t| t.format(format).to_string())
                    .unwrap_or_default()
            })
            .y_label_formatter(&|y| unit(*y))
            .draw()
            .ok()?;
        for (n, s) in series.iter().enumerate() {
            let colour = COLOURS[n % COLOURS.len()];
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|(t, v)| (t.timestamp() as f64, *v))
                .collect();
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour))
                .ok()?
                .label(s.label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 4), (x + 12, y + 4)], colour.filled())
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))
                .ok()?;
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .ok()?;
        }
        root.present().ok()?;
    }
    Some(svg)
}

/// Milliseconds, shown in the unit that suits them.
pub(crate) fn seconds(ms: f64) -> String {
    match ms {
        ms if ms < 1000.0 => format!("{ms:.0} ms"),
        ms if ms < 120_000.0 => format!("{:.1} s", ms / 1000.0),
        ms if ms < 7_200_000.0 => format!("{:.1} min", ms / 60_000.0),
        ms => format!("{:.1} h", ms / 3_600_000.0),
    }
}

pub(crate) fn bytes(b: f64) -> String {
    crate::fsutil::human_bytes(b.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_one_marker_per_point_and_none_without_points() {
        let at = |h| Utc.with_ymd_and_hms(2026, 12, 1, h, 0, 0).unwrap();
        let points = [(at(1), 10.0), (at(2), 20.0), (at(5), 5.0)];
        let svg = time_chart(
            &[Series {
                label: "x",
                points: &points,
            }],
            seconds,
        )
        .unwrap();
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(time_chart(
            &[Series {
                label: "x",
                points: &[]
            }],
            seconds
        )
        .is_none());
    }
}
