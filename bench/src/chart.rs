//! The PNG: six panels of horizontal bars (medians of the rounds), drawn with plotters' bitmap
//! backend and the DejaVu font compiled in (`ab_glyph`), so no system font is needed.

use std::path::Path;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontStyle, register_font};

use crate::samples::Samples;
use crate::sections::*;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 3] =
    [RGBColor(0x2b, 0x6c, 0xb0), RGBColor(0xe0, 0x7b, 0x20), RGBColor(0x3a, 0x9a, 0x4a)];

struct Series {
    name: &'static str,
    values: Vec<Option<f64>>,
}

struct Panel<'a> {
    title: &'a str,
    categories: Vec<&'a str>,
    series: Vec<Series>,
    /// Log-scaled value axis (values spanning orders of magnitude).
    log: bool,
    unit: &'a str,
}

fn register_fonts() -> anyhow::Result<()> {
    register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).map_err(|_| anyhow!("bad font"))?;
    register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).map_err(|_| anyhow!("bad font"))?;
    Ok(())
}

fn short(name: &str) -> &str {
    match name {
        FLASK => "Flask (dev)",
        GUNICORN => "Flask (gunicorn)",
        COLD_WASMTIME_NOCACHE => "wasmtime serve (no cache)",
        COLD_WASMTIME_CACHE => "wasmtime serve (cache)",
        COLD_CONTAINER => "container (docker run)",
        other => other,
    }
}

fn label(value: f64, unit: &str) -> String {
    let number = if value >= 100.0 {
        crate::report::group_thousands(value.round() as i64)
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    if unit.is_empty() { number } else { format!("{number} {unit}") }
}

/// An axis tick: two significant digits, no trailing zeros.
fn tick(value: f64) -> String {
    if value <= 0.0 {
        return "0".into();
    }
    let magnitude = 10f64.powf(value.log10().floor() - 1.0);
    let rounded = (value / magnitude).round() * magnitude;
    if rounded >= 1.0 {
        crate::report::group_thousands(rounded.round() as i64)
    } else {
        let text = format!("{rounded:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Powers of ten and their 2× and 5× inside `lo..hi` (log10 space), as axis key points.
fn log_key_points(lo: f64, hi: f64) -> Vec<f64> {
    let mut points = Vec::new();
    let mut decade = lo.floor() as i32;
    while f64::from(decade) <= hi {
        for m in [1.0_f64, 2.0, 5.0] {
            let p = f64::from(decade) + m.log10();
            if p >= lo && p <= hi {
                points.push(p);
            }
        }
        decade += 1;
    }
    points
}

/// Coordinates are integers (plotters formats integer axes through custom key points; its f64
/// axes do not take them): value-axis units are thousandths of the (possibly log10) value,
/// categories sit at multiples of 1000.
const SCALE: f64 = 1000.0;

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let values: Vec<f64> =
        panel.series.iter().flat_map(|s| s.values.iter().flatten().copied()).filter(|v| *v > 0.0).collect();
    let caption = (FONT, 20).into_font().style(FontStyle::Bold);
    if values.is_empty() {
        area.titled(panel.title, caption).map_err(|e| anyhow!("{e:?}"))?;
        return Ok(());
    }
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    let log = panel.log;
    let to_axis = move |v: f64| -> i64 { ((if log { v.log10() } else { v }) * SCALE).round() as i64 };
    let from_axis = move |x: i64| -> f64 {
        let t = x as f64 / SCALE;
        if log { 10f64.powf(t) } else { t }
    };
    // Room on the right for the value labels and the legend.
    let (lo, hi) = if log { ((min.log10() - 0.3).floor(), max.log10() + 0.7) } else { (0.0, max * 1.7) };
    let x_points: Vec<i64> = if log {
        log_key_points(lo, hi).into_iter().map(|p| (p * SCALE).round() as i64).collect()
    } else {
        let step = nice_step(hi / 5.0);
        (0..)
            .map(|i| f64::from(i) * step)
            .take_while(|p| *p <= hi)
            .map(|p| (p * SCALE).round() as i64)
            .collect()
    };
    let (lo, hi) = ((lo * SCALE).round() as i64, (hi * SCALE).round() as i64);
    let n = panel.categories.len() as i64;
    let y_points: Vec<i64> = (0..n).map(|i| i * 1000).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, caption)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(190)
        .build_cartesian_2d(
            (lo..hi).with_key_points(x_points),
            (-500..n * 1000 - 500).with_key_points(y_points),
        )
        .map_err(|e| anyhow!("{e:?}"))?;
    let categories = panel.categories.clone();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_label_formatter(&|x| tick(from_axis(*x)))
        .y_label_formatter(&|y| {
            // Top category first.
            let index = n - 1 - y / 1000;
            if y % 1000 == 0 && index >= 0 {
                categories.get(index as usize).map(|c| short(c).to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    let groups = panel.series.len() as i64;
    let band = 800 / groups;
    for (k, series) in panel.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let bars: Vec<(i64, f64, i64)> = series
            .values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.filter(|v| *v > 0.0).map(|v| (i as i64, v)))
            .map(|(i, v)| {
                let center = (n - 1 - i) * 1000;
                let top = center + 400 - band * k as i64;
                (top, v, top - band * 9 / 10)
            })
            .collect();
        chart
            .draw_series(
                bars.iter().map(|&(top, v, bottom)| {
                    Rectangle::new([(lo, bottom), (to_axis(v), top)], color.filled())
                }),
            )
            .map_err(|e| anyhow!("{e:?}"))?
            .label(series.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let style = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series(bars.iter().map(|&(top, v, bottom)| {
                Text::new(
                    format!(" {}", label(v, panel.unit)),
                    (to_axis(v), (top + bottom) / 2),
                    style.clone(),
                )
            }))
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    if panel.series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok(())
}

fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

pub fn draw(path: &Path, s: &Samples, subtitle: &str) -> anyhow::Result<()> {
    register_fonts()?;
    let throughput: Vec<&str> = crate::report::THROUGHPUT_SERVERS.to_vec();
    let three: Vec<&str> = crate::report::MEMORY_SERVERS.to_vec();
    let cold: Vec<&str> = crate::report::COLD_VARIANTS.to_vec();
    let of = |metric: &str, names: &[&str]| -> Vec<Option<f64>> {
        names.iter().map(|n| s.median(metric, n)).collect()
    };
    let memory: Vec<&str> = crate::report::MEMORY_TABLE.to_vec();
    let panels = [
        Panel {
            title: "Requests/s, 1 core, 32 connections",
            categories: throughput.clone(),
            series: vec![
                Series { name: "GET /?name=world", values: of("get.rps", &throughput) },
                Series { name: "POST 1 KiB", values: of("post.rps", &throughput) },
            ],
            log: true,
            unit: "",
        },
        Panel {
            title: "GET p99 latency (ms)",
            categories: throughput.clone(),
            series: vec![
                Series { name: "closed loop (wrk)", values: of("get.p99_ms", &throughput) },
                Series { name: "open loop, fixed rate", values: of("open_get.p99_ms", &throughput) },
            ],
            log: true,
            unit: "ms",
        },
        Panel {
            title: "Cold start: exec or docker run to first 200 (ms)",
            categories: cold.clone(),
            series: vec![Series { name: "cold start", values: of("cold.ms", &cold) }],
            log: true,
            unit: "ms",
        },
        Panel {
            title: "RSS (MiB)",
            categories: memory.clone(),
            series: vec![
                Series { name: "idle", values: of("mem.idle_mib", &memory) },
                Series { name: "under GET load", values: of("mem.load_mib", &memory) },
                Series { name: "1,000 open connections", values: of("mem.conns_mib", &memory) },
            ],
            log: false,
            unit: "",
        },
        Panel {
            title: "1 GiB streamed echo (MB/s)",
            categories: three.clone(),
            series: vec![Series { name: "MB/s", values: of("stream.mbps", &three) }],
            log: false,
            unit: "",
        },
        Panel {
            title: "GET requests/s by server cores",
            categories: three.clone(),
            series: vec![
                Series { name: "1 core", values: of("scale.rps_1", &three) },
                Series { name: "2 cores", values: of("scale.rps_2", &three) },
            ],
            log: false,
            unit: "",
        },
    ];
    let root = BitMapBackend::new(path, (1800, 1200)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let (header, body) = root.split_vertically(56);
    header
        .draw(&Text::new(
            "echo-host vs wasmtime serve vs native hyper vs Flask (medians)".to_string(),
            (16, 8),
            (FONT, 24).into_font().style(FontStyle::Bold),
        ))
        .map_err(|e| anyhow!("{e:?}"))?;
    header.draw(&Text::new(subtitle.to_string(), (16, 36), (FONT, 14))).map_err(|e| anyhow!("{e:?}"))?;
    let areas = body.split_evenly((3, 2));
    for (area, panel) in areas.iter().zip(panels.iter()) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick(19_999.4), "20,000");
        assert_eq!(tick(50_003.0), "50,000");
        assert_eq!(tick(2.0000001), "2");
        assert_eq!(tick(0.5), "0.5");
    }

    #[test]
    fn log_key_points_cover_the_range() {
        let points = log_key_points(3.0, 5.4);
        let values: Vec<i64> = points.iter().map(|p| 10f64.powf(*p).round() as i64).collect();
        assert_eq!(values, vec![1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000]);
    }

    #[test]
    fn draws_a_png_without_system_fonts() {
        let mut s = Samples::default();
        s.add("get.rps", ECHO_HOST, 30000.0);
        s.add("get.rps", WASMTIME, 10000.0);
        s.add("cold.ms", NATIVE, 1.5);
        let dir = std::env::temp_dir().join(format!("echo-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join("chart.png");
        draw(&png, &s, "test").unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
